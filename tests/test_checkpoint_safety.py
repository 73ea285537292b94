"""Checkpoints that are kept as promised and never destroyed by a restore: retention (latest N + best), config
mismatches that name the field and touch nothing, read-only evaluation, reads that fail without damage (nothing
touched) and damaged steps (set aside, never a restart from scratch)."""

import hashlib
import json
import shutil

import jax
import pytest

from ghostnet_jax.training.run_checkpoints import CheckpointMismatchError, CheckpointReadError
from ghostnet_jax.training.loop import train_and_evaluate
from ghostnet_jax.training.run_configs import ConfigChangedError
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
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def steps_on_disk(checkpoints) -> set[int]:
    return {int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()}


@pytest.mark.slow
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
        (other_width, r"model\.width: None in config\.json, 0\.75 in this config"),
        (other_optimizer, r"optim\.name: 'sgd' in config\.json, 'adamw' in this config"),
        (eval_of_another_model, r"model\.name: 'ghostnet_050' in the checkpoint, 'ghostnet_100' in this config"),
    ],
    ids=["width", "optimizer", "eval-model"],
)
@pytest.mark.slow
def test_a_config_that_does_not_fit_is_an_error_naming_the_field_and_nothing_moves(
    run, data_dir, tmp_path, change, message
):
    workdir = copy_of(run, tmp_path)
    before = snapshot(workdir)
    config = run_config(data_dir)
    change(config)
    with pytest.raises(CheckpointMismatchError, match=message):
        train_and_evaluate(config, workdir)
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_a_resume_with_another_learning_rate_is_refused_unless_allowed_and_then_every_config_is_kept(
    run, data_dir, tmp_path
):
    workdir = copy_of(run, tmp_path)
    before = snapshot(workdir)
    first = (workdir / "config.json").read_text()
    with pytest.raises(
        ConfigChangedError,
        match=r"optim\.lr: 0\.2 in config\.json, 0\.05 in this config.*"
        r"allow_config_change",
    ):
        train_and_evaluate(run_config(data_dir, max_steps=10, optim={"lr": 0.05}), workdir)
    assert snapshot(workdir) == before

    train_and_evaluate(run_config(data_dir, max_steps=10, optim={"lr": 0.05}, allow_config_change=True), workdir)
    assert (workdir / "config.json").read_text() == first
    assert json.loads((workdir / "config.step-8.json").read_text())["optim"]["lr"] == 0.05
    # The next resume compares against the latest segment's config: the same lr needs no flag, and writes nothing.
    train_and_evaluate(run_config(data_dir, max_steps=12, optim={"lr": 0.05}), workdir)
    assert sorted(p.name for p in workdir.glob("config*.json")) == ["config.json", "config.step-8.json"]
    assert max(steps_on_disk(workdir / "checkpoints")) == 12


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


def unreachable_storage(*args, **kwargs):
    raise ValueError("UNAVAILABLE: Error reading gs://bucket/run/checkpoints: service unavailable, retry later")


def device_out_of_memory(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.00GiB")


def connection_lost(*args, **kwargs):
    raise ConnectionError("storage unreachable")


@pytest.mark.parametrize(
    "target, fault",
    [
        ("tensorstore.open", unreachable_storage),
        ("tensorstore.open", device_out_of_memory),
        ("orbax.checkpoint.CheckpointManager.restore", connection_lost),
    ],
    ids=["tensorstore-unavailable", "out-of-memory", "connection"],
)
def test_a_read_that_fails_without_evidence_of_damage_fails_the_run_and_touches_nothing(
    run, data_dir, tmp_path, monkeypatch, target, fault
):
    """tensorstore raises ValueError for every failed status; only damaged files may cost a checkpoint."""
    workdir = copy_of(run, tmp_path)
    before = snapshot(workdir)
    monkeypatch.setattr(target, fault)
    with pytest.raises(CheckpointReadError, match=r"checkpoint step 8 .* could not be read.*Nothing was changed"):
        train_and_evaluate(run_config(data_dir, max_steps=12), workdir)
    assert snapshot(workdir) == before  # every step, config.json and metrics.jsonl as they were


def garble(step_dir) -> None:
    for file in (step_dir / "train_state").rglob("*"):
        if file.is_file():
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


@pytest.mark.slow
def test_a_step_with_damaged_files_is_set_aside_and_the_previous_one_resumes(run, data_dir, tmp_path):
    workdir = copy_of(run, tmp_path)
    garble(workdir / "checkpoints" / "8")
    train_and_evaluate(run_config(data_dir), workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4, 6, 8]  # step 8 redone from step 7
    assert steps_on_disk(workdir / "checkpoints") >= {7, 8}
    assert [p.name.split("-")[1] for p in (workdir / "checkpoints").iterdir() if p.name.startswith("corrupt-")] == ["8"]


@pytest.mark.slow
def test_when_no_step_restores_the_run_fails_listing_them_and_never_starts_from_scratch(run, data_dir, tmp_path):
    workdir = copy_of(run, tmp_path)
    kept = sorted(steps_on_disk(workdir / "checkpoints"))
    for step in kept:
        garble(workdir / "checkpoints" / str(step))
    metrics_before = (workdir / "metrics.jsonl").read_text()
    for _attempt in range(2):  # the first sets the damaged steps aside; a rerun still refuses
        with pytest.raises(
            CheckpointReadError,
            match="no checkpoint in .* restores: " + ".*".join(f"step {step} " for step in reversed(kept)),
        ):
            train_and_evaluate(run_config(data_dir), workdir)
    assert steps_on_disk(workdir / "checkpoints") == set()
    assert (workdir / "metrics.jsonl").read_text() == metrics_before
