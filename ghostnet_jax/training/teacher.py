"""The distillation teacher: loaded read-only, and what it sees of the student's augmented batch.

The official GhostNetV3 trainer feeds the teacher the student's augmented batch, optionally resized by
`--teacher-resize` (torchvision `Resize(int)`); a teacher trained with other normalisation constants (BEiT v1's
0.5/0.5, say) needs the batch re-normalised. Both are the `TeacherView` here, applied on device inside the step.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from ghostnet_jax.model_checkpoint import build_model, load_model, load_spec, model_spec
from ghostnet_jax.models import list_models
from ghostnet_jax.data.pipeline import channel_stats


@dataclasses.dataclass(frozen=True)
class TeacherView:
    """Student batch (NHWC, normalised with the student's mean/std) -> teacher input.

    `size` resizes the shorter side to `size` pixels and the longer one in proportion (torchvision's `Resize(int)`,
    bilinear with antialiasing, as the official `--teacher-resize`), through `jax.image.resize(antialias=True)`;
    None keeps the student's size. Then x * scale + offset per channel re-normalises: the student's pixel
    p = x * std_s + mean_s, normalised for the teacher, is (p - mean_t) / std_t. With neither, images pass
    through untouched (no op enters the step).
    """

    size: int | None = None
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None

    @classmethod
    def between(
        cls,
        size: int | None,
        student: tuple[Sequence[float], Sequence[float]],
        teacher: tuple[Sequence[float], Sequence[float]],
    ) -> TeacherView:
        """The view for a teacher normalised with `teacher` = (mean, std) from a batch normalised with `student`."""
        (student_mean, student_std), (teacher_mean, teacher_std) = student, teacher
        if tuple(student_mean) == tuple(teacher_mean) and tuple(student_std) == tuple(teacher_std):
            return cls(size)
        scale = tuple(s / t for s, t in zip(student_std, teacher_std))
        offset = tuple((ms - mt) / t for ms, mt, t in zip(student_mean, teacher_mean, teacher_std))
        return cls(size, scale, offset)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The teacher's (height, width) for a student batch of height x width (torchvision's Resize(int) rule)."""
        if self.size is None:
            return height, width
        if height <= width:
            return self.size, int(self.size * width / height)
        return int(self.size * height / width), self.size

    def __call__(self, images: jax.Array) -> jax.Array:
        n, height, width, channels = images.shape
        out_height, out_width = self.output_size(height, width)
        if (out_height, out_width) != (height, width):
            images = jax.image.resize(images, (n, out_height, out_width, channels), "bilinear", antialias=True)
        if self.scale is not None:
            images = images * np.asarray(self.scale, np.float32) + np.asarray(self.offset, np.float32)
        return images


def teacher_view(config: ml_collections.ConfigDict, channels: int, spec: dict[str, Any] | None = None) -> TeacherView:
    """The `TeacherView` the config asks for: distill.teacher_size, and the teacher's mean/std (0..1 units) from
    distill.teacher_mean/std, else from the teacher checkpoint's `spec` (what it was trained with, or the
    converter's --mean/--std), else the student's data.mean/std; averaged to one value for a greyscale dataset as
    the student's are."""
    if config.distill.teacher_mean:
        constants, field = (config.distill.teacher_mean, config.distill.teacher_std), "distill.teacher_mean/std"
    elif spec and "data" in spec:
        constants, field = (spec["data"]["mean"], spec["data"]["std"]), "distill.teacher (its checkpoint's mean/std)"
    else:
        return TeacherView(config.distill.teacher_size)
    student = channel_stats(config.data.mean, config.data.std, channels, field="data.mean/std")
    return TeacherView.between(config.distill.teacher_size, student, channel_stats(*constants, channels, field=field))


def check_teacher_fits(spec: dict[str, Any], directory: str, num_classes: int, channels: int) -> None:
    """Raises unless the teacher saved with `spec` in `directory` takes this dataset's images and classes."""
    teacher_channels = spec["overrides"].get("in_chans", 3)  # from the spec: GhostNet and BEiT teachers alike
    if spec["num_classes"] != num_classes or teacher_channels != channels:
        raise ValueError(
            f"teacher {directory} ({spec['name']}, {spec['num_classes']} classes, "
            f"{teacher_channels} channels) does not fit this dataset ({num_classes} classes, "
            f"{channels} channels)"
        )


def abstract_teacher(teacher: str, num_classes: int, channels: int, dtype: str) -> tuple[nnx.Module, dict[str, Any]]:
    """(the teacher as shapes, its spec) without reading weights: `teacher` is a zoo name (e.g.
    'beitv2_large_patch16_224', built for this dataset's classes and channels) or a checkpoint whose spec is read."""
    if teacher in list_models(teachers=True):
        spec = model_spec(teacher, num_classes=num_classes, overrides={"in_chans": channels}, fused=False)
    else:
        spec = load_spec(teacher)
    return nnx.eval_shape(lambda: build_model(spec, dtype=dtype)), spec


def load_teacher(
    config: ml_collections.ConfigDict, num_classes: int, channels: int, dtype: str, *, abstract: bool = False
) -> tuple[nnx.GraphDef, nnx.State, TeacherView] | tuple[None, None, None]:
    """The distillation teacher, read-only, in eval mode and the student's compute dtype, with its view of the
    student's batch: (graphdef, variables, view), or (None, None, None) if alpha=0. With `abstract` the variables
    are shapes (`abstract_teacher`), for compiling ahead of time."""
    if config.distill.alpha == 0:
        return None, None, None
    if abstract:
        teacher, spec = abstract_teacher(config.distill.teacher, num_classes, channels, dtype)
    else:
        teacher, spec = load_model(config.distill.teacher, dtype=dtype)
    check_teacher_fits(spec, config.distill.teacher, num_classes, channels)
    view = teacher_view(config, channels, spec)
    fixed_size = getattr(teacher, "img_size", None)  # a ViT's position tables fix its input size
    seen = view.output_size(config.data.image_size, config.data.image_size)
    if fixed_size is not None and seen != (fixed_size, fixed_size):
        raise ValueError(
            f"teacher {spec['name']} takes {fixed_size}x{fixed_size} images but would see {seen[0]}x{seen[1]}; "
            f"set config.distill.teacher_size={fixed_size}"
        )
    return *nnx.split(teacher), view
