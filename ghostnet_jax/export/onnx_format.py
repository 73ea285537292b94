"""ONNX through jax2onnx (dynamic batch), and ONNX Runtime's static int8 quantiser (QDQ, per channel).

jax2onnx is the maintained JAX -> ONNX converter (`tf2onnx` cannot read jax2tf's `XlaCallModule`). Its wheels
0.14.1 to 0.17.1 (the newest) declare `orbax-checkpoint<0.11.37`, which conflicts with this stack's orbax 0.12, yet
import no orbax (nor orbax-export, equinox, dm-pix, netron, huggingface-hub: those serve other plugins and tools);
older wheels without the cap would be picked silently by pip's resolver. So it is pinned and installed with `--no-deps`
(requirements-jax2onnx.txt) next to its real dependencies (onnx, onnx-ir, onnxruntime: requirements-export.txt).
Without equinox and dm-pix installed, jax2onnx logs a warning per plugin it skips; those warnings are silenced.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence

import jax
import numpy as np

INPUT_NAME, OUTPUT_NAME = "images", "logits"


def export_onnx(function: Callable[[jax.Array], jax.Array], image_shape: tuple[int, int, int]) -> bytes:
    """The ONNX model of `function` for ("batch", H, W, C) float32 images: input 'images', output 'logits'."""
    logging.getLogger("jax2onnx.plugins.plugin_system").setLevel(logging.ERROR)
    from jax2onnx import to_onnx

    model = to_onnx(
        function,
        inputs=[("batch", *image_shape)],
        model_name="ghostnet",
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
    )
    return model.SerializeToString()


def quantize_onnx(model: bytes, calibration: Sequence[np.ndarray]) -> bytes:
    """`model` with int8 weights (per output channel) and int8 activations, as QDQ pairs around each op, the
    activation ranges calibrated (min/max) on the image batches `calibration`."""
    from onnxruntime import quantization

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            return {INPUT_NAME: batch} if (batch := next(self.batches, None)) is not None else None

    with tempfile.TemporaryDirectory() as directory:
        source, target = os.path.join(directory, "float.onnx"), os.path.join(directory, "int8.onnx")
        with open(source, "wb") as file:
            file.write(model)
        # ORT's pre-processing (shape inference, constant folding) first: jax2onnx feeds every conv an HWIO kernel
        # through a Transpose, and the quantiser only quantises weights that reach the conv directly, so without it
        # 99% of the weight bytes stayed float32 (measured on the offline student: 6.2 MB float, 32 KB int8).
        quantization.shape_inference.quant_pre_process(source, source)
        quantization.quantize_static(
            source,
            target,
            Reader(),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QInt8,
            weight_type=quantization.QuantType.QInt8,
        )
        with open(target, "rb") as file:
            return file.read()
