"""timm's standard (non-RandAugment) image transforms in TensorFlow ops: random-resized crop, flip, eval resize/crop,
normalisation.

Images stay uint8 until normalisation, as they are PIL images in timm. Resizing reproduces PIL's resampling exactly:
its filter weights, 22-bit fixed-point arithmetic, per-pass rounding to uint8 and (Pillow 13's) pass order.

The ops are chosen for tf.data's single-threaded, per-example execution: few image-sized ops, no tf.where or
broadcasting on image-sized tensors (both several times slower than plain elementwise ops), matmuls for filtering.

Randomness is stateless (an explicit `seed` tensor of shape [2]), like in `augment.py`.
"""

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

INTERPOLATIONS = ("bilinear", "bicubic")


def resize(image: tf.Tensor, size: Sequence[int] | tf.Tensor, interpolation: str | tf.Tensor) -> tf.Tensor:
    """PIL's `Image.resize` of a uint8 image, bilinear or bicubic (antialiased when downscaling), bit-exact.

    interpolation: 'bilinear' / 'bicubic', or a scalar int32 tensor indexing INTERPOLATIONS (a per-example choice).
    """
    channels = image.shape[-1]
    cubic = tf.equal(interpolation if not isinstance(interpolation, str) else INTERPOLATIONS.index(interpolation), 1)
    in_size = tf.shape(image)[:2]
    out_size = tf.convert_to_tensor(size, tf.int32)
    weights, lines = _resample_weights(in_size, out_size, cubic)

    def resample(x: tf.Tensor, axis: int) -> tf.Tensor:
        """Resamples image axis `axis`, which is axis 0 of the uint8 matrix `x`: gathering its input lines copies
        whole rows. The sums are one int32 batched matmul over blocks of output lines, each against the window of
        input lines it reads: PIL's own integer arithmetic, then its rounding and clipping."""
        n, m = tf.shape(x)[0], tf.shape(x)[1]
        window = tf.cast(tf.gather(x, tf.minimum(lines[axis], n - 1)), tf.int32)
        out = tf.reshape(tf.matmul(weights[axis], window), [-1, m])[: out_size[axis]]
        return tf.cast(tf.clip_by_value(tf.bitwise.right_shift(out + 2**21, 22), 0, 255), tf.uint8)

    # The image is held as a matrix whose rows are the lines of the axis to resample next; switching axes is a 2-D
    # transpose (a 3-D one with the 3 channels innermost is twice as slow): [rows, cols * C] <-> [cols, C * rows].
    def to_columns(x: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
        return tf.reshape(tf.transpose(x), [cols, -1])

    def to_rows(x: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        return tf.transpose(tf.reshape(x, [-1, rows]))

    # The intermediate is uint8 as in PIL, so the pass order matters: Pillow 13 goes vertical first when that shrinks
    # the height by more than twice as many rows as the width loses columns, else (and before 13 always) horizontal.
    rows, cols = in_size[0] - out_size[0], in_size[1] - out_size[1]
    x = tf.reshape(image, [in_size[0], -1])
    out = tf.cond(
        (rows > 0) & (rows > 2 * cols),
        lambda: to_rows(resample(to_columns(resample(x, 0), in_size[1]), 1), out_size[0]),
        lambda: resample(to_rows(resample(to_columns(x, in_size[1]), 1), in_size[0]), 0),
    )
    return tf.reshape(out, tf.concat([out_size, [channels]], 0))


def _resample_weights(in_size: tf.Tensor, out_size: tf.Tensor, cubic: tf.Tensor, block: int = 8):
    """PIL's `precompute_coeffs` for both axes at once, in double as PIL: the bicubic (a=-0.5) or triangle filter,
    widened by the downscaling factor, its taps clipped to the image and renormalised, then rounded to PIL's 22-bit
    fixed point (`normalize_coeffs_8bpc`).

    Returns int32 weights [2, blocks, block, window] and input line indices [2, blocks, window] (not yet clipped to
    the image): output line `b * block + i` of axis `a` sums weights[a, b, i, j] * input line lines[a, b, j].
    """
    in_f = tf.cast(in_size, tf.float64)[:, None, None, None]
    scale = in_f / tf.cast(out_size, tf.float64)[:, None, None, None]
    filter_scale = tf.maximum(scale, 1.0)
    support = tf.where(cubic, tf.constant(2.0, tf.float64), 1.0) * filter_scale
    blocks = (tf.reduce_max(out_size) + block - 1) // block
    centre = (tf.reshape(tf.range(tf.cast(blocks * block, tf.float64)), [1, blocks, block, 1]) + 0.5) * scale
    first = tf.maximum(tf.math.floor(centre - support + 0.5), 0.0)  # PIL's taps: [first, end)
    end = tf.minimum(tf.math.floor(centre + support + 0.5), in_f)
    start = first[:, :, :1]  # a block's window starts at its first line's first tap
    positions = start + tf.range(tf.reduce_max(end[:, :, -1:] - start))
    t = tf.abs((positions - centre + 0.5) * (1.0 / filter_scale))
    keys = tf.where(t < 1.0, (1.5 * t - 2.5) * t * t + 1.0, (((t - 5.0) * t + 8.0) * t - 4.0) * -0.5)
    weights = tf.where(cubic, tf.where(t < 2.0, keys, 0.0), tf.maximum(1.0 - t, 0.0))
    weights = tf.where((positions >= first) & (positions < end), weights, 0.0)
    weights = tf.math.divide_no_nan(weights, tf.reduce_sum(weights, axis=3, keepdims=True))
    weights = tf.math.sign(weights) * tf.math.floor(tf.abs(weights) * 2.0**22 + 0.5)  # rounded half away from 0
    return tf.cast(weights, tf.int32), tf.cast(positions[:, :, 0], tf.int32)


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
    hf, wf = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    # One draw for all: areas, aspects, then top and left.
    draws = tf.random.stateless_uniform([2, attempts + 1], seed, dtype=tf.float64)
    area = (scale[0] + (scale[1] - scale[0]) * draws[0, :attempts]) * hf * wf
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * draws[1, :attempts])
    crop_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (crop_w <= width) & (crop_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    crop_h, crop_w = crop_h[first], crop_w[first]
    top = tf.cast(draws[0, attempts] * tf.cast(height - crop_h + 1, tf.float64), tf.int32)  # uniform in 0..h-ch
    left = tf.cast(draws[1, attempts] * tf.cast(width - crop_w + 1, tf.float64), tf.int32)

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
    return tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)  # a ::-1 slice copies element by element


def decode(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Decoded uint8 HWC image from encoded bytes (a uint8 tensor is passed through). JPEGs use the accurate integer
    DCT, so the pixels equal PIL's (timm's loader); `decode_image` would use the fast, less exact one."""
    if image.dtype == tf.string:
        decoded = tf.cond(
            tf.io.is_jpeg(image),
            lambda: tf.io.decode_jpeg(image, channels=channels, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(image, channels=channels, expand_animations=False, dtype=tf.uint8),
        )
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
    """ToTensor + Normalize, (x / 255 - mean) / std, HWC, in float32. mean/std are in 0..1 units.

    Folded into one multiply-add (constants computed in double), which differs from torchvision's three roundings by
    float32 rounding only (~1e-7).
    """
    scale = np.array([1.0 / (255.0 * s) for s in std], np.float32)
    offset = np.array([-m / s for m, s in zip(mean, std)], np.float32)
    if image.shape.is_fully_defined():  # image-sized constants: broadcasting per-channel ones is slower
        scale, offset = (np.broadcast_to(v, image.shape) for v in (scale, offset))
    return tf.cast(image, tf.float32) * scale + offset
