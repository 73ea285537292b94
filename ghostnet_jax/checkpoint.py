"""Model checkpoints shared by the converter and training: an Orbax `CheckpointManager` directory.

Every step directory holds the item `model` (parameters and BatchNorm statistics, as a nested dict) and
the item `spec` (JSON: registry name, num_classes, overrides, whether the model is fused, and optionally the
`mean`/`std` its inputs were normalised with), which is enough to rebuild the network without any other
configuration, e.g. to load a distillation teacher.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from ghostnet_jax.models import create_model, fuse
from ghostnet_jax.models.ghostnet import GhostNet
from ghostnet_jax.storage import storage_path

MODEL_ITEM, SPEC_ITEM = "model", "spec"


def model_spec(
    name: str, *, num_classes: int, overrides: dict[str, Any], fused: bool, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON description from which `build_model` rebuilds a network; `data` records its eval transform and
    class names (`ghostnet_jax.data.model_inputs`)."""
    spec = {"name": name, "num_classes": num_classes, "overrides": dict(overrides), "fused": fused}
    return spec | ({"data": data} if data is not None else {})


def build_model(spec: dict[str, Any], *, dtype: str | None = None) -> GhostNet:
    """A freshly initialised network of the architecture `spec` describes, in eval mode; `dtype` overrides the
    compute dtype it was saved with (the weights are float32 either way)."""
    overrides = spec["overrides"] | ({"dtype": dtype} if dtype is not None else {})
    model = create_model(spec["name"], num_classes=spec["num_classes"], **overrides)
    model = fuse(model) if spec["fused"] else model
    model.eval()
    return model


def model_variables(model: nnx.Module) -> dict:
    """Parameters and BatchNorm statistics as a plain nested dict (what the `model` item stores)."""
    return nnx.state(model, (nnx.Param, nnx.BatchStat)).to_pure_dict()


def save_model(
    directory: str | os.PathLike, model: nnx.Module, spec: dict[str, Any], *, step: int = 0
) -> epath.Path:
    """Writes `model` and its `spec` as step `step` of a new checkpoint directory (refuses to overwrite)."""
    directory = storage_path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} already exists and is not empty; choose a new output directory")
    with ocp.CheckpointManager(directory) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                **{MODEL_ITEM: ocp.args.StandardSave(model_variables(model)), SPEC_ITEM: ocp.args.JsonSave(spec)}
            ),
        )
        manager.wait_until_finished()
    return directory


def load_model(
    directory: str | os.PathLike, *, step: int | None = None, dtype: str | None = None
) -> tuple[GhostNet, dict[str, Any]]:
    """Restores the network saved in `directory` (latest step by default), in eval mode, with its spec; `dtype`
    sets the compute dtype (default: the one it was trained with).

    The network is built as shapes only (`nnx.eval_shape`) and takes the checkpoint's arrays: no random weights
    are drawn and thrown away. Drawing them compiled a few hundred small initialisers and held the network twice:
    restoring ghostnetv3_100 took 45-72 s that way and 11 s as shapes, the ResNet-18 teacher 21 s and 0.9 s
    (fresh processes without a compilation cache, alternating, on a 2-core CPU busy with other work, 2026-12-05)."""
    directory = storage_path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise FileNotFoundError(f"{directory} holds no complete checkpoint{'' if step is None else f' at step {step}'}")
        spec = manager.restore(step, args=ocp.args.Composite(**{SPEC_ITEM: ocp.args.JsonRestore()}))[SPEC_ITEM]
        graphdef, weights, rng_state = nnx.split(
            nnx.eval_shape(lambda: build_model(spec, dtype=dtype)), (nnx.Param, nnx.BatchStat), nnx.RngState
        )
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                                weights.to_pure_dict())
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(**{MODEL_ITEM: ocp.args.StandardRestore(abstract)})
            )[MODEL_ITEM]
        except Exception as error:  # Orbax raises several types for a tree or shape mismatch
            raise ValueError(f"checkpoint {directory} step {step} does not match its spec {spec}: {error}") from error
    nnx.replace_by_pure_dict(weights, restored)
    return nnx.merge(graphdef, weights, seeded(rng_state)), spec


def seeded(rng_state: nnx.State) -> nnx.State:
    """Concrete values for the abstract RNG state of a model built by `nnx.eval_shape`: every stream starts
    from seed 0 (dropout's; checkpoints do not hold it and eval mode never draws from it)."""

    def concrete(leaf: jax.ShapeDtypeStruct) -> jax.Array:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(0)
        return jax.numpy.zeros(leaf.shape, leaf.dtype)

    return jax.tree.map(concrete, rng_state)
