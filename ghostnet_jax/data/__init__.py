"""Host-side input pipeline (tf.data + TFDS) with timm's augmentations in TensorFlow ops."""

from ghostnet_jax.data.pipeline import (
    DatasetInfo,
    dataset_info,
    default_data_config,
    eval_batches,
    prefetch_to_device,
    train_batches,
)

__all__ = ["DatasetInfo", "dataset_info", "default_data_config", "eval_batches", "prefetch_to_device", "train_batches"]
