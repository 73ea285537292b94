"""Shared fixtures: the timm reference (== the official code) with random weights and BatchNorm statistics."""

import collections
import fcntl
import os
import tempfile

# Tests run on CPU with several host devices so that pmap paths are exercised without accelerators, and without
# LLVM's optimisations: the suite's time is mostly XLA compiling, which this halves (a timm parity test: 72 s ->
# 35 s). XLA's graph, and so the maths every test checks, is the same; only the machine code is less optimised.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the test run: this process, pytest-xdist's workers (they inherit it from
# the controlling process, which made it and removes it) and the runs they start (the training configs' default
# follows XDG_CACHE_HOME). Tests that compile the same program, e.g. every run of one tiny training config, compile
# it once whichever worker runs them. Never the user's own cache.
# `use_compilation_cache` (here and in every run a test starts) keeps every program, however quickly it compiled:
# the hundreds of small eager programs that each training run, module (after jax.clear_caches) and subprocess would
# otherwise compile again are loaded (450 of them: 110 s compiled, 25 s loaded, on the loaded 2-core machine).
_OWNS_TEST_CACHE = "GHOSTNET_JAX_TEST_CACHE" not in os.environ
if _OWNS_TEST_CACHE:
    os.environ["GHOSTNET_JAX_TEST_CACHE"] = tempfile.mkdtemp(prefix="ghostnet_jax_tests_")
os.environ["XDG_CACHE_HOME"] = os.environ["GHOSTNET_JAX_TEST_CACHE"]

# timm (torch, and triton through torch's compiler) must be imported before tensorflow: the other order segfaults in
# this stack.
import timm as _timm  # noqa: F401
import torch
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ghostnet_jax.models.layers import BatchNorm
from ghostnet_jax.compilation_cache import default_directory, use_compilation_cache

use_compilation_cache(default_directory())


def to_nhwc(x: np.ndarray) -> jax.Array:
    """A PyTorch-layout (NCHW) array as this project's NHWC."""
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def randomise_torch_batchnorm(model, seed: int = 0) -> None:
    """Gives every BatchNorm non-trivial affine parameters and running statistics, so that mistakes show."""
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
            module.scale.set_value(rng.uniform(0.5, 1.5, n).astype(np.float32))
            module.bias.set_value(rng.uniform(-0.5, 0.5, n).astype(np.float32))
            module.mean.set_value(rng.uniform(-0.5, 0.5, n).astype(np.float32))
            module.var.set_value(rng.uniform(0.5, 2.0, n).astype(np.float32))


_FORWARDS: dict = {}


def jit_forward(model: nnx.Module, x) -> jax.Array:
    """`model(x)` as one compiled program, updating the model's state (BatchNorm statistics, RNG counts) as an eager
    call does: dispatching a GhostNet's ~1000 small ops one by one takes longer than compiling them together."""
    graphdef, state = nnx.split(model)
    if graphdef not in _FORWARDS:

        def forward(state, x):
            model = nnx.merge(graphdef, state)
            return model(x), nnx.state(model)

        _FORWARDS[graphdef] = jax.jit(forward)
    y, state = _FORWARDS[graphdef](state, jnp.asarray(x))
    nnx.update(model, state)
    return y


@pytest.fixture(scope="session")
def timm():
    """timm 1.0.31, the reference implementation (bit-identical to the official code in eval mode)."""
    import timm as timm_module

    assert timm_module.__version__ == "1.0.31", (
        f"the parity tests are pinned to timm 1.0.31, got {timm_module.__version__}"
    )
    return timm_module


@pytest.fixture(scope="session")
def data_dir():
    """One TFDS data_dir for the test run, with fashion_mnist_debian built in it (70,000 PNG encodings, a minute)
    by the first worker that needs it while the other waits on a lock; the tests only read it.
    tests/test_data_pipeline.py checks the build in its own."""
    from configs import v1
    from ghostnet_jax.data.pipeline import dataset_info

    directory = os.path.join(os.environ["GHOSTNET_JAX_TEST_CACHE"], "tfds")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = v1.get_config("fashion_mnist").data
        data.data_dir = directory
        dataset_info(data)  # prepares it unless it is prepared
    return directory


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Each module compiles many networks; dropping them between modules keeps the suite's memory flat."""
    yield
    import gc

    _FORWARDS.clear()
    jax.clear_caches()
    gc.collect()


# Fixtures that train, build a dataset or compile for a minute or more: a test that uses one is slow whichever
# test of its module happens to build it (tests marked `slow` themselves take more than about 15 s here).
SLOW_FIXTURES = {
    "data_dir",
    "suite",
    "cli_report",
    "v5e_programs",
    "reference",
    "probe",
    "converted",
    "fashion_config",
    "checkpoint",
}


def pytest_collection_modifyitems(config, items):
    """Marks the tests that use a slow fixture `slow`, then puts the files with the most slow tests first, each
    file's tests kept together and in order: the workers take whole files in this order, so the longest start early
    and both workers finish at about the same time."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    slow_tests = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_tests[item.path])


def pytest_sessionfinish(session, exitstatus):
    """The test run's cache and dataset go with the process that made them."""
    import shutil

    if _OWNS_TEST_CACHE:
        shutil.rmtree(os.environ["GHOSTNET_JAX_TEST_CACHE"], ignore_errors=True)
