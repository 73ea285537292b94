"""The report: the finished runs' metrics -> results.md (a table with mean and spread over seeds, a verdict
on each of the papers' claims, every run with its commit), results.json (each run's config too) and PNGs.

    python -m experiments.report [--scale fashion] [--root DIR] [--out DIR]

Every number is computed here from the runs' metrics.jsonl, run_info.json, config.json and checkpoints.
A run counts once its metrics hold an evaluation at its final step; arms with fewer finished seeds than
the suite's are reported with their count, and so are the verdicts that use them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.arms import ARMS, SEEDS, WIDTH_SERIES
from experiments.claims import CLAIMS, Claim, Comparison, claims_of
from experiments.costs import deployed_costs
from experiments.plots import plot_accuracy_vs_macs, plot_curves
from experiments.records import (
    CONFIG,
    REPO,
    RUN_INFO,
    TEACHER,
    TEACHER_EVAL,
    eval_records,
    final_eval,
    read_json,
    run_dir,
    write_json,
)
from experiments.scales import SCALES
from experiments.stats import NOT_RUN, Z, Difference, Summary, summarize

METRICS = ("ema_top1", "top1")
METRIC_LABELS = {"ema_top1": "EMA top-1", "top1": "raw top-1"}
Metrics = Mapping[str, Mapping[int, Mapping[str, float]]]  # metrics[arm][seed]: a finished run's final eval


@dataclasses.dataclass(frozen=True)
class RunResult:
    seed: int
    final: dict[str, float]  # the eval record at the final step
    curve: list[tuple[int, float]]  # (step, EMA top-1) of every evaluation
    info: dict[str, Any]  # run_info.json
    config: dict[str, Any]  # config.json

    @property
    def wall_seconds(self) -> float:
        """Summed over the attempts that recorded their end: a lower bound unless `fully_timed`."""
        return sum(attempt.get("wall_seconds", 0.0) for attempt in self.info["attempts"])

    @property
    def fully_timed(self) -> bool:
        """False if an attempt was killed before it could record its end (kill -9, a lost machine)."""
        return all("wall_seconds" in attempt for attempt in self.info["attempts"])

    @property
    def commits(self) -> list[str]:
        """The commit of each attempt (short, '+dirty' if the tree had changes), without repeats."""
        return list(dict.fromkeys(f"{a['commit'][:10]}{'+dirty' if a['dirty'] else ''}" for a in self.info["attempts"]))


@dataclasses.dataclass(frozen=True)
class ArmResult:
    name: str
    started: int  # seeds with a run directory
    overrides: dict[str, Any]  # as the driver recorded them (derived values resolved)
    runs: list[RunResult]  # the finished ones, by seed
    costs: dict[str, Any] | None  # deployed params and MACs, from the first finished run

    def summary(self, metric: str) -> Summary:
        return summarize([run.final[metric] for run in self.runs])


def load_run(workdir: Path) -> RunResult | None:
    """The run in `workdir` if it has finished, else None."""
    info = read_json(workdir / RUN_INFO)
    final = None if info is None else final_eval(workdir, info["final_step"])
    if final is None:
        return None
    curve = [(record["step"], record["ema_top1"]) for record in eval_records(workdir)]
    final = {key: value for key, value in final.items() if key != "kind"}
    return RunResult(info["seed"], final, curve, info, read_json(workdir / CONFIG))


def collect(root: Path) -> dict[str, ArmResult]:
    """Every arm with at least one started run under `root`, in the arms' order. Costs are computed once per
    network: arms with the same model config, dataset and input size share them."""
    arms, costs_by_network = {}, {}
    for name in ARMS:
        started = sorted(d for d in (root / name).glob("seed*") if (d / RUN_INFO).exists())
        if not started:
            continue
        overrides = read_json(started[0] / RUN_INFO)["overrides"]
        runs = sorted(filter(None, map(load_run, started)), key=lambda run: run.seed)
        costs = None
        if runs:
            config, image_size = runs[0].config, runs[0].config["data"]["image_size"]
            network = json.dumps([config["model"], config["data"]["name"], image_size])
            if network not in costs_by_network:
                costs_by_network[network] = deployed_costs(run_dir(root, name, runs[0].seed), image_size)
            costs = costs_by_network[network]
        arms[name] = ArmResult(name, len(started), overrides, runs, costs)
    return arms


def mean_curve(runs: Sequence[RunResult]) -> list[tuple[int, float]]:
    """EMA top-1 per step, averaged over the runs, at the steps every run evaluated."""
    steps = set.intersection(*(set(step for step, _ in run.curve) for run in runs))
    return [(step, statistics.fmean(dict(run.curve)[step] for run in runs)) for step in sorted(steps)]


def percent(summary: Summary) -> str:
    if summary.n == 0:
        return "-"
    return f"{100 * summary.mean:.2f}" + ("" if summary.std is None else f" ± {100 * summary.std:.2f}")


def _macs(macs: int) -> str:
    return f"{macs / 1e6:.2f} M"


def _settings(arm: ArmResult, reference: Mapping[str, Any]) -> str:
    """The arm's recorded overrides that differ from `reference` (the baseline's), seed and teacher aside."""
    fields = [key for key in {**reference, **arm.overrides} if key not in ("seed", "distill.teacher")]
    changed = [
        f"{key}={arm.overrides[key]!r}"
        for key in fields
        if key in arm.overrides and reference.get(key) != arm.overrides[key]
    ]
    unset = [key for key in fields if key not in arm.overrides]
    return "; ".join(changed + ([f"unset: {', '.join(unset)}"] if unset else [])) or "(the baseline's settings)"


def _comparison_line(comparison: Comparison, d: Difference, arms: dict[str, ArmResult]) -> str:
    label = comparison.label()
    if d.verdict == NOT_RUN:
        return f"- `{label}`: not run (finished seeds: {d.n_better} and {d.n_worse})"
    spread = "no spread with fewer than 2 seeds" if d.se is None else f"SE {100 * d.se:.2f}, needs > {Z:g} SE"
    pairing = "paired over seeds" if d.paired else "unpaired"
    line = f"- `{label}`: {100 * d.diff:+.2f} pp ({spread}; {pairing}; n = {d.n_better} vs {d.n_worse})"
    if min(d.n_better, d.n_worse) < len(SEEDS):
        line += f", fewer than {len(SEEDS)} seeds"
    names = (comparison.better, comparison.worse)
    costs = [arms[name].costs for name in names if name in arms and arms[name].costs]
    if len(costs) == 2 and costs[0]["macs"] != costs[1]["macs"]:
        change = costs[0]["macs"] / costs[1]["macs"] - 1
        line += f"; MACs {_macs(costs[0]['macs'])} vs {_macs(costs[1]['macs'])} ({change:+.0%})"
    return f"{line} → **{d.verdict}**"


Judged = tuple[Claim, str, list[Difference]]  # a claim, its verdict, one difference per comparison


def arm_metrics(arms: dict[str, ArmResult]) -> Metrics:
    return {name: {run.seed: run.final for run in arm.runs} for name, arm in arms.items()}


def judge(metrics: Metrics) -> list[Judged]:
    return [(claim, *claim.judge(metrics)) for claim in CLAIMS]


def judge_claims(arms: dict[str, ArmResult]) -> list[Judged]:
    return judge(arm_metrics(arms))


def describe_teacher(trained: Mapping[str, Any] | None, given: Mapping[str, Any] | None) -> tuple[str, float] | None:
    """The report's sentence on the distillation teacher and its top-1 on the eval split: a given teacher's
    evaluation by the driver (teacher_eval.json), else the final EMA top-1 of the teacher the driver trained
    (its checkpoint holds the EMA weights); None when the suite has neither."""
    if given is not None:
        data = given["data"]
        text = (
            f"Distillation teacher: `{given['checkpoint']}` ({given['model']}), top-1 {100 * given['top1']:.2f} on "
            f"the {given['examples']:,} images of {data['name']} `{data['eval_split']}` at {data['image_size']} px "
            f"(evaluated by the driver at commit {given['commit'][:10]})."
        )
        return text, given["top1"]
    if trained is not None:
        top1 = trained["final"]["ema_top1"]
        return f"Distillation teacher: `{trained['command']}`, EMA top-1 {100 * top1:.2f}.", top1
    return None


def teacher_strength(teacher_top1: float, metrics: Metrics) -> tuple[bool | None, str]:
    """Whether the teacher beats every student run (EMA and raw top-1 alike), and the sentence that says so."""
    finals = [
        (final[metric], arm, seed, metric)
        for arm, by_seed in metrics.items()
        for seed, final in by_seed.items()
        for metric in METRICS
    ]
    if not finals:
        return None, "No student run has finished to compare it with."
    best, arm, seed, metric = max(finals)
    who, score = f"{arm} seed {seed}", f"{METRIC_LABELS[metric]} {100 * best:.2f}"
    if teacher_top1 > best:
        return True, f"It beats every student run; the best, {who}, reached {score}."
    return False, (
        f"It does **not** beat every student run: {who} reached {score}, so the distillation arms do "
        f"not learn from a stronger teacher."
    )


def _claim_json(judged: Judged) -> dict[str, Any]:
    claim, verdict, differences = judged
    comparisons = [
        {"label": c.label(), "better": c.better, "worse": c.worse, **dataclasses.asdict(d)}
        for c, d in zip(claim.comparisons, differences)
    ]
    return {
        "key": claim.key,
        "statement": claim.statement,
        "paper": claim.paper,
        "verdict": verdict,
        "comparisons": comparisons,
    }


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _minutes(seconds: float, exact: bool) -> str:
    """Minutes, marked as a lower bound ('≥') when an attempt's time was not recorded."""
    return ("" if exact else "≥") + f"{seconds / 60:.1f}"


def _arms_table(arms: dict[str, ArmResult]) -> list[str]:
    lines = [
        "| arm | group | claims | model | params | MACs | seeds | EMA top-1 | raw top-1 | min/run | commits |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for arm in arms.values():
        model, params, macs = "-", "-", "-"
        if arm.costs:
            model = arm.costs["model"] + "".join(f" {k}={v}" for k, v in arm.costs["overrides"].items())
            params, macs = f"{arm.costs['params']:,}", _macs(arm.costs["macs"])
        seeds = f"{len(arm.runs)}" + (f" of {arm.started}" if arm.started > len(arm.runs) else "")
        wall = (
            _minutes(statistics.fmean(r.wall_seconds for r in arm.runs), all(r.fully_timed for r in arm.runs))
            if arm.runs
            else "-"
        )
        commits = ", ".join(dict.fromkeys(c for run in arm.runs for c in run.commits)) or "-"
        lines.append(
            f"| {arm.name} | {ARMS[arm.name].group} | {', '.join(claims_of(arm.name))} | {model} | {params} | {macs} "
            f"| {seeds} | {percent(arm.summary('ema_top1'))} | {percent(arm.summary('top1'))} | {wall} | {commits} |"
        )
    return lines


def _claims_section(claims: list[Judged], arms: dict[str, ArmResult]) -> list[str]:
    lines = [
        f"A comparison agrees when the mean difference exceeds {Z:g} standard errors in the claimed direction, "
        f"disagrees when it exceeds them the other way, and is inconclusive otherwise; a claim agrees only if all "
        f"its comparisons do (mixed: some agree, some disagree).",
        "",
    ]
    for claim, verdict, differences in claims:
        lines.append(f"**{claim.statement}** ({claim.paper}): **{verdict}**")
        lines += [_comparison_line(c, d, arms) for c, d in zip(claim.comparisons, differences)]
        lines.append("")
    return lines


def _runs_table(arms: dict[str, ArmResult]) -> list[str]:
    lines = ["| arm | seed | step | EMA top-1 | raw top-1 | min | commits |", "|---|---:|---:|---:|---:|---:|---|"]
    for arm in arms.values():
        lines += [
            f"| {arm.name} | {run.seed} | {run.final['step']} | {100 * run.final['ema_top1']:.2f} | "
            f"{100 * run.final['top1']:.2f} | {_minutes(run.wall_seconds, run.fully_timed)} | "
            f"{', '.join(run.commits)} |"
            for run in arm.runs
        ]
    return lines


def markdown(
    root: Path, out: Path, arms: dict[str, ArmResult], claims: list[Judged], teacher: tuple[str, float] | None
) -> str:
    """results.md; `teacher` is what `describe_teacher` says of it."""
    scales = sorted({run.info["scale"] for arm in arms.values() for run in arm.runs})
    lines = [
        f"# Ablations of the GhostNetV2/V3 claims: scale {', '.join(scales) or '-'}",
        "",
        f"Generated by `python -m experiments.report --root {_relative(root)} --out {_relative(out)}` from the runs "
        f"that `python -m experiments.run` trained. Top-1 is on the eval split, in %, mean ± sample std over seeds; "
        f"params and MACs are those of the deployed network (V3 fused) at the runs' input size.",
        "",
    ]
    if teacher is not None:
        lines += [f"{teacher[0]} {teacher_strength(teacher[1], arm_metrics(arms))[1]}", ""]
    lines += _arms_table(arms) + ["", "## Claims", ""] + _claims_section(claims, arms)
    lines += [
        "## Figures",
        "",
        "![EMA top-1 curves](curves.png)",
        "",
        "![Accuracy against MACs](acc_vs_macs.png)",
        "",
        "## Arms",
        "",
        "| arm | settings that differ from the baseline |",
        "|---|---|",
    ]
    reference = arms["baseline"].overrides if "baseline" in arms else ARMS["baseline"].overrides
    lines += [f"| {arm.name} | {_settings(arm, reference)} |" for arm in arms.values()]
    lines += ["", "## Runs", "", "Each run's resolved config and command are in results.json.", ""] + _runs_table(arms)
    return "\n".join(lines) + "\n"


def _run_json(run: RunResult) -> dict[str, Any]:
    return {
        "seed": run.seed,
        "final": run.final,
        "curve": run.curve,
        "wall_seconds": run.wall_seconds,
        "attempts": run.info["attempts"],
        "overrides": run.info["overrides"],
        "command": run.info["command"],
        "config": run.config,
    }


def write_figures(arms: dict[str, ArmResult], out: Path) -> None:
    """curves.png (every finished arm, by group, against the baseline) and acc_vs_macs.png (the widths)."""
    finished = {name: arm for name, arm in arms.items() if arm.runs}
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for name, arm in finished.items():
        curves.setdefault(ARMS[name].group, {})[name] = mean_curve(arm.runs)
    baseline = ("baseline", mean_curve(finished["baseline"].runs)) if "baseline" in finished else None
    plot_curves(curves, out / "curves.png", reference=baseline)
    series = {}
    for version, names in WIDTH_SERIES.items():
        points = []
        for name in (name for name in names if name in finished):
            summary = finished[name].summary("ema_top1")
            points.append((name, finished[name].costs["macs"], summary.mean, summary.std or 0.0))
        if points:
            series[version] = points
    plot_accuracy_vs_macs(series, out / "acc_vs_macs.png")


def write_report(root: str | Path, out: str | Path) -> dict[str, Any]:
    """Writes results.md, results.json, curves.png and acc_vs_macs.png to `out`; returns the JSON's content."""
    root, out = Path(root).absolute(), Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    arms = collect(root)
    trained = load_run(root / TEACHER)
    trained = None if trained is None else _run_json(trained)
    given = read_json(root / TEACHER_EVAL)
    teacher = describe_teacher(trained, given)
    claims = judge_claims(arms)
    results = {
        "root": _relative(root),
        "teacher": trained,
        "teacher_eval": given,
        "teacher_top1": None if teacher is None else teacher[1],
        "teacher_beats_students": None if teacher is None else teacher_strength(teacher[1], arm_metrics(arms))[0],
        "arms": {
            name: {
                "group": ARMS[name].group,
                "claims": claims_of(name),
                "overrides": arm.overrides,
                "costs": arm.costs,
                "seeds_started": arm.started,
                **{metric: dataclasses.asdict(arm.summary(metric)) for metric in METRICS if arm.runs},
                "runs": [_run_json(run) for run in arm.runs],
            }
            for name, arm in arms.items()
        },
        "claims": [_claim_json(judged) for judged in claims],
    }
    write_json(out / "results.json", results)
    (out / "results.md").write_text(markdown(root, out, arms, claims, teacher))
    write_figures(arms, out)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=list(SCALES), default="fashion", help="sets the default --root and --out")
    parser.add_argument("--root", help="run directory (default: the scale's)")
    parser.add_argument("--out", help="results directory (default: the scale's)")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    results = write_report(args.root or scale.root, args.out or scale.results)
    print(json.dumps({claim["key"]: claim["verdict"] for claim in results["claims"]}, indent=2))


if __name__ == "__main__":
    main()
