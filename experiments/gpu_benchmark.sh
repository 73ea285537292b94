#!/usr/bin/env bash
# The benchmark on one GPU, as prepared for a lent machine with no network and no tensorflow,
# tensorflow-datasets or ml_collections (the model and benchmark code import none of them):
# ghostnet_jax in bf16 (the model's dtype override: float32 parameters, bfloat16 compute), with and without
# remat, against timm with torch.autocast(bfloat16) (AMP) and channels-last. Input-pipeline rows need tensorflow and are CPU-only.
#
#     bash experiments/gpu_benchmark.sh [OUT]      # writes OUT.md and OUT.json (default experiments/results/gpu)
#
# Sized to finish within 8 minutes on an H100: each measurement is its own process (about 10 s of imports
# plus compilation), with a 60 s limit per measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-experiments/results/gpu}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import jax, torch, timm; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, '| timm', timm.__version__)"
timeout 470 python -m experiments.benchmark --device gpu --dtypes bfloat16 --remat none,block --suites train,infer,latency \
  --train-sizes 224,40 --repeats 20 --warmup 3 --timeout 60 --out "$out"
