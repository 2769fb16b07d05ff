#!/usr/bin/env bash
# dinoseg GPU check: CUDA info, ViT-S and ViT-L (random weights) at 1024 px, backbone vs pipeline tiles/s, peak GPU
# memory, clustering ms torch vs scipy, bf16-vs-float32 feature cosine, device-vs-CPU mask IoU; the flow's tiles/s
# from bench/throughput.py when present. Writes Markdown tables to stdout and to --out FILE. Under 8 minutes on
# one GPU.
#
#   bash bench/device_check.sh [--out FILE] [--cpu] [any option of bench/device_check.py]
#
# --cpu: the whole check on the CPU with a 2-block random ViT at 128 px (a smoke test, well under a minute).
# Python: $PYTHON, else the repository's .venv, else python3; it needs torch (a CUDA build for the GPU run),
# transformers, scipy, numpy and scikit-image / the project's other dependencies (pip install -e .).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null; then
    python=.venv/bin/python
  else
    python=python3
  fi
fi
if ! "$python" -c "import torch, transformers, scipy" 2>/dev/null; then
  echo "device_check: $python cannot import torch, transformers and scipy; set PYTHON to an interpreter that" \
       "has the project's dependencies (pip install -e . in a venv with a CUDA build of torch)." >&2
  exit 2
fi
if [[ -z "${OMP_NUM_THREADS:-}" && " $* " != *" --cpu "* ]]; then
  # the GPU run's CPU side (scipy clustering, the CPU reference masks) may use every core
  export OMP_NUM_THREADS="$(nproc)"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" bench/device_check.py "$@"
