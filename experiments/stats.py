"""Mean and spread over seeds, and the rule that turns a difference of two arms into a verdict.

A claimed improvement "agrees" when the mean difference exceeds `Z` standard errors in the claimed
direction, "disagrees" when it exceeds them in the other, and is "inconclusive" otherwise (or when an
arm has fewer than two seeds, so no spread is known). With three seeds this is a screening rule, not a
significance test.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence

Z = 2.0
AGREES, DISAGREES, INCONCLUSIVE, NOT_RUN = "agrees", "disagrees", "inconclusive", "not run"


@dataclasses.dataclass(frozen=True)
class Summary:
    mean: float
    std: float | None  # sample standard deviation; None below two values
    n: int


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(math.nan, None, 0)
    return Summary(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclasses.dataclass(frozen=True)
class Difference:
    diff: float | None  # mean(better) - mean(worse), or the mean paired difference
    se: float | None  # its standard error; None when either side has fewer than two seeds
    n_better: int
    n_worse: int
    paired: bool
    verdict: str


def difference(better: Mapping[int, float], worse: Mapping[int, float], *, paired: bool) -> Difference:
    """Compares values keyed by seed. Paired: over the common seeds (two metrics of the same runs);
    unpaired: Welch's standard error of the difference of the two means."""
    if paired:
        seeds = sorted(better.keys() & worse.keys())
        better, worse = {s: better[s] for s in seeds}, {s: worse[s] for s in seeds}
    if not better or not worse:
        return Difference(None, None, len(better), len(worse), paired, NOT_RUN)
    if paired:
        summary = summarize([better[s] - worse[s] for s in better])
        diff, se = summary.mean, None if summary.std is None else summary.std / math.sqrt(summary.n)
    else:
        b, w = summarize(list(better.values())), summarize(list(worse.values()))
        diff = b.mean - w.mean
        se = None if b.std is None or w.std is None else math.sqrt(b.std**2 / b.n + w.std**2 / w.n)
    if se is not None and diff > Z * se:
        verdict = AGREES
    elif se is not None and diff < -Z * se:
        verdict = DISAGREES
    else:
        verdict = INCONCLUSIVE
    return Difference(diff, se, len(better), len(worse), paired, verdict)


def overall(verdicts: Sequence[str]) -> str:
    """A claim's verdict from its comparisons': it agrees only if every comparison does."""
    if all(v == NOT_RUN for v in verdicts):
        return NOT_RUN
    if all(v == AGREES for v in verdicts):
        return AGREES
    if DISAGREES in verdicts:
        return "mixed" if AGREES in verdicts else DISAGREES
    return INCONCLUSIVE
