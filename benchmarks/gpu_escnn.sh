#!/usr/bin/env bash
# Run the ESCNN GPU benchmark from the repository root: gpu_escnn.sh OUT_DIR [extra gpu_escnn.py args]
# e.g. on the lent GPU box: bash benchmarks/gpu_escnn.sh "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: gpu_escnn.sh OUT_DIR [args]}"
shift
"${PYTHON:-python3}" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv 2>/dev/null || true
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" benchmarks/gpu_escnn.py --out "$out" "$@"
