#!/usr/bin/env bash
# The GPU checks in one run (the parts' time limits add up to 8 minutes, on one H100/H200): the CUDA tests, the tiny study on
# CUDA (pretraining and evaluation on the GPU), bench_step at ResNet-50 224 px bf16 batch 256 (eager
# and compiled), and the GPU rows of bench_augment and bench_kmeans. Writes one summary file,
# $OUT/gpu_check.txt (OUT defaults to ./gpu_check_out), and each part's log beside it.
#   bash benchmarks/gpu_check.sh            (in the repository root, the venv's python on PATH)
# Every part has its own time limit; a part that fails or times out is marked in the summary and
# the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/ssl${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
SUMMARY="$OUT/gpu_check.txt"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
: > "$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }

part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, one line in the summary
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  local status=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMED OUT after ${limit}s"
  [ $rc -ne 0 ] && [ "$status" = ok ] && status="FAILED (exit $rc)"
  say "== $name: $status in $((SECONDS - t0)) s (log: $name.log)"
}

say "gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$SUMMARY"
$PY - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import faiss, torch
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available {torch.cuda.is_available()}, "
      f"faiss {faiss.__version__} with {getattr(faiss, 'get_num_gpus', lambda: 0)()} GPU(s)")
EOF

# 1. the tests that only run with CUDA (skipped on CPU machines), and the trainer/methods on the GPU
part cuda_tests 80 $PY -m pytest -x -q -p no:cacheprovider tests/test_augment.py tests/test_kmeans_torch.py tests/test_eval.py \
  tests/test_train.py -k "cuda or gpu or bf16 or resumes_exactly"
grep -E "passed|failed|error" "$OUT/cuda_tests.log" | tail -n 1 | sed 's/^/   /' | tee -a "$SUMMARY"

# 2. the tiny study on CUDA: pretraining (local executor, launch.pretrain.gpus 1) and evaluation on the GPU
$PY - "$WORK" <<'EOF' > "$OUT/tiny_study_setup.log" 2>&1
import shutil, sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import copy_workflow
from sslstudy.data.synth import generate
from test_slurm import tiny_params
work = Path(sys.argv[1])
generate(work / "data", domains=("natural", "aerial"), n_images=256, image_size=32, seed=0)
(work / "wf").mkdir()
copy_workflow(work / "wf")
tiny_params(work / "wf", work / "data")
EOF
part tiny_study 80 bash -c "cd '$WORK/wf' && snakemake --cores 4 --configfile tiny.yaml --quiet rules"
grep -h "device\|precision" "$WORK"/wf/results/runs/*/*/*/train.log 2>/dev/null | head -n 2 | sed 's/^/   /' | tee -a "$SUMMARY"

# 3. bench_step at paper scale: ResNet-50, 224 px, bf16, batch 256; eager, then compiled
part bench_step_eager 110 $PY benchmarks/bench_step.py --precision bf16 --steps 4 --rounds 1 --threads 8 --json "$OUT/bench_step_eager.json"
grep "ratio=" "$OUT/bench_step_eager.log" | sed 's/^/   /' | tee -a "$SUMMARY"
part bench_step_compiled 120 $PY benchmarks/bench_step.py --methods simclr --precision bf16 --compile --steps 4 --rounds 1 \
  --threads 8 --json "$OUT/bench_step_compiled.json"
grep "ratio=" "$OUT/bench_step_compiled.log" | sed 's/^/   /' | tee -a "$SUMMARY"

# 4. the GPU rows of the augmentation and k-means benchmarks
part bench_augment 45 $PY benchmarks/bench_augment.py --quick
grep -i "cuda\|gpu" "$OUT/bench_augment.log" | sed 's/^/   /' | tee -a "$SUMMARY"
part bench_kmeans 45 $PY benchmarks/bench_kmeans.py --quick
grep -i "cuda\|gpu" "$OUT/bench_kmeans.log" | sed 's/^/   /' | tee -a "$SUMMARY"

say "done $(date -u +%FT%TZ)"
