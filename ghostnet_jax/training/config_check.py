"""Fail at start, naming the field, rather than hours into a run."""

from __future__ import annotations

import ml_collections

from ghostnet_jax.models import list_models
from ghostnet_jax.models.registry import teacher_family
from ghostnet_jax.models.ghostnet import REMAT_MODES
from ghostnet_jax.models.layers import COMPUTE_DTYPES

DISTILL_WEIGHTINGS = ("convex", "sum")
_DTYPE_REQUIREMENT = (
    f"must be 'auto' or one of {COMPUTE_DTYPES} (float16 is not supported: it needs loss scaling; use bfloat16)"
)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field of `config`."""
    checks = [
        ("mode", config.mode in ("train", "eval"), "must be 'train' or 'eval'"),
        (
            "model.name",
            config.model.name in list_models(teachers=True),
            f"must be one of {list_models(teachers=True)}",
        ),
        ("model.dtype", config.model.dtype in ("auto", *COMPUTE_DTYPES), _DTYPE_REQUIREMENT),
        ("remat", config.remat in REMAT_MODES, f"must be one of {REMAT_MODES}"),
        (
            "remat",
            config.remat == "none" or teacher_family(config.model.name) is None,
            f"must be 'none' for {config.model.name} ('block' recomputes GhostNet bottlenecks only)",
        ),
        (
            "init_from",
            not config.init_from or teacher_family(config.model.name) is None,
            f"fine-tunes GhostNets; {config.model.name} is a teacher",
        ),
        (
            "finetune.freeze_steps",
            isinstance(config.finetune.freeze_steps, int) and config.finetune.freeze_steps >= 0,
            "must be an integer >= 0",
        ),
        ("finetune.backbone_lr_scale", config.finetune.backbone_lr_scale >= 0, "must be >= 0"),
        (
            "data.folder",
            config.data.name != "folder" or bool(config.data.folder),
            "must name your image folder (DIR/SPLIT/CLASS/IMAGE): the finetune preset reads one",
        ),
        ("batch_size", config.batch_size > 0, "must be positive"),
        ("num_epochs", config.num_epochs > 0, "must be positive"),
        ("max_steps", config.max_steps is None or config.max_steps > 0, "must be positive or None"),
        ("optim.name", config.optim.name in ("sgd", "rmsprop", "adamw"), "must be 'sgd', 'rmsprop' or 'adamw'"),
        ("optim.schedule", config.optim.schedule in ("cosine", "step"), "must be 'cosine' or 'step'"),
        ("optim.lr", config.optim.lr > 0, "must be positive"),
        ("optim.min_lr", 0 <= config.optim.min_lr <= config.optim.lr, "must be in [0, optim.lr]"),
        ("optim.warmup_epochs", config.optim.warmup_epochs >= 0, "must be >= 0"),
        ("optim.weight_decay", config.optim.weight_decay >= 0, "must be >= 0"),
        ("loss.label_smoothing", 0 <= config.loss.label_smoothing < 1, "must be in [0, 1)"),
        ("distill.alpha", 0 <= config.distill.alpha <= 1, "must be in [0, 1]"),
        (
            "distill.weighting",
            config.distill.weighting in DISTILL_WEIGHTINGS,
            f"must be one of {DISTILL_WEIGHTINGS}: 'convex' = (1-alpha)*CE + alpha*KD, 'sum' = CE + alpha*KD",
        ),
        ("distill.temperature", config.distill.temperature > 0, "must be positive"),
        (
            "distill.teacher_size",
            config.distill.teacher_size is None or config.distill.teacher_size > 0,
            "must be a positive number of pixels (the shorter side) or None (the student's size)",
        ),
        (
            "distill.teacher_std",
            len(config.distill.teacher_mean or ()) == len(config.distill.teacher_std or ()),
            "must have as many values as distill.teacher_mean (both None: the student's data.mean/std)",
        ),
        ("distill.teacher_std", all(s > 0 for s in config.distill.teacher_std or ()), "must be positive"),
        (
            "distill.teacher",
            config.distill.alpha == 0 or bool(config.distill.teacher),
            "must name a checkpoint directory when distill.alpha > 0 (or set distill.alpha=0)",
        ),
        ("ema.decay", 0 <= config.ema.decay < 1, "must be in [0, 1)"),
        ("mixup.mixup_alpha", config.mixup.mixup_alpha >= 0, "must be >= 0"),
        ("mixup.cutmix_alpha", config.mixup.cutmix_alpha >= 0, "must be >= 0"),
        ("mixup.prob", 0 <= config.mixup.prob <= 1, "must be in [0, 1]"),
        ("log_every_steps", config.log_every_steps > 0, "must be positive"),
        ("checkpoint_every_steps", config.checkpoint_every_steps > 0, "must be positive"),
        ("keep_checkpoints", config.keep_checkpoints > 0, "must be positive"),
        ("eval_every_epochs", config.eval_every_epochs > 0, "must be positive"),
    ]
    for field, ok, requirement in checks:
        if not ok:
            raise ValueError(f"invalid config: config.{field}={_get(config, field)!r} {requirement}")


def _get(config: ml_collections.ConfigDict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config
