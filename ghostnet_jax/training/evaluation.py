"""Evaluation, one path for the trainer and the evaluate tool: an eval-mode network's loss, top-1 and top-5 over
eval batches, through the pmapped eval step on every local device."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from ghostnet_jax.data.pipeline import eval_batches, prefetch_to_device
from ghostnet_jax.models import fuse
from ghostnet_jax.training import hosts
from ghostnet_jax.training.steps import make_eval_step, pmap_eval_step


class EvalSteps:
    """The compiled eval step of each network structure evaluated so far (one per GraphDef)."""

    def __init__(self) -> None:
        self._steps: dict[Any, Callable] = {}

    def __call__(self, graphdef: nnx.GraphDef) -> Callable:
        if graphdef not in self._steps:
            platform = jax.local_devices()[0].platform
            self._steps[graphdef] = pmap_eval_step(make_eval_step(graphdef, platform=platform))
        return self._steps[graphdef]


def evaluate_model(
    model: nnx.Module, batches: Iterable[dict[str, np.ndarray]], steps: EvalSteps | None = None
) -> dict[str, float]:
    """{'loss', 'top1', 'top5', 'examples'} of the eval-mode `model` over `batches` (the `eval_batches` layout,
    padding masked out), computed on every local device; `steps` keeps the compiled step for the next call."""
    graphdef, variables = nnx.split(model)
    step = (steps or EvalSteps())(graphdef)
    variables = hosts.replicated(variables)  # placed once per evaluation, not sent again with every batch
    totals = None
    for batch in prefetch_to_device(batches):
        sums = step(variables, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in jax.device_get(totals or {}).items()}
    if not totals.get("count"):
        raise ValueError("the eval split is empty")
    count = totals.pop("count")
    return {k: v / count for k, v in totals.items()} | {"examples": int(count)}


class Evaluator:
    """The trainer's evaluation of parameters on the config's eval split, with V3 fused first (what a deployed model
    runs; for models without re-parameterised branches `fuse` is an eval-mode copy)."""

    def __init__(self, model: nnx.Module, config: ml_collections.ConfigDict):
        self.template = nnx.clone(model)
        self.template.eval()
        self.config = config
        self.steps = EvalSteps()

    def model_with(self, params: nnx.State, batch_stats: nnx.State) -> nnx.Module:
        """The (unfused) eval-mode model holding these parameters and statistics."""
        nnx.update(self.template, jax.device_get(params), jax.device_get(batch_stats))
        return self.template

    def __call__(self, params: nnx.State, batch_stats: nnx.State) -> dict[str, float]:
        """{'loss', 'top1', 'top5'}: the metrics the training log records."""
        batches = eval_batches(self.config.data, global_batch_size=self.config.batch_size)
        metrics = evaluate_model(fuse(self.model_with(params, batch_stats)), batches, self.steps)
        metrics.pop("examples")
        return metrics
