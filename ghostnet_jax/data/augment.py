"""timm's RandAugment and RandomErasing written in TensorFlow ops.

They run inside a tf.data graph (no py_function, no PIL), so augmentation scales with tf.data's parallel map instead
of the Python interpreter. The ops reproduce the PIL code paths that timm calls (`timm/data/auto_augment.py`), on uint8
HWC images: the same integer rounding, the same clipping and the same affine resampling (PIL's `Image.transform`,
whose bicubic kernel is the a=-1 cubic, not the a=-0.5 one used for resizing). Arithmetic that PIL does in double is
done in float64 here, and what PIL does in float32 (`Image.blend`) in float32, so results agree to the grey level
except for rare ties.

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
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
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
    """PIL's clip-then-(UINT8) cast: truncation, not rounding."""
    return tf.cast(tf.math.floor(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL `Image.blend(degenerate, image, factor)`: float32 arithmetic, clip, truncate (ImageEnhance's core)."""
    d = tf.cast(degenerate, tf.float32)
    return _to_uint8_truncating(d + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - d))


def _luma(image: tf.Tensor) -> tf.Tensor:
    """PIL `convert('L')` in fixed point (ITU-R 601-2, rounded); a 1-channel image is already L."""
    if image.shape[-1] == 1:
        return image
    x = tf.cast(image, tf.int32)
    y = tf.bitwise.right_shift(x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000, 16)
    return tf.cast(y, tf.uint8)[..., None]


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """ImageOps.autocontrast: per channel, stretch [min, max] to [0, 255] with int() truncation."""
    x = tf.cast(image, tf.float64)
    lo = tf.reduce_min(x, axis=(0, 1))
    hi = tf.reduce_max(x, axis=(0, 1))
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = tf.clip_by_value(tf.math.floor(x * scale - lo * scale), 0.0, 255.0)
    return tf.cast(tf.where(hi > lo, stretched, x), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """ImageOps.equalize: per-channel histogram equalisation with PIL's integer step and rounding."""
    channels = image.shape[-1]
    x = tf.cast(image, tf.int32)
    offsets = tf.range(channels, dtype=tf.int32) * 256
    hist = tf.reshape(tf.math.bincount(tf.reshape(x + offsets, [-1]), minlength=256 * channels,
                                       maxlength=256 * channels), [channels, 256])
    hist = tf.cast(hist, tf.int64)
    bins = tf.range(256, dtype=tf.int64)
    last_nonzero = tf.reduce_max(tf.where(hist > 0, bins, -1), axis=1)
    last_count = tf.gather(hist, last_nonzero, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last_count) // 256
    lut = (step[:, None] // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // tf.maximum(step, 1)[:, None]
    lut = tf.where((step > 0)[:, None], tf.minimum(lut, 255), bins)  # step == 0 also covers a single used bin
    channel_index = tf.broadcast_to(tf.range(channels, dtype=tf.int32), tf.shape(x))
    return tf.cast(tf.gather_nd(lut, tf.stack([channel_index, x], axis=-1)), tf.uint8)


def invert(image: tf.Tensor) -> tf.Tensor:
    return 255 - image


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """ImageOps.posterize: keep the `bits` most significant bits (8 or more: unchanged)."""
    bits = tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    mask = tf.cast(256 - tf.bitwise.left_shift(1, 8 - bits), tf.uint8)
    return tf.bitwise.bitwise_and(image, mask)


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """ImageOps.solarize: invert the pixels at or above `threshold`."""
    return tf.where(tf.cast(image, tf.int32) < tf.cast(threshold, tf.int32), image, 255 - image)


def solarize_add(image: tf.Tensor, add: tf.Tensor, threshold: int = 128) -> tf.Tensor:
    """timm's solarize_add: add `add` (saturating) to the pixels below `threshold`."""
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.where(x < threshold, tf.minimum(255, x + tf.cast(add, tf.int32)), x), tf.uint8)


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """ImageEnhance.Color: blend with the greyscale image (identity for 1 channel, as in PIL)."""
    return _blend(tf.broadcast_to(_luma(image), tf.shape(image)), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """ImageEnhance.Contrast: blend with a flat image at the rounded mean luma."""
    mean = tf.math.floor(tf.reduce_mean(tf.cast(_luma(image), tf.float64)) + 0.5)
    return _blend(tf.fill(tf.shape(image), tf.cast(mean, tf.float32)), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter (3x3, centre 5, /13, rounded; border kept)."""
    channels = image.shape[-1]
    x = tf.cast(image, tf.float32)
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]])
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    # Integer sums are exact in float32; S/13 is never within 1/26 of a .5 tie, so rounding matches PIL's floats.
    smooth = tf.math.floor(tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "VALID")[0] / 13.0 + 0.5)
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    h, w = tf.shape(x)[0], tf.shape(x)[1]
    rows = tf.range(h)[:, None, None]
    cols = tf.range(w)[None, :, None]
    interior = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
    return _blend(tf.where(interior, smooth, x), image, factor)


def affine(image: tf.Tensor, matrix: Sequence[tf.Tensor], fill: Sequence[int], interpolation: tf.Tensor) -> tf.Tensor:
    """PIL `Image.transform(size, AFFINE, matrix, resample, fillcolor=fill)` for bilinear or bicubic resampling.

    `matrix` (a, b, c, d, e, f) maps output pixel centres to input coordinates: x_in = a x + b y + c. As in PIL,
    points outside the input get `fill`, points inside are interpolated from edge-clamped neighbours, bicubic is the
    a=-1 cubic, and the result is clipped and truncated. `interpolation` is a scalar int32 index into INTERPOLATIONS.
    """
    h, w, channels = tf.shape(image)[0], tf.shape(image)[1], image.shape[-1]
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    a, b, c, d, e, f = (tf.cast(m, tf.float64) for m in matrix)
    ys, xs = tf.meshgrid(tf.range(hf) + 0.5, tf.range(wf) + 0.5, indexing="ij")
    x_in = a * xs + b * ys + c
    y_in = d * xs + e * ys + f
    inside = (x_in >= 0.0) & (x_in < wf) & (y_in >= 0.0) & (y_in < hf)
    x_in, y_in = x_in - 0.5, y_in - 0.5
    x0, y0 = tf.math.floor(x_in), tf.math.floor(y_in)
    dx, dy = (x_in - x0)[..., None], (y_in - y0)[..., None]
    flat = tf.reshape(tf.cast(image, tf.float64), [-1, channels])

    def taps(offsets: list[int]) -> tf.Tensor:
        """The input pixels around each point: [H, W, rows, cols, C], indices clamped to the image as PIL does."""
        cols = tf.clip_by_value(tf.cast(x0, tf.int32)[..., None] + offsets, 0, w - 1)
        rows = tf.clip_by_value(tf.cast(y0, tf.int32)[..., None] + offsets, 0, h - 1)
        return tf.gather(flat, rows[..., :, None] * w + cols[..., None, :])

    def bilinear() -> tf.Tensor:
        t = taps([0, 1])
        r0 = t[:, :, 0, 0] + (t[:, :, 0, 1] - t[:, :, 0, 0]) * dx
        r1 = t[:, :, 1, 0] + (t[:, :, 1, 1] - t[:, :, 1, 0]) * dx
        return r0 + (r1 - r0) * dy

    def cubic(v1, v2, v3, v4, t):  # PIL's Horner form; exact on flat regions
        return v2 + t * ((v3 - v1) + t * ((2.0 * (v1 - v2) + v3 - v4) + t * (-v1 + v2 - v3 + v4)))

    def bicubic() -> tf.Tensor:
        t = taps([-1, 0, 1, 2])
        rows = [cubic(t[:, :, r, 0], t[:, :, r, 1], t[:, :, r, 2], t[:, :, r, 3], dx) for r in range(4)]
        return cubic(*rows, dy)

    values = tf.switch_case(interpolation, [bilinear, bicubic])
    fill = tf.broadcast_to(tf.constant(fill, tf.uint8)[:channels], tf.shape(image))
    return tf.where(inside[..., None], _to_uint8_truncating(values), fill)


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
        matrix = {
            "Rotate": lambda: _rotation_matrix(arg, height, width),
            "ShearX": lambda: [one, arg, zero, zero, one, zero],
            "ShearY": lambda: [one, zero, zero, arg, one, zero],
            "TranslateXRel": lambda: [one, zero, arg * tf.cast(width, tf.float64), zero, one, zero],
            "TranslateYRel": lambda: [one, zero, zero, zero, one, arg * tf.cast(height, tf.float64)],
        }[base]()
        return affine(image, matrix, fill, interpolation)
    unary = {"AutoContrast": auto_contrast, "Equalize": equalize, "Invert": invert}
    if base in unary:
        return unary[base](image)
    with_arg = {
        "Posterize": posterize, "Solarize": solarize, "SolarizeAdd": solarize_add, "Color": color,
        "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness,
    }
    if base in with_arg:
        return with_arg[base](image, arg)
    raise ValueError(f"unknown RandAugment op {name!r}")


def sample_magnitude(config: RandAugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """timm's per-application magnitude: gauss(m, mstd) (or uniform(0, m) for mstd=inf), clipped to [0, mmax]."""
    if config.magnitude_std == math.inf:
        magnitude = tf.random.stateless_uniform([], seed, 0.0, config.magnitude, dtype=tf.float64)
    elif config.magnitude_std > 0:
        magnitude = config.magnitude + config.magnitude_std * tf.random.stateless_normal([], seed, dtype=tf.float64)
    else:
        magnitude = tf.constant(config.magnitude, tf.float64)
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
    for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, config.num_layers)):
        s_apply, s_op, s_mag, s_sign, s_interp = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 5))
        op_index = tf.random.stateless_uniform([], s_op, 0, len(names), dtype=tf.int32)
        magnitude = sample_magnitude(config, s_mag)
        negate = tf.random.stateless_uniform([], s_sign) > 0.5
        if interpolation == "random":
            interp = tf.random.stateless_uniform([], s_interp, 0, 2, dtype=tf.int32)
        else:
            interp = tf.constant(INTERPOLATIONS.index(interpolation), tf.int32)

        def branch(name: str, image: tf.Tensor = image, magnitude=magnitude, negate=negate, interp=interp):
            arg = level_to_arg(name, magnitude, negate, translate_pct)
            return lambda: apply_op(image, name, arg, fill=fill, interpolation=interp)

        augmented = tf.switch_case(op_index, [branch(name) for name in names])
        applied = tf.random.stateless_uniform([], s_apply) <= config.prob  # timm skips when random() > prob
        image = tf.ensure_shape(tf.where(applied, augmented, image), image.shape)
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
    s_apply, s_area, s_aspect, s_top, s_left, s_noise = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    target_area = tf.random.stateless_uniform([attempts], s_area, min_area, max_area, tf.float64) * hf * wf
    log_aspect = math.log(min_aspect), math.log(1 / min_aspect)
    aspect = tf.exp(tf.random.stateless_uniform([attempts], s_aspect, *log_aspect, tf.float64))
    eh = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    ew = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    fits = (ew < w) & (eh < h)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    eh, ew = eh[first], ew[first]
    top = tf.random.stateless_uniform([], s_top, 0, tf.maximum(h - eh + 1, 1), dtype=tf.int32)
    left = tf.random.stateless_uniform([], s_left, 0, tf.maximum(w - ew + 1, 1), dtype=tf.int32)
    rows = tf.range(h)[:, None, None]
    cols = tf.range(w)[None, :, None]
    region = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
    erase = (tf.random.stateless_uniform([], s_apply) <= probability) & tf.reduce_any(fits)
    noise = tf.random.stateless_normal(tf.shape(image), s_noise, dtype=image.dtype)
    return tf.where(region & erase, noise, image)
