"""The TensorFlow augmentations against timm 1.0.31's own (PIL / torchvision) implementations."""

# timm (torch._dynamo via torchvision) must be imported before TensorFlow: the other order segfaults.
import math
from unittest import mock

import numpy as np
import pytest
import timm.data
import timm.data.auto_augment as timm_aa
from PIL import Image

import tensorflow as tf

from ghostnet_jax.data import augment, transforms

FILL = augment.fill_colour((0.485, 0.456, 0.406))  # timm's img_mean hparam: (124, 116, 104)
PIL_RESAMPLE = {0: Image.BILINEAR, 1: Image.BICUBIC}


def test_fill_colour_is_timms_img_mean():
    assert FILL == (124, 116, 104)


def _images():
    """Noise (worst case for resampling), a smooth RGB pattern and a greyscale image, odd sizes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:37, :45]
    smooth = np.stack([(xx * 5) % 256, (yy * 6) % 256, (xx + yy) * 3 % 256], -1).astype(np.uint8)
    return [rng.integers(0, 256, (37, 45, 3), dtype=np.uint8), smooth, rng.integers(0, 256, (30, 31, 1), np.uint8)]


def _timm_args(name, magnitude, negate):
    """timm's own level-to-argument mapping, with its random sign forced (negate when random() > 0.5)."""
    with mock.patch.object(timm_aa.random, "random", return_value=1.0 if negate else 0.0):
        level_fn = timm_aa.LEVEL_TO_ARG[name]
        return level_fn(magnitude, {"translate_pct": 0.45, "translate_const": 100}) if level_fn else ()


ALL_OPS = sorted(set(augment.RAND_TRANSFORMS + augment.RAND_INCREASING_TRANSFORMS))


@pytest.mark.parametrize("name", ALL_OPS)
def test_level_to_arg_matches_timm(name):
    for magnitude in np.arange(0.0, 10.01, 0.25):
        for negate in (False, True):
            expected = _timm_args(name, float(magnitude), negate)
            got = float(augment.level_to_arg(name, tf.constant(magnitude, tf.float64), tf.constant(negate)))
            assert got == pytest.approx(expected[0] if expected else 0.0, abs=1e-12), (name, magnitude, negate)


def test_level_to_arg_closed_form():
    """The documented ranges: rotate m/10*30 deg, shear m/10*0.3, translate m/10*0.45, enhance m/10*1.8+0.1."""
    m, neg = tf.constant(9.0, tf.float64), tf.constant(True)
    assert float(augment.level_to_arg("Rotate", m, neg)) == pytest.approx(-27.0)
    assert float(augment.level_to_arg("ShearX", m, neg)) == pytest.approx(-0.27)
    assert float(augment.level_to_arg("TranslateYRel", m, tf.constant(False))) == pytest.approx(0.405)
    assert float(augment.level_to_arg("Color", m, neg)) == pytest.approx(1.72)
    assert float(augment.level_to_arg("Posterize", m, neg)) == 3.0
    assert float(augment.level_to_arg("Solarize", m, neg)) == 230.0
    assert float(augment.level_to_arg("SolarizeAdd", m, neg)) == 99.0


@pytest.mark.parametrize("name", ALL_OPS)
def test_op_matches_timm_pil(name):
    """Each op equals timm's PIL op on uint8 images. The affine ops reproduce PIL's resampling (a=-1 bicubic,
    edge clamping, truncation), shears and translations in float64, so equality is expected; 1 grey level is allowed
    on at most 0.1% of pixels for float ties (rotation, interpolated in float32)."""
    for magnitude in (9.0, 3.3):
        for negate in (False, True):
            args = _timm_args(name, magnitude, negate)
            arg = tf.constant(args[0] if args else 0.0, tf.float64)
            for interpolation, resample in PIL_RESAMPLE.items():
                for image in _images():
                    grey = image.shape[-1] == 1
                    pil = Image.fromarray(image[..., 0] if grey else image)
                    fill = FILL[0] if grey else FILL
                    expected = np.asarray(timm_aa.NAME_TO_OP[name](pil, *args, fillcolor=fill, resample=resample))
                    expected = expected.reshape(image.shape).astype(int)
                    got = augment.apply_op(tf.constant(image), name, arg, fill=FILL, interpolation=interpolation)
                    diff = np.abs(got.numpy().astype(int) - expected)
                    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (name, magnitude, negate, interpolation)


def test_parse_rand_augment_matches_timm():
    for config_str in ("rand-m9-mstd0.5", "rand-m7-n3-mstd0.5-inc1", "rand-m5-p0.7-mstd101", "rand-n1-mmax12"):
        ours = augment.parse_rand_augment(config_str)
        theirs = timm_aa.rand_augment_transform(config_str, {"img_mean": FILL})
        assert ours.num_layers == theirs.num_layers
        assert tuple(op.name for op in theirs.ops) == ours.transforms
        op = theirs.ops[0]
        assert (op.magnitude, op.prob, op.magnitude_std) == (ours.magnitude, ours.prob, ours.magnitude_std)
        assert (op.magnitude_max or 10) == ours.magnitude_max
    with pytest.raises(ValueError, match="rand"):
        augment.parse_rand_augment("augmix-m5")


@pytest.mark.slow
def test_magnitude_sampling_distribution():
    """rand-m9-mstd0.5: gauss(9, 0.5) clipped to [0, 10]; mstd=inf: uniform(0, 9)."""
    n = 4000
    seeds = tf.stack([tf.range(n), tf.fill([n], 7)], axis=1)
    config = augment.parse_rand_augment("rand-m9-mstd0.5")
    mags = tf.map_fn(lambda s: augment.sample_magnitude(config, s), seeds, fn_output_signature=tf.float64).numpy()
    assert mags.min() >= 0.0 and mags.max() <= 10.0
    assert np.mean(mags == 10.0) == pytest.approx(0.5 * math.erfc(2 / math.sqrt(2)), abs=0.01)  # P(N > 2 sigma)
    assert np.median(mags) == pytest.approx(9.0, abs=0.05)
    inside = mags[(mags > 8.0) & (mags < 10.0)]
    assert inside.std() == pytest.approx(0.5 * 0.88, abs=0.05)  # std of N(9, .5) truncated to +-2 sigma is 0.88 sigma
    uniform = augment.parse_rand_augment("rand-m9-mstd101")
    mags = tf.map_fn(lambda s: augment.sample_magnitude(uniform, s), seeds, fn_output_signature=tf.float64).numpy()
    assert mags.min() >= 0 and mags.max() < 9 and mags.mean() == pytest.approx(4.5, abs=0.15)


def test_rand_augment_applies_ops_with_probability():
    """One layer at p=0.5 on a full-range noise image: unchanged when the op is skipped (0.5) or is AutoContrast, the
    identity here (0.5 / 15); every other op changes the image."""
    image = tf.constant(_images()[0])
    config = augment.parse_rand_augment("rand-m9-n1-mstd0.5")
    unchanged = [
        bool(tf.reduce_all(augment.rand_augment(image, config, tf.constant([i, 1]), fill=FILL) == image))
        for i in range(300)
    ]
    assert np.mean(unchanged) == pytest.approx(0.5 + 0.5 / 15, abs=0.09)  # binomial(300) sd is 0.03


def test_random_erasing_statistics():
    h, w, c = 40, 50, 3
    image = tf.fill([h, w, c], 5.0)
    p = 0.6
    erased = 0
    for i in range(400):
        out = augment.random_erasing(image, p, tf.constant([i, 3])).numpy()
        changed = np.any(out != 5.0, axis=-1)
        if not changed.any():
            continue
        erased += 1
        rows, cols = np.where(changed)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        eh, ew = bottom - top, right - left
        assert changed[top:bottom, left:right].all() and changed.sum() == eh * ew  # one rectangle
        assert eh < h and ew < w
        # area fraction in [0.02, 1/3] and aspect h/w in [0.3, 3.33], up to rounding each side by half a pixel
        assert 0.02 * h * w * 0.7 <= eh * ew <= h * w / 3 * 1.3
        assert 0.3 * 0.7 <= eh / ew <= 1 / 0.3 / 0.7
        inside = out[top:bottom, left:right]
        if inside.size > 300:
            assert abs(inside.mean()) < 0.3 and 0.7 < inside.std() < 1.3  # N(0, 1) per pixel and channel
    # P(erase) = p * P(some attempt fits); at 40x50 nearly all do. Binomial(400, 0.6) sd is 0.025.
    assert erased / 400 == pytest.approx(p, abs=0.08)


def test_random_resized_crop_window_matches_torchvision_ranges():
    for i in range(200):
        top, left, h, w = transforms.random_resized_crop_window(tf.constant([i, 0]), 120, 200).numpy()
        assert 0 <= top <= 120 - h and 0 <= left <= 200 - w
        assert 0.08 * 24000 * 0.9 <= h * w <= 24000
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # A very wide image: no attempt can fit, so torchvision's fallback, the centre crop at the maximum ratio.
    top, left, h, w = transforms.random_resized_crop_window(tf.constant([0, 0]), 10, 1000, scale=(0.9, 1.0)).numpy()
    assert (top, left, h, w) == (0, (1000 - 13) // 2, 10, 13)


@pytest.mark.parametrize("interpolation", transforms.INTERPOLATIONS)
def test_resize_matches_pil(interpolation):
    """PIL's resize exactly: down and up, one axis only, and sizes for both of Pillow 13's pass orders (vertical
    first when the height loses more than twice as many rows as the width loses columns)."""
    resample = PIL_RESAMPLE[transforms.INTERPOLATIONS.index(interpolation)]
    noise = np.random.default_rng(2).integers(0, 256, (151, 97, 3), dtype=np.uint8)
    for image in (noise, _images()[1]):
        for size in ((20, 30), (70, 90), (40, 90), (151, 50), (120, 120), (300, 17)):
            expected = np.asarray(Image.fromarray(image).resize(size[::-1], resample))
            got = transforms.resize(tf.constant(image), size, interpolation).numpy()
            np.testing.assert_array_equal(got, expected, err_msg=str((image.shape, size)))


def test_histogram_ops_match_pil_on_a_larger_image():
    """Equalize and AutoContrast on 128x128. Every value occurs 64 times per channel, so PIL's equalize step,
    (pixels - last bin) // 255 = 16320 // 255 = 64, is not (...) // 256 = 63: small images cannot tell them apart."""
    rng = np.random.default_rng(3)
    image = np.stack([rng.permutation(np.arange(128 * 128) % 256) for _ in range(3)], -1).astype(np.uint8)
    image = image.reshape(128, 128, 3)
    for name, x in (("Equalize", image), ("AutoContrast", image // 2 + 40)):
        expected = np.asarray(timm_aa.NAME_TO_OP[name](Image.fromarray(x)))
        got = augment.apply_op(tf.constant(x), name, tf.constant(0.0, tf.float64), fill=FILL).numpy()
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_eval_transform_matches_timm():
    """timm's create_transform(224, crop_pct=0.875, bicubic) on the same image: the resize is exact, so only the
    normalisation's float32 rounding differs."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:300, :400] / 40.0
    image = np.stack([np.sin(xx) * 100 + 120, np.cos(yy) * 100 + 120, (xx + yy) * 20], -1)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    timm_transform = timm.data.create_transform(224, crop_pct=0.875, interpolation="bicubic")
    expected = timm_transform(Image.fromarray(image)).numpy().transpose(1, 2, 0)
    cropped = transforms.resize_shorter_and_centre_crop(tf.constant(image), 224, 0.875, "bicubic")
    got = transforms.normalise(cropped, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).numpy()
    assert got.shape == expected.shape == (224, 224, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)
