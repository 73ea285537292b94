"""Fine-tuning: a run's starting weights from another network's checkpoint (`config.init_from`), and the backbone's
freeze and learning-rate scale (`config.finetune`).

The head is the classifier layer alone (what timm's `reset_classifier` replaces); everything else is the backbone.
"""

from __future__ import annotations

import logging

import jax
import ml_collections
import optax
from flax import nnx, traverse_util

from ghostnet_jax.model_checkpoint import key_problems, load_model
from ghostnet_jax.models.layers import BatchNorm
from ghostnet_jax.training.optim import create_optimizer

HEAD = "classifier"
STEM_KERNEL = ("stem", "conv", "kernel")  # HWIO


def is_head(path: tuple) -> bool:
    """Whether the parameter at `path` (a pytree path into the model's parameters) belongs to the head."""
    first = path[0]
    return str(getattr(first, "key", getattr(first, "name", first))) == HEAD


def init_from(model: nnx.Module, directory: str, described: str) -> None:
    """Copies the parameters and BatchNorm statistics of the network saved in `directory` (converted weights, or a
    run's `checkpoints`: its EMA weights) into `model` (`described` in errors, e.g. its name), in place.

    The head keeps its fresh initialisation when its shape differs (another number of classes), and RGB weights
    start a greyscale network with the stem's kernel summed over its input channels (timm's `adapt_input_conv`),
    both logged; any other difference (another variant, width or number of branches) raises ValueError naming the
    parameters.
    """
    source, spec = load_model(directory)
    if spec.get("fused"):
        raise ValueError(
            f"init_from {directory} holds {spec['name']} in V3's deploy form (its re-parameterised "
            "branches fused), which cannot be trained: convert the training-form weights instead"
        )
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    ours = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    theirs = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(source, (nnx.Param, nnx.BatchStat))))
    stem = theirs[STEM_KERNEL]
    if ours[STEM_KERNEL].shape[2] == 1 and stem.shape[2] == 3:
        logging.warning(
            "init_from %s: RGB weights for a greyscale run: the stem's kernel is summed over its input channels",
            directory,
        )
        theirs[STEM_KERNEL] = stem.sum(axis=2, keepdims=True)
    reset = [path for path in ours.keys() & theirs.keys() if path[0] == HEAD and theirs[path].shape != ours[path].shape]
    mismatched = [
        f"{_dotted(path)} {theirs[path].shape} (expected {ours[path].shape})"
        for path in ours.keys() & theirs.keys()
        if theirs[path].shape != ours[path].shape and path[0] != HEAD
    ]
    problems = key_problems([_dotted(p) for p in ours], [_dotted(p) for p in theirs], sorted(mismatched))
    if problems:
        raise ValueError(
            f"init_from {directory} ({spec['name']}) does not fit {described}:\n  " + "\n  ".join(problems)
        )
    if reset:
        classes = theirs[(HEAD, "kernel")].shape[-1], ours[(HEAD, "kernel")].shape[-1]
        logging.warning(
            "init_from %s: the %s layer is re-initialised (%d classes there, %d here)", directory, HEAD, *classes
        )
    nnx.replace_by_pure_dict(
        state,
        traverse_util.unflatten_dict({path: value if path in reset else theirs[path] for path, value in ours.items()}),
    )
    nnx.update(model, state)


def _dotted(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def freeze_batchnorm(model: nnx.Module) -> None:
    """Every BatchNorm normalises with its running statistics and leaves them as they are (timm's frozen
    BatchNorm): what a frozen backbone means, so that the head learns on the features it will be evaluated on."""
    model.set_attributes(BatchNorm, use_running_average=True)


def stop_backbone_gradients(params: nnx.State) -> nnx.State:
    """The parameters with the backbone's behind stop_gradient: XLA then drops the backbone's backward pass."""
    return jax.tree_util.tree_map_with_path(lambda path, p: p if is_head(path) else jax.lax.stop_gradient(p), params)


def training_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The config's optimizer, with the backbone frozen for `finetune.freeze_steps` steps (no update, weight decay
    and momentum included) and its learning rate scaled by `finetune.backbone_lr_scale` when either is set.

    While frozen the backbone's optimizer state does not advance, so its schedule is read `freeze_steps` ahead:
    both parts follow the run's step. Without fine-tuning options it is `create_optimizer` itself (the same
    optimizer state, so runs and checkpoints from before these options are unchanged).
    """
    freeze, scale = config.finetune.freeze_steps, config.finetune.backbone_lr_scale
    head = create_optimizer(config.optim, schedule)
    if freeze == 0 and scale == 1.0:
        return head
    backbone = create_optimizer(config.optim, lambda count: scale * schedule(count + freeze))
    if freeze:
        backbone = optax.transforms.conditionally_mask(backbone, lambda count: count >= freeze)
    return optax.multi_transform(
        {"head": head, "backbone": backbone},
        lambda params: jax.tree_util.tree_map_with_path(
            lambda path, _: "head" if is_head(path) else "backbone", params
        ),
    )
