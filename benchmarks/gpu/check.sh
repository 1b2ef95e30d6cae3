#!/usr/bin/env bash
# The GPU check (see check.py): parity on CUDA, losses (NCCL with 2+ GPUs), ViT-B/32 training
# with bf16 + fused AdamW + compile (samples/s, MFU), inference. Under 8 minutes on one recent
# NVIDIA GPU; writes benchmarks/results/gpu-<gpu>.json.
#   bash benchmarks/gpu/check.sh            # on the GPU machine
#   bash benchmarks/gpu/check.sh --dry-run  # anywhere: the same code, tiny model, on the CPU
# Python: $PYTHON, else .venv's for a dry run, else python3 (a CUDA build of torch). cliplab
# runs from src/ (no install needed). Packages python3 lacks (ftfy, wcwidth, open_clip_torch
# for the parity check) are installed from wheels in .whl/ when that folder exists, for
# machines that cannot reach PyPI:
#   pip download --no-deps --only-binary=:all: -d .whl ftfy wcwidth open_clip_torch==3.3.0
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ "${1:-}" = "--dry-run" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cliplab-site .whl/*.whl
    export PYTHONPATH="/tmp/cliplab-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec timeout 900 "$PY" benchmarks/gpu/check.py "$@"
