"""The input pipeline: layout, determinism and resumption, exact eval coverage, errors, and the Fashion-MNIST builder
on the real Debian files (CI installs `dataset-fashion-mnist`; a missing file fails, it is not skipped)."""

import gzip
import os

import timm  # noqa: F401  (before TensorFlow: importing torchvision after TensorFlow segfaults)
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ghostnet_jax.data import fashion_mnist, pipeline

DEVICES = 2  # tests/conftest.py forces 2 host devices


def _raw_idx(name):
    """The Debian file parsed here with numpy alone, independently of the builder's reader."""
    with gzip.open(os.path.join(fashion_mnist.DEBIAN_DIR, name)) as f:
        data = f.read()
    offset = 16 if "images" in name else 8
    return np.frombuffer(data, np.uint8, offset=offset)


@pytest.fixture(scope="module")
def fashion_config(tmp_path_factory):
    data = pipeline.default_data_config()
    data.name = "fashion_mnist_debian"
    data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    data.eval_split = "test"
    data.image_size = 64
    data.cache = True
    return data


@pytest.fixture()
def mock_imagenet():
    data = pipeline.default_data_config()  # the real ImageNet train transforms at 224
    data.num_train, data.num_eval = 12, 10
    with tfds.testing.mock_data(num_examples=10):  # mock_data ignores split sizes: 10 examples in every split
        yield data


def test_device_count():
    assert jax.local_device_count() == DEVICES


@pytest.mark.slow
def test_fashion_builder_reads_the_debian_files(fashion_config):
    info = pipeline.dataset_info(fashion_config)  # builds it into the tmp data_dir on first use
    assert info == pipeline.DatasetInfo(num_classes=10, channels=1, num_train=60000, num_eval=10000)
    builder = tfds.builder("fashion_mnist_debian", data_dir=fashion_config.data_dir)
    ex = next(iter(tfds.as_numpy(builder.as_dataset(split="test", shuffle_files=False).batch(10000))))
    images = _raw_idx("t10k-images-idx3-ubyte.gz").reshape(10000, 28, 28, 1)
    labels = _raw_idx("t10k-labels-idx1-ubyte.gz")
    # TFDS stores examples in a hashed order: match them to the raw file by content.
    order = np.argsort(ex["image"].reshape(10000, -1).view("V784").ravel())
    raw_order = np.argsort(images.reshape(10000, -1).view("V784").ravel())
    np.testing.assert_array_equal(ex["image"][order], images[raw_order])
    np.testing.assert_array_equal(ex["label"][order], labels[raw_order])


def test_fashion_builder_missing_files(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist.FashionMnistDebian, "source_dir", str(tmp_path))
    builder = tfds.builder("fashion_mnist_debian", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        builder.download_and_prepare()


def _subset(data, split):
    data = data.copy_and_resolve_references()
    data.train_split = split  # a slice keeps loading the cached split fast
    return data


@pytest.mark.slow
def test_fashion_train_batches_deterministic_and_resumable(fashion_config):
    fashion_config = _subset(fashion_config, "train[:2000]")
    batches = pipeline.train_batches(fashion_config, global_batch_size=32, seed=3)
    first = [next(batches) for _ in range(3)]
    image, label = first[0]["image"], first[0]["label"]
    assert image.shape == (DEVICES, 16, 64, 64, 1) and image.dtype == np.float32
    assert label.shape == (DEVICES, 16) and label.dtype == np.int32
    assert label.min() >= 0 and label.max() < 10
    mean, std = np.mean(fashion_config.mean), np.mean(fashion_config.std)
    assert image.min() >= min(-mean / std, -6.0) and image.max() <= max((1 - mean) / std, 6.0)
    again = pipeline.train_batches(fashion_config, global_batch_size=32, seed=3)
    resumed = pipeline.train_batches(fashion_config, global_batch_size=32, seed=3, start_step=2)
    other_seed = pipeline.train_batches(fashion_config, global_batch_size=32, seed=4)
    for batch in first[:2]:
        np.testing.assert_array_equal(next(again)["image"], batch["image"])
    np.testing.assert_array_equal(next(resumed)["image"], first[2]["image"])
    assert not np.array_equal(next(other_seed)["label"], first[0]["label"])


@pytest.mark.slow
def test_fashion_resume_across_an_epoch_boundary(fashion_config):
    """1000 / 96 = 10.4 batches per epoch: batch 10 spans epochs 0 and 1."""
    data = _subset(fashion_config, "train[:1000]")
    full = pipeline.train_batches(data, global_batch_size=96, seed=0)
    for _ in range(10):
        next(full)
    resumed = next(pipeline.train_batches(data, global_batch_size=96, seed=0, start_step=10))
    np.testing.assert_array_equal(resumed["image"], next(full)["image"])


@pytest.mark.slow
def test_cached_global_batches_are_the_same_for_any_number_of_processes(fashion_config, monkeypatch):
    """Two processes (two devices each) together yield the one-process batches, also resumed across an epoch edge."""
    data = _subset(fashion_config, "train[:200]")  # 200 / 48 = 4.2 batches per epoch
    one = pipeline.train_batches(data, global_batch_size=48, seed=1)
    expected = [next(one) for _ in range(6)][3:]
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    shares = []
    for process in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda process=process: process)
        stream = pipeline.train_batches(data, global_batch_size=48, seed=1, start_step=3)
        shares.append([next(stream) for _ in range(3)])
    for batch, first, second in zip(expected, *shares):
        for key in ("image", "label"):
            assert first[key].shape[:2] == (DEVICES, 12)
            joined = np.concatenate(
                [first[key].reshape((24,) + first[key].shape[2:]), second[key].reshape((24,) + second[key].shape[2:])]
            )
            np.testing.assert_array_equal(joined, batch[key].reshape((48,) + batch[key].shape[2:]))


def test_fashion_eval_counts_every_example_once(fashion_config):
    labels, count = [], 0
    for batch in pipeline.eval_batches(fashion_config, global_batch_size=768):
        assert batch["image"].shape == (DEVICES, 384, 64, 64, 1) and batch["mask"].shape == (DEVICES, 384)
        mask = batch["mask"].astype(bool)
        labels.append(batch["label"][mask])
        count += 1
        assert np.all(batch["image"][~mask] == 0)
    assert count == -(-10000 // 768)
    np.testing.assert_array_equal(
        np.bincount(np.concatenate(labels), minlength=10),
        np.bincount(_raw_idx("t10k-labels-idx1-ubyte.gz"), minlength=10),
    )


@pytest.mark.slow
def test_mock_imagenet_train_batches(mock_imagenet):
    assert pipeline.dataset_info(mock_imagenet) == pipeline.DatasetInfo(1000, 3, 12, 10)
    batches = pipeline.train_batches(mock_imagenet, global_batch_size=4, seed=0)
    got = [next(batches) for _ in range(4)]  # 10 examples per epoch: batch 2 spans epochs 0 and 1
    batch = got[0]
    assert batch["image"].shape == (DEVICES, 2, 224, 224, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (DEVICES, 2) and batch["label"].dtype == np.int32
    assert 0 <= batch["label"].min() and batch["label"].max() < 1000
    # Normalised: (0 - mean) / std >= -2.12 and (1 - mean) / std <= 2.64, except N(0, 1) erasing noise.
    assert np.mean((batch["image"] >= -2.12) & (batch["image"] <= 2.64)) > 0.7
    resumed = pipeline.train_batches(mock_imagenet, global_batch_size=4, seed=0, start_step=2)
    for expected in got[2:]:
        np.testing.assert_array_equal(next(resumed)["image"], expected["image"])


def test_mock_imagenet_eval_batches(mock_imagenet):
    batches = list(pipeline.eval_batches(mock_imagenet, global_batch_size=4))
    assert len(batches) == 3
    assert all(b["image"].shape == (DEVICES, 2, 224, 224, 3) for b in batches)
    assert np.concatenate([b["mask"].ravel() for b in batches]).tolist() == [1.0] * 10 + [0.0] * 2


def test_prefetch_to_device_shards_along_axis_0(mock_imagenet):
    batches = pipeline.eval_batches(mock_imagenet, global_batch_size=4)
    batch = next(pipeline.prefetch_to_device(batches, size=2))
    assert [shard.device for shard in batch["image"].addressable_shards] == jax.local_devices()
    assert batch["image"].addressable_shards[0].data.shape == (1, 2, 224, 224, 3)
    summed = jax.pmap(lambda x: x.sum())(batch["mask"])
    np.testing.assert_array_equal(np.asarray(summed), [2.0, 2.0])


def test_batch_not_divisible(mock_imagenet):
    with pytest.raises(ValueError, match=r"global batch size 5 .* process_count \(1\) x local_device_count \(2\)"):
        next(pipeline.train_batches(mock_imagenet, global_batch_size=5, seed=0))


def test_unprepared_dataset_fails_fast(tmp_path):
    data = pipeline.default_data_config()
    data.data_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="imagenet2012.*manual_dir.*never downloads"):
        next(pipeline.train_batches(data, global_batch_size=4, seed=0))
    data.name, data.num_train, data.num_eval = "cifar10", 10, 10
    with pytest.raises(FileNotFoundError, match="cifar10.*tfds build cifar10"):
        next(pipeline.eval_batches(data, global_batch_size=4))
