"""ResNet (timm's `ResNet` with its default stem and downsampling), teachers for distillation, in Flax NNX; NHWC.

Layout and numerics follow timm 1.0.31 so that converted timm weights give timm's logits: a 7x7/2 conv stem,
BatchNorm, ReLU and a 3x3/2 max-pool; four stages of BasicBlocks (resnet18/34) or Bottlenecks with the
stride on the 3x3 conv (resnet50/101, "ResNet v1.5"); a 1x1 conv + BatchNorm shortcut where the shape
changes; global average pooling and a linear classifier. Fresh models are initialised as timm does: convs
He-normal over fan-out, the last BatchNorm of every block zero-scaled (each block starts as the identity).

Module attribute names are timm's, so `TORCH_KEY_RULES` only rename the variables themselves. The convs and
BatchNorms are the shared layers: the compute dtype (`dtype`), float32 statistics and the CPU fast paths
apply as in GhostNet; logits are float32.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ghostnet_jax.models.layers import BatchNorm, Conv2d, compute_dtype, torch_linear

# name -> (block type, blocks per stage), timm 1.0.31's definitions.
VARIANTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
OVERRIDES = {"in_chans", "dtype"}
CLASSIFIER_KEY = "fc.weight"
_EXPANSION = {"basic": 1, "bottleneck": 4}
_STAGE_WIDTHS = (64, 128, 256, 512)


def _he_normal_fan_out(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """timm's conv init, kaiming_normal_(mode='fan_out', nonlinearity='relu'), for an HWIO kernel."""
    kh, kw, _, out_features = shape
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / (out_features * kh * kw))


def _conv(in_features: int, out_features: int, kernel_size: int, rngs: nnx.Rngs, stride: int = 1) -> Conv2d:
    conv = Conv2d(in_features, out_features, kernel_size, stride=stride, rngs=rngs)
    conv.kernel.set_value(_he_normal_fan_out(rngs.params(), conv.kernel.get_value().shape))
    return conv


class Downsample(nnx.Module):
    """The shortcut where the shape changes: 1x1 conv with the block's stride, then BatchNorm."""

    def __init__(self, in_features: int, out_features: int, stride: int, rngs: nnx.Rngs):
        self.conv = _conv(in_features, out_features, 1, rngs, stride)
        self.bn = BatchNorm(out_features)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, add the shortcut, ReLU (resnet18/34)."""

    def __init__(self, in_features: int, planes: int, stride: int, rngs: nnx.Rngs):
        self.conv1 = _conv(in_features, planes, 3, rngs, stride)
        self.bn1 = BatchNorm(planes)
        self.conv2 = _conv(planes, planes, 3, rngs)
        self.bn2 = BatchNorm(planes)
        self.bn2.scale.set_value(jnp.zeros_like(self.bn2.scale.get_value()))
        needs_projection = stride != 1 or in_features != planes
        self.downsample = Downsample(in_features, planes, stride, rngs) if needs_projection else None

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        return jax.nn.relu(self.bn2(self.conv2(y)) + shortcut)


class Bottleneck(nnx.Module):
    """1x1 conv-BN-ReLU, 3x3 conv (the stride) -BN-ReLU, 1x1 conv-BN to 4x the width, add, ReLU (resnet50/101)."""

    def __init__(self, in_features: int, planes: int, stride: int, rngs: nnx.Rngs):
        out_features = planes * _EXPANSION["bottleneck"]
        self.conv1 = _conv(in_features, planes, 1, rngs)
        self.bn1 = BatchNorm(planes)
        self.conv2 = _conv(planes, planes, 3, rngs, stride)
        self.bn2 = BatchNorm(planes)
        self.conv3 = _conv(planes, out_features, 1, rngs)
        self.bn3 = BatchNorm(out_features)
        self.bn3.scale.set_value(jnp.zeros_like(self.bn3.scale.get_value()))
        needs_projection = stride != 1 or in_features != out_features
        self.downsample = Downsample(in_features, out_features, stride, rngs) if needs_projection else None

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        return jax.nn.relu(self.bn3(self.conv3(y)) + shortcut)


def max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
    """PyTorch's MaxPool2d(3, stride=2, padding=1): padding never wins (it is -inf)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))


class ResNet(nnx.Module):
    """Stem, four stages, global average pool, classifier (none when `num_classes=0`: the pooled features)."""

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        *,
        num_classes: int,
        in_chans: int,
        dtype: Any,
        rngs: nnx.Rngs,
    ):
        block_class = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.conv1 = _conv(in_chans, 64, 7, rngs, stride=2)
        self.bn1 = BatchNorm(64)
        in_features = 64
        for index, (planes, depth) in enumerate(zip(_STAGE_WIDTHS, layers)):
            blocks = []
            for b in range(depth):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(block_class(in_features, planes, stride, rngs))
                in_features = planes * _EXPANSION[block]
            setattr(self, f"layer{index + 1}", nnx.List(blocks))
        self.num_features = in_features
        self.fc = torch_linear(in_features, num_classes, rngs) if num_classes else None
        self.dtype = compute_dtype(dtype)
        self.set_attributes(dtype=self.dtype, raise_if_not_found=False)  # every conv (the classifier: float32)

    def __call__(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Logits (or features) for NHWC images. `rngs` is the trainer's dropout stream, unused: like timm's
        default (drop_rate 0), this ResNet has no dropout."""
        del rngs
        x = jax.nn.relu(self.bn1(self.conv1(images.astype(self.dtype))))
        x = max_pool_3x3_stride_2(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        if self.fc is not None:
            x = self.fc(x)
        return x.astype(jnp.float32)


def create(name: str, *, num_classes: int = 1000, rngs: nnx.Rngs | None = None, **overrides: Any) -> ResNet:
    """Builds the named ResNet (`registry.create_model` has checked the name and overrides: `in_chans`, `dtype`)."""
    block, layers = VARIANTS[name]
    return ResNet(
        block,
        layers,
        num_classes=num_classes,
        in_chans=overrides.get("in_chans", 3),
        dtype=overrides.get("dtype", "float32"),
        rngs=rngs if rngs is not None else nnx.Rngs(0),
    )


# Applied in order to a dotted variable path (as `nnx.iter_graph` yields it) to get the timm state-dict key.
TORCH_KEY_RULES = [
    (r"\.downsample\.conv\.", ".downsample.0."),
    (r"\.downsample\.bn\.", ".downsample.1."),
    (r"\.(kernel|scale)$", ".weight"),
    (r"\.mean$", ".running_mean"),
    (r"\.var$", ".running_var"),
]
