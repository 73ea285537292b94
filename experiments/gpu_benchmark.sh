#!/usr/bin/env bash
# The benchmark on one GPU, as prepared for a lent machine with no network and no tensorflow,
# tensorflow-datasets or ml_collections (the model and benchmark code import none of them):
# ghostnet_jax in bf16 (the model's dtype override: float32 parameters, bfloat16 compute), with and without
# remat, against timm with torch.autocast(bfloat16) (AMP) and channels-last. Input-pipeline rows need tensorflow and are CPU-only.
#
#     bash experiments/gpu_benchmark.sh [OUT]      # writes OUT.md and OUT.json (default experiments/results/gpu)
#
# Sized for 8 minutes on an H200 (224 px train and batch-32 inference rows): each measurement is its own process
# (imports plus compilation: 28 s for our train step), with a 150 s limit per measurement. XLA's GPU autotuner is
# off: with it, compiling our train step took over 120 s (experiments/results/gpu_h200.md).
set -euo pipefail
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
cd "$(dirname "$0")/.."
out="${1:-experiments/results/gpu}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import jax, torch, timm; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, '| timm', timm.__version__)"
timeout 500 python3 -m experiments.benchmark --device gpu --dtypes bfloat16 --remat none,block --suites train,infer \
  --train-sizes 224 --repeats 20 --warmup 3 --timeout 150 --out "$out"
