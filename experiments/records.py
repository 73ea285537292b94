"""What a run directory holds, shared by the driver and the report.

`<root>/<arm>/seed<k>/` (and `<root>/teacher/`, when the driver trains the teacher) holds `config.json` and
`metrics.jsonl` (written by the training loop) and `run_info.json` (written by the driver: arm, seed, overrides,
the equivalent command, the step the run ends at, and one entry per attempt with its git commit and wall time).
A teacher given to the driver is evaluated once into `<root>/teacher_eval.json`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

RUN_INFO, METRICS, CONFIG = "run_info.json", "metrics.jsonl", "config.json"
TEACHER = "teacher"  # the directory of a teacher the driver trains
TEACHER_EVAL = "teacher_eval.json"  # the accuracy of a given teacher (`--teacher`), in the run root
REPO = Path(__file__).resolve().parent.parent


def run_dir(root: Path, arm: str, seed: int) -> Path:
    return root / arm / f"seed{seed}"


def git_state() -> dict[str, Any]:
    """The repository's commit and whether tracked or untracked (not ignored) files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def write_json(path: Path, value: Any) -> None:
    """Writes through a temporary file, so an interrupted write never leaves a truncated record."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    partial.replace(path)


def eval_records(workdir: Path) -> list[dict[str, Any]]:
    """The run's eval records by step; where a resumed run logged a step twice, the later record wins."""
    path = workdir / METRICS
    if not path.exists():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "eval":
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def final_eval(workdir: Path, final_step: int) -> dict[str, Any] | None:
    """The eval record at `final_step`, the one a finished run ends with; None if the run has not finished."""
    return next((r for r in eval_records(workdir) if r["step"] == final_step), None)
