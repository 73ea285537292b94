"""Training checkpoints: periodic, atomic (Orbax), exactly the latest N plus the best kept, never lost to a restore.

Each step directory holds `train_state` (everything needed to resume bit for bit), plus `model` and
`spec` in the format of `ghostnet_jax.checkpoint`, holding the EMA weights: so any training run's
directory can be loaded by `load_model`, e.g. as a distillation teacher.

A restore tells three failures apart. A step whose files are missing or invalid (a write cut short, a damaged
disk) is set aside as `corrupt-<step>-<time>` and the previous step is tried; in read-only use it is only skipped.
A checkpoint written for another model or optimizer (its files read, but do not fit) is a `CheckpointMismatchError`
naming the differing config fields. An I/O error that may be transient propagates. The last two touch nothing.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from ghostnet_jax.checkpoint import MODEL_ITEM, SPEC_ITEM
from ghostnet_jax.storage import storage_path
from ghostnet_jax.training import hosts
from ghostnet_jax.training.config_diff import spec_differences
from ghostnet_jax.training.state import TrainState

STATE_ITEM = "train_state"
BEST_METRIC = "ema_top1"
# Errors that say the files are there but could not be reached now (permissions, network, quota): never "corrupt".
_FILES_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class CheckpointMismatchError(ValueError):
    """The checkpoint was written for another configuration than this run's; nothing on disk was changed."""


def _transient(error: BaseException) -> bool:
    return isinstance(error, OSError) and not isinstance(error, _FILES_MISSING)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'params/stem/conv/kernel': shape, ...} of a state or of Orbax's metadata of one, keyed alike."""

    def name(entry: Any) -> str:
        return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(entry) for entry in path): tuple(leaf.shape) for path, leaf in leaves}


class TrainCheckpointer:
    """Saves and restores `TrainState`s under `directory` (a path or URL); every process takes part in each call."""

    def __init__(self, directory: str | os.PathLike, *, keep: int, spec: dict[str, Any], read_only: bool = False):
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
            preservation_policy=policy, enable_async_checkpointing=False, read_only=read_only, create=not read_only
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

    def save(self, state: TrainState, model_variables: dict, metrics: dict[str, float] | None = None) -> None:
        """Writes `state` at its step, with the EMA model's variables; `metrics` rank it for 'best'."""
        step = int(jax.device_get(state.step))
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardSave(hosts.to_global(state)),
                MODEL_ITEM: ocp.args.StandardSave(model_variables),
                SPEC_ITEM: ocp.args.JsonSave(self.spec),
            }
        )
        self.manager.save(step, args=args, metrics=metrics, force=True)
        self.manager.wait_until_finished()

    def restore_latest(self, state: TrainState, config_differences: list[str] = ()) -> TrainState | None:
        """The newest step that restores into the structure of `state` (placed like `state`), or None if none does.

        `config_differences` (this config against the one the checkpoints were written with) go into the error
        raised when a readable checkpoint does not fit."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                saved_spec = self._restore(step, SPEC_ITEM, ocp.args.JsonRestore())
            except Exception as error:
                self._unreadable(step, error)
                continue
            differences = spec_differences(saved_spec, self.spec)
            if differences:
                raise self._mismatch(step, differences + list(config_differences))
            try:
                restored = self._restore(step, STATE_ITEM, ocp.args.StandardRestore(hosts.abstract_global(state)))
                return hosts.to_local(restored)
            except Exception as error:
                if self._layout_differs(step, state):
                    raise self._mismatch(step, list(config_differences) or [f"the train state's layout: {error}"])
                self._unreadable(step, error)
        return None

    def _restore(self, step: int, item: str, args: Any) -> Any:
        return self.manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]

    def _layout_differs(self, step: int, state: TrainState) -> bool:
        """True if step's saved train state (per its readable metadata) has other leaves or shapes than `state`."""
        try:
            metadata = self.manager.item_metadata(step)[STATE_ITEM]
            return _shapes(metadata) != _shapes(state)
        except Exception:  # unreadable metadata: the step itself is broken, not the config
            return False

    def _mismatch(self, step: int, differences: list[str]) -> CheckpointMismatchError:
        return CheckpointMismatchError(
            f"checkpoint step {step} in {self.directory} was written with a different configuration: "
            + "; ".join(differences)
            + ". Nothing was changed: rerun with the checkpoint's config, or use a new --workdir."
        )

    def _unreadable(self, step: int, error: Exception) -> None:
        """Sets a step with missing or invalid files aside (only skips it when read-only); transient errors raise."""
        if _transient(error):
            raise error
        if self.read_only:
            logging.warning("skipping unreadable checkpoint step %d in %s: %s", step, self.directory, error)
            return
        aside = self.directory / f"corrupt-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        logging.warning("skipping checkpoint step %d in %s (moved to %s): %s", step, self.directory, aside.name, error)
        if hosts.is_main():
            (self.directory / str(step)).rename(aside)
        hosts.barrier(f"set-aside-{step}")
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()
