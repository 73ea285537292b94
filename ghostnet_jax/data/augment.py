"""timm's RandAugment and RandomErasing written in TensorFlow ops.

They run inside a tf.data graph (no py_function, no PIL), so augmentation scales with tf.data's parallel map instead
of the Python interpreter. The ops reproduce the PIL code paths that timm calls (`timm/data/auto_augment.py`), on uint8
HWC images: the same integer rounding, the same clipping and the same affine resampling (PIL's `Image.transform`,
whose bicubic kernel is the a=-1 cubic, not the a=-0.5 one used for resizing). Arithmetic that PIL does in double is
done in float64 here and what PIL does in float32 (`Image.blend`) in float32, so results are PIL's bit for bit; the
one exception is rotation, interpolated in float32 for speed, which differs by a grey level at a few pixels in a
million.

Speed matters as much, since tf.data runs each example's ops one after another on one core: RandAugment runs only the
drawn op, per-pixel choices are arithmetic on masks rather than tf.where, and image-sized binary ops avoid
broadcasting, which TF implements several times slower than plain elementwise ops.

All randomness is stateless: every function takes a `seed` (int32/int64 tensor of shape [2]) and is a pure function
of its inputs, which is what makes the input pipeline reproducible and resumable.
"""

import dataclasses
import math
import re
from collections.abc import Sequence

import tensorflow as tf

from ghostnet_jax.data.transforms import INTERPOLATIONS

LEVEL_DENOM = 10.0  # timm's magnitude scale: M10 is the strongest level of each op

RAND_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
    """What a timm `rand-...` string configures (defaults are timm's)."""

    magnitude: float = 10.0
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0  # inf: magnitude ~ uniform(0, magnitude)
    magnitude_max: float = LEVEL_DENOM
    increasing: bool = False

    @property
    def transforms(self) -> tuple[str, ...]:
        return RAND_INCREASING_TRANSFORMS if self.increasing else RAND_TRANSFORMS


def parse_rand_augment(config_str: str) -> RandAugmentConfig:
    """Parses timm's RandAugment string, e.g. 'rand-m9-mstd0.5' or 'rand-m7-n3-mstd0.5-inc1'.

    Supported keys: m (magnitude), n (ops per image), p (probability of each op), mstd (magnitude noise std; > 100
    means uniform), mmax (magnitude clip) and inc (severity-increasing op variants). timm's 't' (weighted transform
    sets) is not supported and raises.
    """
    sections = config_str.split("-")
    if sections[0] != "rand":
        raise ValueError(f"not a RandAugment config (must start with 'rand'): {config_str!r}")
    fields = {}
    for section in sections[1:]:
        match = re.fullmatch(r"([a-z]+)(\d.*)", section)
        if match is None:
            raise ValueError(f"cannot parse section {section!r} of RandAugment config {config_str!r}")
        key, value = match.groups()
        if key == "m":
            fields["magnitude"] = float(int(value))
        elif key == "n":
            fields["num_layers"] = int(value)
        elif key == "p":
            fields["prob"] = float(value)
        elif key == "mstd":
            fields["magnitude_std"] = math.inf if float(value) > 100 else float(value)
        elif key == "mmax":
            fields["magnitude_max"] = float(int(value))
        elif key == "inc":
            fields["increasing"] = bool(int(value))
        else:
            raise ValueError(f"unsupported RandAugment key {key!r} in {config_str!r}")
    return RandAugmentConfig(**fields)


def fill_colour(mean: Sequence[float]) -> tuple[int, ...]:
    """timm's fill for pixels that geometric ops move in from outside: the dataset mean in 0..255 (create_transform)."""
    return tuple(min(255, round(255 * m)) for m in mean)


# ---------------------------------------------------------------------------------------------------------------------
# Magnitude -> op argument (timm's LEVEL_TO_ARG).


def level_to_arg(name: str, magnitude: tf.Tensor, negate: tf.Tensor, translate_pct: float = 0.45) -> tf.Tensor:
    """The argument timm passes to op `name` at `magnitude` (float64 scalar); `negate` is timm's random sign flip.

    Ops without an argument return 0.
    """
    level = tf.cast(magnitude, tf.float64) / LEVEL_DENOM
    sign = tf.where(negate, tf.constant(-1.0, tf.float64), 1.0)
    trunc = tf.math.floor  # int() of a non-negative level
    if name in ("AutoContrast", "Equalize", "Invert"):
        return tf.constant(0.0, tf.float64)
    if name == "Rotate":
        return sign * level * 30.0
    if name in ("ShearX", "ShearY"):
        return sign * level * 0.3
    if name in ("TranslateXRel", "TranslateYRel"):
        return sign * level * translate_pct
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1
    if name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        return tf.maximum(1.0 + sign * level * 0.9, 0.1)
    if name == "Posterize":
        return trunc(level * 4.0)
    if name == "PosterizeIncreasing":
        return 4.0 - trunc(level * 4.0)
    if name == "Solarize":
        return tf.minimum(trunc(level * 256.0), 256.0)
    if name == "SolarizeIncreasing":
        return 256.0 - tf.minimum(trunc(level * 256.0), 256.0)
    if name == "SolarizeAdd":
        return tf.minimum(trunc(level * 110.0), 128.0)
    raise ValueError(f"unknown RandAugment op {name!r}")


# ---------------------------------------------------------------------------------------------------------------------
# The ops: PIL semantics on uint8 [H, W, C] images.


def _to_uint8_truncating(x: tf.Tensor) -> tf.Tensor:
    """PIL's clip-then-(UINT8) cast: truncation, not rounding (the cast truncates the clipped, non-negative value)."""
    return tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)


def _blend(degenerate: tf.Tensor | float, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL `Image.blend(degenerate, image, factor)`: float32 arithmetic, clip, truncate (ImageEnhance's core).
    `degenerate` has the image's shape or is a scalar (a flat image)."""
    d = tf.cast(degenerate, tf.float32)
    return _to_uint8_truncating(d + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - d))


def _luma(image: tf.Tensor) -> tf.Tensor:
    """PIL `convert('L')` in fixed point (ITU-R 601-2, rounded), as int32 [H, W, 1]; 1 channel is already L."""
    x = tf.cast(image, tf.int32)
    if image.shape[-1] == 1:
        return x
    return tf.bitwise.right_shift(x[..., :1] * 19595 + x[..., 1:2] * 38470 + x[..., 2:] * 7471 + 0x8000, 16)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """ImageOps.autocontrast: per channel, stretch [min, max] to [0, 255] with int() truncation.

    PIL's table entry for x is int(x * scale + offset) in double. Every pixel lies in [min, max], which that maps into
    [0, 256), so the cast's truncation is the whole rounding; a flat channel gets scale 1 and offset 0, the identity.
    """
    lo = tf.cast(tf.reduce_min(image, axis=(0, 1)), tf.float64)
    hi = tf.cast(tf.reduce_max(image, axis=(0, 1)), tf.float64)
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
    offset = tf.where(hi > lo, -lo * scale, 0.0)
    return tf.cast(tf.cast(image, tf.float64) * scale + offset, tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """ImageOps.equalize: per-channel histogram equalisation with PIL's integer step and rounding."""
    channels = image.shape[-1]
    index = tf.cast(image, tf.int32) + tf.range(channels) * 256  # into the channels' concatenated 256-bin tables
    hist = tf.math.bincount(tf.reshape(index, [-1]), minlength=256 * channels, maxlength=256 * channels)
    hist = tf.cast(tf.reshape(hist, [channels, 256]), tf.int64)
    bins = tf.range(256, dtype=tf.int64)
    last_nonzero = tf.reduce_max(tf.where(hist > 0, bins, -1), axis=1)
    last_count = tf.gather(hist, last_nonzero, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last_count) // 255
    lut = (step[:, None] // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // tf.maximum(step, 1)[:, None]
    lut = tf.where((step > 0)[:, None], tf.minimum(lut, 255), bins)  # step == 0 also covers a single used bin
    return tf.gather(tf.cast(tf.reshape(lut, [-1]), tf.uint8), index)


def invert(image: tf.Tensor) -> tf.Tensor:
    return 255 - image


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """ImageOps.posterize: keep the `bits` most significant bits (8 or more: unchanged)."""
    bits = tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    mask = tf.cast(256 - tf.bitwise.left_shift(1, 8 - bits), tf.uint8)
    return tf.bitwise.bitwise_and(image, mask)


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """ImageOps.solarize: invert the pixels at or above `threshold` (255 - x is x XOR 255)."""
    above = tf.cast(tf.cast(image, tf.int32) >= tf.cast(threshold, tf.int32), tf.uint8)
    return tf.bitwise.bitwise_xor(image, above * 255)


def solarize_add(image: tf.Tensor, add: tf.Tensor, threshold: int = 128) -> tf.Tensor:
    """timm's solarize_add: add `add` (saturating) to the pixels below `threshold`."""
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.minimum(x + tf.cast(x < threshold, tf.int32) * tf.cast(add, tf.int32), 255), tf.uint8)


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """ImageEnhance.Color: blend with the greyscale image (identity for 1 channel, as in PIL)."""
    return _blend(tf.broadcast_to(_luma(image), tf.shape(image)), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """ImageEnhance.Contrast: blend with a flat image at the rounded mean luma."""
    luma = _luma(image)
    mean = tf.cast(tf.reduce_sum(luma), tf.float64) / tf.cast(tf.size(luma), tf.float64)
    return _blend(tf.math.floor(mean + 0.5), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return _blend(0.0, image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter (3x3, centre 5, /13, rounded; border kept)."""
    channels = image.shape[-1]
    x = tf.cast(image, tf.float32)
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]])
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    # Integer sums are exact in float32; S/13 is never within 1/26 of a .5 tie, so rounding matches PIL's floats.
    smooth = tf.math.floor(tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "VALID")[0] / 13.0 + 0.5)
    smooth = tf.concat([x[1:-1, :1], smooth, x[1:-1, -1:]], axis=1)
    return _blend(tf.concat([x[:1], smooth, x[-1:]], axis=0), image, factor)


def affine(
    image: tf.Tensor, matrix: Sequence[tf.Tensor], fill: Sequence[int], interpolation: tf.Tensor, axes: str = "xy"
) -> tf.Tensor:
    """PIL `Image.transform(size, AFFINE, matrix, resample, fillcolor=fill)` for bilinear or bicubic resampling.

    `matrix` (a, b, c, d, e, f) maps output pixel centres to input coordinates: x_in = a x + b y + c. As in PIL,
    points outside the input get `fill`, points inside are interpolated from edge-clamped neighbours, bicubic is the
    a=-1 cubic, and the result is clipped and truncated. `interpolation` is a scalar int32 index into INTERPOLATIONS.

    `axes` names the input axes along which coordinates can be fractional. A shear or translation along x keeps every
    output row on one input row (y fraction exactly 0, where PIL's kernels return their centre tap exactly), so only
    the taps of that row are read: 4 instead of 16 per pixel.
    """
    h, w, channels = tf.shape(image)[0], tf.shape(image)[1], image.shape[-1]
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    a, b, c, d, e, f = (tf.cast(m, tf.float64) for m in matrix)
    ys, xs = tf.meshgrid(tf.range(hf) + 0.5, tf.range(wf) + 0.5, indexing="ij")
    x_in = a * xs + b * ys + c
    y_in = d * xs + e * ys + f
    inside = (x_in >= 0.0) & (x_in < wf) & (y_in >= 0.0) & (y_in < hf)
    # Bilinear is PIL's cubic Horner form on the taps (x0, x0, x0+1, x0+1): the cubic terms cancel exactly, leaving
    # PIL's a + (b - a) t, so one code path serves both.
    offsets = tf.where(tf.equal(interpolation, 1), tf.constant([-1, 0, 1, 2]), tf.constant([0, 0, 1, 1]))
    # Shears and translations can have simple rational fractions (M10 translates by 0.45 of the width), where exact
    # results fall on integers and only double rounding in PIL's order truncates them the same way; a rotation's
    # fractions are irrational, so float32 (half the memory traffic) agrees but for a few pixels in a million.
    dtype = tf.float32 if axes == "xy" else tf.float64

    def along(coordinate: tf.Tensor, size: tf.Tensor, axis: str) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Edge-clamped tap indices [taps, H, W] and the fractions, broadcast to the image's shape once rather than
        in every multiply; on an axis without fractions, only the centre tap and no fractions."""
        coordinate = coordinate - 0.5
        start = tf.math.floor(coordinate)
        index = tf.cast(start, tf.int32)[None]
        if axis not in axes:
            return tf.clip_by_value(index, 0, size - 1), None
        fraction = tf.broadcast_to(tf.cast(coordinate - start, dtype)[..., None], [h, w, channels])
        return tf.clip_by_value(index + offsets[:, None, None], 0, size - 1), fraction

    cols, dx = along(x_in, w, "x")
    rows, dy = along(y_in, h, "y")
    # Points outside the input read column w, a column of the fill colour appended to the image: all their taps are
    # the fill, which the kernels return exactly, so no masking of the result is needed.
    cols = tf.minimum(cols + (w + 1) * tf.cast(~inside, tf.int32), w)
    fill_column = tf.broadcast_to(tf.constant(fill[:channels], tf.uint8), [h, 1, channels])
    flat = tf.reshape(tf.cast(tf.concat([image, fill_column], axis=1), tf.float32), [-1, channels])
    taps = tf.gather(flat, rows[:, None] * (w + 1) + cols[None])  # [rows, cols, H, W, C], tap-major: cheap unstacking
    row_values = [_cubic(tf.unstack(row), dx) if dx is not None else row[0] for row in tf.unstack(taps)]
    return _to_uint8_truncating(_cubic(row_values, dy) if dy is not None else row_values[0])


def _cubic(v: list[tf.Tensor], t: tf.Tensor) -> tf.Tensor:
    """PIL's a=-1 cubic through v[0..3] at t in [0, 1) between v[1] and v[2], in PIL's Horner form and operation
    order: exactly v[1] where the taps are equal (flat regions, the fill), which truncation would otherwise punish.

    The polynomial's coefficients are computed in the taps' dtype and the Horner steps in t's: on integer taps
    (pixels) the coefficients are small integers, exact in float32, so only the steps need float64."""
    v1, v2, v3, v4 = v
    coefficients = [v2, v3 - v1, 2.0 * (v1 - v2) + v3 - v4, -v1 + v2 - v3 + v4]
    c0, c1, c2, c3 = (tf.cast(c, t.dtype) for c in coefficients)
    return c0 + t * (c1 + t * (c2 + t * c3))


def _rotation_matrix(degrees: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> list[tf.Tensor]:
    """PIL `Image.rotate(degrees)` (counter-clockwise about the centre, same size) as an affine matrix."""
    angle = -tf.cast(degrees, tf.float64) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = tf.cast(width, tf.float64) / 2.0, tf.cast(height, tf.float64) / 2.0
    return [cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]


def apply_op(
    image: tf.Tensor, name: str, arg: tf.Tensor, *, fill: Sequence[int], interpolation: tf.Tensor | int = 1
) -> tf.Tensor:
    """Applies RandAugment op `name` with the argument timm would pass (see `level_to_arg`) to a uint8 HWC image."""
    interpolation = tf.convert_to_tensor(interpolation, tf.int32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    one, zero = tf.constant(1.0, tf.float64), tf.constant(0.0, tf.float64)
    base = name.removesuffix("Increasing")
    if base in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        matrix, axes = {
            "Rotate": lambda: (_rotation_matrix(arg, height, width), "xy"),
            "ShearX": lambda: ([one, arg, zero, zero, one, zero], "x"),
            "ShearY": lambda: ([one, zero, zero, arg, one, zero], "y"),
            "TranslateXRel": lambda: ([one, zero, arg * tf.cast(width, tf.float64), zero, one, zero], "x"),
            "TranslateYRel": lambda: ([one, zero, zero, zero, one, arg * tf.cast(height, tf.float64)], "y"),
        }[base]()
        return affine(image, matrix, fill, interpolation, axes)
    unary = {"AutoContrast": auto_contrast, "Equalize": equalize, "Invert": invert}
    if base in unary:
        return unary[base](image)
    with_arg = {
        "Posterize": posterize,
        "Solarize": solarize,
        "SolarizeAdd": solarize_add,
        "Color": color,
        "Contrast": contrast,
        "Brightness": brightness,
        "Sharpness": sharpness,
    }
    if base in with_arg:
        return with_arg[base](image, arg)
    raise ValueError(f"unknown RandAugment op {name!r}")


def sample_magnitude(config: RandAugmentConfig, seed: tf.Tensor, shape: Sequence[int] = ()) -> tf.Tensor:
    """timm's per-application magnitude: gauss(m, mstd) (or uniform(0, m) for mstd=inf), clipped to [0, mmax]."""
    if config.magnitude_std == math.inf:
        magnitude = tf.random.stateless_uniform(shape, seed, 0.0, config.magnitude, dtype=tf.float64)
    elif config.magnitude_std > 0:
        magnitude = config.magnitude + config.magnitude_std * tf.random.stateless_normal(shape, seed, dtype=tf.float64)
    else:
        magnitude = tf.fill(shape, tf.constant(config.magnitude, tf.float64))
    return tf.clip_by_value(magnitude, 0.0, config.magnitude_max)


def rand_augment(
    image: tf.Tensor,
    config: RandAugmentConfig,
    seed: tf.Tensor,
    *,
    fill: Sequence[int],
    interpolation: str = "random",
    translate_pct: float = 0.45,
) -> tf.Tensor:
    """timm's RandAugment: `num_layers` ops drawn uniformly with replacement, each applied with probability `prob`.

    interpolation: 'bilinear' or 'bicubic', or 'random' (timm's default: a fresh choice between the two for every
    geometric op application).
    """
    names = config.transforms
    s_draws, s_magnitude = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    # All layers' draws at once: per layer, whether it applies, the op, the sign and the interpolation.
    draws = tf.unstack(tf.random.stateless_uniform([config.num_layers, 4], s_draws, dtype=tf.float64))
    magnitudes = tf.unstack(sample_magnitude(config, s_magnitude, [config.num_layers]))
    for (u_apply, u_op, u_sign, u_interp), magnitude in zip((tf.unstack(d) for d in draws), magnitudes):
        op_index = tf.cast(u_op * len(names), tf.int32)
        negate = u_sign > 0.5
        if interpolation == "random":
            interp = tf.cast(u_interp * 2.0, tf.int32)
        else:
            interp = tf.constant(INTERPOLATIONS.index(interpolation), tf.int32)

        def branch(name: str, image: tf.Tensor = image, magnitude=magnitude, negate=negate, interp=interp):
            def run() -> tf.Tensor:  # the argument too is computed inside: only the drawn branch runs
                return apply_op(
                    image, name, level_to_arg(name, magnitude, negate, translate_pct), fill=fill, interpolation=interp
                )

            return run

        applied = u_apply <= config.prob  # timm skips when random() > prob
        # Only the drawn op runs: a skipped layer takes the extra identity branch.
        branches = [branch(name) for name in names] + [lambda image=image: image]
        image = tf.ensure_shape(tf.switch_case(tf.where(applied, op_index, len(names)), branches), image.shape)
    return image


# ---------------------------------------------------------------------------------------------------------------------
# Random erasing.


def random_erasing(
    image: tf.Tensor,
    probability: float,
    seed: tf.Tensor,
    *,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    attempts: int = 10,
) -> tf.Tensor:
    """timm's `RandomErasing(probability, mode='pixel', max_count=1)` on a normalised float HWC image.

    With probability `probability`, the first of `attempts` rectangles (area fraction ~ U(min_area, max_area), aspect
    ~ log-uniform in [min_aspect, 1/min_aspect], sides rounded half-to-even like Python's round, strictly smaller than
    the image) is filled with per-pixel, per-channel N(0, 1) noise; if no attempt fits the image is unchanged.
    """
    s_draws, s_noise = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    # One draw for everything but the noise: areas, aspects, then top, left and whether to erase at all.
    draws = tf.random.stateless_uniform([2, attempts + 2], s_draws, dtype=tf.float64)
    target_area = (min_area + (max_area - min_area) * draws[0, :attempts]) * hf * wf
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    aspect = tf.exp(log_lo + (log_hi - log_lo) * draws[1, :attempts])
    eh = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    ew = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    fits = (ew < w) & (eh < h)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    eh, ew = eh[first], ew[first]
    top = tf.cast(draws[0, attempts] * tf.cast(h - eh + 1, tf.float64), tf.int32)  # uniform in 0..h-eh
    left = tf.cast(draws[1, attempts] * tf.cast(w - ew + 1, tf.float64), tf.int32)

    def erase() -> tf.Tensor:
        """The image with the box replaced, assembled from slices: noise is drawn only for the box."""
        noise = tf.random.stateless_normal([eh, ew, tf.shape(image)[2]], s_noise, dtype=image.dtype)
        band = image[top : top + eh]
        band = tf.concat([band[:, :left], noise, band[:, left + ew :]], axis=1)
        return tf.ensure_shape(tf.concat([image[:top], band, image[top + eh :]], axis=0), image.shape)

    return tf.cond((draws[0, attempts + 1] <= probability) & tf.reduce_any(fits), erase, lambda: image)
