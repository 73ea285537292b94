"""Scales: the budget every run of a suite shares, where its runs and results go, its teacher and its arms.

`fashion` is sized for a 2-core CPU, where a V3 0.5x epoch at 40 px takes about 5 minutes: half an
epoch of Fashion-MNIST per arm (234 steps of 128), evaluated four times for the curves, without RandAugment or
erasing (as the offline preset: too short a training for them; the augmentation arms measure it). `fashion_long`
measures again, at six times the budget (3 epochs, the offline student preset's length when the suite was set;
evaluated 8 times), the claims that half an epoch cannot settle, with a strong teacher given by `--teacher` (e.g.
a ResNet trained on the dataset). `imagenet` is the papers' setting: the full recipe of configs/v3.py (600 epochs
at 224 px, RandAugment and erasing) with a teacher given by `--teacher`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from experiments.arms import augmentation

TEACHER_CONFIG = "configs/v1.py"


@dataclasses.dataclass(frozen=True)
class Scale:
    preset: str | None  # of every config file, e.g. configs/v3.py:fashion_mnist
    shared: dict[str, Any]  # overrides of every arm and the teacher: budget and baseline augmentation
    teacher_budget: dict[str, Any] | None  # the teacher's own (on top of `shared`); None: no teacher is trained
    root: str  # default run directory
    results: str  # default report directory
    arms: tuple[str, ...] | None = None  # the arms run when none are named; None: every arm


# The claims that half an epoch cannot settle (re-parameterisation, N=3, the distillation settings, the
# augmentation), each against the baseline; aug_none repeats the baseline's config, the suite's control.
LONG_ARMS = ("baseline", "v2", "v3_n1", "kd_off", "kd_t4", "kd_a1", "aug_none", "aug_ra_re")


SCALES: dict[str, Scale] = {
    "fashion": Scale(
        preset="fashion_mnist",
        shared={
            "data.image_size": 40,
            "num_epochs": 0.5,
            "eval_every_epochs": 0.125,
            **augmentation(randaugment=False, erasing=False),
        },
        teacher_budget={"num_epochs": 3.0, "eval_every_epochs": 1.0},
        root="experiments/runs/fashion_mnist",
        results="experiments/results/fashion_mnist",
    ),
    "fashion_long": Scale(
        preset="fashion_mnist",
        shared={
            "data.image_size": 40,
            "num_epochs": 3.0,
            "eval_every_epochs": 0.375,
            **augmentation(randaugment=False, erasing=False),
        },
        teacher_budget=None,
        root="experiments/runs/fashion_mnist_long",
        results="experiments/results/fashion_mnist_long",
        arms=LONG_ARMS,
    ),
    "imagenet": Scale(
        preset=None,
        shared=augmentation(randaugment=True, erasing=True),
        teacher_budget=None,
        root="experiments/runs/imagenet",
        results="experiments/results/imagenet",
    ),
}
