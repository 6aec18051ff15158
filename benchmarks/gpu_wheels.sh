#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh installs on a GPU machine that has Python 3.12 and its own torch
# (with numpy, pandas, scikit-learn, scipy, seaborn, matplotlib, Pillow, PyYAML, jinja2, safetensors,
# tqdm, pytest) but no package index: what the check imports and that machine lacks, for CPython 3.12
# manylinux x86_64, into the ignored folder .whl/ ($WHEELS_DIR if set; each pinned as requirements.txt, or as the venv
# resolves jsonschema). Not snakemake, dvc or submitit: the check drives the study's commands
# itself. Run here (pip reaches the index), then carry .whl to the GPU machine with the repository.
#   bash benchmarks/gpu_wheels.sh        (prints the wheel set's size; WHEELS_PYTHON=3.11: for that CPython,
#                                         as CI's rehearsal of gpu_check.sh on its own interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pin() { grep -m1 "^$1==" requirements.txt; }  # the pin of requirements.txt
WHEELS=(
  "$(pin faiss-cpu)"          # sslstudy.eval.kmeans/probes import faiss (the CPU build: k-means and kNN then run in torch on the GPU)
  "$(pin jsonschema)"         # sslstudy.config validates the params
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0  # jsonschema's own needs
)
DIR=${WHEELS_DIR:-.whl}
mkdir -p "$DIR"
rm -f "$DIR"/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEELS_PYTHON:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR" "${WHEELS[@]}"
ls -l "$DIR"
echo "wheel set: $(ls "$DIR"/*.whl | wc -l) wheels, $(du -cb "$DIR"/*.whl | tail -n 1 | cut -f1) bytes"
