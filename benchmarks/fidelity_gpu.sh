#!/usr/bin/env bash
# The fidelity study's training units on a lent GPU (the `device` tool; never in CI). It resumes the
# committed study: copies analysis/proxy_fidelity/{specs.json,runs.jsonl} to $OUT/fid, runs the missing
# training units (most informative first, WORKERS processes on one GPU) until DEADLINE_S, each finished
# unit appended to $OUT/fid/runs.jsonl as it ends (a kill at the call's time limit keeps what finished).
# Back here, append the new lines (those after $OUT/fid/lines_before) and re-analyse:
#   tail -n +$(( $(cat <files_at>/fid/lines_before) + 1 )) <files_at>/fid/runs.jsonl >> analysis/proxy_fidelity/runs.jsonl
#   archsearch proxy-fidelity search_spaces/fastvithd.yaml --out analysis/proxy_fidelity --analyse-only
# Needs wheels for what the machine's image lacks in .whl/ and Fashion-MNIST's IDX files in .data/ (carried:
# both are git-ignored). Make them here first, once per machine:  bash benchmarks/fidelity_gpu.sh --prepare
# then run on the device with carry [".whl", ".data"]:  DEADLINE_S=530 WORKERS=16 bash benchmarks/fidelity_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  set -e
  python3 -m pip download -q --no-deps -d .whl timm==1.0.31 omegaconf==2.4.0 antlr4-python3-runtime==4.13.2
  mkdir -p .data && cp /usr/share/datasets/fashion-mnist/* .data/
  du -sh .whl .data
  exit 0
fi
OUT_DIR="${OUT:-/tmp/fidelity_gpu}"
mkdir -p "$OUT_DIR/fid"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 ARCHSEARCH_UNIT_THREADS=1
cp analysis/proxy_fidelity/specs.json analysis/proxy_fidelity/runs.jsonl "$OUT_DIR/fid/"
wc -l < "$OUT_DIR/fid/runs.jsonl" > "$OUT_DIR/fid/lines_before"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m archsearch.cli proxy-fidelity "${SPACE:-search_spaces/fastvithd.yaml}" --out "$OUT_DIR/fid" \
  --data-root "${DATA_ROOT:-$PWD/.data}" --kinds train --accelerator cuda --workers "${WORKERS:-15}" \
  --deadline-s "${DEADLINE_S:-480}" 2>&1 | tail -n 25
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
