"""Mixup and CutMix on device, batch-wise as timm's `Mixup(mode='batch')`: the batch mixed with its reverse."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections


def cutmix_box(rng: jax.Array, height: int, width: int, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A box covering about (1 - lam) of the image, centred uniformly and clipped; returns (mask, exact lam)."""
    cut = jnp.sqrt(1.0 - lam)
    cy_rng, cx_rng = jax.random.split(rng)
    cy = jax.random.randint(cy_rng, (), 0, height)
    cx = jax.random.randint(cx_rng, (), 0, width)
    half_h, half_w = (cut * height / 2).astype(jnp.int32), (cut * width / 2).astype(jnp.int32)
    y0, y1 = jnp.clip(cy - half_h, 0, height), jnp.clip(cy + half_h, 0, height)
    x0, x1 = jnp.clip(cx - half_w, 0, width), jnp.clip(cx + half_w, 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    mask = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    return mask, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def mix_batch(
    rng: jax.Array, images: jax.Array, targets: jax.Array, mixup: ml_collections.ConfigDict
) -> tuple[jax.Array, jax.Array]:
    """With probability `prob`, mixes (images, soft targets) with their reversed batch by Mixup or CutMix.

    When both alphas are positive, CutMix is chosen with probability `switch_prob`. The same lam weighs
    the targets; for CutMix it is corrected to the clipped box's true area.
    """
    apply_rng, switch_rng, lam_rng, box_rng = jax.random.split(rng, 4)
    if mixup.cutmix_alpha > 0 and mixup.mixup_alpha > 0:
        use_cutmix = jax.random.bernoulli(switch_rng, mixup.switch_prob)
    else:
        use_cutmix = jnp.asarray(mixup.cutmix_alpha > 0)
    alpha = jnp.where(use_cutmix, mixup.cutmix_alpha, mixup.mixup_alpha)
    lam = jax.random.beta(lam_rng, alpha, alpha)
    flipped_images, flipped_targets = images[::-1], targets[::-1]
    mask, box_lam = cutmix_box(box_rng, images.shape[1], images.shape[2], lam)
    cutmixed = jnp.where(mask[None, :, :, None], flipped_images, images)
    mixed = lam * images + (1.0 - lam) * flipped_images
    lam = jnp.where(use_cutmix, box_lam, lam)
    out_images = jnp.where(use_cutmix, cutmixed, mixed)
    apply = jax.random.bernoulli(apply_rng, mixup.prob)
    lam = jnp.where(apply, lam, 1.0)
    out_images = jnp.where(apply, out_images, images)
    return out_images, lam * targets + (1.0 - lam) * flipped_targets
