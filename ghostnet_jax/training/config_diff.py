"""Why a checkpoint does not fit this run: the config fields that differ, named as on the command line."""

from __future__ import annotations

import json
from typing import Any

_SPEC_FIELDS = {"name": "model.name", "num_classes": "data.num_classes", "fused": "fused (a deploy checkpoint)"}
_OVERRIDE_FIELDS = {"in_chans": "data.name (image channels)"}
# Not the architecture: the weights are float32 whatever the compute dtype, so a run may resume in another one.
_NOT_ARCHITECTURE = {"dtype"}
# Not what a run computes: where this machine keeps compiled programs (a home directory, $JAX_COMPILATION_CACHE_DIR).
_MACHINE_FIELDS = {"compilation_cache_dir"}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'optim.name': 'sgd', ...}: nested dicts as dotted field names."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    return {name: leaf for key, value in tree.items()
            for name, leaf in flatten(value, f"{prefix}.{key}" if prefix else key).items()}


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as the saved copy has them


def spec_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'model.width: 0.5 in the checkpoint, 0.75 in this config' for each architecture field that differs.

    An override missing from a spec is the variant's own default, shown as None."""
    saved, current = _as_json(saved), _as_json(current)
    differences = []
    for key in sorted(set(saved) | set(current)):
        if key in ("overrides", "data"):  # not the architecture ("data": eval transform and class names)
            continue
        if saved.get(key) != current.get(key):
            differences.append(f"{_SPEC_FIELDS.get(key, key)}: {saved.get(key)!r} in the checkpoint, "
                               f"{current.get(key)!r} in this config")
    saved_overrides, current_overrides = saved.get("overrides", {}), current.get("overrides", {})
    for key in sorted((set(saved_overrides) | set(current_overrides)) - _NOT_ARCHITECTURE):
        if saved_overrides.get(key) != current_overrides.get(key):
            differences.append(f"{_OVERRIDE_FIELDS.get(key, f'model.{key}')}: {saved_overrides.get(key)!r} in the "
                               f"checkpoint, {current_overrides.get(key)!r} in this config")
    return differences


def config_differences(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """'optim.name: 'sgd' in config.json, 'adamw' in this config' for each field that differs (none if not saved),
    leaving out the machine's own paths, which a run resumed elsewhere may change."""
    if saved is None:
        return []
    saved, current = flatten(_as_json(saved)), flatten(_as_json(current))
    return [f"{key}: {saved.get(key)!r} in config.json, {current.get(key)!r} in this config"
            for key in sorted((set(saved) | set(current)) - _MACHINE_FIELDS) if saved.get(key) != current.get(key)]
