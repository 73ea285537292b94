"""Building blocks shared by every GhostNet version: conv, BatchNorm, squeeze-excite, DFC attention.

Layout is NHWC for activations and HWIO for conv kernels. Padding, initialisation and BatchNorm follow
PyTorch so that converted reference weights give the same numbers and training from scratch starts from
the same distribution as the reference code.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DFC_UPSAMPLE_MODES = ("bilinear", "nearest")
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
    """`value` as an integer count of at least `minimum` (num_classes, in_chans, ...), else a ValueError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        requirement = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{field} must be {requirement}, got {value!r}")
    return value


def torch_linear(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
    """A classifier initialised as PyTorch's nn.Linear (weights and bias U(+-1/sqrt(in_features)))."""
    init = torch_uniform_init(in_features)
    return nnx.Linear(in_features, out_features, kernel_init=init, bias_init=init, rngs=rngs)


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


def _tap(padded: jax.Array, i: int, j: int, stride: int, out_h: int, out_w: int) -> jax.Array:
    """padded[:, i::stride, j::stride], cut to out_h x out_w: the input that kernel tap (i, j) multiplies."""
    n, _, _, c = padded.shape
    limit = (n, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, c)
    return jax.lax.slice(padded, (0, i, j, 0), limit, (1, stride, stride, 1))


def _pad(x: jax.Array, padding) -> jax.Array:
    """x zero-padded spatially by ((top, bottom), (left, right))."""
    return jnp.pad(x, ((0, 0), *padding, (0, 0)))


def _shift_add(padded: jax.Array, kernel: jax.Array, stride: int, out_h: int, out_w: int) -> jax.Array:
    """sum over taps (i, j) of _tap(i, j) * kernel[i, j, 0], accumulated in float32 (as convolutions do)."""
    kh, kw = kernel.shape[:2]
    padded, taps = padded.astype(jnp.float32), kernel.astype(jnp.float32)
    terms = (_tap(padded, i, j, stride, out_h, out_w) * taps[i, j, 0] for i in range(kh) for j in range(kw))
    return functools.reduce(jnp.add, terms).astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv_shift_add(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """Depthwise conv as a sum of kh*kw shifted, strided slices times per-channel taps.

    The same maths as a grouped convolution; on CPU, XLA runs it faster than its grouped-convolution kernel
    because the slices and multiply-adds fuse into one loop. The input gradient is written the same way (a
    shift-add of the stride-dilated output gradient with the flipped kernel), not left to autodiff, whose
    transpose of every slice is a padded copy of the whole input: kh*kw image-sized passes instead of one.
    """
    return _depthwise_forward(x, kernel, stride, padding)[0]


def _depthwise_forward(x, kernel, stride, padding):
    (top, bottom), (left, right) = padding
    _, h, w, _ = x.shape
    kh, kw = kernel.shape[:2]
    out_h, out_w = (h + top + bottom - kh) // stride + 1, (w + left + right - kw) // stride + 1
    padded = _pad(x, padding)
    return _shift_add(padded, kernel, stride, out_h, out_w), (x, kernel)


def _depthwise_backward(stride, padding, residuals, grad):
    x, kernel = residuals
    (top, _), (left, _) = padding
    _, h, w, _ = x.shape
    kh, kw = kernel.shape[:2]
    out_h, out_w = grad.shape[1:3]
    # Input row a receives grad row p through tap i = a + top - stride * p. Dilating grad by the stride and
    # padding it so that row a's window starts at a + top - (kh - 1) turns that into a stride-1 shift-add
    # with the flipped kernel; negative padding crops what falls outside the input.
    dilated_h, dilated_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    spread = jax.lax.pad(grad, jnp.zeros((), grad.dtype), (
        (0, 0, 0),
        (kh - 1 - top, h + top - dilated_h, stride - 1),
        (kw - 1 - left, w + left - dilated_w, stride - 1),
        (0, 0, 0),
    ))
    grad_x = _shift_add(spread, kernel[::-1, ::-1], 1, h, w)
    padded = _pad(x, padding)
    # One variadic reduction for all taps: XLA reads the input and gradient once, where a sum per tap
    # materialises every shifted input.
    # Accumulated in float32: a bfloat16 sum over N*H*W terms would lose the gradient.
    padded, grad32 = padded.astype(jnp.float32), grad.astype(jnp.float32)
    products = [_tap(padded, i, j, stride, out_h, out_w) * grad32 for i in range(kh) for j in range(kw)]
    zeros = [jnp.zeros((), jnp.float32)] * len(products)
    sums = jax.lax.reduce(products, zeros, lambda a, b: [u + v for u, v in zip(a, b)], (0, 1, 2))
    return grad_x, jnp.stack(sums).reshape(kernel.shape).astype(kernel.dtype)


depthwise_conv_shift_add.defvjp(_depthwise_forward, _depthwise_backward)


class Conv2d(nnx.Module):
    """2-D convolution with PyTorch's symmetric padding (k-1)//2 per side, never TF 'SAME'.

    `groups` as in PyTorch: `groups == in_features == out_features` is a depthwise conv.
    The kernel is HWIO: (kh, kw, in_features // groups, out_features).
    `impl='auto'` computes 1x1 convs as matrix products and, on CPU, depthwise convs as shifted
    multiply-adds (both faster there, same maths); `impl='xla'` always uses `lax.conv_general_dilated`.
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
        x, kernel = x.astype(self.dtype), self.kernel.value.astype(self.dtype)
        pointwise = self.kernel_size == (1, 1) and self.stride == 1 and self.groups == 1
        depthwise = self.groups == self.in_features == self.out_features
        if self.impl == "auto" and pointwise:
            y = jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0])
        elif self.impl == "auto" and depthwise and jax.default_backend() == "cpu":
            y = depthwise_conv_shift_add(x, kernel, self.stride, self.padding)
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
            y = y + self.bias.value.astype(self.dtype)
        return y


class BatchNorm(nnx.Module):
    """BatchNorm over all but the channel axis, with PyTorch's running-statistics semantics.

    Differences from `nnx.BatchNorm`, both for parity with the reference: the running variance is updated
    with the unbiased batch variance (n / (n - 1)), as PyTorch does, and `momentum` is the weight of the old
    running value (Flax convention; 0.9 here is PyTorch's momentum=0.1). With `axis_name` set (inside
    `jax.pmap`), the batch statistics are averaged over that axis, i.e. computed over the global batch.
    The output has the input's dtype; statistics and normalisation are computed in float32 whatever it is.
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
        if self.use_running_average:
            mean, var = self.mean.value, self.var.value
        else:
            mean, var = self._batch_statistics(x)
        # Normalised in float32 and rounded once: (x - mean) in bfloat16 cancels when |mean| >> std. One fused
        # elementwise pass either way, reading and writing the input's dtype.
        inv = self.scale.value * jax.lax.rsqrt(var + self.epsilon)
        return ((x.astype(jnp.float32) - mean) * inv + self.bias.value).astype(x.dtype)

    def _batch_statistics(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        axes = tuple(range(x.ndim - 1))
        x32 = x.astype(jnp.float32)
        count = math.prod(x.shape[:-1])
        mean = x32.mean(axes)
        if self.axis_name is not None:
            mean = jax.lax.pmean(mean, self.axis_name)
            count = count * jax.lax.psum(1, self.axis_name)
        # Two passes (mean, then mean squared deviation): E[x^2] - E[x]^2 cancels catastrophically when
        # |mean| >> std, which made cross-device and single-device gradients disagree.
        var = jnp.square(x32 - mean).mean(axes)
        if self.axis_name is not None:
            var = jax.lax.pmean(var, self.axis_name)
        unbiased = var * (count / jnp.maximum(count - 1, 1))
        m = self.momentum
        self.mean.value = m * self.mean.value + (1 - m) * mean
        self.var.value = m * self.var.value + (1 - m) * unbiased
        return mean, var

    def fold(self) -> tuple[jax.Array, jax.Array]:
        """(scale, shift) with BN(x) == x * scale + shift in eval mode: the fusion maths' t and b'."""
        t = self.scale.value * jax.lax.rsqrt(self.var.value + self.epsilon)
        return t, self.bias.value - self.mean.value * t


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
        return self.conv.kernel.value * t, shift


class SqueezeExcite(nnx.Module):
    """Channel gate: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> hard-sigmoid (relu6(x+3)/6)."""

    def __init__(self, channels: int, reduced: int, *, rngs: nnx.Rngs):
        self.conv_reduce = Conv2d(channels, reduced, 1, use_bias=True, rngs=rngs)
        self.conv_expand = Conv2d(reduced, channels, 1, use_bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        s = x.mean(axis=(1, 2), keepdims=True)
        s = self.conv_expand(jax.nn.relu(self.conv_reduce(s)))
        return x * jax.nn.hard_sigmoid(s)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pool with stride 2 and no padding; an odd trailing row/column is dropped (floor)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index under PyTorch's legacy 'nearest': floor(i * in / out).

    Not the half-pixel rule of `jax.image.resize`: for 3 -> 7 this gives [0,0,0,1,1,2,2], not [0,0,1,1,1,2,2].
    Integer arithmetic equals PyTorch's float32 product here: for the DFC sizes (in = floor(out / 2))
    i * in / out is never an integer except at i = 0 or when out == 2 * in, where PyTorch shifts exactly.
    """
    return np.arange(out_size) * in_size // out_size


def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, upper weight) per output index for half-pixel linear interpolation.

    The rule of PyTorch's `interpolate(mode='bilinear', align_corners=False)`: source = (i + 0.5) * in / out
    - 0.5, clamped at 0; at the last row the upper index repeats the lower one.
    """
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lower = np.floor(source).astype(np.int32)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, (source - lower).astype(np.float32)


def _lerp(low: jax.Array, high: jax.Array, weight) -> jax.Array:
    return low + (high - low) * weight


def _neighbour(x: jax.Array, axis: int, shift: int) -> jax.Array:
    """x[k + shift] along `axis`, for shift -1 or +1, zero beyond the edge (a pad and a slice: both fuse)."""
    n = x.shape[axis]
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (max(-shift, 0), max(shift, 0), 0)
    padded = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
    return jax.lax.slice_in_dim(padded, max(shift, 0), max(shift, 0) + n, axis=axis)


def _double_axis(x: jax.Array, axis: int, method: str) -> jax.Array:
    """Resizes `axis` to exactly twice its size with the same rules and arithmetic as the gathers below.

    Output 2k is (nearest) x[k] or (bilinear) lerp(x[k-1], x[k], 0.75); output 2k+1 is x[k] or
    lerp(x[k], x[k+1], 0.25). Where the half-pixel rule clamps at an edge, the weight on the (zero)
    outside neighbour is 0, which gives x[0] and x[n-1] exactly. The phases are interleaved by a stack and
    a reshape, whose gradient is a slice, where a gather's gradient is a scatter-add: forward + backward
    of a DFC-sized upsampling on CPU is 3-6x faster this way.
    """
    n = x.shape[axis]
    if method == "nearest":
        even = odd = x
    else:
        shape = (n,) + (1,) * (x.ndim - 1 - axis)
        even_weight, odd_weight = np.full(shape, 0.75, np.float32), np.full(shape, 0.25, np.float32)
        even_weight[0], odd_weight[-1] = 1.0, 0.0
        even = _lerp(_neighbour(x, axis, -1), x, jnp.asarray(even_weight, x.dtype))
        odd = _lerp(x, _neighbour(x, axis, 1), jnp.asarray(odd_weight, x.dtype))
    doubled = jnp.stack([even, odd], axis=axis + 1)
    return doubled.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1 :])


def _resize_axis(x: jax.Array, axis: int, out_size: int, method: str, interleave: bool) -> jax.Array:
    in_size = x.shape[axis]
    if interleave and out_size == 2 * in_size:
        return _double_axis(x, axis, method)
    if method == "nearest":
        return jnp.take(x, nearest_indices(in_size, out_size), axis=axis)
    lower, upper, weight = bilinear_taps(in_size, out_size)
    weight = jnp.asarray(weight.reshape((-1,) + (1,) * (x.ndim - 1 - axis)), x.dtype)
    return _lerp(jnp.take(x, lower, axis=axis), jnp.take(x, upper, axis=axis), weight)


def upsample(x: jax.Array, size: tuple[int, int], method: str, *, interleave: bool = True) -> jax.Array:
    """Resizes NHWC `x` to spatial `size` by 'nearest' (PyTorch's floor rule) or 'bilinear' (half-pixel).

    Written as gathers and a lerp (with `interleave`, interleaved shifts when an axis exactly doubles, the DFC's
    usual case: faster to train) rather than `jax.image.resize`, whose 'nearest' rule differs from PyTorch's and
    whose 'bilinear' is a dense matrix product per axis. Without `interleave` (the export form), only gathers:
    the shifts' pad does not lower to ONNX with a symbolic batch (jax2onnx 0.17.1) and their slice/concatenate
    does not quantise in TFLite, while gathers do both.
    """
    if method not in DFC_UPSAMPLE_MODES:
        raise ValueError(f"unknown upsampling method {method!r}; expected one of {DFC_UPSAMPLE_MODES}")
    return _resize_axis(_resize_axis(x, 1, size[0], method, interleave), 2, size[1], method, interleave)


class DFCAttention(nnx.Module):
    """GhostNetV2's decoupled fully-connected attention, computed at half resolution.

    avg-pool 2x2 -> 1x1 conv+BN -> (1,5) depthwise conv+BN (along W) -> (5,1) depthwise conv+BN (along H)
    -> sigmoid -> upsample to the gated tensor's size. The sigmoid comes before the upsampling, as in the
    reference code.
    """

    def __init__(self, in_features: int, out_features: int, *, upsample: str, rngs: nnx.Rngs):
        if upsample not in DFC_UPSAMPLE_MODES:
            raise ValueError(f"unknown dfc_upsample {upsample!r}; expected one of {DFC_UPSAMPLE_MODES}")
        self.upsample = upsample
        self.interleave = True  # `upsample`'s fast doubling; the export form turns it off
        self.convs = nnx.List(
            [
                ConvBN(in_features, out_features, 1, rngs=rngs),
                ConvBN(out_features, out_features, (1, 5), groups=out_features, rngs=rngs),
                ConvBN(out_features, out_features, (5, 1), groups=out_features, rngs=rngs),
            ]
        )

    def __call__(self, x: jax.Array, size: tuple[int, int]) -> jax.Array:
        gate = avg_pool_2x2(x)
        for conv in self.convs:
            gate = conv(gate)
        return upsample(jax.nn.sigmoid(gate), size, self.upsample, interleave=self.interleave)
