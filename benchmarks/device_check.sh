#!/usr/bin/env bash
# GPU check (a few minutes; never in CI): cuda latency of FastViTHD and FastViT-SA12 at 256/512/1024 px,
# the Qwen2-0.5B prefill fit on the GPU with the TTFT it gives, and training-proxy steps on the GPU.
# Figures go to ${OUT:-benchmarks/results}/device_check.json (commit them under benchmarks/results/).
#
# On the lent machine (the `device` tool), from the repository root, with wheels for what its image
# lacks in .whl/ and Fashion-MNIST's IDX files in .data/ (both carried):
#   bash benchmarks/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
DATA_ROOT="${DATA_ROOT:-}"
[ -z "$DATA_ROOT" ] && [ -d .data ] && DATA_ROOT="$PWD/.data"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, timm, lightning; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"
timeout "${DEVICE_CHECK_TIMEOUT:-300}" python3 benchmarks/device_check.py --out "$OUT_DIR" ${DATA_ROOT:+--data-root "$DATA_ROOT"}
