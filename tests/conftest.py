"""Shared fixtures: the timm reference (== the official code) with random weights and BatchNorm statistics."""

import os

# Tests run on CPU with several host devices so that pmap paths are exercised without accelerators.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# torch (through timm) must be imported before tensorflow: the other order segfaults in this stack.
import timm  # noqa: F401
import numpy as np
import pytest
from flax import nnx

from ghostnet_jax.models.layers import BatchNorm


def randomise_torch_batchnorm(model, seed: int = 0) -> None:
    """Gives every BatchNorm non-trivial affine parameters and running statistics, so that mistakes show."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)


def randomise_jax_batchnorm(model: nnx.Module, seed: int = 0) -> None:
    """The same randomisation for a ghostnet_jax model."""
    rng = np.random.default_rng(seed)
    for _, module in nnx.iter_graph(model):
        if isinstance(module, BatchNorm):
            n = module.num_features
            module.scale.value = rng.uniform(0.5, 1.5, n).astype(np.float32)
            module.bias.value = rng.uniform(-0.5, 0.5, n).astype(np.float32)
            module.mean.value = rng.uniform(-0.5, 0.5, n).astype(np.float32)
            module.var.value = rng.uniform(0.5, 2.0, n).astype(np.float32)


@pytest.fixture(scope="session")
def timm():
    """timm 1.0.31, the reference implementation (bit-identical to the official code in eval mode)."""
    import timm as timm_module

    assert timm_module.__version__ == "1.0.31", f"the parity tests are pinned to timm 1.0.31, got {timm_module.__version__}"
    return timm_module


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A TFDS data_dir per test module (fashion_mnist_debian is built in it on first use, in seconds)."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Each module compiles many networks; dropping them between modules keeps the suite's memory flat."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
