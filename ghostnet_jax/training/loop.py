"""The training loop: config -> model, teacher, data, pmapped steps -> checkpoints, logs and evaluations."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import ml_collections

from ghostnet_jax.model_checkpoint import model_spec, model_variables
from ghostnet_jax.data import model_inputs
from ghostnet_jax.data.pipeline import (
    dataset_info,
    prefetch_to_device,
    resolve_folder_splits,
    train_batches,
)
from ghostnet_jax.storage import storage_path
from ghostnet_jax.training import hosts
from ghostnet_jax.training.run_checkpoints import BEST_METRIC, TrainCheckpointer
from ghostnet_jax.compilation_cache import use_compilation_cache
from ghostnet_jax.training.config_check import validate_config
from ghostnet_jax.training.logger import MetricLogger
from ghostnet_jax.training.finetune import init_from, training_optimizer
from ghostnet_jax.training.optim import learning_rate_schedule
from ghostnet_jax.training.preemption import Preempted, Preemption
from ghostnet_jax.training.run_configs import RunConfigs
from ghostnet_jax.training.state import TrainState, create_train_state, split_model
from ghostnet_jax.training.evaluation import Evaluator
from ghostnet_jax.training.steps import make_train_step, pmap_train_step
from ghostnet_jax.training.student import model_overrides, student_model
from ghostnet_jax.training.teacher import load_teacher


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the run stops and nothing from after the last good checkpoint is saved."""


@jax.jit
def _all_finite(tree) -> jax.Array:
    """One compiled reduction over all leaves laid end to end: op-by-op it compiled a kernel per leaf shape, and a
    reduction per leaf compiles a kernel per leaf (V3 1.0x: 1630 of them, a minute on a 2-core CPU; this: 2 s)."""
    return jnp.isfinite(jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])).all()


@jax.jit
def _still_finite(ok: jax.Array, loss: jax.Array) -> jax.Array:
    """The NaN guard's per-step update, on device: the host reads it only at logs and checkpoints."""
    return ok & jnp.isfinite(loss).all()


def step_counts(config: ml_collections.ConfigDict, num_train: int) -> tuple[int, int]:
    """(steps per epoch, the step training ends at): whole batches per epoch, `num_epochs` of them, capped
    by `max_steps`."""
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"config.batch_size={config.batch_size} exceeds the {num_train} training examples")
    total_steps = int(math.ceil(config.num_epochs * steps_per_epoch))
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return steps_per_epoch, total_steps


def eval_interval(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Steps between evaluations (the run also evaluates at its final step)."""
    return max(int(round(config.eval_every_epochs * steps_per_epoch)), 1)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, float]:
    """Trains (or with mode='eval' evaluates) as `config` says, in `workdir` (a path or URL); returns the final
    metrics. Raises `Preempted` after checkpointing when SIGTERM stopped the run."""
    validate_config(config)
    resolve_folder_splits(config.data)
    use_compilation_cache(config.compilation_cache_dir)
    workdir = storage_path(workdir)
    is_main = hosts.is_main()
    read_only = config.mode == "eval"

    # Everything a bad config can fail on (data, model overrides, teacher) comes before the first write: an error
    # leaves the workdir as the user had it.
    info = dataset_info(config.data)
    platform = jax.local_devices()[0].platform  # kernels and the 'auto' dtype follow the devices the steps run on
    overrides = model_overrides(config, info.channels, platform)
    model = student_model(config, info.num_classes, overrides)
    if config.init_from:  # read on every start; a resumed run's checkpoint then replaces it
        init_from(model, config.init_from, config.model.name)
    teacher_graphdef, teacher_variables, view = (
        (None, None, None) if read_only else load_teacher(config, info.num_classes, info.channels, overrides["dtype"])
    )
    if is_main and not read_only:
        workdir.mkdir(parents=True, exist_ok=True)
    graphdef, params, batch_stats, rest = split_model(model)
    spec = model_spec(
        config.model.name,
        num_classes=info.num_classes,
        overrides=overrides,
        fused=False,
        data=model_inputs.from_data_config(config.data),
    )

    steps_per_epoch, total_steps = step_counts(config, info.num_train)
    schedule = learning_rate_schedule(config.optim, steps_per_epoch, config.num_epochs)
    tx = training_optimizer(config, schedule)
    state = create_train_state(params, batch_stats, tx, config.seed)

    hosts.barrier("started")  # before Orbax's first collective: start-ups (preparing a dataset) may differ by minutes
    asynchronous = platform != "cpu" if config.async_checkpointing is None else config.async_checkpointing
    checkpointer = TrainCheckpointer(
        workdir / "checkpoints", keep=config.keep_checkpoints, spec=spec, read_only=read_only, asynchronous=asynchronous
    )
    configs = RunConfigs(workdir, config)
    if not read_only:
        configs.check_resume(checkpoints_exist=bool(checkpointer.steps()))
    restored = checkpointer.restore_latest(state, configs.differences)
    state = hosts.replicated(restored if restored is not None else state)
    start_step = int(jax.device_get(state.step))
    if not read_only:  # written once the checkpoints are known to fit this config
        configs.record(start_step)
    evaluator = Evaluator(model, config)

    def evaluate(state: TrainState) -> dict[str, float]:
        metrics = {f"ema_{k}": v for k, v in evaluator(state.ema_params, state.ema_batch_stats).items()}
        return metrics | evaluator(state.params, state.batch_stats)

    if config.mode == "eval" or start_step >= total_steps:
        if restored is None:
            raise FileNotFoundError(f"mode=eval but {workdir / 'checkpoints'} holds no checkpoint")
        checkpointer.close()
        metrics = evaluate(state)
        if is_main:
            print(f"eval at step {start_step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        hosts.barrier("run-finished")  # process 0, the coordinator, leaves last
        return metrics

    teacher_variables = hosts.replicated(teacher_variables)  # placed once, not sent to every device at every step
    p_train_steps = {
        frozen: pmap_train_step(
            make_train_step(
                graphdef,
                tx,
                schedule,
                config,
                info.num_classes,
                teacher_graphdef,
                view,
                platform=platform,
                frozen_backbone=frozen,
            )
        )
        for frozen in (False, True)
    }  # each compiled when first called: the frozen one only for fine-tuning
    batches = prefetch_to_device(
        train_batches(config.data, global_batch_size=config.batch_size, seed=config.seed, start_step=start_step)
    )
    eval_every = eval_interval(config, steps_per_epoch)
    logger = MetricLogger(
        workdir, start_step=start_step, total_steps=total_steps, batch_size=config.batch_size, enabled=is_main
    )
    preemption = Preemption()
    preempted = False
    losses_finite = jnp.bool_(True)
    metrics: dict[str, float] = {}
    # The processes start the first step (its compile, then its first collective) together.
    hosts.barrier("first-step")
    try:
        for step in range(start_step, total_steps):
            p_train_step = p_train_steps[step < config.finetune.freeze_steps]
            state, step_metrics = p_train_step(state, rest, teacher_variables, next(batches))
            done = step + 1
            losses_finite = _still_finite(losses_finite, step_metrics["loss"])
            if done % config.log_every_steps == 0 or done == total_steps:
                values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                if not all(math.isfinite(v) for v in values.values()):
                    raise NonFiniteLossError(f"non-finite loss at step {done}: {values}; last good checkpoint kept")
                logger.log_train(done, values)
            evaluated = done % eval_every == 0 or done == total_steps
            if evaluated:
                metrics = evaluate(state)
                logger.log_eval(done, metrics)
            preempted = preemption.reached(done)
            if evaluated or done % config.checkpoint_every_steps == 0 or preempted:
                if not (losses_finite & _all_finite((state.params, state.batch_stats))):
                    raise NonFiniteLossError(f"non-finite loss or parameters by step {done}; last good checkpoint kept")
                ema_variables = model_variables(evaluator.model_with(state.ema_params, state.ema_batch_stats))
                checkpointer.save(state, ema_variables, metrics if evaluated else None, wait=preempted)
                logger.flush()
            if preempted:
                break
    finally:
        if not preempted:  # destroying tf.data's iterator can block for tens of seconds: a preempted run skips it
            batches.close()
        preemption.close()
        checkpointer.close()
        logger.close()
    hosts.barrier("run-finished")  # process 0, the coordinator, leaves last
    if preempted:
        raise Preempted(f"preempted at step {done}; checkpoint written in {checkpointer.directory}")
    summary = f"final: step {total_steps}, test top-1 (EMA weights) = {metrics.get(BEST_METRIC, float('nan')):.4f}"
    if is_main:
        print(summary + (f", raw weights = {metrics['top1']:.4f}" if "top1" in metrics else ""))
    return metrics
