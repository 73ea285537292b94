"""The driver: trains the chosen arms with several seeds, after the one distillation teacher, resumably.

    python -m experiments.run [--arms baseline,v1] [--groups reparam] [--seeds 0,1,2] [--scale fashion]
                              [--root DIR] [--teacher CHECKPOINTS] [--shard K/N] [--dry-run] [key=value ...]

`--scale` picks the budget (experiments/scales.py): `fashion`, half an epoch (the default), `fashion_long`,
3 epochs with its own arms and a given `--teacher`, or `imagenet`. Each scale keeps its runs
and results apart.

Runs go one after another in this process; `--shard K/N` runs every N-th of them, so that N drivers (one
per core, or per accelerator) share a suite without training the same run. A run whose metrics end with an
evaluation at its final step is skipped, so rerunning a command resumes the suite (the loop itself resumes a
half-done run from its checkpoints); a run directory started with a different config is refused rather than
mixed. `key=value` arguments override config fields of every run, the teacher's too (budget, data paths,
and the scale's shared fields); they may not touch a factor that an arm sets. A failed arm is reported at
the end and the others still run; SIGTERM stops the suite after the current run's checkpoint (exit code 42,
as `ghostnet_jax.main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging as absl_logging

from experiments.arms import ARMS, SEEDS, groups, select
from experiments.overrides import apply_overrides, load_config, main_command, parse_assignments
from experiments.records import CONFIG, RUN_INFO, TEACHER, final_eval, git_state, read_json, run_dir, write_json
from experiments.scales import SCALES, TEACHER_CONFIG
from experiments.teacher import check_teacher_directory, record_teacher_accuracy
from ghostnet_jax.data.pipeline import dataset_info
from ghostnet_jax.training import preemption
from ghostnet_jax.training.config_diff import config_differences
from ghostnet_jax.training.loop import step_counts, train_and_evaluate
from ghostnet_jax.training.preemption import Preempted

RESERVED = ("seed", "distill.teacher")  # set by --seeds and --teacher
TEACHER_POLL_SECONDS = 60  # how often a shard other than 0 looks for the teacher shard 0 trains


@dataclasses.dataclass(frozen=True)
class Run:
    arm: str  # an arm's name, or TEACHER
    seed: int
    config_file: str
    preset: str | None
    overrides: dict[str, Any]  # plain values, derived ones resolved
    workdir: Path

    @classmethod
    def resolve(
        cls, arm: str, seed: int, config_file: str, preset: str | None, overrides: Mapping[str, Any], workdir: Path
    ) -> Run:
        values = apply_overrides(load_config(config_file, preset), {**overrides, "seed": seed})
        return cls(arm, seed, config_file, preset, values, workdir)

    def config(self) -> ml_collections.ConfigDict:
        config = load_config(self.config_file, self.preset)
        apply_overrides(config, self.overrides)
        return config

    def command(self) -> str:
        return main_command(self.config_file, self.preset, self.workdir, self.overrides)


def plan_runs(
    arm_names: Sequence[str],
    seeds: Sequence[int],
    *,
    scale: str,
    root: Path,
    teacher: str | None,
    extra: Mapping[str, Any],
) -> list[Run]:
    """The teacher (if a chosen arm distils and none is given), then every arm for seed 0, then seed 1, ..."""
    setting = SCALES[scale]
    for name in arm_names:
        clash = sorted(extra.keys() & (set(ARMS[name].overrides) | set(RESERVED)))
        if clash:
            raise ValueError(f"override {clash[0]!r} is set by arm {name!r} or by --seeds/--teacher: not allowed")
    runs = []
    if teacher is None and any(ARMS[name].distils for name in arm_names):
        if setting.teacher_budget is None:
            raise ValueError(f"--scale {scale} trains no teacher: pass --teacher CHECKPOINTS for the distilling arms")
        overrides = {**setting.shared, **setting.teacher_budget, **extra}
        runs.append(Run.resolve(TEACHER, 0, TEACHER_CONFIG, setting.preset, overrides, root / TEACHER))
        teacher = str(root / TEACHER / "checkpoints")
    for seed in seeds:
        for name in arm_names:
            arm = ARMS[name]
            overrides = {**setting.shared, **extra, **arm.overrides}
            if arm.distils:
                overrides["distill.teacher"] = str(Path(teacher).absolute())
            runs.append(Run.resolve(name, seed, arm.config_file, setting.preset, overrides, run_dir(root, name, seed)))
    return runs


def shard(runs: Sequence[Run], index: int, count: int) -> list[Run]:
    """Shard `index` of `count`: the teacher (if planned) goes to shard 0, the other runs round-robin in plan
    order, so the shards are disjoint, together are the plan, and each gets a mix of arms and seeds."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: expected 0 <= K < N")
    teacher = [run for run in runs if run.arm == TEACHER]
    students = [run for run in runs if run.arm != TEACHER]
    return (teacher if index == 0 else []) + students[index::count]


def _end_step(run: Run) -> int:
    config = run.config()
    return step_counts(config, dataset_info(config.data).num_train)[1]


def wait_until_finished(run: Run) -> None:
    """Blocks until `run`, which another shard trains, has finished (shards other than 0 need the teacher)."""
    end_step = _end_step(run)
    while final_eval(run.workdir, end_step) is None:
        print(f"waiting for {run.arm} (trained by shard 0) to finish in {run.workdir}", flush=True)
        time.sleep(TEACHER_POLL_SECONDS)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def execute(run: Run, scale: str) -> bool:
    """Trains `run` unless it has finished; returns whether it trained. Records each attempt in run_info.json."""
    config = run.config()
    config_file = run.workdir / CONFIG
    differences = config_differences(read_json(config_file), config.to_dict())
    if differences:
        raise ValueError(
            f"{run.workdir} holds a run of another config ({'; '.join(differences)}): delete it or "
            "choose another --root"
        )
    end_step = _end_step(run)
    if final_eval(run.workdir, end_step) is not None:
        print(f"{run.arm} seed {run.seed}: finished at step {end_step}, skipped", flush=True)
        return False
    if config.multihost and not jax.distributed.is_initialized():
        jax.distributed.initialize()
    writes = jax.process_index() == 0
    previous = read_json(run.workdir / RUN_INFO) or {}
    info = {
        "arm": run.arm,
        "seed": run.seed,
        "scale": scale,
        "config_file": run.config_file,
        "preset": run.preset,
        "overrides": run.overrides,
        "command": run.command(),
        "final_step": end_step,
    }
    attempt = {"start": _now(), **git_state(), "completed": False}
    attempts = previous.get("attempts", []) + [attempt]
    if writes:
        run.workdir.mkdir(parents=True, exist_ok=True)
        write_json(run.workdir / RUN_INFO, info | {"attempts": attempts})
    print(f"{run.arm} seed {run.seed}: training to step {end_step} in {run.workdir}", flush=True)
    start = time.perf_counter()
    try:
        train_and_evaluate(config, run.workdir)
        attempt["completed"] = True
    finally:
        attempt.update(end=_now(), wall_seconds=time.perf_counter() - start)
        if writes:
            write_json(run.workdir / RUN_INFO, info | {"attempts": attempts})
        jax.clear_caches()  # each run compiles a different network; keep memory flat over the suite
        gc.collect()
    return True


def run_suite(
    arm_names: Sequence[str],
    seeds: Sequence[int] = SEEDS,
    *,
    scale: str = "fashion",
    root: str | Path | None = None,
    teacher: str | None = None,
    extra: Mapping[str, Any] | None = None,
    shard_of: tuple[int, int] = (0, 1),
    dry_run: bool = False,
) -> list[Run]:
    """Plans and (unless `dry_run`, which prints each run's equivalent command) trains the runs of shard
    `shard_of` = (K, N); a shard other than 0 first waits for the teacher that shard 0 trains. A given `teacher`
    is checked first, and shard 0 records its accuracy on the students' eval split."""
    root = Path(root or SCALES[scale].root).absolute()
    planned = plan_runs(arm_names, seeds, scale=scale, root=root, teacher=teacher, extra=extra or {})
    runs = shard(planned, *shard_of)
    distilling = [run for run in planned if run.arm != TEACHER and ARMS[run.arm].distils]
    if not dry_run and teacher is not None and distilling:
        check_teacher_directory(teacher)
        if shard_of[0] == 0 and not distilling[0].config().multihost:  # JAX may not compute before a multi-host init
            record_teacher_accuracy(distilling[0].config(), root)
    if not dry_run and shard_of[0] > 0 and planned[0].arm == TEACHER:
        wait_until_finished(planned[0])
    failures, trained = [], 0
    for run in runs:
        if dry_run:
            print(run.command())
            continue
        try:
            trained += execute(run, scale)
        except Preempted:  # SIGTERM: the run's checkpoint is written; the suite stops, and rerunning resumes it
            raise
        except Exception as error:
            if run.arm == TEACHER:
                raise
            logging.exception("%s seed %d failed", run.arm, run.seed)
            failures.append(f"{run.arm} seed {run.seed}: {error!r}")
    if not dry_run:
        skipped = len(runs) - trained - len(failures)
        print(f"{trained} run(s) trained, {skipped} already finished, {len(failures)} failed")
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed:\n" + "\n".join(failures))
    return runs


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, e.g. 0/2; got {text!r}")
    return int(index), int(count)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n")[0])
    parser.add_argument("--arms", type=_names, default=[], help=f"comma-separated, of: {', '.join(ARMS)}")
    parser.add_argument("--groups", type=_names, default=[], help=f"comma-separated, of: {', '.join(groups())}")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in _names(text)], default=list(SEEDS))
    parser.add_argument(
        "--scale",
        choices=list(SCALES),
        default="fashion",
        help="the budget every run shares, its arms and its run directory (experiments/scales.py)",
    )
    parser.add_argument("--root", help="run directory (default: the scale's)")
    parser.add_argument(
        "--teacher",
        help="checkpoint directory of the distillation teacher (default: train one; "
        "required where the scale trains none: fashion_long, imagenet)",
    )
    parser.add_argument(
        "--shard",
        type=_shard,
        default=(0, 1),
        metavar="K/N",
        help="run every N-th run from the K-th (0-based): start N drivers to share a suite",
    )
    parser.add_argument("--dry-run", action="store_true", help="print each run's equivalent command; train nothing")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args(argv)
    preemption.install()
    try:
        arm_names = select(args.arms, args.groups, SCALES[args.scale].arms)
        extra = parse_assignments(args.overrides)
    except ValueError as error:
        parser.error(str(error))
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file it writes at INFO
    try:
        run_suite(
            arm_names,
            args.seeds,
            scale=args.scale,
            root=args.root,
            teacher=args.teacher,
            extra=extra,
            shard_of=args.shard,
            dry_run=args.dry_run,
        )
    except Preempted as preempted:
        preemption.exit_preempted(preempted)  # as `python -m ghostnet_jax.main`, for the same supervisor loop


if __name__ == "__main__":
    main()
