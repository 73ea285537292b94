"""A training run's checkpoints (the train state, and the EMA model as `model_checkpoint` saves one): periodic,
atomic (Orbax), exactly the latest N plus the best kept, never lost to a restore.

Each step directory holds `train_state` (everything needed to resume bit for bit), plus `model` and
`spec` in the format of `ghostnet_jax.model_checkpoint`, holding the EMA weights: so any training run's
directory can be loaded by `load_model`, e.g. as a distillation teacher.

A restore tells four outcomes apart, and every process takes the same decision (the worst outcome any of them saw):
- restored: every process read the step;
- broken: the step's files are missing or do not decode (positive evidence only: a missing file, JSON that does
  not parse, a storage status of DATA_LOSS, NOT_FOUND or OUT_OF_RANGE); the step is set aside as
  `corrupt-<step>-<time>` (read-only use only skips it) and the previous step is tried;
- mismatch: the files read but were written for another model or optimizer: `CheckpointMismatchError` naming the
  differing config fields;
- anything else (storage unavailable, permission denied, a deadline, out of memory, an unknown error): a
  `CheckpointReadError`; the run fails and nothing is touched, to be retried when the cause is gone.
Steps that exist but none of which restores end in `CheckpointReadError` listing what was tried: a run never
silently starts again from step 0 over a directory that held checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from ghostnet_jax.model_checkpoint import MODEL_ITEM, SPEC_ITEM, STATE_ITEM, array_shapes
from ghostnet_jax.storage import storage_path
from ghostnet_jax.training import hosts
from ghostnet_jax.training.config_diff import spec_differences
from ghostnet_jax.training.state import TrainState

BEST_METRIC = "ema_top1"
SET_ASIDE_PREFIX = "corrupt-"
# Storage statuses (tensorstore's error messages begin with them; TensorFlow's errors are classes) that are
# evidence of damaged files, and those that say the storage could not be reached or refused: the latter win.
_DAMAGE_STATUSES = ("DATA_LOSS", "NOT_FOUND", "OUT_OF_RANGE")
_DAMAGE_ERRORS = {"DataLossError", "NotFoundError", "OutOfRangeError"}
_UNREACHABLE_STATUSES = (
    "UNAVAILABLE",
    "PERMISSION_DENIED",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "CANCELLED",
    "UNAUTHENTICATED",
    "INTERNAL",
    "UNKNOWN",
)
_UNREACHABLE_ERRORS = {
    "UnavailableError",
    "PermissionDeniedError",
    "DeadlineExceededError",
    "ResourceExhaustedError",
    "AbortedError",
    "CancelledError",
    "UnauthenticatedError",
    "InternalError",
    "UnknownError",
    "JaxRuntimeError",
    "XlaRuntimeError",
}
RESTORED, BROKEN, MISMATCH, FAILED = range(4)  # ordered: the processes' decision is the largest


class CheckpointMismatchError(ValueError):
    """The checkpoint was written for another configuration than this run's; nothing on disk was changed."""


class CheckpointReadError(RuntimeError):
    """A checkpoint could not be read for a reason other than damaged files, or no step restored; nothing on disk
    was changed by the failed read."""


def _causes(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def damage_evidence(error: BaseException) -> bool:
    """True if `error` (or an error it came from) shows that a checkpoint's files are missing or do not decode,
    and nothing in its chain says the storage was unreachable or refused the read."""
    chain = list(_causes(error))
    statuses = [str(e).split(":", 1)[0].strip() for e in chain]
    names = [{cls.__name__ for cls in type(e).__mro__} for e in chain]
    if any(status in _UNREACHABLE_STATUSES for status in statuses) or any(n & _UNREACHABLE_ERRORS for n in names):
        return False
    return any(
        isinstance(e, (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError))
        or status in _DAMAGE_STATUSES
        or bool(n & _DAMAGE_ERRORS)
        for e, status, n in zip(chain, statuses, names)
    )


class TrainCheckpointer:
    """Saves and restores `TrainState`s under `directory` (a path or URL); every process takes part in each call."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int,
        spec: dict[str, Any],
        read_only: bool = False,
        asynchronous: bool = False,
    ):
        """`asynchronous`: `save` returns once the state is copied off the devices and the files are written in
        the background (Orbax's asynchronous checkpointing); a step becomes visible only once complete."""
        self.spec, self.read_only = spec, read_only
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(keep),
                # Periodic and preemption checkpoints carry no metrics: without this flag BestN keeps them all.
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=asynchronous,
            read_only=read_only,
            create=not read_only,
        )
        handlers = {
            STATE_ITEM: ocp.StandardCheckpointHandler(),
            MODEL_ITEM: ocp.StandardCheckpointHandler(),
            SPEC_ITEM: ocp.JsonCheckpointHandler(),
        }  # known up front, so that a step's metadata can be read before anything was restored
        self.manager = ocp.CheckpointManager(storage_path(directory), options=options, item_handlers=handlers)

    @property
    def directory(self):
        return self.manager.directory

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(
        self, state: TrainState, model_variables: dict, metrics: dict[str, float] | None = None, *, wait: bool = False
    ) -> None:
        """Writes `state` at its step, with the EMA model's variables; `metrics` rank it for 'best'. `wait`: return
        only once it is complete (a preemption's checkpoint), also when saving asynchronously."""
        step = int(jax.device_get(state.step))
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardSave(hosts.to_global(state)),
                MODEL_ITEM: ocp.args.StandardSave(model_variables),
                SPEC_ITEM: ocp.args.JsonSave(self.spec),
            }
        )
        self.manager.save(step, args=args, metrics=metrics, force=True)
        if wait:
            self.manager.wait_until_finished()

    def restore_latest(self, state: TrainState, config_differences: list[str] = ()) -> TrainState | None:
        """The newest step that restores into the structure of `state` (placed like `state`); None only if the
        directory never held a step. Every process must call it; all of them return the same step or raise.

        `config_differences` (this config against the one the checkpoints were written with) go into the error
        raised when a readable checkpoint does not fit."""
        tried = [f"step {name.split('-')[1]} (set aside earlier as {name})" for name in self._set_aside()]
        for step in sorted(self.manager.all_steps(), reverse=True):
            outcome, result = self._attempt(step, state, config_differences)
            decision = max(hosts.codes_of_all(f"restore-{step}", outcome))
            if decision == RESTORED:
                return hosts.to_local(result)
            if decision == MISMATCH:
                found_elsewhere = list(config_differences) or ["found by another process"]
                raise result if outcome == MISMATCH else self._mismatch(step, found_elsewhere)
            if decision == FAILED:
                raise self._read_error(step, result if outcome == FAILED else None)
            tried.append(f"step {step} ({self._set_step_aside(step, result)})")
        if tried:
            raise CheckpointReadError(
                f"no checkpoint in {self.directory} restores: "
                + "; ".join(tried)
                + f". The run does not start from scratch over them: move {self.directory} away to do that."
            )
        return None

    def _attempt(self, step: int, state: TrainState, config_differences) -> tuple[int, Any]:
        """(outcome, the restored state, the error or a description) of reading `step` on this process."""
        try:
            saved_spec = self._restore(step, SPEC_ITEM, ocp.args.JsonRestore())
        except Exception as error:
            return (BROKEN, f"its spec does not read: {error}") if damage_evidence(error) else (FAILED, error)
        differences = spec_differences(saved_spec, self.spec)
        if differences:
            return MISMATCH, self._mismatch(step, differences + list(config_differences))
        try:
            return RESTORED, self._restore(step, STATE_ITEM, ocp.args.StandardRestore(hosts.abstract_global(state)))
        except Exception as error:
            if self._layout_differs(step, state):
                layout = list(config_differences) or [f"the train state's layout: {error}"]
                return MISMATCH, self._mismatch(step, layout)
            if damage_evidence(error):
                return BROKEN, f"its train state does not read: {error}"
            return FAILED, error

    def _restore(self, step: int, item: str, args: Any) -> Any:
        return self.manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]

    def _layout_differs(self, step: int, state: TrainState) -> bool:
        """True if step's saved train state (per its readable metadata) has other leaves or shapes than `state`."""
        try:
            metadata = self.manager.item_metadata(step)[STATE_ITEM]
            return array_shapes(metadata) != array_shapes(state)
        except Exception:  # unreadable metadata: the step itself is broken, not the config
            return False

    def _mismatch(self, step: int, differences: list[str]) -> CheckpointMismatchError:
        return CheckpointMismatchError(
            f"checkpoint step {step} in {self.directory} was written with a different configuration: "
            + "; ".join(differences)
            + ". Nothing was changed: rerun with the checkpoint's config, or use a new --workdir."
        )

    def _read_error(self, step: int, error: Exception | None) -> CheckpointReadError:
        cause = f"{type(error).__name__}: {error}" if error is not None else "another process failed to read it"
        return CheckpointReadError(
            f"checkpoint step {step} in {self.directory} could not be read, and nothing shows its files are "
            f"damaged: {cause}. Nothing was changed; rerun once the storage (or memory) problem is solved."
        )

    def _set_aside(self) -> list[str]:
        """Names of the steps set aside by earlier runs, newest step first."""
        if not self.directory.exists():
            return []
        names = [p.name for p in self.directory.iterdir() if p.name.startswith(SET_ASIDE_PREFIX)]
        return sorted(names, key=lambda name: int(name.split("-")[1]), reverse=True)

    def _set_step_aside(self, step: int, reason: str) -> str:
        """Moves a damaged step out of the way (process 0; read-only use only skips it); says what was done."""
        if self.read_only:
            logging.warning("skipping unreadable checkpoint step %d in %s: %s", step, self.directory, reason)
            return f"skipped: {reason}"
        aside = self.directory / f"{SET_ASIDE_PREFIX}{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        logging.warning(
            "checkpoint step %d in %s is damaged, moved to %s: %s", step, self.directory, aside.name, reason
        )
        if hosts.is_main():
            (self.directory / str(step)).rename(aside)
        hosts.barrier(f"set-aside-{step}")
        self.manager.reload()
        return f"moved to {aside.name}: {reason}"

    def close(self) -> None:
        """Waits for a save in progress, then releases the manager."""
        self.manager.close()
