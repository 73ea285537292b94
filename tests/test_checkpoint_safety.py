"""Checkpoints that are kept as promised and never destroyed by a restore: retention (latest N + best), config
mismatches that name the field and touch nothing, read-only evaluation, transient I/O errors."""

import hashlib
import json
import shutil

import orbax.checkpoint as ocp
import pytest

from ghostnet_jax.training.checkpointing import CheckpointMismatchError
from ghostnet_jax.training.loop import train_and_evaluate
from tests.test_train_loop import tiny_config

KEEP = 2


def run_config(data_dir, **changes):
    return tiny_config(data_dir, checkpoint_every_steps=1, eval_every_epochs=0.25, keep_checkpoints=KEEP, **changes)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """8 steps, a checkpoint after every step, an evaluation every 2 steps, `keep_checkpoints=KEEP`."""
    workdir = tmp_path_factory.mktemp("run")
    train_and_evaluate(run_config(data_dir), workdir)
    return workdir


def snapshot(directory) -> dict[str, str]:
    """Every file under `directory` with a hash of its contents: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def steps_on_disk(checkpoints) -> set[int]:
    return {int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()}


def test_retention_keeps_exactly_the_latest_n_and_the_best(run):
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6, 8]
    best_value = max(r["ema_top1"] for r in evals)
    best = max(r["step"] for r in evals if r["ema_top1"] == best_value)  # ties: Orbax keeps the later step
    assert steps_on_disk(run / "checkpoints") == {7, 8} | {best}


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "copy")
    return tmp_path / "copy"


def other_width(config):
    config.model.width = 0.75


def other_optimizer(config):  # same architecture, another optimizer state: only config.json can name the field
    config.optim.name = "adamw"


def eval_of_another_model(config):
    config.mode = "eval"
    config.model.name = "ghostnet_100"


@pytest.mark.parametrize(
    "change, message",
    [
        (other_width, r"model\.width: None in the checkpoint, 0\.75 in this config"),
        (other_optimizer, r"optim\.name: 'sgd' in config\.json, 'adamw' in this config"),
        (eval_of_another_model, r"model\.name: 'ghostnet_050' in the checkpoint, 'ghostnet_100' in this config"),
    ],
    ids=["width", "optimizer", "eval-model"],
)
def test_a_config_that_does_not_fit_is_an_error_naming_the_field_and_nothing_moves(run, data_dir, tmp_path, change,
                                                                                    message):
    workdir = copy_of(run, tmp_path)
    before = snapshot(workdir)
    config = run_config(data_dir)
    change(config)
    with pytest.raises(CheckpointMismatchError, match=message):
        train_and_evaluate(config, workdir)
    assert snapshot(workdir) == before


def test_eval_skips_a_corrupt_newest_step_without_renaming_it(run, data_dir, tmp_path, capsys):
    workdir = copy_of(run, tmp_path)
    for file in (workdir / "checkpoints" / "8" / "train_state").rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    before = snapshot(workdir)
    metrics = train_and_evaluate(tiny_config(data_dir, mode="eval"), workdir)
    assert "eval at step 7:" in capsys.readouterr().out
    assert 0.0 <= metrics["ema_top1"] <= 1.0
    assert snapshot(workdir) == before


def test_a_transient_io_error_propagates_and_nothing_moves(run, data_dir, tmp_path, monkeypatch):
    workdir = copy_of(run, tmp_path)
    before = snapshot(workdir)

    def unreachable(self, step, *args, **kwargs):
        raise ConnectionError(f"storage unreachable while reading step {step}")

    monkeypatch.setattr(ocp.CheckpointManager, "restore", unreachable)
    with pytest.raises(ConnectionError, match="storage unreachable while reading step 8"):
        train_and_evaluate(run_config(data_dir), workdir)
    assert snapshot(workdir) == before
