"""Training checkpoints: periodic, atomic (Orbax), the last N and the best kept, corrupt ones skipped.

Each step directory holds `train_state` (everything needed to resume bit for bit), plus `model` and
`spec` in the format of `ghostnet_jax.checkpoint`, holding the EMA weights: so any training run's
directory can be loaded by `load_model`, e.g. as a distillation teacher.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from ghostnet_jax.checkpoint import MODEL_ITEM, SPEC_ITEM
from ghostnet_jax.training.state import TrainState

STATE_ITEM = "train_state"
BEST_METRIC = "ema_top1"


class TrainCheckpointer:
    """Saves and restores `TrainState`s under `directory` (only process 0 writes; Orbax coordinates hosts)."""

    def __init__(self, directory: str | Path, *, keep: int, spec: dict[str, Any]):
        self.spec = spec
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(keep),
                checkpoint_managers.BestN(get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=1),
            ]
        )
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def save(self, state: TrainState, model_variables: dict, metrics: dict[str, float] | None = None) -> None:
        """Writes `state` at its step, with the EMA model's variables; `metrics` rank it for 'best'."""
        step = int(jax.device_get(state.step))
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardSave(state),
                MODEL_ITEM: ocp.args.StandardSave(model_variables),
                SPEC_ITEM: ocp.args.JsonSave(self.spec),
            }
        )
        self.manager.save(step, args=args, metrics=metrics, force=True)
        self.manager.wait_until_finished()

    def restore_latest(self, abstract_state: TrainState) -> TrainState | None:
        """The newest checkpoint that restores cleanly; broken ones are skipped with a warning. None if none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state)})
                )
                return restored[STATE_ITEM]
            except Exception as error:  # a corrupt or partial step: set it aside, fall back to the previous one
                aside = Path(self.manager.directory) / f"corrupt-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
                logging.warning("skipping checkpoint step %d in %s (moved to %s): %s", step,
                                self.manager.directory, aside.name, error)
                (Path(self.manager.directory) / str(step)).rename(aside)
                self.manager.reload()
        return None

    def close(self) -> None:
        self.manager.close()
