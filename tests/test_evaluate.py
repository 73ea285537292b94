"""`python -m ghostnet_jax.evaluate` on a saved checkpoint: accuracy equals a numpy top-k count over the same eval
batches (padding excluded), and the checkpoint directory is left byte-for-byte as it was."""

import os

import numpy as np
import pytest
from flax import nnx

from ghostnet_jax import evaluate
from ghostnet_jax.checkpoint import load_model, model_spec, save_model
from ghostnet_jax.data import pipeline
from ghostnet_jax.models import create_model

OVERRIDES = {"width": 0.25, "in_chans": 1}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = create_model("ghostnet_100", num_classes=10, **OVERRIDES)
    spec = model_spec("ghostnet_100", num_classes=10, overrides=OVERRIDES, fused=False)
    return str(save_model(tmp_path_factory.mktemp("ckpt") / "model", model, spec))


def _snapshot(directory):
    return {os.path.join(root, f): os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(directory)
            for f in files}


def test_evaluate_counts_top1_top5_and_leaves_checkpoint_alone(checkpoint, data_dir):
    before = _snapshot(checkpoint)
    argv = ["--checkpoint", checkpoint, "--data", "fashion_mnist_debian", "--data-dir", data_dir,
            "--split", "test[:37]", "--image-size", "32", "--batch-size", "16"]
    result = evaluate.main(argv)
    assert _snapshot(checkpoint) == before

    model, _ = load_model(checkpoint)
    forward = nnx.jit(lambda model, image: model(image))
    data = evaluate.data_config(evaluate.build_parser().parse_args(argv))
    logits, labels = [], []
    for batch in pipeline.eval_batches(data, global_batch_size=16):
        keep = batch["mask"].reshape(-1) > 0
        logits.append(np.asarray(forward(model, batch["image"].reshape(-1, 32, 32, 1)))[keep])
        labels.append(batch["label"].reshape(-1)[keep])
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    ranks = np.argsort(-logits, axis=1, kind="stable")
    assert result["examples"] == len(labels) == 37
    assert result["top1"] == pytest.approx(np.mean(ranks[:, 0] == labels))
    assert result["top5"] == pytest.approx(np.mean((ranks[:, :5] == labels[:, None]).any(1)))


def test_evaluate_rejects_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", str(tmp_path / "nothing")])
    assert not (tmp_path / "nothing").exists()
