"""GhostNet V1: the official TF recipe (SGD, 5 warmup epochs + cosine, 400 epochs, wd 4e-5, no RandAugment).

`configs/v1.py:fashion_mnist` trains the offline preset's distillation teacher (ghostnet_050);
`configs/v1.py:finetune` fine-tunes converted weights on an image folder (`configs.common.finetune`).
"""

import ml_collections

from configs.common import base_config, fashion_mnist, finetune, with_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    config = base_config()
    config.model.name = "ghostnet_100"
    config.data.update(name="imagenet2012", eval_split="validation", randaugment="", random_erasing=0.0)
    config.num_epochs = 400.0
    config.optim.update(name="sgd", lr=0.1, weight_decay=4e-5, warmup_epochs=5.0, min_lr=0.0, warmup_lr=0.0)
    config.distill.alpha = 0.0
    presets = {"fashion_mnist": _fashion_mnist_teacher, "finetune": finetune}
    return with_preset(config, preset, presets, "configs/v1.py")


def _fashion_mnist_teacher(config: ml_collections.ConfigDict) -> None:
    fashion_mnist(config)
    config.model.name = "ghostnet_050"
