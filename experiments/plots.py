"""The report's figures: EMA top-1 curves per group, and accuracy against MACs across widths (PNG, Agg)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def plot_curves(
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    path: Path,
    reference: tuple[str, Sequence[tuple[int, float]]] | None = None,
) -> None:
    """`curves[group][arm]` = [(step, mean EMA top-1)]: one panel per group, each with the `reference`
    curve (the baseline) dashed for comparison."""
    columns = min(3, max(len(curves), 1))
    rows = max(math.ceil(len(curves) / columns), 1)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, (group, arms) in zip(axes.flat, curves.items()):
        if reference is not None and reference[0] not in arms:
            steps, values = zip(*reference[1])
            ax.plot(steps, [100 * v for v in values], "k--", label=reference[0])
        for arm, points in arms.items():
            steps, values = zip(*points)
            ax.plot(steps, [100 * v for v in values], marker="o", markersize=3, label=arm)
        ax.set(title=group, xlabel="step", ylabel="EMA top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    figure.suptitle("EMA top-1 on the eval split, mean over seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_accuracy_vs_macs(series: Mapping[str, Sequence[tuple[str, float, float, float]]], path: Path) -> None:
    """`series[version]` = [(arm, MACs, mean EMA top-1, std or 0)], narrow to wide."""
    figure, ax = plt.subplots(figsize=(6, 4.2))
    for version, points in series.items():
        arms, macs, means, stds = zip(*points)
        ax.errorbar(
            [m / 1e6 for m in macs],
            [100 * m for m in means],
            yerr=[100 * s for s in stds],
            marker="o",
            capsize=3,
            label=version,
        )
        for arm, x, y in zip(arms, macs, means):
            ax.annotate(arm, (x / 1e6, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if not series:
        ax.text(0.5, 0.5, "no finished runs of the widths arms", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="MACs (millions, deployed form)", ylabel="EMA top-1 (%)", title="Accuracy against MACs")
    ax.margins(x=0.12)  # room for the arm labels right of the widest points
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_differences(rows: Sequence[tuple[str, Mapping[str, Any]]], path: Path) -> None:
    """`rows` = [(comparison, {budget: Difference})]: each comparison's mean difference with ± 2 SE (the verdict
    rule's threshold) at each budget, so a bar clear of zero on the right agrees and on the left disagrees."""
    budgets = list(dict.fromkeys(budget for _, by_budget in rows for budget in by_budget))
    figure, ax = plt.subplots(figsize=(7, 0.32 * max(len(rows), 4) + 1.2))
    offsets = [0.18 * (i - (len(budgets) - 1) / 2) for i in range(len(budgets))]
    for budget, offset in zip(budgets, offsets):
        points = [
            (y, by_budget[budget])
            for y, (_, by_budget) in enumerate(rows)
            if budget in by_budget and by_budget[budget].diff is not None
        ]
        if points:
            ax.errorbar(
                [100 * d.diff for _, d in points],
                [y + offset for y, _ in points],
                xerr=[200 * (d.se or 0.0) for _, d in points],
                fmt="o",
                markersize=4,
                capsize=2,
                label=budget.replace("`", ""),
            )
    ax.axvline(0.0, color="k", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="claimed better − worse (pp), ± 2 SE", title="The claims' comparisons at each budget")
    ax.grid(alpha=0.3, axis="x")
    if budgets:
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
