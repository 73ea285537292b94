"""Train-step throughput (img/s) of the XLA-convolution path against the fast conv path, side by side.

    python experiments/train_step_throughput.py --models ghostnet_050,ghostnetv3_050 --image-size 48 --batch 128

Both paths are the same maths (tests/test_layers.py checks forward and backward); 'auto' writes 1x1
convs as matrix products and, on CPU, depthwise convs as shifted multiply-adds. Figures are medians of
`--repeats` timed steps after one compile step, one model at a time in one process.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ghostnet_jax.models import create_model
from ghostnet_jax.training.losses import cross_entropy
from ghostnet_jax.training.state import split_model


def step_throughput(name: str, impl: str, image_size: int, batch: int, repeats: int) -> float:
    """Median img/s of a jitted SGD step (forward, backward, update) in train mode on random data."""
    model = create_model(name, num_classes=10, in_chans=1)
    model.set_attributes(impl=impl, raise_if_not_found=False)
    graphdef, params, batch_stats, rest = split_model(model)
    tx = optax.sgd(0.1, momentum=0.9)

    @jax.jit
    def step(params, batch_stats, opt_state, images, labels):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, batch_stats, rest, copy=True)
            loss = cross_entropy(model(images), jax.nn.one_hot(labels, 10)).mean()
            return loss, nnx.state(model, nnx.BatchStat)

        (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, image_size, image_size, 1)), jnp.float32)
    labels = jnp.zeros((batch,), jnp.int32)
    carry = jax.block_until_ready(step(params, batch_stats, tx.init(params), images, labels))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        carry = jax.block_until_ready(step(*carry, images, labels))
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="ghostnet_050,ghostnet_100,ghostnetv3_050")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"| model | xla img/s | auto img/s | ratio |  ({jax.default_backend()}, {args.image_size}px, batch {args.batch})")
    print("|---|---:|---:|---:|")
    for name in args.models.split(","):
        xla = step_throughput(name, "xla", args.image_size, args.batch, args.repeats)
        auto = step_throughput(name, "auto", args.image_size, args.batch, args.repeats)
        print(f"| {name} | {xla:.0f} | {auto:.0f} | {auto / xla:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
