"""LiteRT (TFLite) flatbuffers: jax2tf (native serialization) and TensorFlow's converter, builtin ops only.

The converter lowers jax2tf's StableHLO to TFLite builtin ops; Flex (select TF ops) is not allowed, so a model that
needs one fails to convert instead of producing a file that most runtimes cannot load. The batch is fixed at 1, as
on-device interpreters expect. int8: full-integer post-training quantisation (int8 weights per output channel,
int8 activations calibrated on a representative dataset), float32 input and output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf


def export_litert(
    function: Callable[[jax.Array], jax.Array],
    image_shape: tuple[int, int, int],
    calibration: Sequence[np.ndarray] | None = None,
) -> bytes:
    """The LiteRT model of `function` for (1, H, W, C) float32 images; int8 when `calibration` (image batches)
    is given."""
    signature = [tf.TensorSpec((1, *image_shape), tf.float32, name="images")]
    graph = tf.function(jax2tf.convert(function, with_gradient=False), input_signature=signature, autograph=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for batch in calibration for image in batch)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()
