"""The whole loop on real data (Fashion-MNIST from the Debian package) and on mock ImageNet: resume, corrupt
checkpoints, non-finite losses, distillation from a saved teacher, and the ImageNet config."""

import logging
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from configs import resnet, v1
from ghostnet_jax.model_checkpoint import load_model, model_spec, save_model
from ghostnet_jax.models import create_model
from ghostnet_jax.models.resnet import ResNet
from ghostnet_jax.training.loop import NonFiniteLossError, _all_finite, train_and_evaluate
from ghostnet_jax.training.teacher import load_teacher

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(data_dir, **changes):
    config = v1.get_config("fashion_mnist")
    config.model.name = "ghostnet_050"
    config.data.update(data_dir=data_dir, train_split="train[:256]", eval_split="test[:64]", image_size=36)
    config.data.update(num_train=256, num_eval=64)
    config.batch_size = 32
    # 8 of the 16 steps of 2 epochs. The learning-rate schedule is a constant of the compiled train step and does
    # not depend on max_steps: every run of this config, 2 steps or 16 (tests/test_multihost.py), shares one program.
    config.num_epochs = 2.0
    config.update(max_steps=8, log_every_steps=1, checkpoint_every_steps=2, eval_every_epochs=1.0, keep_checkpoints=3)
    config.update(changes)
    return config


def final_train_state(workdir, step=None):
    """(step, train state as saved) of the latest or given step, on one device whatever topology wrote it."""
    handlers = {"train_state": ocp.StandardCheckpointHandler()}
    with ocp.CheckpointManager(workdir / "checkpoints", item_handlers=handlers) as manager:
        step = manager.latest_step() if step is None else step
        one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
            manager.item_metadata(step)["train_state"],
        )
        restored = manager.restore(step, args=ocp.args.Composite(train_state=ocp.args.StandardRestore(target)))
        return step, restored["train_state"]


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_resume_after_interruption_is_bit_identical_and_skips_corrupt_checkpoints(data_dir, tmp_path, caplog):
    train_and_evaluate(tiny_config(data_dir, max_steps=4), tmp_path / "straight")
    train_and_evaluate(tiny_config(data_dir, max_steps=2), tmp_path / "resumed")  # "killed" after step 2
    train_and_evaluate(tiny_config(data_dir, max_steps=4), tmp_path / "resumed")
    straight_step, straight = final_train_state(tmp_path / "straight")
    resumed_step, resumed = final_train_state(tmp_path / "resumed")
    assert straight_step == resumed_step == 4
    assert_trees_equal(straight, resumed)

    # Break step 4's train state: the run falls back to step 2, warns, and redoes steps 3-4 identically.
    for file in (tmp_path / "resumed" / "checkpoints" / "4" / "train_state").rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        train_and_evaluate(tiny_config(data_dir, max_steps=4), tmp_path / "resumed")
    assert "checkpoint step 4 in" in caplog.text and "is damaged, moved to corrupt-4-" in caplog.text
    assert_trees_equal(straight, final_train_state(tmp_path / "resumed")[1])
    # Every run directory is also a model checkpoint (EMA weights) that load_model reads, e.g. as a teacher.
    model, spec = load_model(tmp_path / "straight" / "checkpoints")
    assert spec["name"] == "ghostnet_050" and spec["overrides"]["in_chans"] == 1


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_and_is_never_checkpointed(data_dir, tmp_path):
    config = tiny_config(data_dir, max_steps=8, checkpoint_every_steps=1)
    config.optim.update(lr=1e12, warmup_epochs=0.0)
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        train_and_evaluate(config, tmp_path / "nan")
    with ocp.CheckpointManager(tmp_path / "nan" / "checkpoints") as manager:
        assert manager.all_steps(), "the steps before the loss diverged were checkpointed"
        for step in manager.all_steps():
            state = manager.restore(step, args=ocp.args.Composite(train_state=ocp.args.StandardRestore()))
            assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state["train_state"]["params"]))


@pytest.mark.slow
def test_asynchronous_saves_at_every_step_end_identical_to_synchronous_ones(data_dir, tmp_path):
    """The state is donated to the next step while an asynchronous save may still be writing it."""
    for asynchronous in (False, True):
        config = tiny_config(data_dir, max_steps=6, checkpoint_every_steps=1, async_checkpointing=asynchronous)
        train_and_evaluate(config, tmp_path / f"async_{asynchronous}")
    steps = {p.name for p in (tmp_path / "async_False" / "checkpoints").iterdir()}
    assert steps == {p.name for p in (tmp_path / "async_True" / "checkpoints").iterdir()} and len(steps) >= 3
    for step in sorted(int(name) for name in steps):
        assert_trees_equal(
            final_train_state(tmp_path / "async_False", step)[1], final_train_state(tmp_path / "async_True", step)[1]
        )


def test_the_checkpoint_guard_finds_any_non_finite_leaf():
    tree = ({"a": np.ones((2, 3), np.float32), "b": [np.zeros(4, np.float32)]}, {"c": np.full((1,), 2.0, np.float32)})
    assert bool(_all_finite(tree))
    for bad in (np.nan, np.inf, -np.inf):
        broken = jax.tree.map(np.copy, tree)
        broken[0]["b"][0][3] = bad
        assert not bool(_all_finite(broken)), bad


def test_invalid_config_and_missing_teacher_fail_before_training(data_dir, tmp_path):
    config = tiny_config(data_dir)
    config.distill.alpha = 1.5
    with pytest.raises(ValueError, match=r"config.distill.alpha=1.5 must be in \[0, 1\]"):
        train_and_evaluate(config, tmp_path / "bad")
    config.distill.update(alpha=0.5, teacher="")
    with pytest.raises(ValueError, match="config.distill.teacher"):
        train_and_evaluate(config, tmp_path / "bad")
    config.distill.teacher = str(tmp_path / "no-such-teacher")
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        train_and_evaluate(config, tmp_path / "bad")
    config.distill.alpha = 0.0
    config.model.dfc_upsample = "nearest"
    with pytest.raises(ValueError, match="config.model.dfc_upsample does not apply to ghostnet_050"):
        train_and_evaluate(config, tmp_path / "bad")
    config.model.update(name="resnet18", dfc_upsample=None)
    config.remat = "block"
    with pytest.raises(ValueError, match=r"config.remat='block' must be 'none' for resnet18"):
        train_and_evaluate(config, tmp_path / "remat")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "remat").exists()  # no half-made workdir
    # A workdir the user already has is left exactly as it was.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    config = tiny_config(data_dir)
    config.distill.update(alpha=0.5, teacher=str(tmp_path / "no-such-teacher"))
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        train_and_evaluate(config, tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_the_offline_resnet_teacher_preset_trains_and_its_run_loads_as_a_teacher(data_dir, tmp_path):
    config = resnet.get_config("fashion_mnist")
    assert config.model.name == "resnet18"
    tiny = tiny_config(data_dir, max_steps=2)
    config.data, config.batch_size, config.num_epochs = tiny.data, tiny.batch_size, tiny.num_epochs
    config.update(max_steps=2, log_every_steps=1, checkpoint_every_steps=2)
    metrics = train_and_evaluate(config, tmp_path / "teacher")
    assert np.isfinite(metrics["ema_loss"]) and np.isfinite(metrics["loss"])

    student = tiny_config(data_dir)
    student.distill.update(alpha=0.5, teacher=str(tmp_path / "teacher" / "checkpoints"))
    _, spec = load_model(tmp_path / "teacher" / "checkpoints")
    assert spec["data"] | {"labels": spec["data"]["labels"][:2]} == {
        "dataset": "fashion_mnist_debian",
        "eval_split": "test[:64]",
        "labels": ["T-shirt/top", "Trouser"],
        "image_size": 36,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": list(config.data.mean),
        "std": list(config.data.std),
    }
    graphdef, variables, _ = load_teacher(student, num_classes=10, channels=1, dtype="float32")
    teacher = nnx.merge(graphdef, variables)
    assert isinstance(teacher, ResNet) and teacher.conv1.kernel.get_value().shape == (7, 7, 1, 64)


IMAGENET_RUN = """
import sys

import tensorflow_datasets as tfds

from configs import v3
from ghostnet_jax.training.loop import train_and_evaluate

config = v3.get_config()
config.distill.teacher = sys.argv[1]
config.data.update(num_train=16, num_eval=8, image_size=64)  # the real transforms, at a CPU-friendly size
config.model.num_conv_branches = 1  # the recipe's 3 branch the same code: a third of the convolutions to compile
config.update(batch_size=4, max_steps=2, log_every_steps=1)
with tfds.testing.mock_data(num_examples=16):
    metrics = train_and_evaluate(config, sys.argv[2])
print("EMA_TOP1", metrics["ema_top1"], "EMA_LOSS", metrics["ema_loss"])
"""


@pytest.mark.slow
def test_imagenet_v3_config_runs_two_distillation_steps_on_mock_data(tmp_path):
    # In its own process: compiling V3 1.0x with its teacher late in a long pytest process has crashed XLA's
    # compiler (twice, never alone); a fresh process is also what `python -m ghostnet_jax.main` gives.
    teacher = create_model("ghostnet_050", num_classes=1000)
    teacher.eval()
    save_model(tmp_path / "teacher", teacher, model_spec("ghostnet_050", num_classes=1000, overrides={}, fused=False))
    result = subprocess.run(
        [sys.executable, "-c", IMAGENET_RUN, str(tmp_path / "teacher"), str(tmp_path / "v3")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, top1, _, loss = result.stdout.split()[-4:]
    assert 0.0 <= float(top1) <= 1.0 and np.isfinite(float(loss))
    _, spec = load_model(tmp_path / "v3" / "checkpoints")
    assert spec["name"] == "ghostnetv3_100"
