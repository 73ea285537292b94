"""Fashion-MNIST as a TFDS dataset built from the Debian package's files: real data for offline machines.

TFDS's own `fashion_mnist` downloads from the internet; this builder reads the original idx `.gz` files that
`apt-get install dataset-fashion-mnist` puts in /usr/share/datasets/fashion-mnist and never downloads anything.
Importing this module registers the builder as `fashion_mnist_debian`.
"""

import gzip
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str) -> np.ndarray:
    """Reads a gzipped idx file (big-endian header: magic with the number of dimensions, then the sizes)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


class FashionMnistDebian(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST (Zalando, MIT licence): 60k train / 10k test 28x28 greyscale images, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Built from the Debian package dataset-fashion-mnist."}
    source_dir = DEBIAN_DIR  # a class attribute so that tests or other installs can point elsewhere

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # nothing to download
        paths = {split: [os.path.join(self.source_dir, name) for name in names] for split, names in FILES.items()}
        missing = [path for pair in paths.values() for path in pair if not os.path.exists(path)]
        if missing:
            raise FileNotFoundError(
                f"fashion_mnist_debian needs the Fashion-MNIST files {missing}: "
                "install them with `apt-get install dataset-fashion-mnist`."
            )
        return {split: self._generate_examples(*pair) for split, pair in paths.items()}

    def _generate_examples(self, images_path: str, labels_path: str) -> Iterator[tuple[int, dict]]:
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image[:, :, None], "label": int(label)}
