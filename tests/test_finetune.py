"""Fine-tuning (`init_from`, `finetune.*`): a saved network's weights start the run, the head is re-initialised
for another number of classes, the backbone stays bit for bit while frozen, and a resumed fine-tuning run is the
uninterrupted one."""

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow as tf
import torch
from flax import nnx, traverse_util

from conftest import randomise_jax_batchnorm
from ghostnet_jax.model_checkpoint import model_spec, save_model
from ghostnet_jax.convert import main as convert_main
from ghostnet_jax.models import create_model, fuse
from ghostnet_jax.training.finetune import init_from, training_optimizer
from ghostnet_jax.training.loop import train_and_evaluate
from tests.test_train_loop import assert_trees_equal, final_train_state, tiny_config

ROOT = Path(__file__).resolve().parent.parent


def saved(directory, name, num_classes, in_chans, seed=7, fused=False):
    """A network with randomised BatchNorm saved as the converter saves one; returns its flat variables."""
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, rngs=nnx.Rngs(seed))
    randomise_jax_batchnorm(model, seed)
    model = fuse(model) if fused else model
    save_model(
        directory, model, model_spec(name, num_classes=num_classes, overrides={"in_chans": in_chans}, fused=fused)
    )
    return flat(nnx.state(model, (nnx.Param, nnx.BatchStat)))


def flat(state) -> dict:
    """{('blocks', '0', '0', ...): array} for a model's state and a restored train state alike (whose leaves are
    the variables' `value`s)."""
    tree = jax.device_get(nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state)
    return {
        tuple(str(part) for part in path if part != "value"): leaf
        for path, leaf in traverse_util.flatten_dict(tree).items()
    }


@pytest.mark.slow
def test_a_frozen_backbone_stays_bit_for_bit_and_a_resumed_fine_tuning_is_the_uninterrupted_one(
    data_dir, tmp_path, caplog
):
    pretrained = saved(tmp_path / "pretrained", "ghostnet_050", 1000, 1)

    def config(max_steps):
        c = tiny_config(data_dir, max_steps=max_steps, init_from=str(tmp_path / "pretrained"))
        c.finetune.update(freeze_steps=2, backbone_lr_scale=0.5)
        return c

    with caplog.at_level(logging.WARNING):
        train_and_evaluate(config(2), tmp_path / "resumed")  # frozen for both of its steps, then "killed"
    assert "the classifier layer is re-initialised (1000 classes there, 10 here)" in caplog.text
    step, state = final_train_state(tmp_path / "resumed")
    params, stats = flat(state["params"]), flat(state["batch_stats"])
    assert step == 2 and {path[0] for path in params.keys() - pretrained.keys()} == set()
    for path, value in (params | stats).items():
        if path[0] == "classifier":
            assert value.shape[-1] == 10
        else:
            np.testing.assert_array_equal(value, pretrained[path], err_msg=str(path))

    train_and_evaluate(config(4), tmp_path / "resumed")  # steps 3-4 train the backbone too
    train_and_evaluate(config(4), tmp_path / "straight")
    resumed, straight = final_train_state(tmp_path / "resumed")[1], final_train_state(tmp_path / "straight")[1]
    assert_trees_equal(resumed, straight)
    moved = [
        path
        for path, value in flat(straight["params"]).items()
        if path[0] != "classifier" and not np.array_equal(value, pretrained[path])
    ]
    assert len(moved) > 0.9 * sum(path[0] != "classifier" for path in flat(straight["params"]))


def test_the_backbone_optimizer_is_frozen_then_scaled_and_follows_the_runs_step():
    """Closed form: plain SGD, gradient 1 everywhere, lr(step) = 0.1 (step + 1), frozen for 2 steps, scale 0.5."""
    config = ml_collections.ConfigDict(
        dict(
            optim=dict(name="sgd", momentum=0.0, nesterov=False, weight_decay=0.0),
            finetune=dict(freeze_steps=2, backbone_lr_scale=0.5),
        )
    )
    tx = training_optimizer(config, lambda step: 0.1 * (step + 1))
    params = {"classifier": {"kernel": jnp.zeros((2, 2))}, "stem": {"kernel": jnp.zeros((2, 2))}}
    opt_state = tx.init(params)
    expected = {"classifier": 0.0, "stem": 0.0}
    for step in range(4):
        updates, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
        params = optax.apply_updates(params, updates)
        expected["classifier"] -= 0.1 * (step + 1)
        expected["stem"] -= 0.0 if step < 2 else 0.5 * 0.1 * (step + 1)
        for part, value in expected.items():
            np.testing.assert_allclose(params[part]["kernel"], value, rtol=1e-6, err_msg=f"{part} at step {step}")


def test_rgb_weights_start_a_greyscale_network_with_the_stem_summed_over_its_channels(tmp_path, caplog):
    pretrained = saved(tmp_path / "rgb", "ghostnet_050", 10, 3)
    model = create_model("ghostnet_050", num_classes=10, in_chans=1)
    with caplog.at_level(logging.WARNING):
        init_from(model, str(tmp_path / "rgb"), "ghostnet_050")
    assert "the stem's kernel is summed over its input channels" in caplog.text
    ours = flat(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    np.testing.assert_allclose(
        ours[("stem", "conv", "kernel")], pretrained[("stem", "conv", "kernel")].sum(axis=2, keepdims=True), rtol=1e-6
    )
    for path in ours.keys() - {("stem", "conv", "kernel")}:
        np.testing.assert_array_equal(ours[path], pretrained[path], err_msg=str(path))


@pytest.mark.parametrize(
    "name, fused, message",
    [
        ("ghostnet_100", False, r"primary_conv\.conv\.kernel \(1, 1, 16, 8\) \(expected \(1, 1, 8, 4\)\)"),
        ("ghostnetv3_050", True, "in V3's deploy form .* cannot be trained"),
    ],
)
def test_a_network_that_does_not_fit_is_an_error_naming_it_and_nothing_is_written(
    data_dir, tmp_path, name, fused, message
):
    saved(tmp_path / "other", name, 10, 1, fused=fused)
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(tiny_config(data_dir, init_from=str(tmp_path / "other")), tmp_path / "run")
    assert not (tmp_path / "run").exists()


COLOURS = {"blue": (40, 60, 210), "green": (40, 190, 60), "red": (210, 40, 40)}


def colour_folder(root, per_class: dict[str, int], seed: int = 0) -> None:
    """root/SPLIT/CLASS/i.(png|jpg): noisy images of one colour per class, 30-50 px of any aspect, PNG and JPEG
    alternating."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                shape = (int(rng.integers(30, 51)), int(rng.integers(30, 51)), 3)
                pixels = np.clip(np.asarray(colour) + rng.normal(0, 40, shape), 0, 255).astype(np.uint8)
                encode = tf.io.encode_png if i % 2 else tf.io.encode_jpeg
                (root / split / name / f"{i}.{'png' if i % 2 else 'jpg'}").write_bytes(encode(pixels).numpy())


@pytest.mark.slow
def test_converted_weights_fine_tuned_on_an_image_folder_learn_it_and_the_tools_need_no_flags(timm, tmp_path):
    colour_folder(tmp_path / "photos", {"train": 24, "test": 8})
    torch.manual_seed(0)
    torch.save(timm.create_model("ghostnet_050").state_dict(), tmp_path / "ghostnet_050.pth")
    convert_main(
        [
            "--model",
            "ghostnet_050",
            "--torch-checkpoint",
            str(tmp_path / "ghostnet_050.pth"),
            "--output",
            str(tmp_path / "converted"),
        ]
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ghostnet_jax.main",
            "--config",
            "configs/v1.py:finetune",
            "--workdir",
            str(tmp_path / "run"),
            "--config.model.name=ghostnet_050",
            f"--config.init_from={tmp_path / 'converted'}",
            f"--config.data.folder={tmp_path / 'photos'}",
            "--config.data.image_size=40",
            "--config.batch_size=24",
            # 60 steps: the converted weights are random (no download here), and the BatchNorm running statistics
            # the evaluation uses need that long to catch up with train mode's (measured: 0.75 EMA top-1 at 48
            # steps with EMA decay 0.998, 1.0 at 60 with 0.9)
            "--config.num_epochs=20",
            "--config.optim.lr=0.02",
            "--config.ema.decay=0.9",
            "--config.eval_every_epochs=5",
            "--config.finetune.freeze_steps=3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "the classifier layer is re-initialised (1000 classes there, 3 here)" in run.stderr
    evaluated = subprocess.run(
        [sys.executable, "-m", "ghostnet_jax.evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoints")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout.splitlines()[-1])
    assert (result["data"], result["split"], result["examples"]) == (str(tmp_path / "photos"), "test", 24)
    assert result["top1"] >= 0.9, result
    predicted = subprocess.run(
        [
            sys.executable,
            "-m",
            "ghostnet_jax.predict",
            "--checkpoint",
            str(tmp_path / "run" / "checkpoints"),
            "--csv",
            str(tmp_path / "predictions.csv"),
            str(tmp_path / "photos" / "test"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with open(tmp_path / "predictions.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 24 and {row["class_1"] for row in rows} <= set(COLOURS)
    right = sum(row["class_1"] == Path(row["path"]).parent.name for row in rows)
    assert right == round(result["top1"] * 24)  # predict and evaluate see the same images the same way
