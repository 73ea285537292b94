"""A run's config as a file, a preset and dotted overrides: building it, parsing `key=value` arguments,
and the equivalent `python -m ghostnet_jax.main` command line (so any run can be reproduced alone)."""

from __future__ import annotations

import ast
import importlib
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections


def load_config(config_file: str, preset: str | None) -> ml_collections.ConfigDict:
    """`get_config(preset)` of a config file named by its path from the repository root (configs/v3.py)."""
    module = importlib.import_module(Path(config_file).with_suffix("").as_posix().replace("/", "."))
    return module.get_config(preset)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Sets dotted fields of `config`: plain values first, then callables of the resulting config (values
    derived from others, e.g. from the budget). Returns every override as the plain value it set."""
    plain = {key: value for key, value in overrides.items() if not callable(value)}
    _set(config, plain)
    derived = {key: value(config) for key, value in overrides.items() if callable(value)}
    _set(config, derived)
    return {key: derived.get(key, plain.get(key)) for key in overrides}


def _set(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> None:
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node[key] if key in node else None
            if not isinstance(node, ml_collections.ConfigDict):
                raise ValueError(f"unknown config field {dotted!r}")
        if leaf not in node:
            raise ValueError(f"unknown config field {dotted!r}")
        node[leaf] = value


def parse_assignments(texts: Sequence[str]) -> dict[str, Any]:
    """`['optim.lr=0.1', 'data.randaugment=']` -> {'optim.lr': 0.1, 'data.randaugment': ''}: Python literals
    where the text is one, strings otherwise."""
    assignments = {}
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise ValueError(f"expected key=value, got {text!r}")
        try:
            assignments[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            assignments[key] = value
    return assignments


def _flag_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(map(str, value)) + ")"
    return str(value)


def main_command(config_file: str, preset: str | None, workdir: str | Path, overrides: Mapping[str, Any]) -> str:
    """The shell command that trains the same run on its own."""
    config = config_file + (f":{preset}" if preset else "")
    args = ["python", "-m", "ghostnet_jax.main", "--config", config, "--workdir", str(workdir)]
    return shlex.join(args + [f"--config.{key}={_flag_value(value)}" for key, value in overrides.items()])
