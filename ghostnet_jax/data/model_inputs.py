"""What a checkpoint records about its inputs and outputs: the eval transform and the class names.

Stored in the checkpoint's spec (`spec["data"]`) by training and by the converter, so that evaluate, predict and
export apply the transform the model was trained or published with, and print names, without being told.
Readable ImageNet names come from `imagenet_classes.tsv`: the 1000 WordNet ids in label order (TFDS's and
timm's) with their WordNet lemmas.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from ghostnet_jax.data.pipeline import IMAGENET_MEAN, IMAGENET_STD, image_folder

# timm's pretrained config for every ImageNet GhostNet (V1, V2, V3): what converted weights expect.
IMAGENET_GHOSTNET = {
    "dataset": "imagenet2012",
    "eval_split": "validation",
    "image_size": 224,
    "crop_pct": 0.875,
    "interpolation": "bicubic",
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
}
TRANSFORM_FIELDS = ("image_size", "crop_pct", "interpolation", "mean", "std")


@functools.cache
def imagenet_lemmas() -> dict[str, str]:
    """WordNet id -> lemmas ('n01440764' -> 'tench, Tinca tinca'), in ImageNet label order."""
    text = resources.files(__package__).joinpath("imagenet_classes.tsv").read_text()
    return dict(line.split("\t", 1) for line in text.splitlines())


def readable(label: str) -> str:
    """A label name for people: an ImageNet WordNet id becomes its first lemma; other names stay as they are."""
    lemmas = imagenet_lemmas().get(label)
    return lemmas.split(", ")[0] if lemmas else label


def dataset_label_names(name: str, data_dir: str | None = None) -> list[str] | None:
    """The TFDS dataset's class names (from its metadata, no data read), or None where it has none."""
    try:
        feature = tfds.builder(name, data_dir=data_dir).info.features["label"]
    except (KeyError, tfds.core.registered.DatasetNotFoundError):
        return None
    names = getattr(feature, "names", None)
    return list(names) if names else None


def from_data_config(data: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `spec["data"]` of a model trained with this data config: its eval transform and class names (and, for an
    image folder, the folder, as an absolute path where it is local)."""
    if data.folder:
        folder = data.folder if "://" in data.folder else os.path.abspath(os.path.expanduser(data.folder))
        source = {
            "dataset": "folder",
            "folder": folder,
            "labels": list(image_folder(data.folder).info.features["label"].names),
        }
    else:
        source = {"dataset": data.name, "labels": dataset_label_names(data.name, data.data_dir)}
    return source | {
        "eval_split": data.eval_split,
        "image_size": int(data.image_size),
        "crop_pct": float(data.eval_crop_pct),
        "interpolation": "bicubic" if data.interpolation == "random" else data.interpolation,
        "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std],
    }


def for_converted(num_classes: int) -> dict[str, Any]:
    """The `spec["data"]` of converted reference GhostNet weights: timm's transform, ImageNet's names for a
    1000-class head."""
    return IMAGENET_GHOSTNET | {"labels": list(imagenet_lemmas()) if num_classes == 1000 else None}


def of_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's recorded inputs, or timm's ImageNet GhostNet ones for checkpoints written before
    specs recorded them (or before they recorded the eval split: then the dataset's 'validation' split)."""
    return {"eval_split": "validation"} | (spec.get("data") or IMAGENET_GHOSTNET | {"labels": None})
