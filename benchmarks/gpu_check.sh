#!/usr/bin/env bash
# The GPU checks in one run, for the GPU machines this project gets: Python 3.12 with their own torch
# (CUDA), no package index, none of snakemake, dvc, submitit, jsonschema or faiss. Prepare the wheels
# here first (`bash benchmarks/gpu_wheels.sh` fills .whl/, which travels with the repository); this
# script installs them beside the machine's torch (pip --no-index --no-deps --target) and runs, with
# the machine's own torch:
#   install           the wheels of .whl/ (or $WHEELS_DIR) into a folder put on PYTHONPATH
#   cuda_tests        the tests that need CUDA (tests/test_cuda.py, the augmentation's CUDA test)
#   tiny_study        benchmarks/gpu_tiny_study.py on CUDA: pretraining, evaluation, fine-tuning and
#                     a supervised baseline, through the study's own commands (no Snakemake)
#   bench_step_eager  bench_step at ResNet-50, 224 px, bf16, batch 256, eager (GPU_CHECK_COMPILE=1
#                     adds the compiled run, outside the time budget)
#   nccl              the tiny study's pretraining on two processes (NCCL), where there are two GPUs
# The parts' time limits add up to 7.5 minutes, leaving half a minute of the 8 for its start. Without CUDA, the CUDA parts say "no CUDA" and the
# install and summary still run (CI rehearses it so: tests/workflow/test_benchmarks.py).
#   bash benchmarks/gpu_check.sh            (in the repository root; PYTHON=python3 by default)
# Writes one summary, $OUT/gpu_check.txt (OUT defaults to ./gpu_check_out), and each part's log
# beside it. A part that fails or times out is marked in the summary and the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
WHEELS_DIR=${WHEELS_DIR:-$PWD/.whl}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
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

cuda_part() {  # cuda_part NAME SECONDS COMMAND...: a part that needs CUDA; without it, one "no CUDA" line
  if [ "$GPUS" -eq 0 ]; then
    say "== $1: no CUDA: skipped"
    return
  fi
  part "$@"
}

say "gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$SUMMARY"
else
  say "gpu: no nvidia-smi"
fi

# 1. the wheels the machine lacks, beside its own torch
part install 30 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$WORK/site" "$WHEELS_DIR"/*.whl
export PYTHONPATH="$PWD/ssl:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
SITE="$WORK/site" "$PY" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import os, sys, torch
from importlib.metadata import version
try:
    import faiss, jsonschema
    where = "the wheels" if faiss.__file__.startswith(os.environ["SITE"]) else os.path.dirname(faiss.__file__)
    have = (f"faiss {faiss.__version__} from {where} ({getattr(faiss, 'get_num_gpus', lambda: 0)()} GPU(s)), "
            f"jsonschema {version('jsonschema')}")
except ImportError as e:
    have = f"missing: {e.name}"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{torch.cuda.device_count()} CUDA device(s); {have}")
EOF
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)

# 2. the tests that need CUDA (they skip without it)
cuda_part cuda_tests 100 "$PY" -m pytest -x -q -p no:cacheprovider -o addopts="" tests/test_cuda.py \
  tests/test_augment.py::test_cuda_views_match_cpu_views
[ -f "$OUT/cuda_tests.log" ] && grep -E "passed|failed|error" "$OUT/cuda_tests.log" | tail -n 1 | sed 's/^/   /' | tee -a "$SUMMARY"

# 3. the tiny study on CUDA, fine-tuning and a supervised baseline included
cuda_part tiny_study 110 "$PY" benchmarks/gpu_tiny_study.py --work "$WORK/tiny" --device cuda
[ -f "$OUT/tiny_study.log" ] && grep -E "^(data|pretrain|evaluate|lowshot|supervised)" "$OUT/tiny_study.log" \
  | sed 's/^/   /' | tee -a "$SUMMARY"

# 4. bench_step at paper scale: ResNet-50, 224 px, bf16, batch 256, eager (compiled on request)
cuda_part bench_step_eager 140 "$PY" benchmarks/bench_step.py --methods simclr --precision bf16 --steps 4 \
  --rounds 1 --threads 8 --json "$OUT/bench_step_eager.json"
[ -f "$OUT/bench_step_eager.log" ] && grep "ratio=" "$OUT/bench_step_eager.log" | sed 's/^/   /' | tee -a "$SUMMARY"
if [ "${GPU_CHECK_COMPILE:-0}" = 1 ]; then
  cuda_part bench_step_compiled 240 "$PY" benchmarks/bench_step.py --methods simclr --precision bf16 --compile \
    --steps 4 --rounds 1 --threads 8 --json "$OUT/bench_step_compiled.json"
  grep -s "ratio=" "$OUT/bench_step_compiled.log" | sed 's/^/   /' | tee -a "$SUMMARY"
fi

# 5. two processes on two GPUs (NCCL)
if [ "$GPUS" -ge 2 ]; then
  part nccl 70 bash -c "'$PY' benchmarks/gpu_tiny_study.py --work '$WORK/ddp' --device cuda --stage data && \
    '$PY' -m torch.distributed.run --nproc_per_node 2 benchmarks/gpu_tiny_study.py --work '$WORK/ddp' \
    --device cuda --stage pretrain --methods simclr"
  grep -s "^pretrain" "$OUT/nccl.log" | sed 's/^/   /' | tee -a "$SUMMARY"
elif [ "$GPUS" -eq 1 ]; then
  say "== nccl: 1 GPU: skipped (needs 2)"
else
  say "== nccl: no CUDA: skipped"
fi

say "done $(date -u +%FT%TZ)"
