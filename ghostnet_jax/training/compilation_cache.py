"""JAX's persistent compilation cache: a repeated or resumed run loads its compiled programs instead of compiling.

A GhostNet train step takes tens of seconds to compile on a CPU and most of a minute for V3 1.0x; the cache keys
programs by their HLO, so runs that differ only in seed, data or step share them.
"""

from __future__ import annotations

import os

import jax


def default_directory() -> str:
    """`$XDG_CACHE_HOME/ghostnet_jax/xla`, or `~/.cache/ghostnet_jax/xla` (the XDG default)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ghostnet_jax", "xla")


def use_compilation_cache(directory: str) -> None:
    """Points JAX's persistent compilation cache at `directory`; an empty string leaves the cache as it is."""
    if directory:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
