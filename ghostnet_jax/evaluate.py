"""Top-1/top-5 accuracy of a saved checkpoint (converted or trained) on a dataset's eval split.

Read-only: the checkpoint is restored with `load_model`, which never writes, moves or renames anything. The eval
transform is the pipeline's (`data.eval_batches`, timm's resize-shorter + centre crop) with the settings the
checkpoint records (a training run's data config; timm's pretrained cfg for converted GhostNets: 224 px, crop_pct
0.875, bicubic, ImageNet mean/std), and so is the dataset; flags override them.

    python -m ghostnet_jax.evaluate --checkpoint DIR [--data imagenet2012 --data-dir DIR] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from ghostnet_jax.checkpoint import load_model
from ghostnet_jax.data import model_inputs, pipeline
from ghostnet_jax.storage import storage_path
from ghostnet_jax.training.compilation_cache import add_cache_argument, use_compilation_cache
from ghostnet_jax.training.steps import top_k_correct


def accuracy(model: nnx.Module, batches: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
    """Top-1/top-5 accuracy over `batches` (the `eval_batches` layout; the device axis is folded into the batch)."""

    @nnx.jit
    def counts(model, image, label, mask):
        logits = model(image)
        hits = jnp.stack([jnp.sum(top_k_correct(logits, label, min(k, logits.shape[-1])) * mask) for k in (1, 5)])
        return hits, jnp.sum(mask)

    correct, total = np.zeros(2), 0.0
    for batch in batches:
        image, label, mask = (batch[k].reshape(-1, *batch[k].shape[2:]) for k in ("image", "label", "mask"))
        hits, seen = counts(model, image, label, mask)
        correct, total = correct + np.asarray(hits), total + float(seen)
    if total == 0:
        raise ValueError("the eval split is empty")
    return {"top1": float(correct[0] / total), "top5": float(correct[1] / total), "examples": int(total)}


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (converter or training output)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--data", default=None, help="TFDS dataset name (default: the checkpoint's)")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: TFDS's)")
    parser.add_argument(
        "--folder",
        default=None,
        help="an image folder, DIR/SPLIT/CLASS/IMAGE (default: the checkpoint's, if it was trained on one)",
    )
    parser.add_argument(
        "--split", default=None, help="eval split, e.g. 'validation' or 'test[:1000]' (default: the checkpoint's)"
    )
    add_transform_arguments(parser)
    add_cache_argument(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size (a multiple of the devices)")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the checkpoint's)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = build_parser()
    args = parser.parse_args(argv)
    use_compilation_cache(args.compilation_cache_dir)
    if not storage_path(args.checkpoint).is_dir():  # a local path or a URL such as gs://
        parser.error(f"--checkpoint {args.checkpoint!r} is not a directory")
    model, spec = load_model(args.checkpoint, step=args.step, dtype=args.dtype)
    data = data_config(args, spec)
    info = pipeline.dataset_info(data)
    if info.num_classes != spec["num_classes"]:
        raise ValueError(
            f"{data.folder or data.name} has {info.num_classes} classes but the checkpoint's model "
            f"{spec['num_classes']}"
        )
    result = accuracy(model, pipeline.eval_batches(data, global_batch_size=args.batch_size))
    print(
        json.dumps({"checkpoint": args.checkpoint, "data": data.folder or data.name, "split": data.eval_split} | result)
    )
    return result


if __name__ == "__main__":
    main()
