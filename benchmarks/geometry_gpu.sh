#!/usr/bin/env bash
# The geometry study's GPU tier (the `device` tool; never in CI): the study's specs trained at full scale (widths x1,
# no depth cap, input side = the encoder's own resolution, strides kept), the geometry every cheaper one is judged
# against. Glyph scenes at 1024 px are rendered as a stream by DataLoader workers (10,000 of them would be 10 GB).
# WORKERS (at most 4: 8 files come back) processes share the GPU, each running every WORKERS-th unit and appending
# to $OUT/geo/runs-gpuK.jsonl;
# units finished earlier (analysis/proxy_geometry/runs*.jsonl, copied in) are skipped, so calls resume each other.
# No new unit starts after DEADLINE_S. Back here, keep what came back and rewrite the report:
#   cp <files_at>/geo/runs-gpu*.jsonl analysis/proxy_geometry/   (rename if a file of that name is there: append)
#   python benchmarks/proxy_geometry.py --out analysis/proxy_geometry --report-only
# Needs wheels for what the machine's image lacks in .whl/ (carried: git-ignored). Make them here first, once:
#   bash benchmarks/geometry_gpu.sh --prepare
# then on the device with carry [".whl"]:  DEADLINE_S=420 WORKERS=4 bash benchmarks/geometry_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  set -e
  python3 -m pip download -q --no-deps -d .whl timm==1.0.31 omegaconf==2.4.0 antlr4-python3-runtime==4.13.2
  du -sh .whl
  exit 0
fi
OUT_DIR="${OUT:-/tmp/geometry_gpu}"
WORK=/tmp/geometry_gpu_work   # the units finished before: read, never sent back (at most 8 files come back)
mkdir -p "$OUT_DIR/geo" "$WORK"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
cp analysis/proxy_geometry/runs*.jsonl "$WORK/" 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
WORKERS="${WORKERS:-4}"
for k in $(seq 0 $((WORKERS - 1))); do
  python3 benchmarks/proxy_geometry.py --out "$WORK" --geometries full --accelerator cuda --batch-size 16 \
    --data-workers "${DATA_WORKERS:-3}" --shard "$k/$WORKERS" --runs "$OUT_DIR/geo/runs-gpu$k.jsonl" \
    --deadline-s "${DEADLINE_S:-420}" --no-report > "$OUT_DIR/geo/shard$k.log" 2>&1 &
done
wait
tail -n 3 "$OUT_DIR"/geo/shard*.log
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
