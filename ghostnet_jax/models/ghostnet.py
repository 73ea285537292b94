"""GhostNet V1, V2 and V3 in Flax NNX: one network class, the version chosen by flags.

V1: Ghost modules (1x1 primary conv + cheap depthwise conv, concatenated).
V2: V1 plus DFC attention gating the first Ghost module of every block from layer 2 on.
V3: V2 with every primary, cheap and stride-2 depthwise conv re-parameterisable (see `reparam`).
Attribute names follow timm's so that weight conversion is a short, readable mapping.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ghostnet_jax.models.layers import (
    Conv2d,
    ConvBN,
    DFCAttention,
    SqueezeExcite,
    compute_dtype,
    make_divisible,
    torch_linear,
)
from ghostnet_jax.models.remat import remat_call
from ghostnet_jax.models.reparam import RepConv

# (kernel, expansion, out, se_ratio, stride) per block, grouped in stages: the reference's `cfgs`.
STAGES: tuple[tuple[tuple[int, int, int, float, int], ...], ...] = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0, 2),),
    ((3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)),
)
STEM_CHANNELS, FINAL_CHANNELS, HEAD_CHANNELS = 16, 960, 1280
FIRST_DFC_LAYER = 2  # V2/V3 gate the blocks with layer_id > 1


@dataclasses.dataclass(frozen=True)
class RepSettings:
    """How V3 re-parameterises a conv site: N conv branches, plus the 1x1 scale and identity branches."""

    num_branches: int = 3
    scale_branch: bool = True
    identity_branch: bool = True


def conv_site(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    rep: RepSettings | None,
    identity: bool = False,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """A conv+BN site: plain for V1/V2, re-parameterisable for V3 (`identity` allows an identity branch)."""
    if rep is None:
        return ConvBN(in_features, out_features, kernel_size, stride=stride, groups=groups, rngs=rngs)
    return RepConv(
        in_features,
        out_features,
        kernel_size,
        stride=stride,
        groups=groups,
        num_branches=rep.num_branches,
        scale_branch=rep.scale_branch,
        identity_branch=identity and rep.identity_branch,
        rngs=rngs,
    )


class GhostModule(nnx.Module):
    """Half the outputs from a 1x1 primary conv, the other half from a cheap 3x3 depthwise conv of those.

    With `dfc`, the output is multiplied by a DFC attention gate computed from the module's input.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        relu: bool,
        dfc: bool,
        dfc_upsample: str,
        rep: RepSettings | None,
        rngs: nnx.Rngs,
    ):
        init = math.ceil(out_features / 2)
        self.out_features, self.relu = out_features, relu
        # The primary 1x1 site never gets scale or identity branches (timm and the official code agree).
        primary_rep = rep and dataclasses.replace(rep, scale_branch=False, identity_branch=False)
        self.primary_conv = conv_site(in_features, init, 1, rep=primary_rep, rngs=rngs)
        self.cheap_operation = conv_site(init, init, 3, groups=init, rep=rep, identity=True, rngs=rngs)
        self.dfc = DFCAttention(in_features, out_features, upsample=dfc_upsample, rngs=rngs) if dfc else None

    def __call__(self, x: jax.Array) -> jax.Array:
        act = jax.nn.relu if self.relu else (lambda v: v)
        x1 = act(self.primary_conv(x))
        x2 = act(self.cheap_operation(x1))
        out = jnp.concatenate([x1, x2], axis=-1)[..., : self.out_features]
        if self.dfc is not None:
            out = out * self.dfc(x, out.shape[1:3])
        return out


class GhostBottleneck(nnx.Module):
    """ghost1 (expand, ReLU) -> [stride-2 depthwise conv] -> [SE] -> ghost2 (project, linear) + shortcut."""

    def __init__(
        self,
        in_features: int,
        mid_features: int,
        out_features: int,
        *,
        kernel_size: int,
        stride: int,
        se_ratio: float,
        dfc: bool,
        dfc_upsample: str,
        rep: RepSettings | None,
        rngs: nnx.Rngs,
    ):
        ghost = dict(dfc_upsample=dfc_upsample, rep=rep, rngs=rngs)
        self.ghost1 = GhostModule(in_features, mid_features, relu=True, dfc=dfc, **ghost)
        self.conv_dw = (
            conv_site(mid_features, mid_features, kernel_size, stride=stride, groups=mid_features, rep=rep, rngs=rngs)
            if stride > 1
            else None
        )
        self.se = (
            SqueezeExcite(mid_features, make_divisible(mid_features * se_ratio, 4), rngs=rngs) if se_ratio else None
        )
        self.ghost2 = GhostModule(mid_features, out_features, relu=False, dfc=False, **ghost)
        self.shortcut = (
            None
            if in_features == out_features and stride == 1
            else nnx.List(
                [
                    ConvBN(in_features, in_features, kernel_size, stride=stride, groups=in_features, rngs=rngs),
                    ConvBN(in_features, out_features, 1, rngs=rngs),
                ]
            )
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.ghost1(x)
        if self.conv_dw is not None:
            h = self.conv_dw(h)
        if self.se is not None:
            h = self.se(h)
        h = self.ghost2(h)
        shortcut = x
        if self.shortcut is not None:
            for layer in self.shortcut:
                shortcut = layer(shortcut)
        return h + shortcut


def _conv_out(size: int, stride: int) -> int:
    """Output size of a conv with kernel k, padding (k-1)//2 and odd k: ceil(size / stride)."""
    return -(-size // stride)


def block_input_sizes(size: int) -> list[int]:
    """Spatial size (one axis) at the input of each of the 16 bottlenecks for an input of `size`."""
    size = _conv_out(size, 2)  # stem
    sizes = []
    for stage in STAGES:
        for *_, stride in stage:
            sizes.append(size)
            size = _conv_out(size, stride)
    return sizes


def min_input_size(dfc: bool) -> int:
    """Smallest input side for which every DFC block has a non-empty 2x2-pooled map (33 px); 1 without DFC."""
    if not dfc:
        return 1
    size = 1
    while min(block_input_sizes(size)[FIRST_DFC_LAYER:]) < 2:
        size += 1
    return size


REMAT_MODES = ("none", "block")


def _call_block(block: nnx.Module, x: jax.Array) -> jax.Array:
    return block(x)


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One feature map of the backbone, as timm describes it: channels, stride from the input (`reduction`) and the
    reference module whose output it is."""

    num_chs: int
    reduction: int
    module: str


def feature_info(width: float) -> tuple[FeatureInfo, ...]:
    """Every map timm's `features_only` can return, in its order: the stem conv's output (before its BatchNorm and
    ReLU: timm hooks the conv), then the output of each stage that ends in a stride-2 block."""
    taps = [FeatureInfo(make_divisible(STEM_CHANNELS * width, 4), 2, "conv_stem")]
    for index, stage in enumerate(STAGES):
        if stage[-1][4] > 1:
            taps.append(FeatureInfo(make_divisible(stage[-1][2] * width, 4), taps[-1].reduction * 2, f"blocks.{index}"))
    return tuple(taps)


class _Trunk(nnx.Module):
    """The stem and the first `num_stages` bottleneck stages: what the classifier and the feature extractor share
    (the same attribute names, so that weights convert and restore the same way for both)."""

    def __init__(
        self,
        *,
        version: int,
        width: float,
        num_stages: int,
        rngs: nnx.Rngs,
        in_chans: int = 3,
        dfc_upsample: str = "bilinear",
        rep: RepSettings | None = None,
        remat: str = "none",
    ):
        if remat not in REMAT_MODES:
            raise ValueError(f"unknown remat {remat!r}; expected one of {REMAT_MODES}")
        self.version = version
        has_dfc = version >= 2
        self.min_input_size = min_input_size(has_dfc)
        channels = make_divisible(STEM_CHANNELS * width, 4)
        self.stem = ConvBN(in_chans, channels, 3, stride=2, rngs=rngs)
        stages, layer_id = [], 0
        for stage in STAGES[:num_stages]:
            blocks = []
            for kernel_size, expansion, out, se_ratio, stride in stage:
                out_channels = make_divisible(out * width, 4)
                blocks.append(
                    GhostBottleneck(
                        channels,
                        make_divisible(expansion * width, 4),
                        out_channels,
                        kernel_size=kernel_size,
                        stride=stride,
                        se_ratio=se_ratio,
                        dfc=has_dfc and layer_id >= FIRST_DFC_LAYER,
                        dfc_upsample=dfc_upsample,
                        rep=rep,
                        rngs=rngs,
                    )
                )
                channels, layer_id = out_channels, layer_id + 1
            stages.append(nnx.List(blocks))
        self.blocks = nnx.List(stages)
        self.remat = remat

    def check_input(self, shape: Sequence[int]) -> None:
        """Raises ValueError unless `shape` is an NHWC batch this network can process."""
        if len(shape) != 4:
            raise ValueError(f"expected an NHWC batch of rank 4, got shape {tuple(shape)}")
        channels = self.stem.conv.in_features
        if shape[-1] != channels:
            raise ValueError(f"expected {channels} input channels (NHWC), got shape {tuple(shape)}")
        if min(shape[1], shape[2]) < self.min_input_size:
            raise ValueError(
                f"input {shape[1]}x{shape[2]} is too small for GhostNetV{self.version}: DFC attention pools every "
                f"block's input by 2, which needs at least {self.min_input_size}x{self.min_input_size} pixels"
            )

    def run_stage(self, stage: nnx.List, x: jax.Array) -> jax.Array:
        call = remat_call if self.remat == "block" else _call_block
        for block in stage:
            x = call(block, x)
        return x


class GhostNet(_Trunk):
    """The GhostNet classifier. Inputs are NHWC images; the output is float32 logits (or features if num_classes=0).

    `dtype` is the compute dtype of every conv, matrix product and activation (parameters, BatchNorm statistics
    and the logits stay float32). `remat='block'` recomputes each bottleneck's activations in the backward pass
    instead of keeping them (less memory, one more forward through the blocks).
    """

    def __init__(
        self,
        *,
        version: int,
        width: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
        in_chans: int = 3,
        dfc_upsample: str = "bilinear",
        rep: RepSettings | None = None,
        dtype="float32",
        remat: str = "none",
        rngs: nnx.Rngs,
    ):
        super().__init__(
            version=version,
            width=width,
            in_chans=in_chans,
            dfc_upsample=dfc_upsample,
            rep=rep,
            remat=remat,
            num_stages=len(STAGES),
            rngs=rngs,
        )
        final_channels = make_divisible(FINAL_CHANNELS * width, 4)
        self.final_conv = ConvBN(self.blocks[-1][-1].ghost2.out_features, final_channels, 1, rngs=rngs)
        self.conv_head = Conv2d(self.final_conv.bn.num_features, HEAD_CHANNELS, 1, use_bias=True, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.classifier = torch_linear(HEAD_CHANNELS, num_classes, rngs) if num_classes else None
        self.dtype = compute_dtype(dtype)
        self.set_attributes(dtype=self.dtype, raise_if_not_found=False)  # every conv (the classifier: float32)

    def forward_features(self, x: jax.Array) -> jax.Array:
        """Stem and bottlenecks and the final 1x1 conv: the (N, H/32, W/32, 960*width) feature map."""
        self.check_input(x.shape)
        x = jax.nn.relu(self.stem(x))
        for stage in self.blocks:
            x = self.run_stage(stage, x)
        return jax.nn.relu(self.final_conv(x))

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Logits for NHWC images; `rngs` (a 'dropout' stream) overrides the model's own dropout RNG."""
        x = self.forward_features(x).mean(axis=(1, 2), keepdims=True)
        x = jax.nn.relu(self.conv_head(x)).reshape(x.shape[0], HEAD_CHANNELS)
        x = self.dropout(x, rngs=rngs)
        x = x if self.classifier is None else self.classifier(x)
        return x.astype(jnp.float32)


class GhostNetFeatures(_Trunk):
    """GhostNet as a backbone: the NHWC feature maps timm's `features_only=True` returns, for `out_indices` into
    `feature_info(width)` (default all five: strides 2, 4, 8, 16, 32). Only the stages up to the last requested
    map are built, as timm does. The maps are in the compute `dtype`."""

    def __init__(
        self, *, width: float = 1.0, out_indices: Sequence[int] = (0, 1, 2, 3, 4), dtype="float32", **trunk: Any
    ):
        """`trunk`: `GhostNet`'s other arguments (version, in_chans, dfc_upsample, rep, remat, rngs)."""
        available = feature_info(width)
        out_indices = tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not 0 <= i < len(available) for i in out_indices):
            raise ValueError(
                f"out_indices {out_indices} must be indices into the {len(available)} feature maps "
                f"{[info.module for info in available]}"
            )
        self.out_indices = out_indices
        self.feature_info = tuple(available[i] for i in out_indices)
        last = max(out_indices)
        num_stages = 0 if last == 0 else int(available[last].module.split(".")[1]) + 1
        super().__init__(width=width, num_stages=num_stages, **trunk)
        self.dtype = compute_dtype(dtype)
        self.set_attributes(dtype=self.dtype, raise_if_not_found=False)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        self.check_input(x.shape)
        taps = {info.module for info in self.feature_info}
        if "conv_stem" in taps and self.stem.bn is None:
            raise ValueError(
                "the first feature map is the stem conv's output before its BatchNorm, which "
                "fold_batchnorm folded into the conv; fold a model without out_indices 0"
            )
        features = []
        x = self.stem.conv(x)
        if "conv_stem" in taps:
            features.append(x)
        x = jax.nn.relu(x if self.stem.bn is None else self.stem.bn(x))
        for index, stage in enumerate(self.blocks):
            x = self.run_stage(stage, x)
            if f"blocks.{index}" in taps:
                features.append(x)
        return features
