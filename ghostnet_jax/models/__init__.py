"""The GhostNet model zoo: `create_model`, `list_models`, `fuse` (V3 deploy form), `fold_batchnorm` (export form)
and the building blocks."""

from ghostnet_jax.models.ghostnet import FeatureInfo, GhostBottleneck, GhostModule, GhostNet, GhostNetFeatures
from ghostnet_jax.models.layers import compiling_for, target_platform
from ghostnet_jax.models.registry import allowed_overrides, create_model, list_models
from ghostnet_jax.models.reparam import RepConv, fold_batchnorm, fuse

__all__ = [
    "FeatureInfo",
    "GhostBottleneck",
    "GhostModule",
    "GhostNet",
    "GhostNetFeatures",
    "RepConv",
    "allowed_overrides",
    "compiling_for",
    "create_model",
    "fold_batchnorm",
    "fuse",
    "list_models",
    "target_platform",
]
