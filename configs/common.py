"""The fields every config has, with the GhostNetV3 recipe's defaults. Presets change only what differs."""

from __future__ import annotations

import ml_collections

from ghostnet_jax.data.pipeline import default_data_config
from ghostnet_jax.compilation_cache import default_directory


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = "train"  # 'train', or 'eval' to evaluate the latest checkpoint in --workdir
    c.seed = 0
    c.multihost = False  # call jax.distributed.initialize() (Cloud TPU pods, multi-node GPU, several processes)
    # Where auto-detection does not apply (anything but Cloud TPU, SLURM, Open MPI, Kubernetes): set all three.
    c.distributed = ml_collections.ConfigDict(
        dict(
            coordinator_address=ml_collections.FieldReference(None, field_type=str),  # HOST:PORT of process 0
            num_processes=ml_collections.FieldReference(None, field_type=int),
            process_id=ml_collections.FieldReference(None, field_type=int),
        )
    )

    # Model: registry name; None means the variant's own default for that override.
    c.model = ml_collections.ConfigDict(
        dict(
            name="ghostnetv3_100",
            width=ml_collections.FieldReference(None, field_type=float),
            dropout=ml_collections.FieldReference(None, field_type=float),
            dfc_upsample=ml_collections.FieldReference(None, field_type=str),
            num_conv_branches=ml_collections.FieldReference(None, field_type=int),
            scale_branch=ml_collections.FieldReference(None, field_type=bool),
            identity_branch=ml_collections.FieldReference(None, field_type=bool),
            # Compute dtype: 'auto' is bfloat16 on TPU/GPU (float32 parameters, like AMP) and float32 on CPU,
            # where XLA runs bfloat16 several times slower; or 'float32' / 'bfloat16' explicitly.
            dtype="auto",
        )
    )
    c.remat = "none"  # 'block': recompute each bottleneck's activations in the backward pass (less memory)
    # Fine-tuning: start from the weights (and BatchNorm statistics) of a saved network: converted weights or a
    # run's checkpoints directory (its EMA weights). The classifier is re-initialised when the number of classes
    # differs. The run's own checkpoints, once it has some, take precedence (resume).
    c.init_from = ""
    # The backbone (all but the classifier) frozen for the first freeze_steps steps (weights unchanged, BatchNorm on
    # its running statistics; at least the run's steps: a linear probe), and its learning rate scaled after that.
    c.finetune = ml_collections.ConfigDict(dict(freeze_steps=0, backbone_lr_scale=1.0))
    c.data = default_data_config()
    c.batch_size = 1024  # global, over all hosts and devices
    c.num_epochs = 600.0
    c.max_steps = ml_collections.FieldReference(None, field_type=int)  # stop early (budgets, smoke tests)

    c.optim = ml_collections.ConfigDict(
        dict(
            name="sgd",  # 'sgd' (Nesterov), 'rmsprop' (TF-style) or 'adamw'
            lr=0.4,  # peak, for the global batch size above
            momentum=0.9,
            nesterov=True,
            eps=1e-3,  # RMSprop / AdamW epsilon
            weight_decay=2e-5,  # not applied to BatchNorm parameters or biases
            schedule="cosine",  # 'cosine' or 'step'
            warmup_epochs=3.0,
            warmup_lr=1e-4,
            min_lr=1e-5,
            decay_epochs=2.4,  # 'step' schedule only
            decay_rate=0.973,  # 'step' schedule only
        )
    )
    c.loss = ml_collections.ConfigDict(dict(label_smoothing=0.1))
    # L = (1 - alpha) * CE + alpha * tau^2 * KL(teacher_tau || student_tau); alpha = 0 loads no teacher.
    # What the teacher sees: the student's augmented batch, its shorter side resized to teacher_size px (the official
    # --teacher-resize; None keeps the student's size) and re-normalised with teacher_mean/std (0..1 units, like
    # data.mean/std; None: the teacher was trained with the student's).
    c.distill = ml_collections.ConfigDict(
        dict(
            alpha=0.5,
            temperature=1.0,
            teacher="",
            weighting="convex",
            teacher_size=ml_collections.FieldReference(None, field_type=int),
            teacher_mean=ml_collections.FieldReference(None, field_type=tuple),
            teacher_std=ml_collections.FieldReference(None, field_type=tuple),
        )
    )
    c.ema = ml_collections.ConfigDict(dict(decay=0.9999, warmup=True))
    c.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5))
    c.cross_device_bn = True  # BatchNorm statistics over the global batch

    c.log_every_steps = 100
    c.eval_every_epochs = 1.0
    c.checkpoint_every_steps = 2000
    c.keep_checkpoints = 3  # the latest N, plus the best by EMA top-1
    # Write checkpoints in the background while training goes on (Orbax; the preemption and final ones are waited
    # for). None: on TPU and GPU, where a save would otherwise leave the chips idle; not on CPU.
    c.async_checkpointing = ml_collections.FieldReference(None, field_type=bool)
    # Resume with a config that changes what training computes (lr, batch size, data, ...): refused unless set;
    # then the differences are logged and each segment's config kept (config.json, config.step-<N>.json).
    c.allow_config_change = False
    # JAX's persistent compilation cache: a repeated or resumed run loads its compiled steps ('' turns it off).
    c.compilation_cache_dir = default_directory()
    return c


def fashion_mnist(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The offline preset: Fashion-MNIST from the Debian package, upscaled, sized for a 2-core CPU.

    GhostNet downsamples by 32 and DFC pools by 2 more, so V2/V3 need at least 33 px; the 28 px images
    are upscaled to 40. Training lasts a few epochs, too short for strong augmentation to pay off (the
    experiments' augmentation arms measure it), so crops are mild and RandAugment and erasing are off.
    """
    config.data.update(
        name="fashion_mnist_debian",
        eval_split="test",
        image_size=40,
        crop_scale=(0.8, 1.0),
        eval_crop_pct=1.0,
        randaugment="",
        random_erasing=0.0,
        cache=True,
    )
    config.batch_size = 128
    config.num_epochs = 2.0
    config.optim.update(name="sgd", lr=0.2, warmup_epochs=0.1, warmup_lr=0.01, min_lr=1e-4, weight_decay=5e-5)
    config.ema.decay = 0.998
    config.log_every_steps = 50
    config.eval_every_epochs = 1.0
    config.checkpoint_every_steps = 200
    return config


def finetune(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fine-tuning released ImageNet weights on your own images: set --config.init_from (converted weights) and
    --config.data.folder (DIR/train/CLASS/*.jpg and DIR/test|val|validation/CLASS/*.jpg).

    The converted weights' own inputs (224 px, ImageNet mean/std, bicubic); a short run at a tenth of the
    from-scratch learning rate, no distillation, mild RandAugment; the images are read from disk every epoch
    (they may differ in size, so they cannot be cached as one array).
    """
    config.data.update(name="folder", randaugment="rand-m7-mstd0.5", random_erasing=0.0, cache=False)
    config.batch_size = 64
    config.num_epochs = 10.0
    config.optim.update(name="sgd", lr=0.01, warmup_epochs=1.0, warmup_lr=1e-4, min_lr=0.0, weight_decay=1e-5)
    config.distill.alpha = 0.0
    config.mixup.update(mixup_alpha=0.0, cutmix_alpha=0.0)
    config.ema.decay = 0.998
    config.log_every_steps = 10
    config.eval_every_epochs = 1.0
    config.checkpoint_every_steps = 200
    return config


def with_preset(config: ml_collections.ConfigDict, preset: str | None, presets: dict, source: str):
    """Applies the named preset (a function editing `config`), or raises naming the available ones."""
    if not preset:
        return config
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for {source}; available: {', '.join(presets)}")
    presets[preset](config)
    return config
