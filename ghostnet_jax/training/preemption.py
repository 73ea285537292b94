"""Preemption: a SIGTERM (a Cloud preemption notice, Kubernetes, a supervisor) at any moment of a run ends it with
`PREEMPTED_EXIT_CODE`, after a checkpoint when the training loop was running, so that the same command resumes.

Two phases. From process start (`install`) until the training loop takes over, SIGTERM raises `Preempted` in the
main thread: nothing has been computed since the last checkpoint, so the run ends at once. During the loop,
`Preemption` turns the notice into an agreed step at which every process writes a checkpoint and stops. With
several processes, JAX's preemption service (started by `jax.distributed.initialize`) receives the signal instead,
from start-up on, and the loop's first agreed step ends the run.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import NoReturn

import jax
from jax.experimental import multihost_utils

# Non-zero, so that a supervisor (a shell loop, Kubernetes, a pod's startup script) reruns the command, which
# resumes; a finished run exits 0.
PREEMPTED_EXIT_CODE = 42


class Preempted(Exception):
    """SIGTERM stopped the run: before training (nothing to save) or after every process wrote its checkpoint."""


def _raise_preempted(signum, frame) -> NoReturn:
    raise Preempted("SIGTERM before the training loop started: nothing to checkpoint since the last checkpoint")


def install() -> None:
    """Makes SIGTERM raise `Preempted` in the main thread; call first thing in a command's main."""
    signal.signal(signal.SIGTERM, _raise_preempted)


def exit_at_once(code: int) -> NoReturn:
    """Flushes the logs and ends the process with `code`, skipping the interpreter's teardown.

    There the destruction of the tf.data iterator was measured to block for 8-40 s, and jax.distributed's shutdown
    waits up to 5 minutes for every other process: longer than a preemption notice leaves, and a failed process
    would keep the others (and the user) waiting. Call it only with every file written and closed.
    """
    logging.shutdown()  # flushes every handler (absl's included)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_preempted(preempted: Preempted) -> NoReturn:
    """Logs and exits with `PREEMPTED_EXIT_CODE` at once (checkpoints are complete before `Preempted` is raised)."""
    logging.warning("%s; exiting with code %d (rerun the same command to resume)", preempted, PREEMPTED_EXIT_CODE)
    exit_at_once(PREEMPTED_EXIT_CODE)


class Preemption:
    """Agreement on the step at which to stop after SIGTERM reaches any process; `reached(step)` must be called
    after every step by every process.

    With several processes JAX's preemption service has every process agree on one step; with one process a SIGTERM
    handler sets a flag for the duration of the loop (`close` restores the start-up handler).
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
