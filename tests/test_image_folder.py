"""Your own images (`data.folder`): TFDS's ImageFolder layout read by the pipeline, its splits resolved, its class
names recorded, and every host given its own share."""

import jax
import numpy as np
import pytest

from configs import v1
from ghostnet_jax.data import model_inputs, pipeline
from tests.test_finetune import COLOURS, colour_folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    colour_folder(root, {"train": 6, "val": 3})
    return root


def folder_config(folder, **changes):
    data = v1.get_config("finetune").data
    data.update(folder=str(folder), image_size=32, **changes)
    pipeline.resolve_folder_splits(data)
    return data


def test_a_folder_is_a_dataset_with_sorted_class_names_rgb_images_and_its_eval_split_found(photos):
    data = folder_config(photos)
    assert data.eval_split == "val"  # the config's 'validation' is absent; 'test' too
    assert pipeline.dataset_info(data) == pipeline.DatasetInfo(num_classes=3, channels=3, num_train=18, num_eval=9)
    recorded = model_inputs.from_data_config(data)
    assert (recorded["dataset"], recorded["folder"], recorded["labels"]) == ("folder", str(photos), sorted(COLOURS))
    batches = list(pipeline.eval_batches(data, global_batch_size=4))
    labels = np.concatenate([b["label"].reshape(-1) for b in batches])
    mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
    assert mask.sum() == 9 and sorted(labels[mask == 1]) == [0] * 3 + [1] * 3 + [2] * 3
    # The image's own colour is its class: the eval transform kept the channels in order.
    images = np.concatenate([b["image"].reshape(-1, 32, 32, 3) for b in batches])[mask == 1]
    assert (images.mean(axis=(1, 2)).argmax(axis=1) == np.array([2, 1, 0])[labels[mask == 1]]).all()
    first = next(pipeline.train_batches(data, global_batch_size=6, seed=0))
    assert first["image"].shape[-3:] == (32, 32, 3) and first["label"].size == 6


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"train_split": "training"},
            r"has no 'training' split \(config.data.train_split\); it has \['train', 'val'\]",
        ),
        ({"eval_split": "holdout"}, None),
    ],
)
def test_missing_splits_are_errors_listing_the_folders_splits(photos, tmp_path, changes, message):
    if message is None:  # an absent eval split falls back to the first of test, val, validation
        assert folder_config(photos, **changes).eval_split == "val"
        colour_folder(tmp_path / "only_train", {"train": 1})
        with pytest.raises(ValueError, match=r"none of the eval splits \['holdout', 'test', 'val', 'validation'\]"):
            folder_config(tmp_path / "only_train", **changes)
        return
    with pytest.raises(ValueError, match=message):
        folder_config(photos, **changes)


def test_a_path_without_the_layout_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        folder_config(tmp_path / "absent")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "cat.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"holds no images as SPLIT/CLASS/IMAGE"):
        folder_config(tmp_path / "flat")


def test_every_host_reads_its_own_equal_share_in_the_same_file_order(photos, monkeypatch):
    data = folder_config(photos)
    builder = pipeline.image_folder(data.folder)
    whole, _ = pipeline._host_share(builder, data, "train", 18, drop_remainder=True)
    order = [bytes(ex["image"]) for ex in whole.as_numpy_iterator()]
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    shares = []
    for index in range(4):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        share, size = pipeline._host_share(builder, data, "train", 18, drop_remainder=True)
        shares.append([bytes(ex["image"]) for ex in share.as_numpy_iterator()])
        assert size == len(shares[-1]) == 4  # 18 // 4, the remainder dropped as on a TFDS dataset
    assert sorted(sum(shares, [])) == sorted(order[:16]) and len(set(sum(shares, []))) == 16
