"""GhostNetV3's re-parameterisable convolution and its fusion into one conv for inference.

During training a site is the sum of N parallel conv+BN branches, an optional 1x1 conv+BN "scale" branch
and an optional BN-only "identity" branch. In eval mode every branch is affine in its input, so the sum
is one conv with a bias (the deploy form). Fusion is only exact with frozen BatchNorm, which is why the
model trains in the multi-branch form and is fused afterwards.
"""

from __future__ import annotations

from typing import TypeVar
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ghostnet_jax.models.layers import BatchNorm, Conv2d, ConvBN, _pair

M = TypeVar("M", bound=nnx.Module)


class RepConv(nnx.Module):
    """Sum of `num_branches` conv+BN branches, an optional 1x1 scale branch and an optional identity BN."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        stride: int = 1,
        groups: int = 1,
        num_branches: int = 3,
        scale_branch: bool = False,
        identity_branch: bool = False,
        rngs: nnx.Rngs,
    ):
        kernel_size = _pair(kernel_size)
        if num_branches < 1:
            raise ValueError(f"num_conv_branches must be >= 1, got {num_branches}")
        if identity_branch and (in_features != out_features or stride != 1):
            raise ValueError("an identity branch needs in_features == out_features and stride 1")
        self.in_features, self.out_features = in_features, out_features
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.branches = nnx.List(
            [
                ConvBN(in_features, out_features, kernel_size, stride=stride, groups=groups, rngs=rngs)
                for _ in range(num_branches)
            ]
        )
        has_scale = scale_branch and kernel_size != (1, 1)
        self.scale_branch = (
            ConvBN(in_features, out_features, 1, stride=stride, groups=groups, rngs=rngs) if has_scale else None
        )
        self.identity_branch = BatchNorm(out_features) if identity_branch else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = sum(branch(x) for branch in self.branches)
        if self.scale_branch is not None:
            y = y + self.scale_branch(x)
        if self.identity_branch is not None:
            y = y + self.identity_branch(x)
        return y

    def fused_kernel_bias(self) -> tuple[jax.Array, jax.Array]:
        """Kernel (HWIO) and bias of the single conv that equals this site in eval mode."""
        kh, kw = self.kernel_size
        kernel = jnp.zeros((kh, kw, self.in_features // self.groups, self.out_features), jnp.float32)
        bias = jnp.zeros((self.out_features,), jnp.float32)
        for branch in self.branches:
            k, b = branch.folded_kernel_bias()
            kernel, bias = kernel + k, bias + b
        if self.scale_branch is not None:
            k, b = self.scale_branch.folded_kernel_bias()
            kernel = kernel.at[kh // 2, kw // 2].add(k[0, 0])
            bias = bias + b
        if self.identity_branch is not None:
            t, shift = self.identity_branch.fold()
            kernel = kernel.at[kh // 2, kw // 2].add(_identity_taps(self.out_features, self.groups) * t)
            bias = bias + shift
        return kernel, bias

    def fuse(self) -> Conv2d:
        """The deploy form: one conv with bias, same kernel size, stride and groups as the branches."""
        return conv_with_bias(self.branches[0].conv, *self.fused_kernel_bias())


def conv_with_bias(like: Conv2d, kernel: jax.Array, bias: jax.Array) -> Conv2d:
    """A conv with `like`'s geometry, compute dtype and implementation, holding `kernel` and `bias`."""
    conv = Conv2d(
        like.in_features,
        like.out_features,
        like.kernel_size,
        stride=like.stride,
        groups=like.groups,
        use_bias=True,
        impl=like.impl,
        dtype=like.dtype,
        rngs=nnx.Rngs(0),
    )
    conv.kernel.set_value(kernel)
    conv.bias.set_value(bias)
    return conv


def _identity_taps(channels: int, groups: int) -> jax.Array:
    """Centre taps (in // groups, out) of a grouped conv that copies its input: 1 at [c mod (C/groups), c]."""
    per_group = channels // groups
    return jax.nn.one_hot(jnp.arange(channels) % per_group, per_group, dtype=jnp.float32).T


def fuse(model: M) -> M:
    """Returns a copy of `model` in deploy form: every `RepConv` replaced by its fused conv, in eval mode.

    Everything else (stem, SE, shortcut, DFC, head) is left as it is; the input model is not modified.
    """
    model = nnx.clone(model)
    sites = [(path, module) for path, module in nnx.iter_graph(model) if isinstance(module, RepConv)]
    for path, site in sites:
        parent = model
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        fused = site.fuse()
        if isinstance(path[-1], int):
            parent[path[-1]] = fused
        else:
            setattr(parent, path[-1], fused)
    model.eval()
    return model


def fold_batchnorm(model: M) -> M:
    """Returns a copy of `model` fused (`fuse`) with the BatchNorm of every conv+BN folded into its conv's kernel
    and bias (the `ConvBN` keeps its place, with `bn` None), in eval mode.

    The same eval-mode maths in fewer ops: what exporters and int8 quantisers want (one conv per site, quantised
    per output channel with its BatchNorm scale inside), not what training or the parity tests use.
    """
    model = fuse(model)
    for site in [module for _, module in nnx.iter_graph(model) if isinstance(module, ConvBN) and module.bn is not None]:
        site.conv, site.bn = conv_with_bias(site.conv, *site.folded_kernel_bias()), None
    return model
