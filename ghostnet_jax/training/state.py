"""The train state: everything a step reads and writes, as one pytree that Orbax saves and restores."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
    """Step counter, parameters, BatchNorm statistics, optimizer state, their EMA, and the step RNG key.

    `rng` is a raw uint32 key; each step derives its dropout and Mixup keys from (rng, step, device), so a
    resumed run draws exactly the numbers the uninterrupted run would have.
    """

    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState
    ema_params: nnx.State
    ema_batch_stats: nnx.State
    rng: jax.Array


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
    """(graphdef, params, batch statistics, everything else) of an NNX model, for pure steps."""
    return nnx.split(model, nnx.Param, nnx.BatchStat, ...)


def create_train_state(
    params: nnx.State, batch_stats: nnx.State, tx: optax.GradientTransformation, seed: int
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),  # own buffers: the step donates the whole state
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        rng=jax.random.PRNGKey(seed),
    )


def ema_decay(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """The EMA decay at `step` (the number of updates so far): min(decay, (1 + step) / (10 + step)) with warmup.

    The warmup (TensorFlow's `num_updates` rule) keeps a short run's EMA from being dominated by the
    initial weights; with decay 0.9999 it reaches full strength after about 90k steps.
    """
    decay = jnp.asarray(decay, jnp.float32)
    if not warmup:
        return decay
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(average, new, decay: jax.Array):
    """decay * average + (1 - decay) * new, leaf by leaf."""
    return optax.incremental_update(new, average, step_size=1.0 - decay)
