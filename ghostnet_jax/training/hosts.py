"""Everything that crosses the host boundary, in one place: start-up, array placement for pmap and for Orbax, barriers
and the all-gathers that turn each process's view into one decision. One process (any number of local devices) and
a pod slice run the same code; a later move from `jax.pmap` to `jax.jit` over a mesh changes this module.

The train state is replicated. `jax.pmap` takes and returns it as host-local arrays (on this process's devices);
Orbax, with more than one process, accepts only global arrays, so checkpoints are written and read as arrays
replicated over every device of every process, which also makes them independent of the topology that wrote them.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

AXIS = "batch"  # the device axis: the pmapped steps' collectives and the mesh of the global arrays


def initialize(distributed: ml_collections.ConfigDict) -> None:
    """`jax.distributed.initialize` with the config's coordinator, process count and id (None: auto-detected on
    Cloud TPU, SLURM, Open MPI, Kubernetes). CPU devices need gloo for cross-process collectives; the setting
    only concerns the CPU backend, so TPU and GPU runs are unaffected."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=distributed.coordinator_address,
        num_processes=distributed.num_processes,
        process_id=distributed.process_id,
    )


def is_main() -> bool:
    """Only process 0 prints, logs metrics and writes the resolved config."""
    return jax.process_index() == 0


# How long a process waits for the others at a barrier: start-up may differ by a dataset's preparation or a
# compile on a busy machine, far longer than the 30 s after which gloo gives up on a collective.
BARRIER_TIMEOUT_S = 30 * 60


def _coordinator():
    """JAX's distributed client: its coordination service holds barriers and a key-value store that need no
    device collective (private in JAX; Orbax reaches it the same way)."""
    return jax._src.distributed.global_state.client


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (a no-op with one process); `name` must be new.

    A barrier of the coordination service, not a device collective: with gloo (CPU) a collective that one process
    reaches more than 30 s before another fails, and XLA's CPU client then takes minutes to exit."""
    if jax.process_count() > 1:
        _coordinator().wait_at_barrier(name, BARRIER_TIMEOUT_S * 1000)


def codes_of_all(name: str, code: int) -> list[int]:
    """Every process's `code`, in process order ([code] with one process): the way processes take one decision
    from what each of them saw. `name` must be new (it keys the coordination service's store)."""
    if jax.process_count() == 1:
        return [code]
    client = _coordinator()
    client.key_value_set(f"{name}/{jax.process_index()}", str(code))
    return [
        int(client.blocking_key_value_get(f"{name}/{k}", BARRIER_TIMEOUT_S * 1000)) for k in range(jax.process_count())
    ]


def _mesh(devices: list) -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.array(devices), (AXIS,))


def replicated(tree):
    """`tree` placed as the pmapped step returns its state: replicated over this process's devices.

    Without this the first step's input (on one device) and every later step's input differ in sharding,
    and XLA compiles the whole train step twice.
    """
    sharding = jax.sharding.NamedSharding(_mesh(jax.local_devices()), jax.sharding.PartitionSpec())
    return jax.device_put(tree, sharding)


def to_global(tree):
    """A replicated host-local tree as global arrays replicated over all processes' devices (what Orbax saves)."""
    return multihost_utils.host_local_array_to_global_array(
        replicated(tree), _mesh(jax.devices()), jax.sharding.PartitionSpec()
    )


def abstract_global(tree):
    """Shapes and dtypes of `tree`, replicated over the current topology's devices: the target Orbax restores to."""
    sharding = jax.sharding.NamedSharding(_mesh(jax.devices()), jax.sharding.PartitionSpec())
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def to_local(tree):
    """Global replicated arrays (as restored) as host-local ones replicated over this process's devices."""
    local = multihost_utils.global_array_to_host_local_array(tree, _mesh(jax.devices()), jax.sharding.PartitionSpec())
    return replicated(local)
