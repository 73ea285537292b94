"""The ablation arms: the baseline recipe with one factor changed, each as a set of config overrides.

Every factor under test is set explicitly, so a later change to a preset's defaults cannot silently change
what two arms compare: architecture, re-parameterisation, distillation, schedule and mixing by every arm
here; augmentation (RandAugment, random erasing) by the four augmentation arms and otherwise by the scale
(`experiments/scales.py`), because the right strength depends on the training length. The baseline is
GhostNetV3 0.5x, N=3 with scale and identity branches, distillation alpha 0.5 / tau 1, cosine decay, EMA.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Callable

import ml_collections

Derived = Callable[[ml_collections.ConfigDict], Any]  # an override computed from the config it lands in

SEEDS = (0, 1, 2)  # the suite's seeds: every arm is run with each
RANDAUGMENT = "rand-m9-mstd0.5"
RANDOM_ERASING = 0.25
STEP_LEVELS = 10  # the step schedule's number of constant-lr levels


def _step_decay_epochs(config: ml_collections.ConfigDict) -> float:
    """Equal levels spanning the run after warmup, whatever the budget."""
    return (config.num_epochs - config.optim.warmup_epochs) / STEP_LEVELS


def _step_decay_rate(config: ml_collections.ConfigDict) -> float:
    """The drop per level that makes the last level cosine's final lr (`min_lr`), so both end alike."""
    return (config.optim.min_lr / config.optim.lr) ** (1 / (STEP_LEVELS - 1))


def _v3(name: str = "ghostnetv3_050", branches: int = 3, scale: bool = True) -> dict[str, Any]:
    return {
        "model.name": name,
        "model.num_conv_branches": branches,
        "model.scale_branch": scale,
        "model.identity_branch": True,
    }


V1_050 = {"model.name": "ghostnet_050"}
V1_100 = {"model.name": "ghostnet_100"}
V2_050 = {"model.name": "ghostnetv2_100", "model.width": 0.5}
V2_100 = {"model.name": "ghostnetv2_100", "model.width": 1.0}
V3_050 = _v3()
V3_100 = _v3("ghostnetv3_100")

RECIPE = {
    "distill.alpha": 0.5,
    "distill.temperature": 1.0,
    "optim.schedule": "cosine",
    "mixup.mixup_alpha": 0.0,
    "mixup.cutmix_alpha": 0.0,
}


@dataclasses.dataclass(frozen=True)
class Arm:
    group: str
    overrides: dict[str, Any]  # dotted config field -> value, or a Derived computed after the others
    config_file: str = "configs/v3.py"

    @property
    def distils(self) -> bool:
        return self.overrides["distill.alpha"] > 0


def _arm(group: str, model: dict[str, Any] = V3_050, changes: dict[str, Any] | None = None) -> Arm:
    return Arm(group, {**model, **RECIPE, **(changes or {})})


def augmentation(randaugment: bool, erasing: bool) -> dict[str, Any]:
    """Both augmentation fields, RandAugment `rand-m9-mstd0.5` and erasing 0.25 each on or off."""
    return {
        "data.randaugment": RANDAUGMENT if randaugment else "",
        "data.random_erasing": RANDOM_ERASING if erasing else 0.0,
    }


ARMS: dict[str, Arm] = {
    "baseline": _arm("baseline"),
    "v1": _arm("architecture", V1_050),
    "v2": _arm("architecture", V2_050),
    "v3_n1": _arm("reparam", _v3(branches=1)),
    "v3_n2": _arm("reparam", _v3(branches=2)),
    "v3_n4": _arm("reparam", _v3(branches=4)),
    "v3_no_scale": _arm("reparam", _v3(scale=False)),
    "kd_off": _arm("distillation", changes={"distill.alpha": 0.0, "distill.temperature": 1.0}),
    "kd_t4": _arm("distillation", changes={"distill.alpha": 0.5, "distill.temperature": 4.0}),
    "kd_a1": _arm("distillation", changes={"distill.alpha": 1.0, "distill.temperature": 1.0}),
    "step_decay": _arm(
        "schedule",
        changes={
            "optim.schedule": "step",
            "optim.decay_epochs": _step_decay_epochs,
            "optim.decay_rate": _step_decay_rate,
        },
    ),
    "aug_none": _arm("augmentation", changes=augmentation(randaugment=False, erasing=False)),
    "aug_ra": _arm("augmentation", changes=augmentation(randaugment=True, erasing=False)),
    "aug_re": _arm("augmentation", changes=augmentation(randaugment=False, erasing=True)),
    "aug_ra_re": _arm("augmentation", changes=augmentation(randaugment=True, erasing=True)),
    "mixup": _arm("mixing", changes={"mixup.mixup_alpha": 0.8, "mixup.cutmix_alpha": 0.0}),
    "cutmix": _arm("mixing", changes={"mixup.mixup_alpha": 0.0, "mixup.cutmix_alpha": 1.0}),
    "v1_100": _arm("widths", V1_100),
    "v2_100": _arm("widths", V2_100),
    "v3_100": _arm("widths", V3_100),
}

# Accuracy against MACs: each version's arms from the narrow to the wide network.
WIDTH_SERIES: dict[str, tuple[str, ...]] = {
    "GhostNet V1": ("v1", "v1_100"),
    "GhostNet V2": ("v2", "v2_100"),
    "GhostNet V3": ("baseline", "v3_100"),
}


def groups() -> list[str]:
    """Group names in the order their first arm appears."""
    return list(dict.fromkeys(arm.group for arm in ARMS.values()))


def select(names: list[str], group_names: list[str], available: tuple[str, ...] | None = None) -> list[str]:
    """The named arms plus the `available` arms (default: all) of the named groups, in table order; every
    available arm if neither is given."""
    unknown = [name for name in names if name not in ARMS] + [g for g in group_names if g not in groups()]
    if unknown:
        raise ValueError(f"unknown arm or group {unknown[0]!r}; arms: {', '.join(ARMS)}; groups: {', '.join(groups())}")
    available = tuple(ARMS) if available is None else available
    if not names and not group_names:
        return [name for name in ARMS if name in available]
    return [name for name, arm in ARMS.items() if name in names or (arm.group in group_names and name in available)]
