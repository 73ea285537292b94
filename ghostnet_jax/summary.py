"""Parameter and MAC counts of the model zoo.

MACs count multiply-accumulates of convolutions and matrix products only (BatchNorm, activations, pooling,
upsampling and elementwise gates excluded), which is the papers' "FLOPs" and the reference spec's MACs.
They are read off the traced computation (jaxpr), independently of how the modules are written.

    python -m ghostnet_jax.summary [--image-size 224]
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
from flax import nnx

from ghostnet_jax.models import create_model, fuse, list_models


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics excluded, as in PyTorch)."""
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _jaxpr_macs(jaxpr: jax.extend.core.Jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_dim, in_dim, *spatial = eqn.params["dimension_numbers"].rhs_spec
            taps = math.prod(rhs[d] for d in spatial)
            total += math.prod(eqn.outvars[0].aval.shape) * rhs[in_dim] * taps
        elif eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    total += _jaxpr_macs(inner if hasattr(inner, "eqns") else inner.jaxpr)
    return total


def count_macs(model: nnx.Module, image_size: int | tuple[int, int] = 224, batch: int = 1) -> int:
    """Multiply-accumulates of one eval-mode forward pass on a `batch` of `image_size` NHWC images."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    model = nnx.clone(model)
    model.eval()
    model.set_attributes(impl="xla", raise_if_not_found=False)  # MACs of the reference formulation
    graphdef, state = nnx.split(model)
    channels = model.stem.conv.in_features

    def forward(state, images):
        return nnx.merge(graphdef, state)(images)

    closed = jax.make_jaxpr(forward)(state, jnp.zeros((batch, height, width, channels), jnp.float32))
    return _jaxpr_macs(closed.jaxpr)


def summary_rows(image_size: int = 224) -> list[dict]:
    """One row per registered variant: train-form and (for V3) deploy-form parameters and MACs."""
    rows = []
    for name in list_models():
        model = create_model(name)
        row = {"model": name, "params": count_params(model), "macs": count_macs(model, image_size)}
        if model.version >= 3:
            deployed = fuse(model)
            row.update(deploy_params=count_params(deployed), deploy_macs=count_macs(deployed, image_size))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    def fmt(row, key):
        return f"{row[key]:,}" if key in row else "-"

    lines = ["| model | params | MACs | params (fused) | MACs (fused) |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        keys = ("params", "macs", "deploy_params", "deploy_macs")
        lines.append(f"| {row['model']} | " + " | ".join(fmt(row, k) for k in keys) + " |")
    return "\n".join(lines)


def fusion_check(name: str = "ghostnetv3_100", image_size: int = 224) -> float:
    """Max |logit difference| between a V3 model and its fused form on a random batch (eval mode)."""
    model = create_model(name)
    model.eval()
    images = jax.random.normal(jax.random.key(0), (2, image_size, image_size, model.stem.conv.in_features))
    return float(jnp.abs(model(images) - fuse(model)(images)).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ghostnet_jax.summary", description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)
    print(f"Input {args.image_size}x{args.image_size}, batch 1, 1000 classes.\n")
    print(markdown_table(summary_rows(args.image_size)))
    difference = fusion_check(image_size=args.image_size)
    print(f"\nghostnetv3_100 forward pass, multi-branch vs fused: max |logit difference| = {difference:.2e}")


if __name__ == "__main__":
    main()
