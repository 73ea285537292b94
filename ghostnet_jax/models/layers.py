"""Building blocks shared by every GhostNet version: conv, BatchNorm, squeeze-excite, DFC attention.

Layout is NHWC for activations and HWIO for conv kernels. Padding, initialisation and BatchNorm follow
PyTorch so that converted reference weights give the same numbers and training from scratch starts from
the same distribution as the reference code. The array kernels they call (fast depthwise convolution,
pooling, resampling) live in `kernels.py`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ghostnet_jax.models.kernels import (
    SMALL_OUTPUT_AREA,
    UPSAMPLE_METHODS,
    avg_pool_2x2,
    batch_count,
    batch_norm_train,
    conv_as_matmul,
    depthwise_conv_shift_add,
    normalize,
    upsample,
)

COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(name) -> jnp.dtype:
    """The activation dtype `name` ('float32' or 'bfloat16', or the dtype itself); parameters always stay float32.

    float16 is refused: without loss scaling its gradients underflow, and every current TPU and GPU has bfloat16.
    """
    try:
        dtype = jnp.dtype(name)
    except TypeError:
        dtype = None
    if dtype == jnp.float16:
        raise ValueError("dtype float16 is not supported (it needs loss scaling); use 'bfloat16' or 'float32'")
    if dtype is None or dtype.name not in COMPUTE_DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {COMPUTE_DTYPES}")
    return dtype


def check_count(field: str, value: Any, minimum: int) -> int:
    """`value` as an integer count of at least `minimum` (num_classes, in_chans, ...), else a ValueError naming
    `field`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        requirement = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{field} must be {requirement}, got {value!r}")
    return value


class Classifier(nnx.Linear):
    """A classification head that computes in float32 whatever the model's compute dtype: its `dtype` stays
    float32 when the rest of the model is set to another (`set_attributes(dtype=...)`).

    Logits rounded to bfloat16 move in steps of 1/16 near 10, about 3% in probability: too coarse for
    distillation's soft targets and for calibrated scores, and the head is a negligible share of the FLOPs. The
    product runs at full float32 precision on every backend (TPUs otherwise multiply float32 in bfloat16 passes).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, precision=jax.lax.Precision.HIGHEST, **kwargs)

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(jnp.float32)

    @dtype.setter
    def dtype(self, value) -> None:
        """Ignored: the head computes in float32."""


def torch_linear(in_features: int, out_features: int, rngs: nnx.Rngs) -> Classifier:
    """A classifier initialised as PyTorch's nn.Linear (weights and bias U(+-1/sqrt(in_features)))."""
    init = torch_uniform_init(in_features)
    return Classifier(in_features, out_features, kernel_init=init, bias_init=init, rngs=rngs)


def make_divisible(value: float, divisor: int = 4) -> int:
    """Rounds `value` to the nearest multiple of `divisor`, never more than 10% down (timm/official rule).

    `value` must be a Python float (float64): the reference computes e.g. 16 * 1.3 in double precision.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def torch_uniform_init(fan_in: int) -> nnx.Initializer:
    """PyTorch's default conv/linear init for weights and biases alike: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


CONV_IMPLS = ("auto", "xla")
_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("target_platform", default=None)


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
    """Traces inside this block pick `Conv2d`'s kernels for `platform` ('cpu', 'gpu', 'tpu'), the devices the program
    will run on. Without it the choice follows `jax.default_backend()`, which is 'cpu' in a process that compiles
    for a TPU ahead of time: its program would carry the CPU-only kernels."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def target_platform() -> str:
    """The platform kernels are chosen for: the innermost `compiling_for`, else JAX's default backend."""
    return _TARGET_PLATFORM.get() or jax.default_backend()


class Conv2d(nnx.Module):
    """2-D convolution with PyTorch's symmetric padding (k-1)//2 per side, never TF 'SAME'.

    `groups` as in PyTorch: `groups == in_features == out_features` is a depthwise conv.
    The kernel is HWIO: (kh, kw, in_features // groups, out_features).
    `impl='auto'` computes 1x1 convs as matrix products and, for CPU (`target_platform()`), depthwise convs as shifted
    multiply-adds and dense convs with a small output (at most SMALL_OUTPUT_AREA pixels) as one matrix product
    over patches (all faster there, same maths); `impl='xla'` always uses `lax.conv_general_dilated`.
    `dtype` is the compute dtype: input, kernel and bias are cast to it, the kernel is stored in float32.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        stride: int = 1,
        groups: int = 1,
        use_bias: bool = False,
        impl: str = "auto",
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if in_features % groups or out_features % groups:
            raise ValueError(f"channels {in_features}->{out_features} not divisible by groups={groups}")
        if impl not in CONV_IMPLS:
            raise ValueError(f"unknown conv impl {impl!r}; expected one of {CONV_IMPLS}")
        kh, kw = _pair(kernel_size)
        self.in_features, self.out_features = in_features, out_features
        self.kernel_size, self.stride, self.groups = (kh, kw), stride, groups
        self.padding = (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2)
        self.impl = impl
        self.dtype = compute_dtype(dtype)
        init = torch_uniform_init(in_features // groups * kh * kw)
        self.kernel = nnx.Param(init(rngs.params(), (kh, kw, in_features // groups, out_features)))
        self.bias = nnx.Param(init(rngs.params(), (out_features,))) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x, kernel = x.astype(self.dtype), self.kernel.get_value().astype(self.dtype)
        pointwise = self.kernel_size == (1, 1) and self.stride == 1 and self.groups == 1
        depthwise = self.groups == self.in_features == self.out_features
        for_cpu = target_platform() == "cpu"
        if self.impl == "auto" and pointwise:
            y = jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0])
        elif self.impl == "auto" and depthwise and for_cpu:
            y = depthwise_conv_shift_add(x, kernel, self.stride, self.padding)
        elif self.impl == "auto" and self.groups == 1 and self._small_output(x) and for_cpu:
            y = conv_as_matmul(x, kernel, self.stride, self.padding)
        else:
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(self.stride, self.stride),
                padding=self.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
            )
        if self.bias is not None:
            y = y + self.bias.get_value().astype(self.dtype)
        return y

    def _small_output(self, x: jax.Array) -> bool:
        (top, bottom), (left, right) = self.padding
        (kh, kw), stride = self.kernel_size, self.stride
        out_h, out_w = (x.shape[1] + top + bottom - kh) // stride + 1, (x.shape[2] + left + right - kw) // stride + 1
        return out_h * out_w <= SMALL_OUTPUT_AREA


class BatchNorm(nnx.Module):
    """BatchNorm over all but the channel axis, with PyTorch's running-statistics semantics.

    Differences from `nnx.BatchNorm`, both for parity with the reference: the running variance is updated
    with the unbiased batch variance (n / (n - 1)), as PyTorch does, and `momentum` is the weight of the old
    running value (Flax convention; 0.9 here is PyTorch's momentum=0.1). With `axis_name` set (inside
    `jax.pmap`), the batch statistics are averaged over that axis, i.e. computed over the global batch.
    The output has the input's dtype; statistics and normalisation are computed in float32 whatever it is.
    Training mode runs `kernels.batch_norm_train`, whose gradient is the closed form (fewer passes than autodiff).
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        axis_name: str | None = None,
        use_running_average: bool = False,
    ):
        self.num_features = num_features
        self.momentum, self.epsilon = momentum, epsilon
        self.axis_name = axis_name
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        scale, bias = self.scale.get_value(), self.bias.get_value()
        if not self.use_running_average:
            y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.axis_name)
            count = batch_count(x, self.axis_name)
            unbiased = var * (count / jnp.maximum(count - 1, 1))
            m = self.momentum
            self.mean.set_value(m * self.mean.get_value() + (1 - m) * mean)
            self.var.set_value(m * self.var.get_value() + (1 - m) * unbiased)
            return y
        return normalize(x, self.mean.get_value(), self.var.get_value(), scale, bias, self.epsilon)

    def fold(self) -> tuple[jax.Array, jax.Array]:
        """(scale, shift) with BN(x) == x * scale + shift in eval mode: the fusion maths' t and b'."""
        t = self.scale.get_value() * jax.lax.rsqrt(self.var.get_value() + self.epsilon)
        return t, self.bias.get_value() - self.mean.get_value() * t


class ConvBN(nnx.Module):
    """Conv (no bias) followed by BatchNorm, the unit every GhostNet layer is made of (export folds the BN in)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        stride: int = 1,
        groups: int = 1,
        rngs: nnx.Rngs,
    ):
        self.conv = Conv2d(in_features, out_features, kernel_size, stride=stride, groups=groups, rngs=rngs)
        self.bn = BatchNorm(out_features)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv(x)
        return y if self.bn is None else self.bn(y)  # None: folded into the conv (`fold_batchnorm`)

    def folded_kernel_bias(self) -> tuple[jax.Array, jax.Array]:
        """Kernel and bias of the single conv equal to this conv + BN in eval mode."""
        t, shift = self.bn.fold()
        return self.conv.kernel.get_value() * t, shift


class SqueezeExcite(nnx.Module):
    """Channel gate: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> hard-sigmoid (relu6(x+3)/6)."""

    def __init__(self, channels: int, reduced: int, *, rngs: nnx.Rngs):
        self.conv_reduce = Conv2d(channels, reduced, 1, use_bias=True, rngs=rngs)
        self.conv_expand = Conv2d(reduced, channels, 1, use_bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        s = x.mean(axis=(1, 2), keepdims=True)
        s = self.conv_expand(jax.nn.relu(self.conv_reduce(s)))
        return x * jax.nn.hard_sigmoid(s)


class DFCAttention(nnx.Module):
    """GhostNetV2's decoupled fully-connected attention, computed at half resolution.

    avg-pool 2x2 -> 1x1 conv+BN -> (1,5) depthwise conv+BN (along W) -> (5,1) depthwise conv+BN (along H)
    -> sigmoid -> upsample to the gated tensor's size. The sigmoid comes before the upsampling, as in the
    reference code.
    """

    def __init__(self, in_features: int, out_features: int, *, upsample: str, rngs: nnx.Rngs):
        if upsample not in UPSAMPLE_METHODS:
            raise ValueError(f"unknown dfc_upsample {upsample!r}; expected one of {UPSAMPLE_METHODS}")
        self.upsample = upsample
        # The export form (set by `export.deploy`): the pool as a pooling op (`nnx.avg_pool`, which jax2onnx emits
        # as AveragePool and TFLite as AVERAGE_POOL_2D; ONNX Runtime's layout optimiser moves its transposes away,
        # not those around the reshape of `avg_pool_2x2`) and the upsampling by gathers only (see `upsample`).
        self.export_form = False
        self.convs = nnx.List(
            [
                ConvBN(in_features, out_features, 1, rngs=rngs),
                ConvBN(out_features, out_features, (1, 5), groups=out_features, rngs=rngs),
                ConvBN(out_features, out_features, (5, 1), groups=out_features, rngs=rngs),
            ]
        )

    def __call__(self, x: jax.Array, size: tuple[int, int]) -> jax.Array:
        gate = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2)) if self.export_form else avg_pool_2x2(x)
        for conv in self.convs:
            gate = conv(gate)
        return upsample(jax.nn.sigmoid(gate), size, self.upsample, interleave=not self.export_form)
