"""Reference PyTorch weights (timm or the official repository) -> ghostnet_jax models and Orbax checkpoints.

Accepts timm naming and the official naming (V3 `bn` instead of `bn1` in the branches, thop's
`total_ops`/`total_params` leftovers, `state_dict`/`state_dict_ema` wrappers, DataParallel `module.`
prefixes), and V3 in its multi-branch training form or its fused deploy form (detected from the keys).

    python -m ghostnet_jax.convert --model ghostnetv3_100 --torch-checkpoint ghostnetv3-1.0.pth.tar --output DIR
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ghostnet_jax.model_checkpoint import key_problems, model_spec, save_model, seeded
from ghostnet_jax.data import model_inputs
from ghostnet_jax.models import allowed_overrides, create_model, fuse
from ghostnet_jax.models.registry import VARIANTS, teacher_family
from ghostnet_jax.models.ghostnet import STAGES, GhostNet, GhostNetFeatures
from ghostnet_jax.storage import storage_path

# ghostnet_jax site name -> prefix of the reference's re-parameterised branch names.
_REP_SITES = {"primary_conv": "primary", "cheap_operation": "cheap", "conv_dw": "dw"}


def _conv_bn_index(match: re.Match) -> str:
    """`<list>.i.conv.` / `<list>.i.bn.` -> the reference's flat Sequential index 2i / 2i+1."""
    return f"{match[1]}.{2 * int(match[2]) + (match[3] == 'bn')}."


# Applied in order to a dotted ghostnet_jax state path to get the reference key.
_PATH_RULES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    (r"^stem\.conv\.", "conv_stem."),
    (r"^stem\.bn\.", "bn1."),
    (r"^final_conv\.conv\.", "blocks.9.0.conv."),
    (r"^final_conv\.bn\.", "blocks.9.0.bn1."),
    *[
        rule
        for site, prefix in _REP_SITES.items()
        for rule in (
            (rf"{site}\.branches\.(\d+)\.conv\.", rf"{prefix}_rpr_conv.\1.conv."),
            (rf"{site}\.branches\.(\d+)\.bn\.", rf"{prefix}_rpr_conv.\1.bn1."),
            (rf"{site}\.scale_branch\.conv\.", f"{prefix}_rpr_scale.conv."),
            (rf"{site}\.scale_branch\.bn\.", f"{prefix}_rpr_scale.bn1."),
            (rf"{site}\.identity_branch\.", f"{prefix}_rpr_skip."),
        )
    ],
    (r"conv_dw\.conv\.", "conv_dw."),
    (r"conv_dw\.bn\.", "bn_dw."),
    (r"(primary_conv|cheap_operation)\.conv\.", r"\1.0."),
    (r"(primary_conv|cheap_operation)\.bn\.", r"\1.1."),
    (r"(primary_conv|cheap_operation)\.(kernel|bias)$", r"\1.0.\2"),
    (r"\.dfc\.convs\.", ".short_conv."),
    (r"(short_conv|shortcut)\.(\d+)\.(conv|bn)\.", _conv_bn_index),
    (r"\.(kernel|scale)$", ".weight"),
    (r"\.mean$", ".running_mean"),
    (r"\.var$", ".running_var"),
]
_DROPPED_SUFFIXES = ("num_batches_tracked", "total_ops", "total_params")


def torch_key(path: tuple, rules: list[tuple[str, Any]] = _PATH_RULES) -> str:
    """The reference state-dict key of the variable at `path` (as `nnx.iter_graph` yields it): GhostNet's rules by
    default, a teacher family's `TORCH_KEY_RULES` for theirs."""
    key = ".".join(str(p) for p in path)
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def _unwrap(checkpoint: Mapping[str, Any], use_ema: bool) -> Mapping[str, Any]:
    """The parameter mapping inside a training checkpoint (EMA weights first when `use_ema`)."""
    wrappers = ("state_dict_ema", "model_ema", "state_dict", "model") if use_ema else ("state_dict", "model")
    for wrapper in wrappers:
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping):
            return inner
    return checkpoint


def normalise_state_dict(checkpoint: Mapping[str, Any], *, use_ema: bool = True) -> dict[str, np.ndarray]:
    """Reference checkpoint (any accepted naming) -> {timm key: float32 numpy array}."""
    arrays = {}
    for key, value in _unwrap(checkpoint, use_ema).items():
        key = key.removeprefix("module.")
        if key.endswith(_DROPPED_SUFFIXES):
            continue
        key = re.sub(r"(_rpr_(?:conv\.\d+|scale))\.bn\.", r"\1.bn1.", key)  # official V3 naming
        if hasattr(value, "detach"):  # a torch tensor, without importing torch
            value = value.detach().cpu().numpy()
        arrays[key] = np.asarray(value, dtype=np.float32)
    return arrays


def _to_jax_layout(key: str, array: np.ndarray, target_ndim: int) -> np.ndarray:
    """OIHW conv kernels -> HWIO; (out, in) linear `*.weight`s -> (in, out); other tables and vectors unchanged."""
    if array.ndim == 4 and target_ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2 and target_ndim == 2 and key.endswith(".weight"):
        return array.T
    return array


def _is_deploy_form(arrays: Mapping[str, np.ndarray]) -> bool:
    has_branches = any("_rpr_" in k for k in arrays)
    has_fused = any(re.search(r"(primary_conv|cheap_operation)\.0\.bias$", k) for k in arrays)
    if has_branches and has_fused:
        raise ValueError("checkpoint mixes V3 training-form (`*_rpr_*`) and deploy-form keys")
    return has_fused


def from_torch(
    name: str,
    state_dict: Mapping[str, Any],
    *,
    use_ema: bool = True,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **overrides: Any,
) -> GhostNet | GhostNetFeatures:
    """Builds `name` and loads reference PyTorch weights into it; returns the model in eval mode.

    `state_dict` maps parameter names to numpy arrays or torch tensors (timm or official naming, optionally
    wrapped as a training checkpoint; `use_ema` picks `state_dict_ema` when present). `num_classes` defaults
    to the checkpoint's. DFC upsampling defaults to 'nearest' (PyTorch's rule, what the weights were trained
    with). V3 weights in deploy form give a fused model. Unknown, missing or mis-shaped keys raise ValueError
    listing them.

    `features_only=True` gives the backbone (`create_model(..., features_only=True, out_indices=...)`) from timm's
    features-only state dict or from a whole network's (whose stages past the last map and head are left out).
    """
    if not features_only:
        if out_indices is not None:
            raise ValueError("out_indices selects feature maps: it needs features_only=True")
        return convert_state_dict(name, state_dict, use_ema=use_ema, num_classes=num_classes, **overrides)[0]
    if num_classes is not None or teacher_family(name):
        raise ValueError(
            f"features_only=True builds a GhostNet backbone without a head, got {name} with num_classes={num_classes}"
        )
    if "dfc_upsample" in allowed_overrides(name):
        overrides.setdefault("dfc_upsample", "nearest")

    def build() -> GhostNetFeatures:
        return create_model(name, features_only=True, out_indices=out_indices, **overrides)

    model = nnx.eval_shape(build)
    # timm's feature extractor flattens `blocks` into `blocks_<i>`
    arrays = {
        re.sub(r"^blocks_(\d+)\.", r"blocks.\1.", key): value
        for key, value in normalise_state_dict(state_dict, use_ema=use_ema).items()
    }
    beyond = (*(f"blocks.{i}." for i in range(len(model.blocks), len(STAGES) + 1)), "conv_head.", "classifier.")
    arrays = {key: value for key, value in arrays.items() if not key.startswith(beyond)}
    deploy = _is_deploy_form(arrays)
    if deploy and model.version < 3:
        raise ValueError(f"{name} has no deploy form; the checkpoint has fused V3 keys")
    model = shapes_only(lambda: fuse(build()) if deploy else build())
    load_variables(model, arrays, torch_key, f"{name} features {model.out_indices}")
    model.eval()
    return model


def convert_state_dict(
    name: str, state_dict: Mapping[str, Any], *, use_ema: bool = True, num_classes: int | None = None, **overrides: Any
) -> tuple[GhostNet, dict[str, Any]]:
    """`from_torch`, also returning the model's checkpoint spec (see `ghostnet_jax.model_checkpoint`)."""
    arrays = normalise_state_dict(state_dict, use_ema=use_ema)
    described = f"{name} with {overrides}" if overrides else name
    if family := teacher_family(name):
        if num_classes is None:
            num_classes = arrays[family.CLASSIFIER_KEY].shape[0] if family.CLASSIFIER_KEY in arrays else 0
        model = shapes_only(lambda: create_model(name, num_classes=num_classes, **overrides))
        load_variables(model, arrays, functools.partial(torch_key, rules=family.TORCH_KEY_RULES), described)
        model.eval()
        return model, model_spec(name, num_classes=num_classes, overrides=overrides, fused=False)
    if num_classes is None:
        num_classes = arrays["classifier.weight"].shape[0] if "classifier.weight" in arrays else 0
    if "dfc_upsample" in allowed_overrides(name):
        overrides.setdefault("dfc_upsample", "nearest")
    deploy = _is_deploy_form(arrays)
    if deploy and VARIANTS[name][0] < 3:
        raise ValueError(f"{name} has no deploy form; the checkpoint has fused V3 keys")

    def build() -> GhostNet:
        model = create_model(name, num_classes=num_classes, **overrides)
        return fuse(model) if deploy else model

    model = shapes_only(build)
    load_variables(model, arrays, torch_key, described)
    model.eval()
    data = model_inputs.for_converted(num_classes)
    return model, model_spec(name, num_classes=num_classes, overrides=overrides, fused=deploy, data=data)


def shapes_only(build: Callable[[], nnx.Module]) -> nnx.Module:
    """The network `build` makes, its parameters and statistics as shapes (for `load_variables` to fill) and its
    RNG streams concrete: drawing random weights only to overwrite them compiled a few hundred initialisers (and
    for BEiT-L drew 300M numbers), the most of a conversion's time."""
    graphdef, weights, rng_state = nnx.split(nnx.eval_shape(build), (nnx.Param, nnx.BatchStat), nnx.RngState)
    return nnx.merge(graphdef, weights, seeded(rng_state))


def load_variables(
    model: nnx.Module, arrays: Mapping[str, np.ndarray], key_of: Callable[[tuple], str], described: str
) -> None:
    """Copies `arrays` (reference keys, PyTorch layout) into `model`'s parameters and statistics, all or nothing.

    `key_of(path)` names the reference key of each variable. Unknown, missing or mis-shaped keys raise
    ValueError listing them, before any variable is written.
    """
    variables = [
        (key_of(path), var) for path, var in nnx.iter_graph(model) if isinstance(var, (nnx.Param, nnx.BatchStat))
    ]
    mismatched = []
    converted = {}
    for key, var in variables:
        if key in arrays:
            value = _to_jax_layout(key, arrays[key], var.get_value().ndim)
            if value.shape != var.get_value().shape:
                mismatched.append(f"{key} {tuple(arrays[key].shape)} (expected {tuple(var.get_value().shape)})")
            converted[key] = value
    problems = key_problems([key for key, _ in variables], arrays.keys(), mismatched)
    if problems:
        raise ValueError(f"checkpoint does not match {described}:\n  " + "\n  ".join(problems))
    for key, var in variables:
        var.set_value(jnp.asarray(converted[key]))


def load_checkpoint_file(path: str | Path) -> Mapping[str, Any]:
    """Reads a reference checkpoint: `.safetensors`, `.npz`, or a PyTorch pickle (`.pth`, `.pth.tar`, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(path)
    if path.suffix == ".npz":
        with np.load(path) as npz:
            return dict(npz)
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"reading {path} needs PyTorch: pip install torch (or convert it to .safetensors)") from error
    # weights_only refuses arbitrary pickled objects; timm's training checkpoints also carry their argparse args.
    torch.serialization.add_safe_globals([argparse.Namespace])
    return torch.load(path, map_location="cpu", weights_only=True)


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"override {text!r} is not KEY=VALUE")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ghostnet_jax.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="registry name, e.g. ghostnetv3_100")
    parser.add_argument("--torch-checkpoint", required=True, help=".pth/.pth.tar/.safetensors/.npz file")
    parser.add_argument("--output", required=True, help="new directory for the Orbax checkpoint")
    parser.add_argument(
        "--override", action="append", type=_parse_override, default=[], help="KEY=VALUE model override"
    )
    parser.add_argument("--no-ema", action="store_true", help="use `state_dict` even if `state_dict_ema` exists")
    parser.add_argument(
        "--mean",
        type=float,
        nargs="+",
        help="the normalisation the weights were trained with (0..1 "
        "units), kept in the spec: a distillation teacher's batch is re-normalised to it",
    )
    parser.add_argument("--std", type=float, nargs="+", help="with --mean")
    args = parser.parse_args(argv)
    if (args.mean is None) != (args.std is None) or (args.mean and len(args.mean) != len(args.std)):
        parser.error("--mean and --std go together, with as many values each")
    if args.std and min(args.std) <= 0:
        parser.error(f"--std must be positive, got {args.std}")
    output = storage_path(args.output)
    if output.exists() and any(output.iterdir()):
        parser.error(f"--output {output} already exists and is not empty")
    checkpoint = load_checkpoint_file(args.torch_checkpoint)
    model, spec = convert_state_dict(args.model, checkpoint, use_ema=not args.no_ema, **dict(args.override))
    if args.mean:
        spec["data"] = model_inputs.of_spec(spec) | {"mean": args.mean, "std": args.std}
    save_model(output, model, spec)
    print(f"wrote {spec} to {output}")


if __name__ == "__main__":
    main()
