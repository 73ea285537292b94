"""GhostNetV3's conv branches stacked into one conv (the TPU/GPU training form) against branch by branch (CPU):
the same outputs, gradients and BatchNorm running statistics, per site, through the network and across two
devices (cross-device BatchNorm). Traced for 'tpu' on this CPU: only the formulation changes, not the device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomise_jax_batchnorm
from flax import nnx

from ghostnet_jax.models import compiling_for, create_model
from ghostnet_jax.models.reparam import RepConv
from ghostnet_jax.training.state import split_model


def loss_grads_stats(graphdef, params, rest_state, images, platform, axis_name=None):
    """Loss, parameter and input gradients and updated BatchNorm statistics of a train-mode forward pass traced
    for `platform`; every conv uses XLA's convolution, so that only the stacking differs between platforms."""

    def loss(params, images):
        module = nnx.merge(graphdef, params, rest_state, copy=True)
        out = module(images)
        value = jnp.sum(jnp.sin(out))  # a cotangent that differs per output
        return (jax.lax.psum(value, axis_name) if axis_name else value), nnx.state(module, nnx.BatchStat)

    with compiling_for(platform):
        (value, stats), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, images)
    return value, grads, stats


def compare(module: nnx.Module, images: jax.Array) -> tuple[float, float]:
    """Stacked against branch by branch, the largest difference scaled by its leaf's largest magnitude: (over every
    leaf but one kind, over that kind). That kind is the depthwise scale branches' kernel gradients, which are
    ill-conditioned: a per-channel 1x1 conv followed by train-mode BatchNorm is normalised back to its input, and only
    BatchNorm's epsilon leaves the kernel a gradient, so rounding differences grow there. Asserts the stacked form
    ran."""
    module.set_attributes(impl="xla", raise_if_not_found=False)
    graphdef, params, batch_stats, rest = split_model(module)
    rest_state = nnx.State.merge(batch_stats, rest)
    step = jax.jit(loss_grads_stats, static_argnums=(0, 4))
    results = {p: step(graphdef, params, rest_state, images, p) for p in ("cpu", "tpu")}
    lowered = {p: step.lower(graphdef, params, rest_state, images, p).as_text() for p in ("cpu", "tpu")}
    assert lowered["tpu"].count("convolution") < lowered["cpu"].count("convolution")  # the branches are one conv
    assert jax.tree.structure(results["tpu"]) == jax.tree.structure(results["cpu"])
    zero_by_invariance = {id(m.scale_branch.conv.kernel) for _, m in nnx.iter_graph(module)
                          if isinstance(m, RepConv) and m.groups > 1 and m.scale_branch is not None}
    invariant_paths = {path for path, value in nnx.iter_graph(module) if id(value) in zero_by_invariance}
    error, noise = 0.0, 0.0
    for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(results["cpu"])[0],
                                 jax.tree.leaves(results["tpu"])):
        keys = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
        if keys[:2] == (1, 0) and keys[2:-1] in invariant_paths:
            noise = max(noise, float(jnp.abs(got - want).max()) / max(1.0, float(jnp.abs(want).max())))
        else:
            error = max(error, float(jnp.abs(got - want).max()) / max(1.0, float(jnp.abs(want).max())))
    return error, noise


@pytest.mark.parametrize("kernel, stride, groups, scale, identity", [
    (3, 1, 1, True, True),  # dense, every branch kind
    (1, 1, 1, False, True),  # 1x1: no scale branch
    (5, 2, 16, True, False),  # depthwise, strided, with the zero-padded scale branch
    (3, 1, 16, True, True),
])
def test_one_site_stacked_equals_branch_by_branch(kernel, stride, groups, scale, identity):
    site = RepConv(16, 16, kernel, stride=stride, groups=groups, num_branches=3, scale_branch=scale,
                   identity_branch=identity, rngs=nnx.Rngs(3))
    randomise_jax_batchnorm(site, seed=2)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 11, 9, 16)), jnp.float32)
    error, ill_conditioned = compare(site, images)
    assert error < 3e-6
    assert ill_conditioned < 3e-4  # 1.1e-4 seen; a wrong layout or tap is off by O(1)


@pytest.mark.parametrize("overrides", [{}, {"num_conv_branches": 2, "identity_branch": False}])
def test_network_stacked_equals_branch_by_branch(overrides):
    """Through the 0.5x network (dense 1x1 and depthwise sites), float32 rounding compounds over ~20 train-mode
    BatchNorms of small batches: 5.2e-4 of a leaf's largest value was the largest difference seen, 8.6e-3 the
    largest of the ill-conditioned depthwise scale-kernel gradients (see `compare`)."""
    model = create_model("ghostnetv3_050", num_classes=7, rngs=nnx.Rngs(0), **overrides)
    randomise_jax_batchnorm(model, seed=1)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 48, 40, 3)), jnp.float32)
    error, ill_conditioned = compare(model, images)
    assert error < 1e-3
    assert ill_conditioned < 3e-2


def test_stacked_branches_equal_branch_by_branch_across_two_devices():
    """Cross-device BatchNorm (inside pmap): the stacked statistics are the global batch's, as per branch (no scale
    branch: its ill-conditioned kernel gradient is covered by `compare` above)."""
    assert jax.local_device_count() >= 2
    site = RepConv(8, 8, 3, groups=8, num_branches=3, scale_branch=False, identity_branch=True, rngs=nnx.Rngs(1))
    site.set_attributes(axis_name="batch", impl="xla", raise_if_not_found=False)
    graphdef, params, batch_stats, rest = split_model(site)
    rest_state = nnx.State.merge(batch_stats, rest)
    images = np.random.default_rng(1).normal(size=(2, 3, 10, 10, 8))
    images = jnp.asarray(images + np.array([0.0, 2.0])[:, None, None, None, None], jnp.float32)
    results = {}
    for platform in ("cpu", "tpu"):
        traced = functools.partial(loss_grads_stats, graphdef, platform=platform, axis_name="batch")
        step = jax.pmap(traced, axis_name="batch", in_axes=(None, None, 0), devices=jax.local_devices()[:2])
        results[platform] = step(params, rest_state, images)
    for got, want in zip(jax.tree.leaves(results["tpu"]), jax.tree.leaves(results["cpu"])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(jnp.abs(want).max())))
    # the two devices' images differ (their means by 2), yet each device holds the same statistics: the global batch's
    stats = jax.tree.leaves(results["tpu"][2])
    assert all(np.allclose(leaf[0], leaf[1], rtol=1e-6, atol=1e-6) for leaf in stats)
