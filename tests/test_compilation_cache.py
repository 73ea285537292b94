"""The persistent compilation cache keeps eager operations too (what building a model compiles), not only the
programs that JAX's default threshold of one second of compilation lets through."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A fresh process (JAX reads the cache directory once per process) runs one eager operation, which compiles in
# milliseconds: JAX's default threshold would leave it out of the cache. A threshold set in the environment (which
# `use_compilation_cache` respects) is removed, so that the process starts from JAX's default.
PROGRAM = """
import sys
import jax
import jax.numpy as jnp
from ghostnet_jax.training.compilation_cache import use_compilation_cache
use_compilation_cache(sys.argv[1])
jax.block_until_ready(jnp.sin(jnp.arange(7.0)))
"""


def test_an_eager_operation_lands_in_the_persistent_cache(tmp_path):
    cache = tmp_path / "xla"
    env = {key: value for key, value in os.environ.items() if key != "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"}
    subprocess.run([sys.executable, "-c", PROGRAM, str(cache)], cwd=ROOT, env=env, check=True, capture_output=True)
    entries = sorted(path.name for path in cache.iterdir())
    assert any(name.startswith("jit_sin-") for name in entries), f"no eager sin among the cached programs {entries}"
