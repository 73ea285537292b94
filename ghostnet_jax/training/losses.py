"""Classification and knowledge-distillation losses (per example; the step averages them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """One-hot targets with `smoothing` spread uniformly: (1 - s) * onehot + s / C (timm's convention)."""
    return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + smoothing / num_classes


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-sum_c targets_c * log softmax(logits)_c for soft (or one-hot) targets."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), Hinton et al.'s scaling by tau^2."""
    teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature)
    student_log_probs = jax.nn.log_softmax(student_logits / temperature)
    kl = jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return temperature**2 * kl


def distillation_loss(
    student_logits: jax.Array,
    targets: jax.Array,
    teacher_logits: jax.Array | None,
    *,
    alpha: float,
    temperature: float,
    weighting: str = "convex",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Batch mean of the weighted CE(student, targets) + KD(teacher || student), and its parts.

    weighting "convex": (1 - alpha) * CE + alpha * KD (this project's default).
    weighting "sum": CE + alpha * KD, the official GhostNetV3 script's `--ori-loss-weight 1 --kd-loss-weight alpha`
    (huawei-noah/Efficient-AI-Backbones, ghostnetv3_pytorch/train.py: loss = loss_ori + loss_kd). Its KD term is
    the cross entropy of the student against softmax(teacher) at temperature 1 (its --temperature is parsed but
    unused), which differs from our KL only by the teacher's entropy: same gradient at tau=1.
    """
    ce = cross_entropy(student_logits, targets).mean()
    if teacher_logits is None or alpha == 0:
        return ce, {"ce": ce}
    kd = kd_loss(student_logits, teacher_logits, temperature).mean()
    ce_weight = 1.0 if weighting == "sum" else 1.0 - alpha
    return ce_weight * ce + alpha * kd, {"ce": ce, "kd": kd}
