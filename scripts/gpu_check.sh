#!/usr/bin/env bash
# TensorRT check for an NVIDIA machine: <= 10 minutes, no network.
#
#   pip install -r requirements/ml.txt -r requirements/gpu.txt   # once, beforehand
#   scripts/gpu_check.sh [--out gpu_check.md]
#
# Builds an fp16 TensorRT engine for MiT-B2 Linear Fusion at 480x640 (seeded random weights,
# saved as a checkpoint and exported through m3l_core.export's TensorRT path, into a fresh
# cache so the build is timed), then prints, side by side in one round-robin run (medians):
# torch fp32, torch fp16 (autocast) and TensorRT fp16 latency of Segmenter.predict, the
# speed-ups over torch fp32 and the fraction of labels equal to torch fp32's.
# Exit codes: 0 done, 1 no GPU / no TensorRT / a failed step, 124 the 10-minute limit hit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "gpu_check: torch sees no CUDA GPU" >&2; exit 1; }
"$PY" -c 'import tensorrt' 2>/dev/null \
  || { echo "gpu_check: TensorRT is not installed (pip install -r requirements/gpu.txt)" >&2; exit 1; }
M3L_CACHE_DIR=$(mktemp -d)
export M3L_CACHE_DIR
trap 'rm -rf "$M3L_CACHE_DIR"' EXIT
"$PY" -c 'import torch, tensorrt; print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, TensorRT {tensorrt.__version__}")'
timeout 600 "$PY" scripts/benchmark_speed.py --device cuda --backbones mit_b2 --kinds LF --threads 2 \
  --frames 3 --rounds 21 --warmup-rounds 3 "$@"
