"""Everything that crosses the host boundary, in one place: start-up, array placement for pmap and for Orbax, barriers
and the preemption agreement. One process (any number of local devices) and a pod slice run the same code; a later
move from `jax.pmap` to `jax.jit` over a mesh changes this module.

The train state is replicated. `jax.pmap` takes and returns it as host-local arrays (on this process's devices);
Orbax, with more than one process, accepts only global arrays, so checkpoints are written and read as arrays
replicated over every device of every process, which also makes them independent of the topology that wrote them.
"""

from __future__ import annotations

import logging
import signal

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

MESH_AXIS = "batch"


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


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (a no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _mesh(devices: list) -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.array(devices), (MESH_AXIS,))


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


class Preemption:
    """Agreement on the step at which to stop after SIGTERM (a Cloud preemption notice) reaches any process.

    With several processes JAX's preemption service (started by `jax.distributed.initialize`, listening for SIGTERM)
    has every process agree on one step; with one process a SIGTERM handler sets a flag. `reached(step)` must be
    called after every step by every process.
    """

    def __init__(self):
        self._raised = False
        self._multi = jax.process_count() > 1
        self._previous = None if self._multi else signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: checkpointing and exiting")
        self._raised = True

    def reached(self, step: int) -> bool:
        if self._multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._raised

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
