"""Top-5 classes with probabilities for image files, from a saved checkpoint.

Images go through the eval transform (decode as PIL does, resize the shorter side, centre crop, normalise; defaults
are timm's for the ImageNet GhostNets). Class names come from a TFDS dataset's label feature (`--labels NAME`, read
from TFDS's offline metadata; for imagenet2012 these are WordNet ids); without it, class indices are printed.

    python -m ghostnet_jax.predict --checkpoint DIR [--labels imagenet2012] IMAGE...
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from flax import nnx

from ghostnet_jax.checkpoint import load_model
from ghostnet_jax.data import pipeline, transforms
from ghostnet_jax.evaluate import add_transform_arguments


def load_image(path: str, *, channels: int, image_size: int, crop_pct: float, interpolation: str,
               mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """One eval-transformed image (float32 HWC); a missing or undecodable file raises ValueError naming it."""
    try:
        encoded = tf.io.read_file(path)
        image = transforms.decode(encoded, channels)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as error:
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
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP)")
    parser.add_argument("--labels", default=None, help="TFDS dataset whose label names to print")
    add_transform_arguments(parser)
    args = parser.parse_args(argv)
    model, spec = load_model(args.checkpoint)
    channels = spec["overrides"].get("in_chans", 3)
    mean, std = args.mean or pipeline.IMAGENET_MEAN, args.std or pipeline.IMAGENET_STD
    if channels == 1:
        mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
    images = np.stack([load_image(path, channels=channels, image_size=args.image_size, crop_pct=args.crop_pct,
                                  interpolation=args.interpolation, mean=mean, std=std) for path in args.images])
    names = tfds.builder(args.labels).info.features["label"].names if args.labels else None
    if names is not None and len(names) != spec["num_classes"]:
        raise ValueError(f"{args.labels} has {len(names)} labels but the model {spec['num_classes']} classes")
    indices, probabilities = top5(model, images, k=min(5, spec["num_classes"]))
    results = []
    for path, row, probs in zip(args.images, indices, probabilities):
        results.append([(names[i] if names else str(i), float(p)) for i, p in zip(row, probs)])
        print(path + ": " + ", ".join(f"{name} {p:.3f}" for name, p in results[-1]))
    return results


if __name__ == "__main__":
    main()
