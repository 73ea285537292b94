"""Parameters and MACs of the network a run deploys (V3 in its fused form), at the run's input size.

Costs are read off the run's own checkpoint (its model spec), so they describe exactly what was trained:
input channels, classes and every architecture override included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ghostnet_jax.model_checkpoint import load_model
from ghostnet_jax.models import fuse
from ghostnet_jax.summary import count_macs, count_params


def deployed_costs(workdir: Path, image_size: int) -> dict[str, Any]:
    """{'model', 'overrides', 'image_size', 'params', 'macs'} of the run in `workdir` (one eval-mode image)."""
    model, spec = load_model(workdir / "checkpoints")
    deployed = fuse(model) if model.version >= 3 else model
    # The dataset's channels and the compute dtype are not the architecture's choices: the report names neither.
    overrides = {key: value for key, value in spec["overrides"].items() if key not in ("in_chans", "dtype")}
    return {
        "model": spec["name"],
        "overrides": overrides,
        "image_size": image_size,
        "params": count_params(deployed),
        "macs": count_macs(deployed, image_size),
    }
