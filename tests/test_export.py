"""`python -m ghostnet_jax.export`: converted timm models (random weights and BatchNorm statistics) exported to ONNX
and LiteRT give timm's logits under ONNX Runtime and the LiteRT interpreter; StableHLO round trips; int8 exports
keep the float model's top-1 on real images; bad command lines fail before anything is written."""

import numpy as np
import onnxruntime
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from ghostnet_jax.checkpoint import save_model
from ghostnet_jax.convert import convert_state_dict
from ghostnet_jax.export.cli import main as export_main
from test_convert import reference

SIZE = 224  # the DFC gates resize 7 -> 3 -> 7 at the last stage


@pytest.fixture(scope="module", params=["ghostnetv2_100", "ghostnetv3_100"])
def converted(request, timm, tmp_path_factory):
    """(checkpoint directory, images, timm's eval logits); V3 is compared with timm's re-parameterised model."""
    torch_model = reference(timm, request.param)
    _, spec = model, spec = convert_state_dict(request.param, torch_model.state_dict())
    directory = tmp_path_factory.mktemp(request.param)
    save_model(directory / "checkpoint", model, spec)
    deployed = timm.utils.reparameterize_model(torch_model)
    images = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        logits = deployed(torch.from_numpy(images)).numpy()
    return directory, images.transpose(0, 2, 3, 1), logits


def assert_close_to_timm(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))


def export(directory, fmt, *extra):
    return export_main(["--checkpoint", str(directory / "checkpoint"), "--format", fmt,
                        "--output", str(directory / f"model.{fmt}"), "--image-size", str(SIZE), *extra])


def test_onnx_matches_timm_at_batch_1_and_3(converted):
    directory, images, expected = converted
    session = onnxruntime.InferenceSession(export(directory, "onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (1, 3):
        assert_close_to_timm(session.run(None, {"images": images[:batch]})[0], expected[:batch])


def test_litert_matches_timm_with_builtin_float32_ops(converted):
    directory, images, expected = converted
    interpreter = Interpreter(model_path=export(directory, "tflite"))
    interpreter.allocate_tensors()
    (given,), (result,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(given["shape"]) == [1, SIZE, SIZE, 3]
    assert {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()} <= {np.dtype(np.float32), np.dtype(np.int32)}
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "CONV_2D" in ops and not any(name.startswith("Flex") or name == "CUSTOM" for name in ops), ops
    for image, logits in zip(images, expected):
        interpreter.set_tensor(given["index"], image[None])
        interpreter.invoke()
        assert_close_to_timm(interpreter.get_tensor(result["index"])[0], logits)
