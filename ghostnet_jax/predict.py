"""Top-5 classes with probabilities for image files, from a saved checkpoint.

Images go through the eval transform the checkpoint records (decode as PIL does, resize the shorter side, centre
crop, normalise; flags override it). Class names are the ones the checkpoint records (its dataset's; ImageNet's for
converted 1000-class GhostNets, printed as WordNet lemmas), or a TFDS dataset's (`--labels NAME`, from TFDS's
offline metadata); checkpoints that record none print class indices.

    python -m ghostnet_jax.predict --checkpoint DIR [--step N] [--dtype bfloat16] [--labels imagenet2012] \
        [--csv OUT.csv] IMAGE_OR_FOLDER...

A folder stands for every image under it (sorted, subfolders included); `--csv` also writes one row per image:
its path and the top-5 classes with their probabilities.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from collections.abc import Sequence

import jax
import numpy as np
import tensorflow as tf
from flax import nnx

from ghostnet_jax.model_checkpoint import load_model
from ghostnet_jax.data import model_inputs, pipeline, transforms
from ghostnet_jax.tool_inputs import add_transform_arguments, apply_checkpoint_inputs, check_checkpoint_argument
from ghostnet_jax.storage import storage_path, write_atomically
from ghostnet_jax.compilation_cache import add_cache_argument, use_compilation_cache


def load_image(
    path: str,
    *,
    channels: int,
    image_size: int,
    crop_pct: float,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """One eval-transformed image (float32 HWC); a missing or undecodable file raises ValueError naming it."""
    try:
        encoded = tf.io.read_file(path)
        image = transforms.decode(encoded, channels)
    except tf.errors.OpError as error:  # missing, a directory, unreadable, not an image
        raise ValueError(f"cannot read image {path!r}: {error.message.splitlines()[0]}") from None
    image = transforms.resize_shorter_and_centre_crop(image, image_size, crop_pct, interpolation)
    return transforms.normalise(image, mean, std).numpy()


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
BATCH = 64  # images per forward pass: a folder of any size is read a batch at a time


def image_paths(arguments: Sequence[str]) -> list[str]:
    """The files given, with every folder replaced by the images under it (sorted; by suffix, any case)."""
    paths = []
    for argument in arguments:
        if tf.io.gfile.isdir(argument):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in tf.io.gfile.walk(argument)
                for name in names
                if name.lower().endswith(IMAGE_SUFFIXES)
            )
            if not found:
                raise ValueError(f"folder {argument!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        else:
            paths.append(argument)
    return paths


def write_csv(path: str, rows: list[tuple[str, list[tuple[str, float]]]]) -> None:
    """path, class_1, probability_1, ..., class_5, probability_5 per image, written whole or not at all."""
    out = io.StringIO()
    writer = csv.writer(out)
    k = max(len(top) for _, top in rows)
    writer.writerow(["path"] + [f"{field}_{rank}" for rank in range(1, k + 1) for field in ("class", "probability")])
    for image, top in rows:
        writer.writerow([image] + [value for name, p in top for value in (name, f"{p:.6f}")])
    write_atomically(storage_path(path), out.getvalue())


@nnx.jit
def _softmax(model: nnx.Module, images: jax.Array) -> jax.Array:
    return jax.nn.softmax(model(images).astype(np.float32), axis=-1)


def top5(model: nnx.Module, images: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Indices and softmax probabilities of the k most likely classes per image."""
    probabilities = np.asarray(_softmax(model, images))
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=-1)


def main(argv: list[str] | None = None) -> list[list[tuple[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (converter or training output)")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP) or folders of them")
    parser.add_argument("--csv", default=None, help="also write the predictions to this CSV file")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the checkpoint's)")
    parser.add_argument("--labels", default=None, help="TFDS dataset whose label names to print")
    add_transform_arguments(parser)
    add_cache_argument(parser)
    args = parser.parse_args(argv)
    use_compilation_cache(args.compilation_cache_dir)
    check_checkpoint_argument(parser, args)
    try:
        model, spec = load_model(args.checkpoint, step=args.step, dtype=args.dtype)
    except (FileNotFoundError, ValueError) as error:  # no such step, no complete checkpoint, a bad dtype
        parser.error(str(error).splitlines()[0])
    recorded = apply_checkpoint_inputs(args, spec)
    channels = spec["overrides"].get("in_chans", 3)
    mean, std = pipeline.channel_stats(args.mean, args.std, channels, field="data.mean/std (or --mean/--std)")
    if args.csv and not storage_path(args.csv).parent.is_dir():
        parser.error(f"--csv {args.csv!r}: its folder does not exist")
    try:
        paths = image_paths(args.images)
    except ValueError as error:
        parser.error(str(error))
    names = model_inputs.dataset_label_names(args.labels) if args.labels else recorded["labels"]
    if args.labels and names is None:
        raise ValueError(f"--labels {args.labels!r}: TFDS knows no dataset of that name with a 'label' feature")
    if names is not None and len(names) != spec["num_classes"]:
        source = args.labels or "the checkpoint's label list"
        raise ValueError(f"{source} has {len(names)} labels but the model {spec['num_classes']} classes")
    results = []
    for start in range(0, len(paths), BATCH):
        batch = paths[start : start + BATCH]
        try:
            images = np.stack(
                [
                    load_image(
                        path,
                        channels=channels,
                        image_size=args.image_size,
                        crop_pct=args.crop_pct,
                        interpolation=args.interpolation,
                        mean=mean,
                        std=std,
                    )
                    for path in batch
                ]
            )
        except ValueError as error:
            parser.error(str(error))
        indices, probabilities = top5(model, images, k=min(5, spec["num_classes"]))
        for path, row, probs in zip(batch, indices, probabilities):
            results.append(
                [(model_inputs.readable(names[i]) if names else str(i), float(p)) for i, p in zip(row, probs)]
            )
            print(path + ": " + ", ".join(f"{name} {p:.3f}" for name, p in results[-1]))
    if args.csv:
        write_csv(args.csv, list(zip(paths, results)))
    return results


if __name__ == "__main__":
    main()
