"""Why a checkpoint does not fit this run: the config fields that differ, named as on the command line."""

from __future__ import annotations

import json
from typing import Any

_SPEC_FIELDS = {"name": "model.name", "num_classes": "data.num_classes", "fused": "fused (a deploy checkpoint)"}
_OVERRIDE_FIELDS = {"in_chans": "data.name (image channels)"}
# Not the architecture: the weights are float32 whatever the compute dtype, so a run may resume in another one.
_NOT_ARCHITECTURE = {"dtype"}
# Not what a run computes: bookkeeping (where and how often to log, checkpoint and evaluate, when to stop), the
# machine's paths and the process layout. (A resume on another number of devices is statistically, not bitwise,
# the same run: see the README's "Resume".)
FREE_FIELDS = {
    "mode",
    "max_steps",
    "log_every_steps",
    "eval_every_epochs",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "async_checkpointing",
    "compilation_cache_dir",
    "allow_config_change",
    "multihost",
    "data.data_dir",
    "data.num_parallel_calls",
}
FREE_PREFIXES = ("distributed.",)
# Fields added to the configs after runs were saved: a saved config without one ran as its default does.
ADDED_FIELDS = {"init_from": "", "finetune.freeze_steps": 0, "finetune.backbone_lr_scale": 1.0, "data.folder": ""}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'optim.name': 'sgd', ...}: nested dicts as dotted field names."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    return {
        name: leaf
        for key, value in tree.items()
        for name, leaf in flatten(value, f"{prefix}.{key}" if prefix else key).items()
    }


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
            differences.append(
                f"{_SPEC_FIELDS.get(key, key)}: {saved.get(key)!r} in the checkpoint, "
                f"{current.get(key)!r} in this config"
            )
    saved_overrides, current_overrides = saved.get("overrides", {}), current.get("overrides", {})
    for key in sorted((set(saved_overrides) | set(current_overrides)) - _NOT_ARCHITECTURE):
        if saved_overrides.get(key) != current_overrides.get(key):
            differences.append(
                f"{_OVERRIDE_FIELDS.get(key, f'model.{key}')}: {saved_overrides.get(key)!r} in the "
                f"checkpoint, {current_overrides.get(key)!r} in this config"
            )
    return differences


def changed_fields(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """The fields (dotted, as on the command line) whose values differ and that change what training computes."""
    if saved is None:
        return []
    saved, current = ADDED_FIELDS | flatten(_as_json(saved)), flatten(_as_json(current))
    return [
        key
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key) and key not in FREE_FIELDS and not key.startswith(FREE_PREFIXES)
    ]


def config_differences(
    saved: dict[str, Any] | None, current: dict[str, Any], saved_name: str = "config.json"
) -> list[str]:
    """ "optim.name: 'sgd' in config.json, 'adamw' in this config" for each of the `changed_fields`."""
    fields = changed_fields(saved, current)
    saved, current = flatten(_as_json(saved or {})), flatten(_as_json(current))
    return [f"{key}: {saved.get(key)!r} in {saved_name}, {current.get(key)!r} in this config" for key in fields]
