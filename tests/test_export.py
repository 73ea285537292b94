"""`python -m ghostnet_jax.export`: converted timm models (random weights and BatchNorm statistics) exported to ONNX
and LiteRT give timm's logits under ONNX Runtime and the LiteRT interpreter; StableHLO round trips; bad command
lines fail before anything is written, and a failed export leaves nothing behind."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from flax import nnx

from conftest import jit_forward
from experiments import deploy_accuracy
from ghostnet_jax.model_checkpoint import model_spec, save_model
from ghostnet_jax.convert import convert_state_dict
from ghostnet_jax.data import pipeline
from ghostnet_jax.export.cli import main as export_main
from ghostnet_jax.export.cli import write_file
from ghostnet_jax.models import create_model, fuse
from test_convert import reference

SIZE = 224  # the DFC gates resize 7 -> 3 -> 7 at the last stage


@pytest.fixture(scope="module", params=["ghostnetv2_100", "ghostnetv3_100"])
def converted(request, timm, tmp_path_factory):
    """(checkpoint directory, images, timm's eval logits); V3 is compared with timm's re-parameterised model."""
    torch_model = reference(timm, request.param)
    model, spec = convert_state_dict(request.param, torch_model.state_dict())
    directory = tmp_path_factory.mktemp(request.param)
    save_model(directory / "checkpoint", model, spec)
    deployed = timm.utils.reparameterize_model(torch_model)
    images = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        logits = deployed(torch.from_numpy(images)).numpy()
    return directory, images.transpose(0, 2, 3, 1), logits


def assert_close_to_timm(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))


def export(directory, fmt, *extra, size=SIZE):
    return export_main(
        [
            "--checkpoint",
            str(directory / "checkpoint"),
            "--format",
            fmt,
            "--output",
            str(directory / f"model.{fmt}"),
            "--image-size",
            str(size),
            *extra,
        ]
    )


@pytest.mark.slow
def test_onnx_matches_timm_at_batch_1_and_3(converted):
    directory, images, expected = converted
    session = onnxruntime.InferenceSession(export(directory, "onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (1, 3):
        assert_close_to_timm(session.run(None, {"images": images[:batch]})[0], expected[:batch])


@pytest.mark.slow
def test_litert_matches_timm_with_builtin_float32_ops(converted):
    directory, images, expected = converted
    interpreter = Interpreter(model_path=export(directory, "tflite"))
    interpreter.allocate_tensors()
    (given,), (result,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(given["shape"]) == [1, SIZE, SIZE, 3]
    assert {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()} <= {
        np.dtype(np.float32),
        np.dtype(np.int32),
    }
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "CONV_2D" in ops and not any(name.startswith("Flex") or name == "CUSTOM" for name in ops), ops
    for image, logits in zip(images, expected):
        interpreter.set_tensor(given["index"], image[None])
        interpreter.invoke()
        assert_close_to_timm(interpreter.get_tensor(result["index"])[0], logits)


# int8: a small GhostNetV3 (bilinear DFC, as trained here) whose random features feed a least-squares linear
# classifier fitted on real Fashion-MNIST images, so that its top-1 means something (well above chance) and an
# int8 model with wrong scales or a broken calibration would disagree with it on many images. The classifier reads
# the raw features (not standardised ones, which would lean on directions too faint to survive int8).
PROBE = {"name": "ghostnetv3_050", "overrides": {"in_chans": 1}, "size": 64, "calibration": ("4", "16")}


def fashion_mnist(data_dir, split):
    data = pipeline.default_data_config()
    data.name, data.data_dir, data.eval_split, data.image_size = "fashion_mnist_debian", data_dir, split, PROBE["size"]
    batches = list(pipeline.eval_batches(data, global_batch_size=64))
    keep = np.concatenate([b["mask"].reshape(-1) for b in batches]) > 0
    images = np.concatenate([b["image"].reshape(-1, *b["image"].shape[2:]) for b in batches])[keep]
    return images, np.concatenate([b["label"].reshape(-1) for b in batches])[keep]


@pytest.fixture(scope="module")
def probe(data_dir, tmp_path_factory):
    """(checkpoint directory, test images, their labels, the float model's logits)."""
    model = fuse(create_model(PROBE["name"], num_classes=10, **PROBE["overrides"]))
    features_of = nnx.clone(model)
    features_of.classifier = None

    def features(images):  # in batches of 64: one compiled program
        return np.concatenate(
            [np.asarray(jit_forward(features_of, images[i : i + 64]), np.float64) for i in range(0, len(images), 64)]
        )

    train_images, train_labels = fashion_mnist(data_dir, "train[:1024]")
    train = features(train_images)
    design = np.concatenate([train, np.ones((len(train), 1))], axis=1)
    targets = np.eye(10)[train_labels] - 0.1
    ridge = 1e-2 * np.trace(design.T @ design) / design.shape[1]
    weights = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ targets)
    kernel, bias = weights[:-1], weights[-1]
    model.classifier.kernel.set_value(jnp.asarray(kernel, jnp.float32))
    model.classifier.bias.set_value(jnp.asarray(bias, jnp.float32))
    directory = tmp_path_factory.mktemp("probe")
    save_model(
        directory / "checkpoint",
        model,
        model_spec(PROBE["name"], num_classes=10, overrides=PROBE["overrides"], fused=True),
    )
    test_images, test_labels = fashion_mnist(data_dir, "test[:64]")
    return directory, test_images, test_labels, (features(test_images) @ kernel + bias).astype(np.float32)


@pytest.mark.slow
def test_stablehlo_round_trips_with_a_symbolic_batch(probe):
    directory, images, _, logits = probe
    with open(export(directory, "stablehlo", size=PROBE["size"]), "rb") as file:
        exported = jax.export.deserialize(bytearray(file.read()))
    assert str(exported.in_avals[0].shape[0]) == "b"
    for batch in (1, 3):
        np.testing.assert_allclose(
            np.asarray(exported.call(images[:batch])),
            logits[:batch],
            rtol=0,
            atol=1e-4 * max(1.0, np.abs(logits).max()),
        )


def export_int8(probe, data_dir, fmt):
    steps, batch = PROBE["calibration"]
    return export(
        probe[0],
        fmt,
        "--int8",
        "--calibration-data",
        "fashion_mnist_debian",
        "--data-dir",
        data_dir,
        "--calibration-steps",
        steps,
        "--calibration-batch-size",
        batch,
        size=PROBE["size"],
    )


def assert_int8_keeps_float_top1(int8_logits, probe):
    _, _, labels, float_logits = probe
    assert np.mean(float_logits.argmax(1) == labels) > 0.4  # the float model is a real classifier (chance: 0.1)
    assert np.mean(int8_logits.argmax(1) == float_logits.argmax(1)) >= 0.9


@pytest.mark.slow
def test_int8_onnx_keeps_float_top1(probe, data_dir):
    path = export_int8(probe, data_dir, "onnx")
    model = onnx.load(path)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in model.graph.node}
    kernels = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert kernels and all(t.data_type == onnx.TensorProto.INT8 for t in kernels)  # every conv weight is int8
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert_int8_keeps_float_top1(session.run(None, {"images": probe[1]})[0], probe)


@pytest.mark.slow
def test_int8_litert_keeps_float_top1(probe, data_dir):
    interpreter = Interpreter(model_path=export_int8(probe, data_dir, "tflite"))
    interpreter.allocate_tensors()
    (given,), (result,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert given["dtype"] == np.float32 and result["dtype"] == np.float32  # quantised inside, float interface
    assert np.dtype(np.int8) in {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    logits = []
    for image in probe[1]:
        interpreter.set_tensor(given["index"], image[None])
        interpreter.invoke()
        logits.append(interpreter.get_tensor(result["index"])[0])
    assert_int8_keeps_float_top1(np.stack(logits), probe)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "keras"], "invalid choice: 'keras'"),
        (["--format", "stablehlo", "--int8", "--calibration-data", "fashion_mnist_debian"], "--int8 is for"),
        (["--format", "onnx", "--int8"], "go together"),
        (["--format", "onnx", "--calibration-data", "fashion_mnist_debian"], "go together"),
    ],
)
def test_bad_command_lines_fail_before_writing(probe, extra, message, capsys):
    output = probe[0] / "bad.onnx"
    with pytest.raises(SystemExit):
        export_main(["--checkpoint", str(probe[0] / "checkpoint"), "--output", str(output), *extra])
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_missing_checkpoint_and_output_directory_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_main(["--checkpoint", str(tmp_path / "none"), "--format", "onnx", "--output", str(tmp_path / "m")])
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_main(["--checkpoint", str(tmp_path), "--format", "onnx", "--output", str(tmp_path / "no" / "m")])
    assert "does not exist" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_existing_output_is_kept_unless_forced_and_failures_leave_nothing(probe, capsys):
    directory = probe[0]
    output = directory / "kept.stablehlo"
    output.write_bytes(b"user's file")
    argv = ["--checkpoint", str(directory / "checkpoint"), "--format", "stablehlo", "--output", str(output)]
    with pytest.raises(SystemExit):
        export_main(argv + ["--image-size", str(PROBE["size"])])
    assert "already exists" in capsys.readouterr().err and output.read_bytes() == b"user's file"
    before = sorted(directory.iterdir())
    with pytest.raises(ValueError, match="too small"):
        export_main(argv + ["--image-size", "16", "--force"])  # fails while exporting: nothing replaced or left
    assert sorted(directory.iterdir()) == before and output.read_bytes() == b"user's file"
    export_main(argv + ["--image-size", str(PROBE["size"]), "--force"])
    assert jax.export.deserialize(bytearray(output.read_bytes())).in_avals[0].shape[1:] == (64, 64, 1)


@pytest.mark.slow
def test_deploy_accuracy_counts_top1_of_each_export_against_the_float_model(probe, data_dir, tmp_path):
    directory, _, labels, logits = probe
    rows = deploy_accuracy.main(
        [
            "--checkpoint",
            str(directory / "checkpoint"),
            "--data",
            "fashion_mnist_debian",
            "--data-dir",
            data_dir,
            "--split",
            "test[:64]",
            "--image-size",
            str(PROBE["size"]),
            "--formats",
            "onnx",
            "--batch-size",
            "64",
            "--calibration-steps",
            "1",
            "--calibration-batch-size",
            "8",
            "--out",
            str(tmp_path / "accuracy"),
        ]
    )
    jax_row, onnx_row = rows
    assert jax_row["examples"] == onnx_row["examples"] == len(labels) == 64
    assert abs(jax_row["top1"] - np.mean(logits.argmax(1) == labels)) <= 1 / 64  # a near-tie may flip one image
    assert onnx_row["agreement"] >= 63 / 64 and abs(onnx_row["top1"] - jax_row["top1"]) <= 1 / 64
    assert (
        onnx_row["bytes"] > 0
        and f"| onnx | float32 | {onnx_row['bytes'] / 1024:.0f} KiB |" in (tmp_path / "accuracy.md").read_text()
    )


def test_the_file_has_no_name_until_it_is_complete(tmp_path, monkeypatch):
    """A kill at any moment of the write leaves nothing: until the payload is written, the directory is as it was."""
    listings = []
    real_fdopen = os.fdopen

    class Watched:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def write(self, data):
            listings.append(sorted(p.name for p in tmp_path.iterdir()))  # what a kill now would leave
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(os, "fdopen", lambda *args, **kwargs: Watched(real_fdopen(*args, **kwargs)))
    write_file(b"model bytes", str(tmp_path / "model.onnx"), replace=False)
    assert listings == [[]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert (tmp_path / "model.onnx").read_bytes() == b"model bytes"
