"""Learning-rate schedules and optimizers, built from the `optim` section of the config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: float) -> optax.Schedule:
    """Linear warmup from `warmup_lr` to `lr` over `warmup_epochs`, then 'cosine' decay to `min_lr` at the end
    of training, or 'step' decay (multiply by `decay_rate` every `decay_epochs`, floored at `min_lr`)."""
    warmup_steps = int(round(optim.warmup_epochs * steps_per_epoch))
    total_steps = max(int(round(num_epochs * steps_per_epoch)), warmup_steps + 1)
    warmup = optax.linear_schedule(optim.warmup_lr, optim.lr, max(warmup_steps, 1))
    if optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(optim.lr, total_steps - warmup_steps, alpha=optim.min_lr / optim.lr)
    elif optim.schedule == "step":
        decay_steps = max(int(round(optim.decay_epochs * steps_per_epoch)), 1)

        def decay(step):
            return jnp.maximum(optim.lr * optim.decay_rate ** jnp.floor(step / decay_steps), optim.min_lr)

    else:
        raise ValueError(f"config.optim.schedule must be 'cosine' or 'step', got {optim.schedule!r}")
    return optax.join_schedules([warmup, decay], [warmup_steps])


def weight_decay_mask(params):
    """True for conv and dense kernels; BatchNorm scales/biases and all biases get no weight decay."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(optim: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """SGD (Nesterov), RMSprop (TF-style, as in the GhostNetV2 recipe) or AdamW, with masked weight decay.

    SGD and RMSprop take weight decay as an L2 term added to the gradient (PyTorch/timm semantics);
    AdamW decouples it.
    """
    l2 = optax.add_decayed_weights(optim.weight_decay, mask=weight_decay_mask)
    if optim.name == "sgd":
        return optax.chain(l2, optax.sgd(schedule, momentum=optim.momentum, nesterov=optim.nesterov))
    if optim.name == "rmsprop":
        rmsprop = optax.rmsprop(schedule, decay=0.9, eps=optim.eps, momentum=optim.momentum, initial_scale=1.0)
        return optax.chain(l2, rmsprop)
    if optim.name == "adamw":
        return optax.adamw(schedule, eps=optim.eps, weight_decay=optim.weight_decay, mask=weight_decay_mask)
    raise ValueError(f"config.optim.name must be 'sgd', 'rmsprop' or 'adamw', got {optim.name!r}")
