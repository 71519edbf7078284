#!/usr/bin/env bash
# GPU check of the deep branch (issue 16): trainer=gpu, bf16-mixed, a widened ResNet-10 at 96^3 on the default
# synthetic cohort; prints steps/s, GPU utilisation (nvidia-smi sampled every 250 ms), and whether the data
# loader keeps up, as a table. Optional: nothing in radfusion requires a GPU or this script (docs/scaling.md).
#   bash scripts/gpu_check.sh                       # defaults: 96^3, [64,128,256,512], batch 8, 8 workers
#   bash scripts/gpu_check.sh --batch 16 --channels-last --widths 32,64,128,256
# Extra arguments go to scripts/gpu_check.py (--help lists them). Output also in $GPU_CHECK_LOG
# (default runs/gpu_check_<time>.log).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no nvidia-smi on this machine: nothing to check (CPU dry run: python scripts/gpu_check.py --help)" >&2
  exit 2
fi
mkdir -p runs
LOG=${GPU_CHECK_LOG:-runs/gpu_check_$(date +%Y%m%d_%H%M%S).log}
{
  echo "## GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.gpu --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
  echo "uptime: $(uptime)"
  "$PY" scripts/gpu_check.py "$@"
} 2>&1 | tee "$LOG"
echo "gpu_check: log in $LOG"
