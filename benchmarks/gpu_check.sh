#!/usr/bin/env bash
# The GPU path, measured in one short run (about 5 minutes on an H100-class GPU; budget 8):
#   benchmarks/gpu_check.sh          YOLOv8s at 1024 px and DenseNet-121 at 384 px with mixed precision on
#                                    synthetic 2048-px images: train / predict images per second, the
#                                    classifier's data-loader wait share, GPU memory and utilisation over
#                                    the run (nvidia-smi dmon), then the gpu-marked tests.
#   benchmarks/gpu_check.sh --cpu    the same code at tiny sizes on the CPU (the test suite runs this).
# Figures go to $OUT (or ./gpu_check_out): figures.json, dmon.txt, summary.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || { ./run.sh --help >/dev/null; PY=.venv/bin/python; }  # first use: install
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mode=${1:-gpu}

dmon_pid=""
if [[ $mode != --cpu ]] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" || true
  nvidia-smi dmon -s um -d 1 > "$OUT/dmon.txt" 2>&1 &
  dmon_pid=$!
fi
start=$(date +%s)
if [[ $mode == --cpu ]]; then
  "$PY" benchmarks/gpu_check.py --cpu --work "$OUT/work" --json "$OUT/figures.json"
else
  "$PY" benchmarks/gpu_check.py --work "$OUT/work" --json "$OUT/figures.json"
fi
end=$(date +%s)
[[ -n $dmon_pid ]] && kill "$dmon_pid" 2>/dev/null || true

{
  echo "gpu_check: $mode, $(date -u +%Y-%m-%dT%H:%MZ), $((end - start)) s"
  if [[ -s $OUT/dmon.txt ]]; then
    # columns of 'dmon -s um': gpu sm mem enc dec jpg ofa fb bar1 ccpm (sm = % of time a kernel ran)
    awk '!/^#/ && NF>3 {n++; sm+=$2; if ($2>smax) smax=$2; if ($8>fb) fb=$8}
         END {if (n) printf "GPU utilisation (sm %%): mean %.1f, max %d over %d s; memory used max %d MiB\n", sm/n, smax, n, fb}' "$OUT/dmon.txt"
  else
    echo "no nvidia-smi dmon figures (no GPU, or --cpu)"
  fi
} | tee "$OUT/summary.txt"

if [[ $mode != --cpu ]]; then
  "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py | tee "$OUT/gpu_tests.txt"
fi
