#!/usr/bin/env bash
# The default study end to end: install, regenerate the built-in data (checked against data.dvc),
# `dvc repro` (which runs Snakemake). Leaves results/report.html. Opens nothing. The terminal shows one
# line per stage, failed jobs and a summary (sslstudy.progress); the whole output goes to logs/study.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
t0=$(date +%s)
bash workflow/scripts/setup.sh
t1=$(date +%s)
export PATH="$PWD/.venv/bin:$PATH"
if [ ! -f data/synth/natural/images.npy ] || [ ! -f data/synth/natural/masks.npy ]; then  # masks: generator v2
  echo "generating the built-in synthetic data into data/synth" >&2
  sslstudy synth --params params/study.yaml --out data/synth
fi
# A fresh clone has no DVC cache: hash data/ (dvc add) and compare with the recorded version.
recorded=$(grep -m1 'md5:' data.dvc)
cp data.dvc .data.dvc.recorded
dvc add -q data
if [ "$(grep -m1 'md5:' data.dvc)" != "$recorded" ]; then
  mv .data.dvc.recorded data.dvc
  echo "error: data/ differs from the version recorded in data.dvc ($recorded); restore it" \
       "(dvc checkout data.dvc) or, if the change is intended, record it with 'dvc add data'" >&2
  exit 1
fi
rm .data.dvc.recorded
python -m sslstudy.progress -- dvc repro --quiet  # the whole output: logs/study.log
t2=$(date +%s)
echo "report: results/report.html (install $(( t1 - t0 )) s, study $(( t2 - t1 )) s, total $(( t2 - t0 )) s)"
