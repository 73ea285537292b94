"""Layers against PyTorch (the reference's own ops) and closed-form maths."""

import numpy as np
import pytest
import torch
from flax import nnx
import jax
import jax.numpy as jnp

from conftest import to_nhwc
from ghostnet_jax.models.layers import BatchNorm, Conv2d, make_divisible


@pytest.mark.parametrize(
    "value, expected",
    [(16 * 0.5, 8), (16 * 1.3, 20), (48 * 1.3, 64), (72 * 1.3, 92), (960 * 1.6, 1536), (240 * 0.25, 60), (1.0, 4)],
)
def test_make_divisible_matches_reference_rounding(value, expected):
    assert make_divisible(value, 4) == expected


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
        reference.weight.copy_(torch.from_numpy(np.array(conv.kernel.get_value()).transpose(3, 2, 0, 1)))
        reference.bias.copy_(torch.from_numpy(np.array(conv.bias.get_value())))
    x = np.random.default_rng(2).normal(size=(2, in_ch, 12, 9)).astype(np.float32)
    expected = reference(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(conv(to_nhwc(x))), expected, atol=1e-5)


def test_conv2d_init_is_pytorch_default_uniform():
    conv = Conv2d(16, 32, 3, use_bias=True, rngs=nnx.Rngs(0))
    bound = 1 / np.sqrt(16 * 9)
    kernel = np.asarray(conv.kernel.get_value())
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
    np.testing.assert_allclose(np.asarray(ours.mean.get_value()), reference.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.var.get_value()), reference.running_var.numpy(), rtol=1e-5)
    reference.eval()
    ours.use_running_average = True
    expected = reference(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(ours(to_nhwc(x))), expected, atol=1e-5)


def test_batchnorm_training_gradients_match_torch_on_one_and_two_devices():
    # BatchNorm's gradient is written by hand (kernels.batch_norm_train): it must equal PyTorch's autograd of
    # BatchNorm2d in training mode, on one device and with the global batch split over two devices under pmap
    # (statistics and gradient sums over both; the step then averages the parameter gradients).
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, size=(4, 6, 5, 5)).astype(np.float32)
    dy = rng.normal(size=(4, 6, 5, 5)).astype(np.float32)
    scale, bias = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    reference = torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(scale))
        reference.bias.copy_(torch.from_numpy(bias))
    tx = torch.from_numpy(x).requires_grad_()
    (reference(tx) * torch.from_numpy(dy)).sum().backward()
    expected = (tx.grad.numpy().transpose(0, 2, 3, 1), reference.weight.grad.numpy(), reference.bias.grad.numpy())

    def gradients(axis_name, x, dy):
        def loss(x, scale, bias):
            bn = BatchNorm(6, axis_name=axis_name)
            bn.scale.set_value(scale)
            bn.bias.set_value(bias)
            return jnp.sum(bn(x) * dy)

        return jax.grad(loss, argnums=(0, 1, 2))(x, jnp.asarray(scale), jnp.asarray(bias))

    one = jax.jit(lambda x, dy: gradients(None, x, dy))(to_nhwc(x), to_nhwc(dy))
    split = jax.pmap(lambda x, dy: gradients("d", x, dy), axis_name="d")(
        to_nhwc(x).reshape(2, 2, 5, 5, 6), to_nhwc(dy).reshape(2, 2, 5, 5, 6)
    )
    two = (split[0].reshape(4, 5, 5, 6), split[1].sum(0), split[2].sum(0))  # each device's loss is its share of the sum
    for actual in (one, two):
        for a, e in zip(actual, expected):
            np.testing.assert_allclose(np.asarray(a), e, rtol=1e-4, atol=1e-5)
    # bfloat16 activations: float32 maths inside, the input gradient rounded once to bfloat16.
    low = jax.jit(lambda x, dy: gradients(None, x, dy))(to_nhwc(x).astype(jnp.bfloat16), to_nhwc(dy))
    assert low[0].dtype == jnp.bfloat16 and low[1].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(low[0], np.float32), expected[0], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "kernel, stride, groups, channels, size",
    [
        (1, 1, 1, 6, (11, 8)),
        (3, 1, 6, 6, (11, 8)),
        (3, 2, 6, 6, (11, 8)),
        (5, 2, 6, 6, (11, 8)),
        ((1, 5), 1, 6, 6, (11, 8)),
        ((5, 1), 1, 6, 6, (11, 8)),
        (1, 2, 6, 6, (11, 8)),
        (3, 1, 1, 6, (2, 3)),
        (3, 2, 1, 6, (3, 4)),
        (7, 2, 1, 6, (5, 4)),
        ((1, 5), 1, 1, 6, (3, 3)),
    ],
)
def test_fast_conv_paths_equal_xla_convolution_forward_and_backward(kernel, stride, groups, channels, size):
    """impl='auto' computes 1x1 convs as matmuls, depthwise convs as shifted multiply-adds and dense convs with
    at most SMALL_OUTPUT_AREA output pixels as one matmul over patches (on CPU)."""
    conv = Conv2d(channels, channels, kernel, stride=stride, groups=groups, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, *size, channels)), jnp.float32)
    cotangent = jnp.asarray(np.random.default_rng(5).normal(size=conv(x).shape), jnp.float32)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(conv)(x))  # a fast path, not XLA's conv
    results = {}
    for impl in ("auto", "xla"):
        conv.impl = impl
        graphdef, state = nnx.split(conv)
        out, vjp = jax.vjp(lambda x, state, graphdef=graphdef: nnx.merge(graphdef, state, copy=True)(x), x, state)
        results[impl] = jax.tree.leaves((out, vjp(cotangent)))
    for fast, reference in zip(results["auto"], results["xla"]):
        np.testing.assert_allclose(np.asarray(fast), np.asarray(reference), rtol=1e-5, atol=1e-5)
