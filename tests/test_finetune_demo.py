"""experiments/finetune_demo.py: its folders (from the idx files) and its table and plot, on small fakes (the
demonstration itself trains for an hour: experiments/results/finetune/)."""

import gzip

import numpy as np
import tensorflow as tf

from experiments import finetune_demo
from ghostnet_jax.data import fashion_mnist
from ghostnet_jax.data.fashion_mnist import FILES as FASHION_FILES


def write_idx(path, array: np.ndarray) -> None:
    """The idx format of the Fashion-MNIST files: magic (0, 0, 8 for uint8, ndim), big-endian sizes, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_finetune_demo_writes_two_folders_of_disjoint_classes_and_tabulates_the_seeds(tmp_path):
    rng = np.random.default_rng(0)
    for images_file, labels_file in FASHION_FILES.values():
        write_idx(tmp_path / images_file, rng.integers(0, 256, (30, 28, 28)))
        write_idx(tmp_path / labels_file, np.arange(30) % 10)
    source = finetune_demo.write_folder(tmp_path / "source", finetune_demo.SOURCE_CLASSES, str(tmp_path))
    target = finetune_demo.write_folder(tmp_path / "target", finetune_demo.TARGET_CLASSES, str(tmp_path))
    assert sorted(p.name for p in (source / "train").iterdir()) == [
        "Coat",
        "Dress",
        "Pullover",
        "T-shirt-top",
        "Trouser",
    ]
    assert sorted(p.name for p in (target / "test").iterdir()) == ["Ankle boot", "Bag", "Sandal", "Shirt", "Sneaker"]
    assert sum(1 for _ in target.rglob("*.png")) == 30  # 3 of each class per split
    image = tf.io.decode_png((source / "train" / "Coat" / "4.png").read_bytes()).numpy()
    written = fashion_mnist.read_idx(str(tmp_path / "train-images-idx3-ubyte.gz"))[4]
    np.testing.assert_array_equal(image[:, :, 0], written)
    results = {200: {"finetune": {0: 0.9, 1: 0.8}, "finetune_full_lr": {0: 0.55}, "scratch": {0: 0.5, 1: 0.7}}}
    text = finetune_demo.markdown(results, 0.95, "python -m experiments.finetune_demo")
    # means 85.00, 55.00 and 60.00, sample standard deviations 7.07, none (one seed) and 14.14
    assert "| 200 | 85.00 ± 7.07 (n = 2) | 55.00 (n = 1) | 60.00 ± 14.14 (n = 2) | +25.00 pp | -5.00 pp |" in text
    assert "(95.00% on" in text
    finetune_demo.plot(results, tmp_path / "finetune.png")
    assert (tmp_path / "finetune.png").stat().st_size > 5000
