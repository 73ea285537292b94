"""What the teacher sees (resized as torchvision's Resize(int), re-normalised in closed form), config errors, and
that the training step never differentiates the teacher (its jaxpr)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torchvision
from flax import nnx

from configs.common import base_config
from conftest import to_nhwc
from ghostnet_jax.models import create_model
from ghostnet_jax.models.resnet import ResNet
from ghostnet_jax.training.config_check import validate_config
from ghostnet_jax.training.losses import kd_loss
from ghostnet_jax.training.optim import create_optimizer
from ghostnet_jax.training.state import create_train_state, split_model
from ghostnet_jax.training.hosts import AXIS
from ghostnet_jax.training.steps import TEACHER_SCOPE, make_train_step
from ghostnet_jax.training.teacher import TeacherView, teacher_view


@pytest.mark.parametrize(
    "height, width, size, expected",
    [(40, 40, 24, (24, 24)), (24, 24, 40, (40, 40)), (30, 40, 24, (24, 32)), (48, 36, 20, (26, 20))],
)
def test_teacher_resize_is_torchvision_resize_int_bilinear_antialiased(height, width, size, expected):
    # The official --teacher-resize: torchvision Resize(size) on the normalised float batch (antialias, bilinear).
    x = np.random.default_rng(0).normal(size=(2, 3, height, width)).astype(np.float32)
    reference = torchvision.transforms.Resize(size)(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    actual = np.asarray(TeacherView(size)(to_nhwc(x)))
    assert actual.shape[1:3] == reference.shape[1:3] == expected
    np.testing.assert_allclose(actual, reference, atol=2e-6)


@pytest.mark.parametrize("channels", [3, 1])
def test_teacher_renormalisation_equals_normalising_the_pixels_with_the_teachers_constants(channels):
    config = base_config()
    config.data.update(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    config.distill.update(teacher_mean=(0.5, 0.4, 0.3), teacher_std=(0.5, 0.25, 0.2))
    pixels = np.random.default_rng(1).integers(0, 256, size=(2, 5, 6, channels)) / 255.0
    constants = [np.asarray(config.data.mean), np.asarray(config.data.std)]
    teacher_constants = [np.asarray(config.distill.teacher_mean), np.asarray(config.distill.teacher_std)]
    if channels == 1:  # greyscale datasets average the 3-channel constants, the student's and the teacher's alike
        constants, teacher_constants = (
            [c.mean(keepdims=True) for c in constants],
            [c.mean(keepdims=True) for c in teacher_constants],
        )
    student_batch = ((pixels - constants[0]) / constants[1]).astype(np.float32)
    expected = (pixels - teacher_constants[0]) / teacher_constants[1]
    np.testing.assert_allclose(np.asarray(teacher_view(config, channels)(student_batch)), expected, atol=1e-5)


def test_a_teacher_with_the_students_size_and_normalisation_sees_the_batch_untouched():
    config = base_config()
    config.distill.update(teacher_mean=tuple(config.data.mean), teacher_std=tuple(config.data.std))
    batch = np.zeros((1, 4, 4, 3), np.float32)
    assert teacher_view(config, 3) == TeacherView() and TeacherView()(batch) is batch


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"teacher_size": 0}, "config.distill.teacher_size=0 must be a positive number of pixels"),
        ({"teacher_mean": (0.5, 0.5, 0.5)}, "config.distill.teacher_std=None must have as many values as"),
        (
            {"teacher_mean": (0.5,) * 3, "teacher_std": (0.5, 0.0, 0.5)},
            r"config.distill.teacher_std=\(0.5, 0.0, 0.5\) must be positive",
        ),
    ],
)
def test_bad_teacher_view_settings_are_named(changes, message):
    config = base_config()
    config.distill.update(**changes)
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_teacher_constants_for_another_channel_count_are_named():
    config = base_config()
    config.distill.update(teacher="teacher/checkpoints", teacher_mean=(0.5, 0.5), teacher_std=(0.5, 0.5))
    validate_config(config)  # the dataset's channel count is known only when the run starts
    with pytest.raises(ValueError, match="config.distill.teacher_mean/std have 2/2 values for a 3-channel dataset"):
        teacher_view(config, 3)


def _equations(jaxpr, scope=""):
    """(primitive, full name stack, equation) for every equation, nested jaxprs (jit, custom_vjp, ...) included."""
    for eqn in jaxpr.eqns:
        stack = "/".join(part for part in (scope, str(eqn.source_info.name_stack)) if part)
        yield eqn.primitive.name, stack, eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(sub, "eqns"):
                    yield from _equations(sub, stack)


def _teacher_equations(fn, *args):
    """(name stack, equation) of each equation in `fn`'s jaxpr that the teacher scope owns: stacks such as
    'teacher', or 'jvp(teacher)' and 'transpose(jvp(teacher))' where autodiff went through it."""
    jaxpr = jax.make_jaxpr(fn, axis_env=[(AXIS, 1)])(*args)
    owned = re.compile(rf"(\w*\()*{TEACHER_SCOPE}\)*")
    return [
        (stack, eqn)
        for _, stack, eqn in _equations(jaxpr.jaxpr)
        if any(owned.fullmatch(part) for part in stack.split("/"))
    ]


@pytest.fixture(scope="module")
def tiny_distillation():
    """A GhostNet 0.5x student and a one-block-per-stage ResNet teacher at 32 px; the teacher sees 48 px.

    Shapes only (`eval_shape`): tracing a jaxpr needs no values, and nothing is initialised or compiled."""
    student = nnx.eval_shape(lambda: create_model("ghostnet_050", num_classes=10, rngs=nnx.Rngs(0)))
    teacher = nnx.eval_shape(
        lambda: ResNet("basic", (1, 1, 1, 1), num_classes=10, in_chans=3, dtype="float32", rngs=nnx.Rngs(1))
    )
    teacher.eval()
    teacher_graphdef, teacher_variables = nnx.split(teacher)
    graphdef, params, batch_stats, rest = split_model(student)
    config = base_config()
    schedule = optax.constant_schedule(0.1)
    tx = create_optimizer(config.optim, schedule)
    state = jax.eval_shape(
        lambda params, batch_stats: create_train_state(params, batch_stats, tx, 0), params, batch_stats
    )
    batch = {"image": jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32), "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
    step = make_train_step(graphdef, tx, schedule, config, 10, teacher_graphdef, TeacherView(48))
    student_parts = (graphdef, params, batch_stats, rest)
    return step, (state, rest, teacher_variables, batch), (student_parts, teacher_graphdef, teacher_variables)


def test_the_teacher_runs_forward_only_outside_the_differentiated_function(tiny_distillation):
    step, args, _ = tiny_distillation
    teacher = _teacher_equations(step, *args)
    primitives = {eqn.primitive.name for _, eqn in teacher}
    # Its forward is there, on the resized batch (the stem conv sees 48 px), and none of it under jvp/transpose.
    assert {"conv_general_dilated", "reduce_window_max", "dot_general"} <= primitives
    stem = next(eqn for _, eqn in teacher if eqn.primitive.name == "conv_general_dilated")
    assert stem.invars[0].aval.shape == (2, 48, 48, 3)
    assert [stack for stack, _ in teacher if "jvp(" in stack or "transpose(" in stack] == []


def test_a_differentiated_teacher_would_be_detected(tiny_distillation):
    """The check above can fail: the same models with the teacher inside the differentiated loss are caught."""
    _, (_, _, _, batch), ((graphdef, params, batch_stats, rest), teacher_graphdef, teacher_variables) = (
        tiny_distillation
    )

    def differentiated_teacher_step(params, batch_stats, rest, teacher_variables, images):
        def loss(both):
            student_params, teacher_params = both
            student = nnx.merge(graphdef, student_params, batch_stats, rest, copy=True)
            with jax.named_scope(TEACHER_SCOPE):
                teacher_logits = nnx.merge(teacher_graphdef, teacher_params, copy=True)(images)
            return kd_loss(student(images), teacher_logits, 1.0).mean()

        return jax.grad(loss)((params, teacher_variables))

    stacks = [
        stack
        for stack, _ in _teacher_equations(
            differentiated_teacher_step, params, batch_stats, rest, teacher_variables, batch["image"]
        )
    ]
    assert any("transpose(jvp(" in stack for stack in stacks)
