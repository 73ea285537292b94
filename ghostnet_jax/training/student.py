"""The network a config trains: its overrides checked, its dtype resolved for the target devices, remat and
cross-device BatchNorm applied (the trainer and the ahead-of-time compiler build it alike)."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from flax import nnx

from ghostnet_jax.models import allowed_overrides, create_model
from ghostnet_jax.training.hosts import AXIS


def resolve_dtype(dtype: str, platform: str | None = None) -> str:
    """'auto' is bfloat16 for TPU and GPU and float32 for CPU (XLA's CPU backend runs bfloat16 several times slower);
    `platform` is that of the devices the run is for (None: JAX's default backend)."""
    if dtype != "auto":
        return dtype
    return "float32" if (platform or jax.default_backend()) == "cpu" else "bfloat16"


def model_overrides(config: ml_collections.ConfigDict, channels: int, platform: str | None = None) -> dict[str, Any]:
    """The config's model overrides that are set (not None), checked against what the variant accepts, with the
    dtype resolved for `platform` (as in `resolve_dtype`)."""
    overrides = {k: v for k, v in config.model.items() if k != "name" and v is not None}
    not_allowed = set(overrides) - allowed_overrides(config.model.name)
    if not_allowed:
        raise ValueError(f"config.model.{sorted(not_allowed)[0]} does not apply to {config.model.name}")
    return {**overrides, "in_chans": channels, "dtype": resolve_dtype(config.model.dtype, platform)}


def student_model(config: ml_collections.ConfigDict, num_classes: int, overrides: dict[str, Any]) -> nnx.Module:
    """The network the config trains, as its train step runs it: remat and cross-device BatchNorm applied.
    Call it under `nnx.eval_shape` for shapes only (ahead-of-time compilation)."""
    model = create_model(config.model.name, num_classes=num_classes, rngs=nnx.Rngs(config.seed), **overrides)
    if config.remat != "none":  # GhostNets only (validate_config)
        model.remat = config.remat
    if config.cross_device_bn:
        model.set_attributes(axis_name=AXIS, raise_if_not_found=False)
    return model
