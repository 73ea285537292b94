"""Pure array kernels behind the layers: training-mode BatchNorm (with its hand-written gradient), the CPU depthwise
convolution (with its hand-written gradient), dense convs with a tiny output as one matmul, and the
pooling/resampling of DFC attention. Functions on arrays only, no parameters: the layers in `layers.py` own those.

Each kernel is written by hand where exactness or measured speed requires it (its docstring says which); NHWC.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

UPSAMPLE_METHODS = ("bilinear", "nearest")


def batch_count(x: jax.Array, axis_name: str | None) -> int | jax.Array:
    """How many values each channel's batch statistics average over (all devices' along `axis_name`)."""
    count = math.prod(x.shape[:-1])
    return count if axis_name is None else count * jax.lax.psum(1, axis_name)


def _batch_moments(x32: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance over all but the last axis (and over `axis_name`'s devices).

    Two passes (mean, then mean squared deviation): E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std,
    which made cross-device and single-device gradients disagree."""
    axes = tuple(range(x32.ndim - 1))
    mean = x32.mean(axes)
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
    var = jnp.square(x32 - mean).mean(axes)
    if axis_name is not None:
        var = jax.lax.pmean(var, axis_name)
    return mean, var


def normalize(
    x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> jax.Array:
    """BatchNorm's affine normalisation in float32, rounded once to x's dtype: one fused elementwise pass."""
    return ((x.astype(jnp.float32) - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias).astype(x.dtype)


# Autodiff of the normalisation differentiates through the mean and the variance separately and materialises the
# pieces; the closed-form gradient below needs one fused pass for two reductions and one for dx. Measured on this
# CPU (forward + backward of one BatchNorm layer, float32, batch 32, 2026-12-04, under load): 1.24x as fast at
# 112x112x16, 1.39x at 56x56x48, 2.9x at 14x14x480. In ghostnet_100's whole train step at 224 px (where XLA already
# fused much of autodiff's work) it cut XLA's bytes accessed from 783 to 726 MB per image and CPU time by 2%.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, axis_name: str | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode BatchNorm over all but the last axis: (y in x's dtype, batch mean, biased batch variance).

    Statistics and normalisation are float32 whatever x's dtype: (x - mean) in bfloat16 cancels when
    |mean| >> std. The returned mean and variance are for the running averages and carry no gradient (their
    effect on y is in x's gradient). With `axis_name` (inside `jax.pmap`) the statistics are the global batch's,
    and x's gradient is that of the sum of every device's loss, as autodiff through `pmean` gives."""
    mean, var = _batch_moments(x.astype(jnp.float32), axis_name)
    return normalize(x, mean, var, scale, bias, epsilon), mean, var


def _batch_norm_forward(x, scale, bias, epsilon, axis_name):
    out = batch_norm_train(x, scale, bias, epsilon, axis_name)
    return out, (x, scale, out[1], out[2])


def _batch_norm_backward(epsilon, axis_name, residuals, cotangents):
    """dx = scale * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)) over the global batch; dscale and dbias are
    this device's sums (the train step averages parameter gradients over devices)."""
    x, scale, mean, var = residuals
    dy = cotangents[0].astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    rstd = jax.lax.rsqrt(var + epsilon)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    dbias, dscale = dy.sum(axes), (dy * xhat).sum(axes)
    total_dy, total_dy_xhat = (dbias, dscale) if axis_name is None else jax.lax.psum((dbias, dscale), axis_name)
    count = batch_count(x, axis_name)
    dx = (scale * rstd) * (dy - total_dy / count - xhat * (total_dy_xhat / count))
    return dx.astype(x.dtype), dscale, dbias


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_backward)


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


# Measured on this CPU (fwd + bwd, batch 128): XLA's dense conv takes 4.6 s for a 3x3 512->512 conv with a
# 2x2 output (ResNet stage 4 at 40 px) and 0.7 s for a strided one with a 2x2 output, where the same maths
# as one matrix product takes 0.04 s and 0.02 s; at a 3x3 output the two tie, from 5x5 XLA is faster.
SMALL_OUTPUT_AREA = 9


def conv_as_matmul(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """Dense conv as one matrix product over gathered patches (im2col): the kh*kw shifted, strided taps
    concatenated on the channel axis, times the HWIO kernel flattened to (kh*kw*in, out)."""
    kh, kw, in_features, out_features = kernel.shape
    (top, bottom), (left, right) = padding
    out_h = (x.shape[1] + top + bottom - kh) // stride + 1
    out_w = (x.shape[2] + left + right - kw) // stride + 1
    padded = _pad(x, padding)
    patches = jnp.concatenate([_tap(padded, i, j, stride, out_h, out_w) for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.einsum("nhwk,ko->nhwo", patches, kernel.reshape(kh * kw * in_features, out_features))


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
    spread = jax.lax.pad(
        grad,
        jnp.zeros((), grad.dtype),
        (
            (0, 0, 0),
            (kh - 1 - top, h + top - dilated_h, stride - 1),
            (kw - 1 - left, w + left - dilated_w, stride - 1),
            (0, 0, 0),
        ),
    )
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
    if method not in UPSAMPLE_METHODS:
        raise ValueError(f"unknown upsampling method {method!r}; expected one of {UPSAMPLE_METHODS}")
    return _resize_axis(_resize_axis(x, 1, size[0], method, interleave), 2, size[1], method, interleave)
