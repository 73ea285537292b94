"""The `tpu` suite of `experiments.benchmark`: the recipe's train step compiled for Cloud TPU chips on this CPU, and the
compiler's figures as a table (experiments/results/tpu_aot.md and .json). Predictions, not measurements: see the
roofline in `ghostnet_jax.aot`.

    python -m experiments.benchmark --suites tpu [--models ...] [--teachers ...] [--dtypes ...] [--remat ...]
        [--topologies v5e-8,v4-8,v5p-8,v6e-8] [--tpu-per-chip 128] [--label current|tried-...]

Every row is one `python -m ghostnet_jax.aot` run in its own process (GhostNetV3's train step for v5e took 10-14
minutes on this 2-core, 24 GiB machine; for v4 the kernel's OOM killer stopped it at 11 GB while another compile
and the tests ran, for v6e it passed 19 CPU-minutes and 12 GB before it was stopped: run one at a time), saved as
one JSON file as soon as it is done, so that a suite cut short or run over several sessions resumes where it
stopped; the table is regenerated from every saved row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
ROWS = RESULTS / "tpu_aot"


def row_name(model: str, teacher: str | None, dtype: str, remat: str, topology: str, label: str) -> str:
    return "_".join([label, model, teacher or "alone", dtype, f"remat-{remat}", topology])


def suite_rows(args: argparse.Namespace) -> list[dict]:
    """Every setting to compile, in this order: per topology, dtype and remat, each student alone, then each teacher
    with the first student (`--models ghostnetv3_100,...` puts the recipe's first)."""
    rows = []
    for topology in args.topologies:
        for dtype in args.dtypes:
            for remat in args.remat:
                pairs = [(model, None) for model in args.models] + [(args.models[0], t) for t in args.teachers]
                for model, teacher in pairs:
                    rows.append(
                        dict(
                            model=model,
                            teacher=teacher,
                            dtype=dtype,
                            remat=remat,
                            topology=topology,
                            per_chip=args.tpu_per_chip,
                            label=args.label,
                        )
                    )
    return rows


def compile_row(row: dict, timeout: int) -> dict:
    """One `ghostnet_jax.aot` run for the row (recipe config, ImageNet shapes); its JSON, or the error."""
    from ghostnet_jax.tpu_topologies import topology

    chips = topology(row["topology"]).chips
    # A teacher row compiles only the step with its teacher: the step without it is the student's own row.
    teacher = (
        ["--config.distill.alpha=0.5", f"--config.distill.teacher={row['teacher']}", "--noteacher-share"]
        if (row["teacher"])
        else ["--config.distill.alpha=0"]
    )
    out = ROWS / (
        row_name(**{k: row[k] for k in ("model", "teacher", "dtype", "remat", "topology", "label")}) + ".json"
    )
    command = [
        sys.executable,
        "-m",
        "ghostnet_jax.aot",
        "--config",
        "configs/v3.py",
        "--topology",
        row["topology"],
        f"--config.model.name={row['model']}",
        f"--config.model.dtype={row['dtype']}",
        f"--config.remat={row['remat']}",
        f"--config.batch_size={row['per_chip'] * chips}",
        *teacher,
        "--noeval-step",
        "--json",
        str(out),
    ]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return row | {"error": f"timed out after {timeout} s"}
    if done.returncode < 0:  # e.g. the kernel's OOM killer: a V3 compile here holds about 12 GB
        return row | {"error": f"killed by signal {-done.returncode}"}
    if not out.exists():
        errors = [line for line in done.stderr.splitlines() if "Error" in line]
        return row | {"error": (errors or done.stderr.strip().splitlines() or ["no output"])[-1]}
    return (
        row
        | json.loads(out.read_text())
        | {
            "wall_seconds": time.perf_counter() - start,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "commit": _commit(),
        }
    )


def _commit() -> str:
    """The commit the row was compiled at, '+dirty' when tracked files differed from it."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")


def run_suite(args: argparse.Namespace) -> str:
    """Compiles every row not saved yet (in order), saving each as it finishes; returns the regenerated table."""
    from experiments.benchmark import activation_lower_bound

    ROWS.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(suite_rows(args), 1):
        path = ROWS / (
            row_name(row["model"], row["teacher"], row["dtype"], row["remat"], row["topology"], row["label"]) + ".json"
        )
        if path.exists() and json.loads(path.read_text()).get("compiled"):
            continue
        result = compile_row(row, args.timeout)
        result["activation_floor_bytes_per_image"] = activation_lower_bound(
            row["model"], 224, row["per_chip"], row["dtype"]
        )
        path.write_text(json.dumps(result, indent=1))
        print(f"[{index}] {path.stem}: {result.get('error') or 'compiled'}", file=sys.stderr, flush=True)
    return write_table()


def write_table() -> str:
    """experiments/results/tpu_aot.md and .json from every saved row."""
    rows = sorted((json.loads(path.read_text()) for path in ROWS.glob("*.json")), key=_recency)
    (RESULTS / "tpu_aot.json").write_text(json.dumps(rows, indent=1))
    markdown = table(rows)
    (RESULTS / "tpu_aot.md").write_text(markdown + "\n")
    return markdown


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def _setting(row: dict) -> tuple:
    return row["label"], row["model"], row["dtype"], row["remat"], row["topology"], row["per_chip_batch"]


def teacher_share(row: dict, alone: dict[tuple, dict]) -> float | None:
    """The share of a teacher row's predicted step time that the teacher adds, against the student's own row."""
    student = alone.get(_setting(row))
    if not row["teacher"] or student is None:
        return None
    return 1.0 - student["predicted_step_seconds"] / row["predicted_step_seconds"]


PLAN_SLICES = {"v5e": 64, "v6e": 64, "v4": 16}  # chips: v5e-64, v6e-64, v4-32
PLAN_EPOCHS = 600


CURRENT = "current"  # the label of rows compiled from the code as it stands; others name a change tried


def _recency(row: dict) -> tuple:
    """'current' rows after the others, each kind by when it finished."""
    return row["label"] == CURRENT, row.get("finished", "")


def plan_table(rows: list[dict], alone: dict[tuple, dict]) -> str:
    """The GhostNetV3 recipe (600 epochs of ImageNet-1k) on the slices users rent, from each chip's 'current' row of
    the student with BEiTv2-L, bfloat16, no remat: the per-chip prediction times the slice's chips (a
    prediction on a prediction: collectives across the larger slice are not counted). `alone`: the student rows
    by setting, for the teacher share."""
    from ghostnet_jax.aot import IMAGENET_TRAIN_IMAGES

    header = "| slice | chips | from the row | pred. img/s (slice) | hours, 600 epochs | chip-hours | teacher share |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for chip, chips in PLAN_SLICES.items():
        candidates = [
            r
            for r in rows
            if r.get("compiled")
            and r["label"] == CURRENT
            and r["chip"] == chip
            and r["dtype"] == "bfloat16"
            and r["remat"] == "none"
            and r["teacher"] == "beitv2_large_patch16_224"
        ]
        if not candidates:
            continue
        r = max(candidates, key=_recency)
        per_second = r["predicted_images_per_second_per_chip"] * chips
        hours = PLAN_EPOCHS * IMAGENET_TRAIN_IMAGES / per_second / 3600
        cores = chips * r["chip_peaks"]["cores_per_chip"]
        lines.append(
            f"| {chip}-{cores} | {chips} | {r['label']} {r['model']} on {r['topology']} | "
            f"{per_second:,.0f} | {hours:.1f} | {hours * chips:,.0f} | "
            f"{_fmt(teacher_share(r, alone), '.0%')} |"
        )
    return "\n".join(lines)


def teacher_utilisation(row: dict, alone: dict[tuple, dict]) -> float | None:
    """The teacher's achieved FLOP/s over the chip's peak: its flops (the step's minus the student row's) over the
    time it adds to the predicted step."""
    student = alone.get(_setting(row))
    if not row["teacher"] or student is None:
        return None
    added = row["predicted_step_seconds"] - student["predicted_step_seconds"]
    flops = (row["flops_per_image"] - student["flops_per_image"]) * row["per_chip_batch"]
    return flops / added / row["chip_peaks"]["peak_flops"] if added > 0 else None


def table(rows: list[dict]) -> str:
    """One line per compiled setting, grouped by label (before / after a change), then the chips' peak figures."""
    header = (
        "| label | model | teacher | dtype | remat | slice | per-chip batch | HBM/chip GiB | largest batch | "
        "GFLOP/img | MB/img | student floor MB/img | memory share | pred. img/s/chip | teacher share | "
        "teacher % of peak | compile s |"
    )
    lines = [
        "Predicted by XLA's TPU compiler (libtpu) on a 2-core CPU, no TPU involved: `python -m experiments.benchmark "
        "--suites tpu`. Step time = max(flops / peak FLOP/s, bytes accessed / HBM bandwidth) per chip (a roofline; "
        "collectives and imperfect overlap not counted). 'floor' is the activation floor of "
        "`experiments.benchmark.activation_lower_bound`; 'memory share' the memory time over the step time; 'teacher % "
        "of peak' the teacher's flops over the time it adds to the step, against the chip's peak FLOP/s.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    alone = {_setting(r): r for r in rows if not r["teacher"] and r.get("compiled")}
    for r in rows:
        if not r.get("compiled"):
            lines.append(
                f"| {r['label']} | {r['model']} | {r['teacher'] or '-'} | {r['dtype']} | {r['remat']} | "
                f"{r['topology']} | {r['per_chip']} | {r['error']} |" + " - |" * 9
            )
            continue
        memory_share = r["programs"][0]["memory_bound_share"]
        lines.append(
            f"| {r['label']} | {r['model']} | {r['teacher'] or '-'} | {r['dtype']} | {r['remat']} | {r['topology']} | "
            f"{r['per_chip_batch']} | {_fmt(r['hbm_bytes_per_chip'], '.2f', 2**30)} / "
            f"{r['hbm_capacity_bytes'] / 2**30:.0f} | {_fmt(r.get('max_per_chip_batch'), 'd')} | "
            f"{_fmt(r['flops_per_image'], '.2f', 1e9)} | {_fmt(r['bytes_per_image'], '.0f', 1e6)} | "
            f"{_fmt(r['activation_floor_bytes_per_image'], '.0f', 1e6)} | {_fmt(memory_share, '.0%')} | "
            f"{_fmt(r['predicted_images_per_second_per_chip'], ',.0f')} | {_fmt(teacher_share(r, alone), '.0%')} | "
            f"{_fmt(teacher_utilisation(r, alone), '.0%')} | {_fmt(r['compile_seconds'], '.0f')} |"
        )
    lines += ["", plan_table(rows, alone)]
    chips = {r["chip"]: r["chip_peaks"] for r in rows if r.get("chip_peaks")}
    lines += ["", "| chip | peak bf16 TFLOP/s | HBM GB/s | HBM GiB | source |", "|---|---|---|---|---|"]
    for name, c in sorted(chips.items()):
        lines.append(
            f"| {name} | {c['peak_flops'] / 1e12:.0f} | {c['hbm_bandwidth'] / 1e9:.0f} | "
            f"{c['hbm_bytes'] / 2**30:.0f} | {c['source']} |"
        )
    return "\n".join(lines)
