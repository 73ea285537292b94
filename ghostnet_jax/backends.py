"""Which JAX backends a process starts: the CPU alone where libtpu is installed but no TPU chip is present.

libtpu is installed for `ghostnet_jax.aot` (compiling for TPU slices from any machine, and in the test
requirements). JAX then tries a TPU backend at the start of every process; on a machine without TPU chips that
attempt fails and libtpu prints to stderr ("Failed to find host bounds for accelerator type", an `E0000 ...
INVALID_ARGUMENT` line) before JAX falls back to the CPU. Where nothing else could be chosen (the user set no
platforms and no other accelerator plugin is installed) JAX is told the answer up front: the same devices,
without the noise.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pkgutil


def _tpu_chips_present() -> bool:
    try:  # JAX's own detection (PCI vendor and device ids), as its Cloud TPU start-up uses it
        from jax._src import hardware_utils

        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except (ImportError, AttributeError, OSError):  # a JAX without it, an unreadable /sys: decide nothing
        return True


def _other_accelerator_plugins() -> bool:
    """True if a PJRT plugin (CUDA, ROCm, ...) is installed: JAX finds them as entry points or `jax_plugins.*`."""
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    namespace = importlib.util.find_spec("jax_plugins")
    return namespace is not None and any(pkgutil.iter_modules(namespace.submodule_search_locations))


def cpu_only_without_tpu() -> None:
    """Makes the CPU JAX's only platform when libtpu is installed, no TPU chip is present, no other accelerator
    plugin is installed and the user chose no platforms (`JAX_PLATFORMS`, `jax_platforms`); otherwise changes
    nothing. Call before JAX starts a backend."""
    if importlib.util.find_spec("libtpu") is None:
        return
    import jax

    if jax.config.jax_platforms or _tpu_chips_present() or _other_accelerator_plugins():
        return
    jax.config.update("jax_platforms", "cpu")
