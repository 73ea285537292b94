"""Preemption: a SIGTERM (a Cloud preemption notice, Kubernetes, a supervisor) at any moment of a run ends it with
`PREEMPTED_EXIT_CODE`, after a checkpoint when the training loop was running, so that the same command resumes.

Two phases. From process start (`install`) until the training loop takes over, SIGTERM ends the process at once:
nothing has been computed since the last checkpoint, and what start-up writes survives a kill at any moment (as it
must survive SIGKILL). During the loop, `Preemption` turns the notice into an agreed step at which every process
writes a checkpoint and stops. With several processes, JAX's preemption service (started by
`jax.distributed.initialize`) receives the signal instead, from start-up on, and the loop's first agreed step ends
the run.
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
    """SIGTERM stopped the training loop, after every process wrote its checkpoint."""


def install() -> None:
    """Makes SIGTERM end the process at once with `PREEMPTED_EXIT_CODE`; call first thing in a command's main.

    The handler exits rather than raising: an exception raised by a signal handler surfaces wherever the main
    thread happens to be, and Python drops it there when that is a garbage-collection callback or a destructor
    (measured: 3 of 13 notices during start-up ignored, and the run trained to its end). XLA compiles check for
    signals while they run (measured: the handler ran 3 s into a 39 s compile), so a notice does not wait for one.
    """
    signal.signal(signal.SIGTERM, _exit_before_training)


def _exit_before_training(signum, frame) -> NoReturn:
    logging.warning(
        "SIGTERM before the training loop started: nothing to checkpoint since the last checkpoint; "
        "exiting with code %d (rerun the same command to resume)",
        PREEMPTED_EXIT_CODE,
    )
    exit_at_once(PREEMPTED_EXIT_CODE)


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
    """Logs and exits with `PREEMPTED_EXIT_CODE` at once (checkpoints are complete when `Preempted` is raised)."""
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
