"""Calibration images for int8 quantisation: the first images of a TFDS dataset's training split, through the
eval transform (the one the exported model will see), never augmented."""

from __future__ import annotations

import ml_collections
import numpy as np

from ghostnet_jax.data import pipeline


def calibration_batches(data: ml_collections.ConfigDict, *, steps: int, batch_size: int) -> list[np.ndarray]:
    """`steps` batches of `batch_size` eval-transformed images (NHWC float32) from `data.train_split`."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"calibration needs at least one batch of one image, got {steps} x {batch_size}")
    data = data.copy_and_resolve_references()
    data.eval_split = f"{data.train_split}[:{steps * batch_size}]"
    images = [
        batch["image"].reshape(-1, *batch["image"].shape[2:])[batch["mask"].reshape(-1) > 0]
        for batch in pipeline.eval_batches(data, global_batch_size=batch_size)
    ]
    images = np.concatenate(images)
    if len(images) < steps * batch_size:
        raise ValueError(
            f"{data.name}'s {data.train_split} split has {len(images)} images, fewer than the "
            f"{steps} x {batch_size} asked for calibration"
        )
    return [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
