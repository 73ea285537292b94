"""The package's layers (CONTRIBUTING.md): each part imports only the parts below it, never the tools above it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each part of ghostnet_jax (a subpackage or a top-level module) and the parts it may import.
BASE = {"models", "data", "storage", "backends", "compilation_cache", "tpu_topologies"}
ALLOWED = {
    **{part: set() for part in BASE},
    "__init__": {"backends"},
    "model_checkpoint": {"models", "storage"},
    "tool_inputs": {"data", "storage"},
    "training": BASE | {"model_checkpoint"},
    # the command-line tools: anything below them, never one another
    "main": {"training"},
    "summary": {"models"},
    "convert": BASE | {"model_checkpoint"},
    "evaluate": BASE | {"model_checkpoint", "tool_inputs", "training"},
    "predict": BASE | {"model_checkpoint", "tool_inputs"},
    "export": BASE | {"model_checkpoint", "tool_inputs"},
    "aot": BASE | {"model_checkpoint", "training"},
}


def project_imports(path: Path) -> set[str]:
    """The top-level names this file imports from ghostnet_jax, configs, experiments and tests."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [
                f"{node.module}.{alias.name}" if node.module == "ghostnet_jax" else node.module for alias in node.names
            ]
        names |= {
            module for module in modules if module.split(".")[0] in {"ghostnet_jax", "configs", "experiments", "tests"}
        }
    return names


def test_every_part_imports_only_the_layers_below_it():
    violations = []
    for path in sorted((ROOT / "ghostnet_jax").rglob("*.py")):
        part = path.relative_to(ROOT / "ghostnet_jax").with_suffix("").parts[0]
        assert part in ALLOWED, f"ghostnet_jax/{part} is not placed in a layer (tests/test_imports.py, CONTRIBUTING.md)"
        for name in project_imports(path):
            parts = name.split(".")
            if parts[0] != "ghostnet_jax":
                violations.append(f"{path.relative_to(ROOT)} imports {name}")
            elif parts[1] != part and parts[1] not in ALLOWED[part]:
                violations.append(f"{path.relative_to(ROOT)} ({part}) imports {name}")
    assert violations == []
