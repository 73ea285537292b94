"""The array kernels (resampling, pooling) against PyTorch's own ops; the fast depthwise convolution is checked
through the layer that uses it, in test_layers.py."""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import to_nhwc
from ghostnet_jax.models.kernels import avg_pool_2x2, nearest_indices, upsample


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
