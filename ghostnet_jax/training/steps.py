"""Pure train and eval steps over `nnx.split` state, written to run under `jax.pmap(axis_name='batch')`."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from ghostnet_jax.models import compiling_for
from ghostnet_jax.training.hosts import AXIS
from ghostnet_jax.training.finetune import freeze_batchnorm, stop_backbone_gradients
from ghostnet_jax.training.losses import distillation_loss, smooth_labels
from ghostnet_jax.training.mixup import mix_batch
from ghostnet_jax.training.state import TrainState, ema_decay, ema_update

# Names the teacher's ops in jaxprs, HLO and profiles: its cost shows apart, and a test checks none is differentiated.
TEACHER_SCOPE = "teacher"


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the k highest logits, per example."""
    top = jax.lax.top_k(logits, k)[1]
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
    num_classes: int,
    teacher_graphdef: nnx.GraphDef | None = None,
    teacher_view: Callable[[jax.Array], jax.Array] | None = None,
    *,
    platform: str | None = None,
    frozen_backbone: bool = False,
) -> Callable:
    """Returns step(state, rest, teacher_variables, batch) -> (state, metrics), to be pmapped over AXIS.

    `platform` ('cpu', 'gpu', 'tpu') is that of the devices the step will run on: the convolutions' kernels are
    chosen for it (None: JAX's default backend, right unless compiling ahead of time for other devices).

    `rest` is the model's non-trainable, non-BatchNorm state (its RNG key, read but not used: dropout draws from
    the state's key). It is an argument, not a closed-over constant, so runs that differ only in their seed lower to
    the same program and share one compilation through JAX's persistent cache.

    The student runs in train mode; the teacher (if any) in eval mode on the same augmented batch (through
    `teacher_view`, e.g. a `training.teacher.TeacherView`, when given) under stop_gradient, outside the
    differentiated function. Gradients, metrics and BatchNorm statistics are averaged across devices, so the state
    stays replicated.

    With `frozen_backbone` (fine-tuning, `training.finetune`) the backbone gets no gradient and its BatchNorm runs
    on, and keeps, its running statistics; the optimizer (`finetune.training_optimizer`) leaves its weights as they
    are.
    """
    use_mixup = config.mixup.mixup_alpha > 0 or config.mixup.cutmix_alpha > 0

    def step(state: TrainState, rest: nnx.State, teacher_variables, batch):
        with compiling_for(platform or jax.default_backend()):
            return traced_step(state, rest, teacher_variables, batch)

    def traced_step(state: TrainState, rest: nnx.State, teacher_variables, batch):
        rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))
        mix_rng, dropout_rng = jax.random.split(rng)
        images = batch["image"]
        targets = smooth_labels(batch["label"], num_classes, config.loss.label_smoothing)
        if use_mixup:
            images, targets = mix_batch(mix_rng, images, targets, config.mixup)
        teacher_logits = None
        if teacher_graphdef is not None:
            with jax.named_scope(TEACHER_SCOPE):
                teacher_images = teacher_view(images) if teacher_view is not None else images
                teacher_logits = jax.lax.stop_gradient(nnx.merge(teacher_graphdef, teacher_variables)(teacher_images))

        def loss_fn(params):
            if frozen_backbone:
                params = stop_backbone_gradients(params)
            model = nnx.merge(graphdef, params, state.batch_stats, rest, copy=True)
            if frozen_backbone:
                freeze_batchnorm(model)
            logits = model(images, rngs=nnx.Rngs(dropout=dropout_rng))
            loss, parts = distillation_loss(
                logits,
                targets,
                teacher_logits,
                alpha=config.distill.alpha,
                temperature=config.distill.temperature,
                weighting=config.distill.weighting,
            )
            return loss, (logits, parts, nnx.state(model, nnx.BatchStat))

        (loss, (logits, parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, AXIS)
        batch_stats = state.batch_stats if frozen_backbone else jax.lax.pmean(batch_stats, AXIS)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay(state.step, config.ema.decay, config.ema.warmup)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            ema_params=ema_update(state.ema_params, params, decay),
            ema_batch_stats=ema_update(state.ema_batch_stats, batch_stats, decay),
        )
        metrics = {"loss": loss, "top1": top_k_correct(logits, batch["label"], 1).mean(), **parts}
        metrics = jax.lax.pmean(metrics, AXIS)
        metrics["lr"] = schedule(state.step)
        return new_state, metrics

    return step


def pmap_train_step(step: Callable, devices: list | None = None) -> Callable:
    """The train step pmapped as training runs it: state, rest and teacher replicated (and the state donated),
    the batch split over `devices` (None: every device)."""
    return jax.pmap(
        step, axis_name=AXIS, in_axes=(None, None, None, 0), out_axes=None, donate_argnums=(0,), devices=devices
    )


def make_eval_step(graphdef: nnx.GraphDef, *, platform: str | None = None) -> Callable:
    """Returns step(variables, batch) -> summed metrics over all devices (padding excluded by the mask); `platform`
    as in `make_train_step`."""

    def step(variables, batch):
        with compiling_for(platform or jax.default_backend()):
            logits = nnx.merge(graphdef, variables)(batch["image"])
        labels, mask = batch["label"], batch["mask"]
        loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
        sums = {
            "loss": loss * mask,
            "top1": top_k_correct(logits, labels, 1) * mask,
            "top5": top_k_correct(logits, labels, min(5, logits.shape[-1])) * mask,
            "count": mask,
        }
        return jax.lax.psum(jax.tree.map(jnp.sum, sums), AXIS)

    return step


def pmap_eval_step(step: Callable, devices: list | None = None) -> Callable:
    """The eval step pmapped as evaluation runs it: variables replicated, the batch split over `devices`."""
    return jax.pmap(step, axis_name=AXIS, in_axes=(None, 0), devices=devices)
