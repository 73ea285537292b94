"""GhostNetV2: the official recipe (RMSprop-TF, step decay 0.973 every 2.4 epochs, 450 epochs, EMA 0.9999)."""

import ml_collections

from configs.common import base_config, fashion_mnist, finetune, with_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    config = base_config()
    config.model.name = "ghostnetv2_100"
    config.data.update(name="imagenet2012", eval_split="validation", randaugment="rand-m9-mstd0.5", random_erasing=0.2)
    config.num_epochs = 450.0
    config.optim.update(
        name="rmsprop",
        lr=0.064,
        eps=1e-3,
        momentum=0.9,
        weight_decay=1e-5,
        schedule="step",
        decay_epochs=2.4,
        decay_rate=0.973,
        warmup_epochs=3.0,
        warmup_lr=1e-6,
        min_lr=1e-5,
    )
    config.distill.alpha = 0.0
    return with_preset(config, preset, {"fashion_mnist": fashion_mnist, "finetune": finetune}, "configs/v2.py")
