"""StableHLO: `jax.export` with a symbolic batch dimension, serialized (load with `jax.export.deserialize`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def export_stablehlo(function: Callable[[jax.Array], jax.Array], image_shape: tuple[int, int, int]) -> bytes:
    """The serialized `jax.export.Exported` of `function` for (b, H, W, C) float32 images, any batch b >= 1."""
    images = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b") + tuple(image_shape), jnp.float32)
    return bytes(jax.export.export(jax.jit(function))(images).serialize())
