"""A given distillation teacher (`--teacher DIR`): checked before any run trains, and its accuracy on the
students' eval split recorded once, so the report can say whether it is stronger than every student.

A teacher the driver trains itself has its own run record (`<root>/teacher/metrics.jsonl`); a given one (a
training run's `checkpoints` or `python -m ghostnet_jax.convert` output) has none, hence `teacher_eval.json`.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import ml_collections

from experiments.records import TEACHER_EVAL, git_state, read_json, write_json
from ghostnet_jax.model_checkpoint import load_model
from ghostnet_jax.data.pipeline import dataset_info, eval_batches
from ghostnet_jax.training.evaluation import evaluate_model
from ghostnet_jax.storage import storage_path
from ghostnet_jax.training.student import resolve_dtype
from ghostnet_jax.training.teacher import check_teacher_fits


def check_teacher_directory(teacher: str) -> None:
    """Refuses a `--teacher` that is not a directory, before any shard starts training."""
    if not storage_path(teacher).is_dir():
        raise ValueError(
            f"--teacher {teacher!r} is not a directory: pass a checkpoint directory (a training run's "
            "checkpoints, or the output of python -m ghostnet_jax.convert)"
        )


def _eval_data(data: ml_collections.ConfigDict) -> dict[str, Any]:
    return {key: data[key] for key in ("name", "eval_split", "image_size", "eval_crop_pct", "num_eval")}


def record_teacher_accuracy(config: ml_collections.ConfigDict, root: Path) -> dict[str, Any]:
    """Evaluates `config.distill.teacher` on `config`'s eval split with its eval transform (the students'), and
    writes `<root>/teacher_eval.json`; a record of the same checkpoint and eval data is kept (resuming)."""
    teacher = config.distill.teacher  # as the runs load it
    path = root / TEACHER_EVAL
    previous = read_json(path)
    if previous is not None and previous["checkpoint"] == teacher and previous["data"] == _eval_data(config.data):
        return previous
    try:
        model, spec = load_model(teacher, dtype=resolve_dtype(config.model.dtype))
    except FileNotFoundError as error:
        raise ValueError(f"--teacher {teacher!r}: {error}") from error
    info = dataset_info(config.data)
    check_teacher_fits(spec, teacher, info.num_classes, info.channels)
    result = evaluate_model(model, eval_batches(config.data, global_batch_size=config.batch_size))
    record = {
        "checkpoint": teacher,
        "model": spec["name"],
        "overrides": spec["overrides"],
        "data": _eval_data(config.data),
        **result,
        **git_state(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    root.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    print(
        f"teacher {spec['name']} ({teacher}): top-1 {100 * result['top1']:.2f} on {info.num_eval} eval images",
        flush=True,
    )
    return record
