"""timm's standard (non-RandAugment) image transforms in TensorFlow ops: random-resized crop, flip, eval resize/crop,
normalisation.

Images stay uint8 until normalisation, as they are PIL images in timm: every resize is rounded and clipped to uint8,
which is what PIL's resize returns. Resizing uses `tf.image.resize(antialias=True)`, whose bilinear (triangle) and
bicubic (Keys, a=-0.5) kernels widen with the scale factor when downsampling like PIL's; PIL computes in fixed point,
so results differ from PIL by about a grey level at most pixels, not exactly.

Randomness is stateless (an explicit `seed` tensor of shape [2]), like in `augment.py`.
"""

import math
from collections.abc import Sequence

import tensorflow as tf

INTERPOLATIONS = ("bilinear", "bicubic")


def resize(image: tf.Tensor, size: Sequence[int] | tf.Tensor, interpolation: str | tf.Tensor) -> tf.Tensor:
    """PIL-like resize of a uint8 image: antialiased, rounded and clipped back to uint8.

    interpolation: 'bilinear' / 'bicubic', or a scalar int32 tensor indexing INTERPOLATIONS (a per-example choice).
    """
    channels = image.shape[-1]

    def run(method: str) -> tf.Tensor:
        out = tf.image.resize(image, size, method=method, antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

    if isinstance(interpolation, str):
        out = run(interpolation)
    else:
        out = tf.switch_case(interpolation, [lambda m=m: run(m) for m in INTERPOLATIONS])
    return tf.ensure_shape(out, [None, None, channels])


def random_resized_crop_window(
    seed: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tf.Tensor:
    """torchvision/timm `RandomResizedCrop.get_params`: [top, left, crop_height, crop_width] (int32).

    Up to `attempts` draws of area ~ U(scale) * image area and aspect (w/h) ~ log-uniform(ratio), sides rounded
    half-to-even like Python's round; the first that fits wins, at a uniform offset. If none fits, the centre crop
    of the whole image clamped to the ratio range.
    """
    s_area, s_ratio, s_top, s_left = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    hf, wf = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    area = tf.random.stateless_uniform([attempts], s_area, scale[0], scale[1], tf.float64) * hf * wf
    log_ratio = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(tf.random.stateless_uniform([attempts], s_ratio, *log_ratio, tf.float64))
    crop_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (crop_w <= width) & (crop_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    crop_h, crop_w = crop_h[first], crop_w[first]
    top = tf.random.stateless_uniform([], s_top, 0, tf.maximum(height - crop_h + 1, 1), dtype=tf.int32)
    left = tf.random.stateless_uniform([], s_left, 0, tf.maximum(width - crop_w + 1, 1), dtype=tf.int32)

    in_ratio = wf / hf
    lo, hi = min(ratio), max(ratio)
    fallback_w = tf.where(in_ratio > hi, tf.cast(tf.round(hf * hi), tf.int32), width)
    fallback_h = tf.where(in_ratio < lo, tf.cast(tf.round(wf / lo), tf.int32), height)
    fallback = tf.stack([(height - fallback_h) // 2, (width - fallback_w) // 2, fallback_h, fallback_w])
    return tf.where(tf.reduce_any(fits), tf.stack([top, left, crop_h, crop_w]), fallback)


def decode_and_random_crop(
    image: tf.Tensor, seed: tf.Tensor, channels: int, scale: Sequence[float], ratio: Sequence[float]
) -> tf.Tensor:
    """The random-resized-crop window of an encoded (string) or decoded (uint8) image, decoding only that window
    when the bytes are JPEG. JPEGs use the accurate integer DCT, as PIL (timm's loader) does."""
    if image.dtype == tf.string:

        def jpeg() -> tf.Tensor:
            shape = tf.image.extract_jpeg_shape(image)
            window = random_resized_crop_window(seed, shape[0], shape[1], scale, ratio)
            return tf.image.decode_and_crop_jpeg(image, window, channels=channels, dct_method="INTEGER_ACCURATE")

        def other() -> tf.Tensor:
            return _crop(decode(image, channels), seed, scale, ratio)

        return tf.ensure_shape(tf.cond(tf.io.is_jpeg(image), jpeg, other), [None, None, channels])
    return _crop(image, seed, scale, ratio)


def _crop(image: tf.Tensor, seed: tf.Tensor, scale: Sequence[float], ratio: Sequence[float]) -> tf.Tensor:
    shape = tf.shape(image)
    top, left, h, w = tf.unstack(random_resized_crop_window(seed, shape[0], shape[1], scale, ratio))
    return image[top : top + h, left : left + w]


def random_flip(image: tf.Tensor, seed: tf.Tensor, prob: float = 0.5) -> tf.Tensor:
    """Horizontal flip with probability `prob` (torchvision flips when random() < p)."""
    flip = tf.random.stateless_uniform([], seed) < prob
    return tf.where(flip, image[:, ::-1], image)


def decode(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Decoded uint8 HWC image from encoded bytes (a uint8 tensor is passed through)."""
    if image.dtype == tf.string:
        decoded = tf.io.decode_image(image, channels=channels, expand_animations=False, dtype=tf.uint8)
        return tf.ensure_shape(decoded, [None, None, channels])
    return image


def resize_shorter_and_centre_crop(image: tf.Tensor, image_size: int, crop_pct: float, interpolation: str) -> tf.Tensor:
    """timm's eval transform (crop_mode 'center'): Resize(floor(image_size / crop_pct)) on the shorter side (the longer
    side int()-truncated, as torchvision), then CenterCrop(image_size) with round-half-even offsets."""
    scale_size = math.floor(image_size / crop_pct)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = tf.cast(tf.math.floor(scale_size * tf.cast(long, tf.float64) / tf.cast(short, tf.float64)), tf.int32)
    new_h = tf.where(h <= w, scale_size, new_long)
    new_w = tf.where(h <= w, new_long, scale_size)
    resized = resize(image, tf.stack([new_h, new_w]), interpolation)
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float64) / 2.0), tf.int32)
    return resized[top : top + image_size, left : left + image_size]


def normalise(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """ToTensor + Normalize: (x / 255 - mean) / std in float32, HWC. mean/std are in 0..1 units."""
    x = tf.cast(image, tf.float32) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
