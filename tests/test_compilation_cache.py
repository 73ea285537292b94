"""The persistent compilation cache keeps eager operations too (what building a model compiles), not only the
programs that JAX's default threshold of one second of compilation lets through."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A fresh process (JAX reads the cache directory once per process) runs one eager operation, which compiles in
# milliseconds: JAX's default threshold would leave it out of the cache. A threshold set in the environment (which
# `use_compilation_cache` respects) is removed, so that the process starts from JAX's default. Without a directory
# argument the process uses `default_directory()`, as the command-line tools do by default.
PROGRAM = """
import sys
import jax
import jax.numpy as jnp
from ghostnet_jax.compilation_cache import default_directory, use_compilation_cache
use_compilation_cache(sys.argv[1] if len(sys.argv) > 1 else default_directory())
jax.block_until_ready(jnp.sin(jnp.arange(7.0)))
"""


def cached_programs(directory: Path, *argv: str, **environment: str) -> list[str]:
    """The names of the programs a fresh process running PROGRAM left in `directory`."""
    env = {key: value for key, value in os.environ.items() if key != "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"}
    subprocess.run(
        [sys.executable, "-c", PROGRAM, *argv], cwd=ROOT, env=env | environment, check=True, capture_output=True
    )
    return sorted(path.name for path in directory.iterdir())


def test_an_eager_operation_lands_in_the_persistent_cache(tmp_path):
    entries = cached_programs(tmp_path / "xla", str(tmp_path / "xla"))
    assert any(name.startswith("jit_sin-") for name in entries), f"no eager sin among the cached programs {entries}"


def test_the_default_directory_is_jax_own_environment_setting_where_set(tmp_path):
    """JAX_COMPILATION_CACHE_DIR is JAX's documented way to move the cache; our default must not override it."""
    entries = cached_programs(tmp_path / "env", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "env"))
    assert any(name.startswith("jit_sin-") for name in entries), f"nothing cached where the environment said {entries}"


class CacheChosen(Exception):
    """Stops a command once it has chosen its compilation cache, before it loads anything."""


@pytest.mark.parametrize(
    "module, argv",
    [
        ("ghostnet_jax.evaluate", ["--checkpoint", "{tmp}"]),
        ("ghostnet_jax.predict", ["--checkpoint", "{tmp}", "image.png"]),
        ("ghostnet_jax.export.cli", ["--checkpoint", "{tmp}", "--format", "onnx", "--output", "{tmp}/model.onnx"]),
    ],
)
def test_each_command_uses_the_cache_directory_its_flag_names(module, argv, tmp_path, monkeypatch):
    command, chosen = importlib.import_module(module), []

    def record(directory):
        chosen.append(directory)
        raise CacheChosen

    monkeypatch.setattr(command, "use_compilation_cache", record)
    with pytest.raises(CacheChosen):
        command.main([arg.format(tmp=tmp_path) for arg in argv] + ["--compilation-cache-dir", str(tmp_path / "c")])
    assert chosen == [str(tmp_path / "c")]
