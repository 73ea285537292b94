"""Layers against PyTorch (the reference's own ops) and closed-form maths."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
import jax
import jax.numpy as jnp

from ghostnet_jax.models.layers import BatchNorm, Conv2d, avg_pool_2x2, make_divisible, nearest_indices, upsample


def to_nhwc(x: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


@pytest.mark.parametrize(
    "value, expected",
    [(16 * 0.5, 8), (16 * 1.3, 20), (48 * 1.3, 64), (72 * 1.3, 92), (960 * 1.6, 1536), (240 * 0.25, 60), (1.0, 4)],
)
def test_make_divisible_matches_reference_rounding(value, expected):
    assert make_divisible(value, 4) == expected


def test_nearest_indices_follow_pytorch_floor_rule_on_odd_sizes():
    # The spec's worked examples: 7 -> 3 -> 7 is where half-pixel rules differ from PyTorch's.
    assert nearest_indices(3, 7).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert nearest_indices(2, 5).tolist() == [0, 0, 0, 1, 1]
    assert nearest_indices(4, 9).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
@pytest.mark.parametrize(
    "in_size, out_size", [((3, 3), (7, 7)), ((7, 7), (14, 14)), ((2, 4), (5, 9)), ((1, 1), (2, 3)), ((3, 4), (6, 9))]
)
def test_upsample_and_its_gradient_match_torch_interpolate(method, in_size, out_size):
    # Sizes cover both code paths: an axis that exactly doubles (interleaved shifts) and one that does not (gathers).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, *in_size)).astype(np.float32)
    grad = rng.normal(size=(2, 3, *out_size)).astype(np.float32)
    options = {"align_corners": False} if method == "bilinear" else {}
    x_torch = torch.from_numpy(x).requires_grad_()
    expected = F.interpolate(x_torch, size=out_size, mode=method, **options)
    expected.backward(torch.from_numpy(grad))
    actual, vjp = jax.vjp(lambda v: upsample(v, out_size, method), to_nhwc(x))
    np.testing.assert_allclose(np.asarray(actual), expected.detach().numpy().transpose(0, 2, 3, 1), atol=1e-6)
    np.testing.assert_allclose(np.asarray(vjp(to_nhwc(grad))[0]), x_torch.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5)
    gathered = upsample(to_nhwc(x), out_size, method, interleave=False)  # the export form: gathers only
    np.testing.assert_allclose(np.asarray(gathered), expected.detach().numpy().transpose(0, 2, 3, 1), atol=1e-6)


@pytest.mark.parametrize("size", [(7, 7), (6, 9), (14, 3)])
def test_avg_pool_2x2_floors_odd_sizes_like_torch(size):
    x = np.random.default_rng(1).normal(size=(2, 4, *size)).astype(np.float32)
    expected = F.avg_pool2d(torch.from_numpy(x), 2, 2).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(avg_pool_2x2(to_nhwc(x))), expected, atol=1e-6)


@pytest.mark.parametrize(
    "kernel, stride, groups, in_ch, out_ch",
    [(3, 2, 1, 3, 8), (5, 2, 6, 6, 6), (3, 1, 6, 6, 6), ((1, 5), 1, 4, 4, 4), ((5, 1), 1, 4, 4, 4), (1, 2, 6, 6, 6)],
)
def test_conv2d_matches_torch_padding_and_layout(kernel, stride, groups, in_ch, out_ch):
    conv = Conv2d(in_ch, out_ch, kernel, stride=stride, groups=groups, use_bias=True, rngs=nnx.Rngs(0))
    reference = torch.nn.Conv2d(
        in_ch, out_ch, kernel, stride=stride, groups=groups, padding=tuple((k - 1) // 2 for k in conv.kernel_size)
    )
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(np.array(conv.kernel.value).transpose(3, 2, 0, 1)))
        reference.bias.copy_(torch.from_numpy(np.array(conv.bias.value)))
    x = np.random.default_rng(2).normal(size=(2, in_ch, 12, 9)).astype(np.float32)
    expected = reference(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(conv(to_nhwc(x))), expected, atol=1e-5)


def test_conv2d_init_is_pytorch_default_uniform():
    conv = Conv2d(16, 32, 3, use_bias=True, rngs=nnx.Rngs(0))
    bound = 1 / np.sqrt(16 * 9)
    kernel = np.asarray(conv.kernel.value)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
    assert abs(kernel.std() - bound / np.sqrt(3)) < 0.05 * bound  # std of U(-b, b) is b / sqrt(3)


def test_batchnorm_training_matches_torch_including_unbiased_running_var():
    x = np.random.default_rng(3).normal(2.0, 3.0, size=(4, 6, 5, 5)).astype(np.float32)
    reference = torch.nn.BatchNorm2d(6)
    ours = BatchNorm(6)
    for _ in range(3):
        expected = reference(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
        actual = ours(to_nhwc(x))
    np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.mean.value), reference.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.var.value), reference.running_var.numpy(), rtol=1e-5)
    reference.eval()
    ours.use_running_average = True
    expected = reference(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(ours(to_nhwc(x))), expected, atol=1e-5)


@pytest.mark.parametrize(
    "kernel, stride, groups, channels",
    [(1, 1, 1, 6), (3, 1, 6, 6), (3, 2, 6, 6), (5, 2, 6, 6), ((1, 5), 1, 6, 6), ((5, 1), 1, 6, 6), (1, 2, 6, 6)],
)
def test_fast_conv_paths_equal_xla_convolution_forward_and_backward(kernel, stride, groups, channels):
    """impl='auto' computes 1x1 convs as matmuls and depthwise convs as shifted multiply-adds (on CPU)."""
    conv = Conv2d(channels, channels, kernel, stride=stride, groups=groups, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 11, 8, channels)), jnp.float32)
    cotangent = jnp.asarray(np.random.default_rng(5).normal(size=conv(x).shape), jnp.float32)
    results = {}
    for impl in ("auto", "xla"):
        conv.impl = impl
        graphdef, state = nnx.split(conv)
        out, vjp = jax.vjp(lambda x, state: nnx.merge(graphdef, state, copy=True)(x), x, state)
        results[impl] = jax.tree.leaves((out, vjp(cotangent)))
    for fast, reference in zip(results["auto"], results["xla"]):
        np.testing.assert_allclose(np.asarray(fast), np.asarray(reference), rtol=1e-5, atol=1e-5)
