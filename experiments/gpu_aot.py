"""The recipe's train step compiled for an NVIDIA H100 on this CPU, no GPU involved: does it compile, and what HBM.

    pip install --no-deps "jax-cuda12-plugin==0.10.2" "jax-cuda12-pjrt==0.10.2"   # the CUDA plugin alone, ~480 MB
    python -m experiments.gpu_aot [--per-gpu 128] [--teacher beitv2_large_patch16_224] [--out FILE]

JAX's CUDA plugin builds an abstract GPU from an XLA target config (`experiments/gpu_targets/h100_sxm.txtpb`) and
a topology shape; without a config it needs a visible GPU ("FAILED_PRECONDITION: No visible GPU devices"). The
programs are `ghostnet_jax.aot.Programs`, the ones `main` runs, pmapped over that one device. The compiled GPU
program reports its memory but no cost analysis through the plugin (None), so flops, bytes and a roofline come
from the TPU compiles only; this script answers "compiles" and "fits".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

from configs import v3
from experiments.records import git_state
from ghostnet_jax.aot import Programs

TARGET = Path(__file__).resolve().parent / "gpu_targets" / "h100_sxm.txtpb"
H100_HBM_BYTES = 80 * 10**9


def h100():
    from jax.experimental.topologies import get_topology_desc

    return get_topology_desc("", platform="cuda", topology="1x1x1", target_config=TARGET.read_text()).devices


def compile_for_h100(per_gpu: int, teacher: str | None) -> dict:
    config = v3.get_config()
    config.model.dtype = "bfloat16"
    config.batch_size = per_gpu
    config.distill.alpha = 0.5 if teacher else 0.0
    config.distill.teacher = teacher or ""
    programs = Programs(config, h100())
    start = time.perf_counter()
    compiled = programs.train_step.lower(*programs.train_args(per_gpu)).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    used = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    return {
        "model": config.model.name,
        "teacher": teacher,
        "dtype": "bfloat16",
        "per_gpu_batch": per_gpu,
        "compiled": True,
        "hbm_bytes": used,
        "hbm_capacity_bytes": H100_HBM_BYTES,
        "cost_analysis": compiled.cost_analysis(),
        "compile_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-gpu", type=int, default=128)
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    jax.config.update("jax_platforms", "cpu")  # this process runs nothing: it only compiles
    try:
        result = compile_for_h100(args.per_gpu, args.teacher)
    except Exception as error:  # the compiler's error is the result
        result = {"compiled": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    result |= {"commit": git_state()["commit"], "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
