"""`python -m ghostnet_jax.evaluate` on a saved checkpoint: accuracy equals a numpy top-k count over the same eval
batches (padding excluded), and the checkpoint directory is left as it was; the eval decode of a JPEG equals PIL's."""

import io
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from flax import nnx
from PIL import Image

from ghostnet_jax import evaluate, predict
from ghostnet_jax.model_checkpoint import load_model, model_spec, save_model
from configs import v3
from ghostnet_jax.data import model_inputs, pipeline, transforms
from ghostnet_jax.models import create_model
from ghostnet_jax.tool_inputs import data_config

OVERRIDES = {"width": 0.25, "in_chans": 1}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = create_model("ghostnet_100", num_classes=10, **OVERRIDES)
    spec = model_spec("ghostnet_100", num_classes=10, overrides=OVERRIDES, fused=False)
    return str(save_model(tmp_path_factory.mktemp("ckpt") / "model", model, spec))


def _snapshot(directory):
    return {
        os.path.join(root, f): os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(directory)
        for f in files
    }


@pytest.mark.slow
def test_evaluate_counts_top1_top5_and_leaves_checkpoint_alone(checkpoint, data_dir):
    before = _snapshot(checkpoint)
    argv = [
        "--checkpoint",
        checkpoint,
        "--data",
        "fashion_mnist_debian",
        "--data-dir",
        data_dir,
        "--split",
        "test[:37]",
        "--image-size",
        "32",
        "--batch-size",
        "16",
    ]
    result = evaluate.main(argv)
    assert _snapshot(checkpoint) == before

    model, spec = load_model(checkpoint)
    forward = nnx.jit(lambda model, image: model(image))
    data = data_config(evaluate.build_parser().parse_args(argv), spec)
    logits, labels = [], []
    for batch in pipeline.eval_batches(data, global_batch_size=16):
        keep = batch["mask"].reshape(-1) > 0
        logits.append(np.asarray(forward(model, batch["image"].reshape(-1, 32, 32, 1)))[keep])
        labels.append(batch["label"].reshape(-1)[keep])
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    ranks = np.argsort(-logits, axis=1, kind="stable")
    assert result["examples"] == len(labels) == 37
    assert result["top1"] == pytest.approx(np.mean(ranks[:, 0] == labels))
    assert result["top5"] == pytest.approx(np.mean((ranks[:, :5] == labels[:, None]).any(1)))


def test_evaluate_rejects_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", str(tmp_path / "nothing")])
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_decode_equals_pil(mode):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (37, 53, 3), np.uint8)
    pixels = pixels // 2 + np.linspace(0, 127, 53, dtype=np.uint8)[None, :, None]  # texture plus a gradient
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=90)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(mode))
    channels = 3 if mode == "RGB" else 1
    decoded = transforms.decode(tf.constant(buffer.getvalue()), channels).numpy()
    np.testing.assert_array_equal(decoded.reshape(expected.shape), expected)


@pytest.mark.slow
def test_predict_top5_names_and_probabilities(checkpoint, tmp_path):
    path = str(tmp_path / "shirt.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 30), np.uint8)).save(path)
    results = predict.main(["--checkpoint", checkpoint, "--labels", "fashion_mnist", "--image-size", "32", path])

    model, _ = load_model(checkpoint)
    image = predict.load_image(
        path,
        channels=1,
        image_size=32,
        crop_pct=0.875,
        interpolation="bicubic",
        mean=(np.mean(pipeline.IMAGENET_MEAN),),
        std=(np.mean(pipeline.IMAGENET_STD),),
    )
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, image[None]), np.float64)[0]
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    best = np.argsort(-softmax)[:5]
    assert [name for name, _ in results[0]] == [names[i] for i in best]
    np.testing.assert_allclose([p for _, p in results[0]], softmax[best], rtol=1e-5)


def test_predict_names_each_bad_input_in_one_line(checkpoint, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(bad)], "cannot read image .*broken.jpg"),
        ([str(tmp_path / "missing.png")], "cannot read image .*missing.png"),
        ([str(tmp_path)], "cannot read image .*broken.jpg"),  # a folder: its images are read
        ([str(tmp_path / "empty")], "folder .*empty' holds no images"),
        (["--step", "99", str(bad)], "holds no complete checkpoint at step 99"),
        (["--dtype", "float16", str(bad)], "float16 is not supported"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit):
            predict.main(["--checkpoint", checkpoint, *extra])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert re.search(message, error) and "Traceback" not in error, (extra, error)
    with pytest.raises(SystemExit):
        predict.main(["--checkpoint", str(tmp_path / "no-checkpoint"), str(bad)])
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_takes_a_step_and_a_dtype(checkpoint, tmp_path):
    image = tmp_path / "grey.png"
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(image)
    float32 = predict.main(["--checkpoint", checkpoint, "--step", "0", str(image)])
    bfloat16 = predict.main(["--checkpoint", checkpoint, "--step", "0", "--dtype", "bfloat16", str(image)])
    assert [name for name, _ in float32[0]][:1] == [name for name, _ in bfloat16[0]][:1]
    assert [p for _, p in float32[0]] != [p for _, p in bfloat16[0]]  # computed in another dtype


def test_imagenet_class_names_are_tfds_label_order_with_wordnet_lemmas():
    import tensorflow_datasets as tfds
    from timm.data import ImageNetInfo

    lemmas = model_inputs.imagenet_lemmas()
    assert list(lemmas) == tfds.builder("imagenet2012").info.features["label"].names
    info = ImageNetInfo()
    assert [lemmas[info.index_to_label_name(i)] for i in range(1000)] == [
        info.index_to_description(i) for i in range(1000)
    ]
    assert model_inputs.readable("n01440764") == "tench" and model_inputs.readable("Trouser") == "Trouser"


@pytest.mark.slow
def test_predict_and_evaluate_use_the_transform_and_names_the_checkpoint_records(data_dir, tmp_path):
    data = v3.get_config("fashion_mnist").data
    data.update(data_dir=data_dir, image_size=36)
    spec = model_spec(
        "ghostnet_100", num_classes=10, overrides=OVERRIDES, fused=False, data=model_inputs.from_data_config(data)
    )
    model = create_model("ghostnet_100", num_classes=10, **OVERRIDES)
    directory = str(save_model(tmp_path / "run", model, spec))
    path = str(tmp_path / "boot.png")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 44), np.uint8)).save(path)

    results = predict.main(["--checkpoint", directory, path])
    mean, std = (float(np.mean(data.mean)),), (float(np.mean(data.std)),)
    image = predict.load_image(
        path, channels=1, image_size=36, crop_pct=1.0, interpolation="bicubic", mean=mean, std=std
    )
    model, _ = load_model(directory)
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, image[None]))[0]
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert [name for name, _ in results[0]] == [names[i] for i in np.argsort(-logits, kind="stable")[:5]]

    data = data_config(evaluate.build_parser().parse_args(["--checkpoint", directory]), spec)
    assert (data.name, data.image_size, data.eval_crop_pct) == ("fashion_mnist_debian", 36, 1.0)
