"""A saved network for use (convert, evaluate, predict, export, teachers): its weights and its spec, as an Orbax
`CheckpointManager` directory shared by the converter and training.

Every step directory holds the item `model` (parameters and BatchNorm statistics, as a nested dict) and
the item `spec` (JSON: registry name, num_classes, overrides, whether the model is fused, and optionally the
`mean`/`std` its inputs were normalised with), which is enough to rebuild the network without any other
configuration, e.g. to load a distillation teacher.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from ghostnet_jax.models import create_model, fuse
from ghostnet_jax.models.ghostnet import GhostNet
from ghostnet_jax.storage import storage_path

MODEL_ITEM, SPEC_ITEM = "model", "spec"
STATE_ITEM = "train_state"  # a training run's own item: known here so that reading its model item is silent


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
    return nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))


def save_model(directory: str | os.PathLike, model: nnx.Module, spec: dict[str, Any], *, step: int = 0) -> epath.Path:
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
    with _model_manager(directory) as manager:
        step, spec = _saved_spec(manager, directory, step)
        graphdef, weights, rng_state = nnx.split(
            nnx.eval_shape(lambda: build_model(spec, dtype=dtype)), (nnx.Param, nnx.BatchStat), nnx.RngState
        )
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), nnx.to_pure_dict(weights)
        )
        problems = _shape_problems(array_shapes(abstract), array_shapes(manager.item_metadata(step)[MODEL_ITEM]))
        if problems:  # checked before restoring: a failed Orbax restore left a callback for a closed event loop
            raise ValueError(
                f"checkpoint {directory} step {step} does not match its spec {spec}:\n  " + "\n  ".join(problems)
            )
        restored = manager.restore(step, args=ocp.args.Composite(**{MODEL_ITEM: ocp.args.StandardRestore(abstract)}))[
            MODEL_ITEM
        ]
    nnx.replace_by_pure_dict(weights, restored)
    return nnx.merge(graphdef, weights, seeded(rng_state)), spec


def load_spec(directory: str | os.PathLike, *, step: int | None = None) -> dict[str, Any]:
    """The spec of the network saved in `directory` (latest step by default), reading no weights: enough to build
    the network as shapes (ahead-of-time compilation)."""
    directory = storage_path(directory)
    with _model_manager(directory) as manager:
        return _saved_spec(manager, directory, step)[1]


def _model_manager(directory: epath.Path) -> ocp.CheckpointManager:
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    # The train state's handler too: without it Orbax warns on every read of a training run's directory that an item
    # "could not be restored" (only the model is ever restored here).
    handlers = {
        MODEL_ITEM: ocp.StandardCheckpointHandler(),
        SPEC_ITEM: ocp.JsonCheckpointHandler(),
        STATE_ITEM: ocp.StandardCheckpointHandler(),
    }
    return ocp.CheckpointManager(directory, item_handlers=handlers)


def _saved_spec(manager: ocp.CheckpointManager, directory: epath.Path, step: int | None) -> tuple[int, dict[str, Any]]:
    """(step, spec) of `step` (None: the latest), or FileNotFoundError when there is no such complete checkpoint."""
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(f"{directory} holds no complete checkpoint{'' if step is None else f' at step {step}'}")
    return step, manager.restore(step, args=ocp.args.Composite(**{SPEC_ITEM: ocp.args.JsonRestore()}))[SPEC_ITEM]


def array_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'params.stem.conv.kernel': shape, ...} of every array in a tree (nested dicts, a train state, or Orbax's
    metadata of either, keyed alike)."""

    def name(entry: Any) -> str:
        return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(name(entry) for entry in path): tuple(leaf.shape) for path, leaf in leaves}


def _format_keys(title: str, keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
    return f"{title} ({len(keys)}): {shown}"


def key_problems(expected: Collection[str], found: Collection[str], mismatched: list[str]) -> list[str]:
    """'missing (n): ...', 'unexpected (n): ...' and 'wrong shape (n): ...' lines (at most 20 keys each) for the
    keys of `expected` that `found` lacks, those it has in excess, and the given `mismatched` descriptions;
    empty when everything matches. Shared by `load_model` and the converter."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    return [
        _format_keys(title, keys)
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
        if keys
    ]


def _shape_problems(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> list[str]:
    """`key_problems` for two key -> shape maps."""
    mismatched = [
        f"{key} {found[key]} (expected {shape})"
        for key, shape in sorted(expected.items())
        if key in found and found[key] != shape
    ]
    return key_problems(expected, found, mismatched)


def seeded(rng_state: nnx.State) -> nnx.State:
    """Concrete values for the abstract RNG state of a model built by `nnx.eval_shape`: every stream starts
    from seed 0 (dropout's; checkpoints do not hold it and eval mode never draws from it)."""

    def concrete(leaf: jax.ShapeDtypeStruct) -> jax.Array:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(0)
        return jax.numpy.zeros(leaf.shape, leaf.dtype)

    return jax.tree.map(concrete, rng_state)
