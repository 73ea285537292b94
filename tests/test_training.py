"""Training maths against closed forms, and the pmapped step against a single-device run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.common import base_config
from ghostnet_jax.models import create_model
from ghostnet_jax.training.config_check import validate_config
from ghostnet_jax.training.losses import cross_entropy, distillation_loss, kd_loss, smooth_labels
from ghostnet_jax.training.mixup import mix_batch
from ghostnet_jax.training.optim import create_optimizer, learning_rate_schedule, weight_decay_mask
from ghostnet_jax.training.state import create_train_state, ema_decay, ema_update, split_model
from ghostnet_jax.training.hosts import AXIS
from ghostnet_jax.training.steps import make_train_step


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_kd_loss_equals_closed_form_and_vanishes_for_identical_logits():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 7)), rng.normal(size=(5, 7)) * 3
    tau = 2.0
    p, q = softmax(teacher / tau), softmax(student / tau)
    expected = tau**2 * np.sum(p * (np.log(p) - np.log(q)), axis=-1)
    np.testing.assert_allclose(kd_loss(jnp.asarray(student), jnp.asarray(teacher), tau), expected, rtol=1e-5)
    labels = jnp.asarray(rng.integers(0, 7, 5))
    targets = smooth_labels(labels, 7, 0.1)
    loss, parts = distillation_loss(jnp.asarray(student), targets, jnp.asarray(student), alpha=1.0, temperature=tau)
    assert abs(float(loss)) < 1e-6 and abs(float(parts["kd"])) < 1e-6


def test_distillation_loss_mixes_label_smoothed_ce_and_kd():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(4, 10)), rng.normal(size=(4, 10))
    labels = rng.integers(0, 10, 4)
    smoothed = np.full((4, 10), 0.1 / 10) + 0.9 * np.eye(10)[labels]
    ce = -np.sum(smoothed * np.log(softmax(student)), axis=-1).mean()
    kd = np.sum(softmax(teacher) * (np.log(softmax(teacher)) - np.log(softmax(student))), axis=-1).mean()
    loss, _ = distillation_loss(
        jnp.asarray(student),
        smooth_labels(jnp.asarray(labels), 10, 0.1),
        jnp.asarray(teacher),
        alpha=0.5,
        temperature=1.0,
    )
    np.testing.assert_allclose(float(loss), 0.5 * ce + 0.5 * kd, rtol=1e-5)
    no_teacher, _ = distillation_loss(jnp.asarray(student), jnp.asarray(smoothed), None, alpha=0.5, temperature=1.0)
    np.testing.assert_allclose(float(no_teacher), ce, rtol=1e-5)
    np.testing.assert_allclose(cross_entropy(jnp.asarray(student), jnp.asarray(smoothed)).mean(), ce, rtol=1e-5)


def optim_config(**changes):
    optim = base_config().optim
    optim.update(lr=0.4, warmup_lr=0.01, min_lr=0.001, warmup_epochs=2.0, **changes)
    return optim


@pytest.mark.parametrize("step", [0, 5, 10, 20, 55, 99, 100])
def test_cosine_schedule_equals_the_formula(step):
    schedule = learning_rate_schedule(optim_config(), steps_per_epoch=5, num_epochs=20)  # 10 warmup, 100 total
    if step < 10:
        expected = 0.01 + (0.4 - 0.01) * step / 10
    else:
        progress = (step - 10) / 90
        expected = 0.001 + (0.4 - 0.001) * 0.5 * (1 + np.cos(np.pi * progress))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)


@pytest.mark.parametrize("step", [10, 21, 34, 500])
def test_step_schedule_equals_the_formula(step):
    optim = optim_config(schedule="step", decay_epochs=2.4, decay_rate=0.5)
    schedule = learning_rate_schedule(optim, steps_per_epoch=5, num_epochs=200)
    expected = max(0.4 * 0.5 ** np.floor((step - 10) / 12), 0.001)
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)


def test_ema_update_equals_the_formula_with_warmup():
    assert float(ema_decay(0, 0.9999, warmup=True)) == pytest.approx(1 / 10)
    assert float(ema_decay(90, 0.9999, warmup=True)) == pytest.approx(91 / 100)
    assert float(ema_decay(10**7, 0.9999, warmup=True)) == pytest.approx(0.9999)
    assert float(ema_decay(3, 0.9999, warmup=False)) == pytest.approx(0.9999)
    average, new = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -2.0])}
    np.testing.assert_allclose(ema_update(average, new, 0.9)["w"], [0.9 * 1 + 0.1 * 3, 0.9 * 2 - 0.1 * 2], rtol=1e-6)


def test_weight_decay_skips_batchnorm_and_biases():
    model = create_model("ghostnet_050")
    _, params, _, _ = split_model(model)
    mask = weight_decay_mask(params)
    assert mask["stem"]["conv"]["kernel"].get_value() and mask["classifier"]["kernel"].get_value()
    assert not mask["stem"]["bn"]["scale"].get_value() and not mask["classifier"]["bias"].get_value()
    assert not mask["conv_head"]["bias"].get_value()


def test_mixup_mixes_images_and_targets_with_one_lambda():
    config = base_config().mixup
    config.update(mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0)
    images = jnp.asarray(np.random.default_rng(2).normal(size=(4, 8, 8, 3)), jnp.float32)
    targets = jax.nn.one_hot(jnp.arange(4), 4)
    mixed, mixed_targets = mix_batch(jax.random.PRNGKey(0), images, targets, config)
    lam = float(mixed_targets[0, 0])
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], atol=1e-6)
    np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, atol=1e-6)
    config.update(mixup_alpha=0.0, cutmix_alpha=1.0)
    cut, cut_targets = mix_batch(jax.random.PRNGKey(3), images, targets, config)
    from_flipped = np.all(np.asarray(cut) == np.asarray(images[::-1]), axis=-1)[0]
    np.testing.assert_allclose(1 - from_flipped.mean(), float(cut_targets[0, 0]), atol=1e-6)


def step_config(cross_device_bn=True):
    config = base_config()
    config.model.dropout = 0.0
    config.distill.alpha = 0.5
    config.cross_device_bn = cross_device_bn
    config.ema.decay = 0.9
    return config


def run_one_step(devices, images, labels, config):
    # The smallest GhostNet: the point is the devices (the step's gradient and BatchNorm reductions, EMA and
    # distillation are the same code for every student; every GhostNet's BatchNorm is the one layer that
    # tests/test_layers.py checks across devices), and V1 compiles in about 60% of V3 0.5x's time with one branch.
    student = create_model("ghostnet_050", num_classes=10, dropout=0.0, rngs=nnx.Rngs(0))
    if config.cross_device_bn:
        student.set_attributes(axis_name=AXIS, raise_if_not_found=False)
    # XLA's convolutions in both runs: the comparison is about devices, and the fast conv path's other
    # summation order can flip ReLU gates near 0 in this tiny batch (tests/test_layers.py checks that path).
    student.set_attributes(impl="xla", raise_if_not_found=False)
    teacher = create_model("ghostnet_050", num_classes=10, rngs=nnx.Rngs(1))
    teacher.eval()
    teacher_graphdef, teacher_variables = nnx.split(teacher)
    graphdef, params, batch_stats, rest = split_model(student)
    schedule = optax.constant_schedule(0.1)
    tx = create_optimizer(config.optim, schedule)
    state = create_train_state(params, batch_stats, tx, seed=0)
    step = make_train_step(graphdef, tx, schedule, config, 10, teacher_graphdef)
    p_step = jax.pmap(step, axis_name=AXIS, in_axes=(None, None, None, 0), out_axes=None, devices=devices)
    n = len(devices)
    batch = {"image": images.reshape(n, -1, *images.shape[1:]), "label": labels.reshape(n, -1)}
    return p_step(state, rest, teacher_variables, batch)


@pytest.mark.slow
def test_pmapped_step_on_two_devices_equals_one_device_on_the_global_batch():
    assert jax.local_device_count() == 2, "tests/conftest.py forces 2 host devices"
    rng = np.random.default_rng(4)
    images = jnp.asarray(rng.normal(size=(8, 40, 40, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 8))
    config = step_config()
    two, two_metrics = run_one_step(jax.local_devices(), images, labels, config)
    one, one_metrics = run_one_step(jax.local_devices()[:1], images, labels, config)
    for key in ("loss", "ce", "kd", "top1"):
        np.testing.assert_allclose(two_metrics[key], one_metrics[key], rtol=1e-5, atol=1e-6)
    for name in ("params", "batch_stats", "ema_params", "ema_batch_stats"):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5), getattr(two, name), getattr(one, name)
        )
    assert int(two.step) == 1
    # Without cross-device statistics each device normalises its own half: the results must differ.
    local, _ = run_one_step(jax.local_devices(), images, labels, step_config(cross_device_bn=False))
    assert not np.allclose(
        local.batch_stats["stem"]["bn"]["var"].get_value(), one.batch_stats["stem"]["bn"]["var"].get_value()
    )


def test_sum_weighting_is_the_official_ce_plus_kd_and_convex_half_of_it_at_alpha_half():
    """'sum' = CE + alpha * KD (official GhostNetV3 script); 'convex' at alpha 0.5 is exactly half of sum at 1."""
    rng = np.random.default_rng(2)
    student, teacher = rng.normal(size=(4, 10)), rng.normal(size=(4, 10)) * 2
    labels = rng.integers(0, 10, 4)
    smoothed = np.full((4, 10), 0.1 / 10) + 0.9 * np.eye(10)[labels]
    ce = -np.sum(smoothed * np.log(softmax(student)), axis=-1).mean()
    kd = np.sum(softmax(teacher) * (np.log(softmax(teacher)) - np.log(softmax(student))), axis=-1).mean()
    args = (jnp.asarray(student), jnp.asarray(smoothed), jnp.asarray(teacher))
    summed, _ = distillation_loss(*args, alpha=0.7, temperature=1.0, weighting="sum")
    np.testing.assert_allclose(float(summed), ce + 0.7 * kd, rtol=1e-5)
    official, _ = distillation_loss(*args, alpha=1.0, temperature=1.0, weighting="sum")
    convex, _ = distillation_loss(*args, alpha=0.5, temperature=1.0, weighting="convex")
    np.testing.assert_allclose(float(convex), 0.5 * float(official), rtol=1e-5)
    np.testing.assert_allclose(float(convex), 0.5 * ce + 0.5 * kd, rtol=1e-5)
    config = base_config()
    config.distill.weighting = "product"
    with pytest.raises(ValueError, match="config.distill.weighting='product'"):
        validate_config(config)
