"""Top-5 classes with probabilities for image files, from a saved checkpoint.

Images go through the eval transform the checkpoint records (decode as PIL does, resize the shorter side, centre
crop, normalise; flags override it). Class names are the ones the checkpoint records (its dataset's; ImageNet's for
converted 1000-class GhostNets, printed as WordNet lemmas), or a TFDS dataset's (`--labels NAME`, from TFDS's
offline metadata); checkpoints that record none print class indices.

    python -m ghostnet_jax.predict --checkpoint DIR [--step N] [--dtype bfloat16] [--labels imagenet2012] IMAGE...
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import numpy as np
import tensorflow as tf
from flax import nnx

from ghostnet_jax.checkpoint import load_model
from ghostnet_jax.data import model_inputs, pipeline, transforms
from ghostnet_jax.evaluate import add_transform_arguments, apply_checkpoint_inputs
from ghostnet_jax.storage import storage_path
from ghostnet_jax.training.compilation_cache import add_cache_argument, use_compilation_cache


def load_image(path: str, *, channels: int, image_size: int, crop_pct: float, interpolation: str,
               mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """One eval-transformed image (float32 HWC); a missing or undecodable file raises ValueError naming it."""
    try:
        encoded = tf.io.read_file(path)
        image = transforms.decode(encoded, channels)
    except tf.errors.OpError as error:  # missing, a directory, unreadable, not an image
        raise ValueError(f"cannot read image {path!r}: {error.message.splitlines()[0]}") from None
    image = transforms.resize_shorter_and_centre_crop(image, image_size, crop_pct, interpolation)
    return transforms.normalise(image, mean, std).numpy()


def top5(model: nnx.Module, images: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Indices and softmax probabilities of the k most likely classes per image."""
    softmax = nnx.jit(lambda model, x: jax.nn.softmax(model(x).astype(np.float32), axis=-1))
    probabilities = np.asarray(softmax(model, images))
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=-1)


def main(argv: list[str] | None = None) -> list[list[tuple[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (converter or training output)")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the checkpoint's)")
    parser.add_argument("--labels", default=None, help="TFDS dataset whose label names to print")
    add_transform_arguments(parser)
    add_cache_argument(parser)
    args = parser.parse_args(argv)
    use_compilation_cache(args.compilation_cache_dir)
    if not storage_path(args.checkpoint).is_dir():  # a local path or a URL such as gs://
        parser.error(f"--checkpoint {args.checkpoint!r} is not a directory")
    try:
        model, spec = load_model(args.checkpoint, step=args.step, dtype=args.dtype)
    except (FileNotFoundError, ValueError) as error:  # no such step, no complete checkpoint, a bad dtype
        parser.error(str(error).splitlines()[0])
    recorded = apply_checkpoint_inputs(args, spec)
    channels = spec["overrides"].get("in_chans", 3)
    mean, std = pipeline.channel_stats(args.mean, args.std, channels, field="data.mean/std (or --mean/--std)")
    try:
        images = np.stack([load_image(path, channels=channels, image_size=args.image_size, crop_pct=args.crop_pct,
                                      interpolation=args.interpolation, mean=mean, std=std) for path in args.images])
    except ValueError as error:
        parser.error(str(error))
    names = model_inputs.dataset_label_names(args.labels) if args.labels else recorded["labels"]
    if args.labels and names is None:
        raise ValueError(f"--labels {args.labels!r}: TFDS knows no dataset of that name with a 'label' feature")
    if names is not None and len(names) != spec["num_classes"]:
        source = args.labels or "the checkpoint's label list"
        raise ValueError(f"{source} has {len(names)} labels but the model {spec['num_classes']} classes")
    indices, probabilities = top5(model, images, k=min(5, spec["num_classes"]))
    results = []
    for path, row, probs in zip(args.images, indices, probabilities):
        results.append([(model_inputs.readable(names[i]) if names else str(i), float(p)) for i, p in zip(row, probs)])
        print(path + ": " + ", ".join(f"{name} {p:.3f}" for name, p in results[-1]))
    return results


if __name__ == "__main__":
    main()
