"""Named variants (timm's names) and `create_model`, the one way to build a network.

GhostNets are the students. Teacher families (`resnet`, `beit`) are modules that each provide `VARIANTS` (their
names), `OVERRIDES`, `create(name, *, num_classes, rngs, **overrides)`, `TORCH_KEY_RULES` (regex renames from a
variable's path to its timm state-dict key, for the converter) and `CLASSIFIER_KEY`; `teacher_family(name)` finds
the one that owns a name.
"""

from __future__ import annotations

import math
import numbers
from types import ModuleType
from typing import Any
from collections.abc import Sequence

from flax import nnx

from ghostnet_jax.models import beit, resnet
from ghostnet_jax.models.ghostnet import GhostNet, GhostNetFeatures, RepSettings
from ghostnet_jax.models.kernels import UPSAMPLE_METHODS
from ghostnet_jax.models.layers import check_count, compute_dtype

# name -> (version, width), the timm 1.0.31 registry.
VARIANTS: dict[str, tuple[int, float]] = {
    "ghostnet_050": (1, 0.5),
    "ghostnet_100": (1, 1.0),
    "ghostnet_130": (1, 1.3),
    "ghostnetv2_100": (2, 1.0),
    "ghostnetv2_130": (2, 1.3),
    "ghostnetv2_160": (2, 1.6),
    "ghostnetv3_050": (3, 0.5),
    "ghostnetv3_100": (3, 1.0),
    "ghostnetv3_130": (3, 1.3),
    "ghostnetv3_160": (3, 1.6),
}

# Overrides every version accepts, then those that only make sense with DFC (V2+) or re-parameterisation (V3).
_COMMON_OVERRIDES = {"width", "dropout", "in_chans", "dtype"}
_DFC_OVERRIDES = {"dfc_upsample"}
_REP_OVERRIDES = {"num_conv_branches", "scale_branch", "identity_branch"}


TEACHER_FAMILIES = (resnet, beit)


def teacher_family(name: str) -> ModuleType | None:
    """The teacher family module that builds `name`, or None for a GhostNet (or an unknown name)."""
    return next((family for family in TEACHER_FAMILIES if name in family.VARIANTS), None)


def list_models(*, teachers: bool = False) -> list[str]:
    """The GhostNet names `create_model` accepts; with `teachers`, also the ResNet and BEiT teacher names.

    GhostNets only by default: the model table, the student config check and the GhostNet parity tests
    iterate this list, and a teacher is neither a student nor summarised there.
    """
    return list(VARIANTS) + ([name for family in TEACHER_FAMILIES for name in family.VARIANTS] if teachers else [])


def allowed_overrides(name: str) -> set[str]:
    """The keyword overrides `create_model(name, ...)` accepts."""
    if family := teacher_family(name):
        return set(family.OVERRIDES)
    version = _version(name)
    return _COMMON_OVERRIDES | (_DFC_OVERRIDES if version >= 2 else set()) | (_REP_OVERRIDES if version >= 3 else set())


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    rngs: nnx.Rngs | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **overrides: Any,
) -> GhostNet | GhostNetFeatures | resnet.ResNet | beit.Beit:
    """Builds the named variant in train mode (call `.eval()` for inference).

    `features_only=True` (GhostNets) builds the backbone timm's `features_only=True` builds: its call returns the
    NHWC feature maps `out_indices` selects (default all five, strides 2 to 32; see `model.feature_info`), and
    there is no head (`num_classes` and `dropout` do not apply).

    Overrides: `width` (any positive multiplier), `dropout` (head dropout rate, default 0.2), `in_chans`
    (default 3), `dtype` (compute dtype: 'float32', the default, or 'bfloat16'; parameters stay float32);
    V2/V3: `dfc_upsample` ('bilinear', the default, or 'nearest', the reference code's rule);
    V3: `num_conv_branches` (N >= 1, default 3), `scale_branch` and `identity_branch` (default True).
    Teacher names go to their family's `create` (ResNet: `in_chans`, `dtype`; BEiT: also `img_size`).
    """
    allowed = allowed_overrides(name)  # raises for an unknown name
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(f"unknown override(s) {sorted(unknown)} for {name}; allowed: {sorted(allowed)}")
    check_count("num_classes", num_classes, 0)
    check_count("in_chans", overrides.get("in_chans", 3), 1)
    if family := teacher_family(name):
        if features_only or out_indices is not None:
            raise ValueError(f"features_only/out_indices are for GhostNets; {name} is a teacher")
        return family.create(name, num_classes=num_classes, rngs=rngs, **overrides)
    if out_indices is not None and not features_only:
        raise ValueError("out_indices selects feature maps: it needs features_only=True")
    if features_only and "dropout" in overrides:
        raise ValueError("dropout is the head's, and features_only=True builds no head")
    version, default_width = VARIANTS[name]
    width = overrides.get("width", default_width)
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive finite number, got {width!r}")
    dropout = overrides.get("dropout", 0.2)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    in_chans = overrides.get("in_chans", 3)
    dfc_upsample = overrides.get("dfc_upsample", "bilinear")
    if dfc_upsample not in UPSAMPLE_METHODS:
        raise ValueError(f"unknown dfc_upsample {dfc_upsample!r}; expected one of {UPSAMPLE_METHODS}")
    rep = None
    if version >= 3:
        branches = overrides.get("num_conv_branches", 3)
        if isinstance(branches, bool) or not isinstance(branches, int) or branches < 1:
            raise ValueError(f"num_conv_branches must be an integer >= 1, got {branches!r}")
        rep = RepSettings(
            num_branches=branches,
            scale_branch=bool(overrides.get("scale_branch", True)),
            identity_branch=bool(overrides.get("identity_branch", True)),
        )
    common = dict(
        version=version,
        width=float(width),
        in_chans=in_chans,
        dfc_upsample=dfc_upsample,
        rep=rep,
        dtype=compute_dtype(overrides.get("dtype", "float32")),
        rngs=rngs if rngs is not None else nnx.Rngs(0),
    )
    if features_only:
        return GhostNetFeatures(out_indices=(0, 1, 2, 3, 4) if out_indices is None else out_indices, **common)
    return GhostNet(num_classes=num_classes, dropout=float(dropout), **common)


def _version(name: str) -> int:
    if not isinstance(name, str) or name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models(teachers=True))}")
    return VARIANTS[name][0]
