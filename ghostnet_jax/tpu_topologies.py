"""Cloud TPU chips and slices: each chip's public peak figures, and accelerator types (`v5e-8`, `v4-32`, ...) as the
topologies JAX compiles for ahead of time (`jax.experimental.topologies`), without a TPU."""

from __future__ import annotations

import dataclasses
import os
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip's public figures (Google's Cloud TPU documentation, `source`) and how JAX names its topologies.

    `peak_flops` is the bfloat16 matrix peak; float32 matmuls and convolutions run on the same units (XLA's default
    precision on TPU passes bfloat16 operands with float32 accumulation), so it is the peak for both dtypes.
    `cores_per_chip` is 2 for the megacore chips, whose accelerator types count TensorCores, not chips."""

    generation: str
    peak_flops: float
    hbm_bytes: int
    hbm_bandwidth: float  # bytes/s
    topology_prefix: str
    dims: int  # 2-D torus (v5e, v6e) or 3-D (v4, v5p)
    cores_per_chip: int
    source: str


CHIPS = {
    "v4": Chip("v4", 275e12, 32 * GIB, 1200e9, "v4", 3, 2, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("v5e", 197e12, 16 * GIB, 819e9, "v5e", 2, 1, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 459e12, 95 * GIB, 2765e9, "v5p", 3, 2, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", 918e12, 32 * GIB, 1640e9, "v6e", 2, 1, "https://cloud.google.com/tpu/docs/v6e"),
}
_ALIASES = {"v5litepod": "v5e"}
# Chips -> torus shape, as Cloud TPU lays out its slices; hosts hold 4 chips (2x2 or 2x2x1), except the single-host
# 8-chip v5e and v6e machines.
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_SHAPES_3D = {
    4: (2, 2, 1),
    8: (2, 2, 2),
    16: (2, 2, 4),
    32: (2, 4, 4),
    64: (4, 4, 4),
    128: (4, 4, 8),
    256: (4, 8, 8),
    512: (8, 8, 8),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A Cloud TPU slice: accelerator type, chip, chip count and hosts, and the arguments of `get_topology_desc`."""

    name: str
    chip: Chip
    chips: int
    hosts: int
    topology_name: str
    chips_per_host_bounds: tuple[int, int, int]

    def devices(self) -> list:
        """The slice's abstract devices (one per chip, megacore chips as one): compile for them, run nothing."""
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server to ask on a machine without a TPU
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling only: several processes may do it
        from jax.experimental.topologies import get_topology_desc

        return get_topology_desc(
            platform="tpu",
            topology_name=self.topology_name,
            chip_config_name="megacore" if self.chip.cores_per_chip == 2 else "default",
            chips_per_host_bounds=self.chips_per_host_bounds,
            num_slices=1,
        ).devices


def known_topologies() -> list[str]:
    """Every accelerator type `topology` accepts (v5litepod-N is also accepted, as v5e-N)."""
    names = []
    for generation, chip in CHIPS.items():
        shapes = _SHAPES_2D if chip.dims == 2 else _SHAPES_3D
        names += [f"{generation}-{chips * chip.cores_per_chip}" for chips in shapes]
    return names


def topology(name: str) -> Topology:
    """The slice an accelerator type names (`v5e-8`, `v5litepod-8`, `v4-32`, `v5p-8`, `v6e-64`, ...): v4 and v5p
    count TensorCores (two per chip), v5e and v6e count chips. An unknown name raises, listing the known ones."""
    match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip().lower())
    generation = match and _ALIASES.get(match[1], match[1])
    chip = CHIPS.get(generation) if match else None
    shapes = (_SHAPES_2D if chip.dims == 2 else _SHAPES_3D) if chip else {}
    chips = int(match[2]) // chip.cores_per_chip if chip and int(match[2]) % chip.cores_per_chip == 0 else None
    if chips not in shapes:
        raise ValueError(f"unknown TPU topology {name!r}; known: {', '.join(known_topologies())}")
    shape = shapes[chips]
    if chip.dims == 2:
        host = (2, 4, 1) if chips == 8 else (min(2, shape[0]), min(2, shape[1]), 1)
    else:
        host = (2, 2, 1)
    hosts = chips // (host[0] * host[1] * host[2])
    topology_name = f"{chip.topology_prefix}:{'x'.join(map(str, shape))}"
    return Topology(f"{generation}-{match[2]}", chip, chips, hosts, topology_name, host)
