"""ResNet teachers trained with this codebase (converted timm weights need no config: see the README).

`configs/resnet.py` is a classic ImageNet ResNet-50 recipe (SGD, 0.1 per 256 images, 5 warmup epochs, cosine,
wd 1e-4, label smoothing 0.1, 100 epochs); `configs/resnet.py:fashion_mnist` trains the offline strong
teacher: a resnet18 on the offline data, well above the 0.5x GhostNet students it teaches.
"""

import ml_collections

from configs.common import base_config, fashion_mnist, with_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    config = base_config()
    config.model.name = "resnet50"
    config.data.update(name="imagenet2012", eval_split="validation", randaugment="", random_erasing=0.0)
    config.num_epochs = 100.0
    config.optim.update(name="sgd", lr=0.4, weight_decay=1e-4, warmup_epochs=5.0, min_lr=0.0, warmup_lr=0.0)
    config.distill.alpha = 0.0
    return with_preset(config, preset, {"fashion_mnist": _fashion_mnist_teacher}, "configs/resnet.py")


def _fashion_mnist_teacher(config: ml_collections.ConfigDict) -> None:
    """resnet18 for 10 epochs at the students' 40 px: the usual CIFAR-style SGD (0.1 per 128, wd 5e-4)."""
    fashion_mnist(config)
    config.model.name = "resnet18"
    config.num_epochs = 10.0
    config.optim.update(lr=0.1, weight_decay=5e-4)
