"""The command-line tools' shared arguments: the checkpoint directory, and the eval transform and dataset, which
default to what the checkpoint records (`evaluate`, `predict`, `export`, experiments/deploy_accuracy.py)."""

from __future__ import annotations

import argparse

import ml_collections

from ghostnet_jax.data import model_inputs, pipeline
from ghostnet_jax.storage import storage_path


def check_checkpoint_argument(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error unless `--checkpoint` is a directory (a local path or a URL such as gs://)."""
    if not storage_path(args.checkpoint).is_dir():
        parser.error(f"--checkpoint {args.checkpoint!r} is not a directory")


def data_config(args: argparse.Namespace, spec: dict) -> ml_collections.ConfigDict:
    """The pipeline's data config: the command-line settings, and the checkpoint's for those left unset."""
    recorded = apply_checkpoint_inputs(args, spec)
    data = pipeline.default_data_config()
    data.name, data.eval_split, data.cache = args.data, args.split or recorded["eval_split"], False
    data.data_dir = args.data_dir
    if getattr(args, "folder", None) is not None:  # export's and deploy_accuracy's parsers have no --folder
        data.folder = args.folder
    elif args.data == "folder":  # the image folder the checkpoint was trained on
        data.folder = recorded["folder"]
    data.image_size, data.eval_crop_pct, data.interpolation = args.image_size, args.crop_pct, args.interpolation
    if args.mean is not None:
        data.mean = tuple(args.mean)
    if args.std is not None:
        data.std = tuple(args.std)
    return data


def add_transform_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval transform's flags, shared with `predict` and `export`; unset ones come from the checkpoint."""
    parser.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's")
    parser.add_argument("--crop-pct", type=float, default=None, help="default: the checkpoint's")
    parser.add_argument(
        "--interpolation", default=None, choices=("bilinear", "bicubic"), help="default: the checkpoint's"
    )
    parser.add_argument("--mean", type=float, nargs="+", default=None, help="0..1 units (default: the checkpoint's)")
    parser.add_argument("--std", type=float, nargs="+", default=None, help="0..1 units (default: the checkpoint's)")


def apply_checkpoint_inputs(args: argparse.Namespace, spec: dict) -> dict:
    """Fills the transform flags (and `--data` where the parser has it) left unset with what the checkpoint
    records; returns that record (`model_inputs.of_spec`)."""
    recorded = model_inputs.of_spec(spec)
    for field in model_inputs.TRANSFORM_FIELDS:
        if getattr(args, field) is None:
            setattr(args, field, recorded[field])
    if getattr(args, "data", "") is None:
        args.data = recorded["dataset"]
    return recorded
