"""BEiT (timm's `Beit`), the ViT teachers of the GhostNetV3 recipe, in Flax NNX; NHWC input.

Layout and numerics follow timm 1.0.31 so that converted timm weights give timm's logits: 16x16 patch
embedding, a class token, no absolute position embedding, a relative position bias table per block (indexed
for a window of (img_size/16)^2 patches plus the class token), q/v biases (k has none), layer scale
gamma_1/gamma_2, LayerNorm eps 1e-6, exact (erf) GELU, mean pooling over patch tokens, then fc_norm and head.

`dtype` is the compute dtype; parameters stay float32, LayerNorm statistics and the attention softmax are
computed in float32, and the logits are returned in float32.

The bias tables are sized for `img_size`: a converted 224 px checkpoint only loads into a 224 px model
(`ghostnet_jax.convert.from_torch` rejects other sizes, listing the mis-shaped tables) because resizing the tables
changes the function and is not needed for distillation at the teacher's own resolution. Stochastic depth and dropout
are not supported: the teachers are used frozen, in inference.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ghostnet_jax.models.layers import Classifier, compute_dtype, torch_uniform_init

PATCH_SIZE = 16
LAYER_NORM_EPS = 1e-6

# name -> (embed_dim, depth, num_heads, layer-scale init value), timm 1.0.31's definitions.
VARIANTS: dict[str, tuple[int, int, int, float]] = {
    "beitv2_base_patch16_224": (768, 12, 12, 1e-5),
    "beitv2_large_patch16_224": (1024, 24, 16, 1e-5),
}
OVERRIDES = {"in_chans", "dtype", "img_size"}
CLASSIFIER_KEY = "head.weight"

# timm truncates at +-2 absolute, i.e. +-100 standard deviations (Flax counts the bounds in standard deviations).
_trunc_normal = nnx.initializers.truncated_normal(stddev=0.02, lower=-100.0, upper=100.0)


def relative_position_index(grid: int) -> np.ndarray:
    """(grid^2 + 1)^2 indices into the bias table: patch pairs by (dy, dx), then class-token rows/columns.

    The table has (2 grid - 1)^2 entries for patch offsets, then three for patch->cls, cls->patch, cls->cls.
    """
    coords = np.stack(np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")).reshape(2, -1)
    offsets = coords[:, :, None] - coords[:, None, :] + (grid - 1)  # 2, N, N, each in [0, 2 grid - 2]
    num_offsets = (2 * grid - 1) ** 2
    index = np.empty((grid * grid + 1,) * 2, dtype=np.int32)
    index[1:, 1:] = offsets[0] * (2 * grid - 1) + offsets[1]
    index[0, :] = num_offsets  # class token attending to patches
    index[:, 0] = num_offsets + 1  # patches attending to the class token
    index[0, 0] = num_offsets + 2
    return index


def _linear(
    d_in: int,
    d_out: int,
    rngs: nnx.Rngs,
    *,
    use_bias: bool = True,
    scale: float = 1.0,
    cls: type[nnx.Linear] = nnx.Linear,
) -> nnx.Linear:
    """timm's Linear init: truncated normal std 0.02 (times `scale`), zero bias."""

    def init(key, shape, dtype=jnp.float32):
        return _trunc_normal(key, shape, dtype) * scale

    return cls(d_in, d_out, use_bias=use_bias, kernel_init=init, rngs=rngs)


def _layer_norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Flax computes the statistics in at least float32 whatever the compute dtype.
    return nnx.LayerNorm(dim, epsilon=LAYER_NORM_EPS, rngs=rngs)


class Attention(nnx.Module):
    """Multi-head self-attention with q/v biases and a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, grid: int, out_scale: float, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.qkv = _linear(dim, 3 * dim, rngs, use_bias=False)
        self.q_bias = nnx.Param(jnp.zeros((dim,)))
        self.v_bias = nnx.Param(jnp.zeros((dim,)))
        self.relative_position_bias_table = nnx.Param(jnp.zeros(((2 * grid - 1) ** 2 + 3, num_heads)))
        self.grid = grid  # the bias index is a constant rebuilt from it, not a state-dict entry
        self.proj = _linear(dim, dim, rngs, scale=out_scale)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, dim = x.shape
        heads = self.num_heads
        bias = jnp.concatenate(
            [self.q_bias.get_value(), jnp.zeros_like(self.v_bias.get_value()), self.v_bias.get_value()]
        )
        qkv = self.qkv(x) + bias.astype(x.dtype)
        q, k, v = jnp.moveaxis(qkv.reshape(batch, tokens, 3, heads, dim // heads), 2, 0)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * (dim // heads) ** -0.5, k, preferred_element_type=jnp.float32)
        rel_bias = self.relative_position_bias_table.get_value()[relative_position_index(self.grid)]  # q, k, heads
        weights = jax.nn.softmax(logits + jnp.transpose(rel_bias, (2, 0, 1)), axis=-1).astype(x.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, dim)
        return self.proj(out)


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, out_scale: float, rngs: nnx.Rngs):
        self.fc1 = _linear(dim, hidden, rngs)
        self.fc2 = _linear(hidden, dim, rngs, scale=out_scale)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))  # PyTorch nn.GELU's default: erf


class Block(nnx.Module):
    """Pre-norm transformer block with layer scale; timm divides the output projections by sqrt(2 (i + 1))."""

    def __init__(self, dim: int, num_heads: int, grid: int, init_value: float, index: int, rngs: nnx.Rngs):
        out_scale = 1.0 / math.sqrt(2.0 * (index + 1))
        self.norm1 = _layer_norm(dim, rngs)
        self.attn = Attention(dim, num_heads, grid, out_scale, rngs)
        self.norm2 = _layer_norm(dim, rngs)
        self.mlp = Mlp(dim, 4 * dim, out_scale, rngs)
        self.gamma_1 = nnx.Param(jnp.full((dim,), init_value))
        self.gamma_2 = nnx.Param(jnp.full((dim,), init_value))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x + self.gamma_1.get_value().astype(dtype) * self.attn(self.norm1(x))
        return x + self.gamma_2.get_value().astype(dtype) * self.mlp(self.norm2(x))


class Beit(nnx.Module):
    """BEiT classifier: NHWC images (sides a multiple of 16, equal to `img_size`) -> float32 logits.

    With `num_classes=0` it returns the pooled, fc-normed features (timm's behaviour).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        init_value: float,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        dtype: Any = "float32",
        rngs: nnx.Rngs,
    ):
        self.img_size = img_size
        grid = img_size // PATCH_SIZE
        fan_in = in_chans * PATCH_SIZE * PATCH_SIZE
        self.patch_embed = nnx.Conv(
            in_chans,
            embed_dim,
            kernel_size=(PATCH_SIZE, PATCH_SIZE),
            strides=PATCH_SIZE,
            padding="VALID",
            kernel_init=torch_uniform_init(fan_in),
            bias_init=torch_uniform_init(fan_in),
            rngs=rngs,
        )
        self.cls_token = nnx.Param(_trunc_normal(rngs.params(), (1, 1, embed_dim)))
        self.blocks = nnx.List([Block(embed_dim, num_heads, grid, init_value, i, rngs) for i in range(depth)])
        self.fc_norm = _layer_norm(embed_dim, rngs)
        self.head = _linear(embed_dim, num_classes, rngs, scale=0.001, cls=Classifier) if num_classes > 0 else None
        self.dtype = compute_dtype(dtype)
        self.set_attributes(dtype=self.dtype, raise_if_not_found=False)  # every Linear but the head, Conv, LayerNorm

    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[1:3] != (self.img_size, self.img_size):
            raise ValueError(f"expected NHWC images of {self.img_size}x{self.img_size}, got shape {images.shape}")
        x = self.patch_embed(images.astype(self.dtype))
        batch, _, _, dim = x.shape
        x = x.reshape(batch, -1, dim)
        cls = jnp.broadcast_to(self.cls_token.get_value().astype(x.dtype), (batch, 1, dim))
        x = jnp.concatenate([cls, x], axis=1)
        for block in self.blocks:
            x = block(x)
        x = self.fc_norm(jnp.mean(x[:, 1:].astype(jnp.float32), axis=1).astype(self.dtype))
        if self.head is not None:
            x = self.head(x)
        return x.astype(jnp.float32)


def create(name: str, *, num_classes: int = 1000, rngs: nnx.Rngs | None = None, **overrides: Any) -> Beit:
    """Builds the named BEiT variant (`registry.create_model` has checked the name, `num_classes`, `in_chans` and
    that only `in_chans`, `img_size` (224, a multiple of 16) and `dtype` are overridden)."""
    img_size = overrides.get("img_size", 224)
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < PATCH_SIZE or img_size % PATCH_SIZE:
        raise ValueError(f"img_size must be a positive multiple of {PATCH_SIZE}, got {img_size!r}")
    embed_dim, depth, num_heads, init_value = VARIANTS[name]
    return Beit(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        init_value=init_value,
        num_classes=num_classes,
        in_chans=overrides.get("in_chans", 3),
        img_size=img_size,
        dtype=overrides.get("dtype", "float32"),
        rngs=rngs if rngs is not None else nnx.Rngs(0),
    )


# Applied in order to a dotted variable path (as `nnx.iter_graph` yields it) to get the timm state-dict key.
TORCH_KEY_RULES = [
    (r"^patch_embed\.", "patch_embed.proj."),
    (r"\.(kernel|scale)$", ".weight"),
]
