"""JAX's persistent compilation cache: a repeated or resumed run loads its compiled programs instead of compiling.

A GhostNet train step takes tens of seconds to compile on a CPU and most of a minute for V3 1.0x; the cache keys
programs by their HLO, so runs that differ only in seed, data or step share them.
"""

from __future__ import annotations

import argparse
import os

import jax


def default_directory() -> str:
    """JAX's own `$JAX_COMPILATION_CACHE_DIR` where the user set it (so that pointing the cache elsewhere works
    for every entry point), else `$XDG_CACHE_HOME/ghostnet_jax/xla`, or `~/.cache/ghostnet_jax/xla` (the XDG
    default)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ghostnet_jax", "xla")


def add_cache_argument(parser: argparse.ArgumentParser) -> None:
    """`--compilation-cache-dir`, shared by the evaluate, predict and export commands (training has
    `--config.compilation_cache_dir`)."""
    parser.add_argument(
        "--compilation-cache-dir",
        default=default_directory(),
        help="JAX's persistent compilation cache (default: %(default)s; '' leaves JAX's own setting)",
    )


def use_compilation_cache(directory: str) -> None:
    """Points JAX's persistent compilation cache at `directory`, for every program however quickly it compiled;
    an empty string leaves the cache as it is.

    JAX caches only programs that took at least a second to compile by default, which leaves out the eager
    operations that build a model: each parameter's initialiser is compiled for its shape, a few hundred small
    programs for a V3 model. Creating ghostnetv3_130 took 77 s with an empty cache and 8.8 s with a warm one
    (2026-12-05, two processes one after the other on a loaded 2-core CPU). A threshold the user set in the
    environment (JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS) is left as it is."""
    if directory:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
