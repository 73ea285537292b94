"""The network as exporters see it: one pure float32 function of NHWC images, in deploy form.

Deploy form = V3 fused and every conv+BN folded into one conv with bias (`models.fold_batchnorm`), every conv a
real convolution (`impl='xla'`: the CPU training path writes depthwise convs as shifted multiply-adds, which ONNX,
LiteRT and their int8 quantisers would see as dozens of elementwise ops), the DFC gate's pool a pooling op and its
upsampling by gathers only (`DFCAttention.export_form`: ONNX Runtime then keeps 8 of jax2onnx's 406 layout
Transposes in ghostnetv2_100 instead of 18), and dropout (the identity in eval mode)
removed: jax2onnx replaces `nnx.Dropout.__call__` with a version that lacks the `rngs` keyword GhostNet passes.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from ghostnet_jax.models import fold_batchnorm
from ghostnet_jax.models.ghostnet import GhostNet
from ghostnet_jax.models.layers import Conv2d, DFCAttention


class _NoDropout(nnx.Module):
    """Eval-mode dropout: returns its input (and accepts the `rngs` keyword GhostNet passes)."""

    def __call__(self, x: jax.Array, **_) -> jax.Array:
        return x


def deploy_form(model: GhostNet) -> GhostNet:
    """A copy of `model` in deploy form (see the module docstring), in eval mode; `model` is not modified."""
    if model.dtype != jax.numpy.float32:
        raise ValueError(f"export needs a float32 model, got compute dtype {model.dtype}")
    model = fold_batchnorm(model)
    for _, module in nnx.iter_graph(model):
        if isinstance(module, Conv2d):
            module.impl = "xla"
        if isinstance(module, DFCAttention):
            module.export_form = True
    model.dropout = _NoDropout()
    return model


def inference_function(model: GhostNet) -> Callable[[jax.Array], jax.Array]:
    """`images -> logits` of `model`'s deploy form, its weights closed over as constants."""
    graphdef, state = nnx.split(deploy_form(model))
    return lambda images: nnx.merge(graphdef, state)(images)
