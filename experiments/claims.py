"""The papers' claims about compact models, each as comparisons between arms the report judges.

A comparison says which arm (and metric) the paper expects to be better. All compare EMA top-1 on the
eval split, except the EMA claim, which compares the EMA weights with the raw weights of the same runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from experiments.stats import Difference, difference, overall


@dataclasses.dataclass(frozen=True)
class Comparison:
    better: str
    worse: str
    better_metric: str = "ema_top1"
    worse_metric: str = "ema_top1"

    def label(self) -> str:
        if self.better == self.worse:
            return f"{self.better}: {self.better_metric} − {self.worse_metric}"
        return f"{self.better} − {self.worse}"

    def judge(self, metrics: Mapping[str, Mapping[int, Mapping[str, float]]]) -> Difference:
        """`metrics[arm][seed]` are the final eval metrics of that run (missing arms: not run)."""
        runs_better, runs_worse = metrics.get(self.better, {}), metrics.get(self.worse, {})
        return difference(
            {seed: m[self.better_metric] for seed, m in runs_better.items()},
            {seed: m[self.worse_metric] for seed, m in runs_worse.items()},
            paired=self.better == self.worse,
        )


@dataclasses.dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    paper: str
    comparisons: tuple[Comparison, ...]

    def judge(self, metrics: Mapping[str, Mapping[int, Mapping[str, float]]]) -> tuple[str, list[Difference]]:
        differences = [c.judge(metrics) for c in self.comparisons]
        return overall([d.verdict for d in differences]), differences


_C = Comparison
CLAIMS: tuple[Claim, ...] = (
    Claim(
        "dfc",
        "DFC attention (V2) beats the plain Ghost module (V1), at a small cost",
        "GhostNetV2",
        (_C("v2", "v1"), _C("v2_100", "v1_100")),
    ),
    Claim(
        "reparam",
        "re-parameterised training (V3) beats training the same deployed network (V2) directly",
        "GhostNetV3",
        (_C("baseline", "v2"), _C("v3_100", "v2_100")),
    ),
    Claim(
        "branches",
        "N=3 parallel branches is best",
        "GhostNetV3",
        (_C("baseline", "v3_n1"), _C("baseline", "v3_n2"), _C("baseline", "v3_n4")),
    ),
    Claim("scale_branch", "the 1x1 scale branch matters", "GhostNetV3", (_C("baseline", "v3_no_scale"),)),
    Claim("kd", "knowledge distillation helps", "GhostNetV3", (_C("baseline", "kd_off"),)),
    Claim(
        "kd_settings",
        "alpha=0.5, tau=1 is the best distillation setting",
        "GhostNetV3",
        (_C("baseline", "kd_t4"), _C("baseline", "kd_a1")),
    ),
    Claim("schedule", "cosine learning-rate decay beats step decay", "GhostNetV3", (_C("baseline", "step_decay"),)),
    Claim(
        "ema",
        "an EMA of the weights improves validation accuracy",
        "GhostNetV3",
        (_C("baseline", "baseline", "ema_top1", "top1"),),
    ),
    Claim("randaugment", "RandAugment helps", "GhostNetV3", (_C("aug_ra", "aug_none"), _C("aug_ra_re", "aug_re"))),
    Claim("erasing", "random erasing helps", "GhostNetV3", (_C("aug_re", "aug_none"), _C("aug_ra_re", "aug_ra"))),
    Claim(
        "augmentation",
        "RandAugment with random erasing (the V3 recipe's augmentation) helps",
        "GhostNetV3",
        (_C("aug_ra_re", "aug_none"),),
    ),
    Claim("mixup", "Mixup hurts", "GhostNetV3", (_C("baseline", "mixup"),)),
    Claim("cutmix", "CutMix hurts", "GhostNetV3", (_C("baseline", "cutmix"),)),
)


def claims_of(arm: str) -> list[str]:
    """The keys of the claims whose comparisons involve `arm`."""
    return [claim.key for claim in CLAIMS if any(arm in (c.better, c.worse) for c in claim.comparisons)]
