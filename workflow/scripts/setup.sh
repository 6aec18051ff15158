#!/usr/bin/env bash
# Create .venv and install the pinned stack + sslstudy (editable) into it, once; again only when
# requirements.txt, requirements-gpu.txt or pyproject.toml change, or GPU changes. GPU=1: the GPU build
# of faiss (requirements-gpu.txt) instead of faiss-cpu. pip's output goes to .venv/install.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=.venv/.installed
gpu=${GPU:-0}
reqs=(-r requirements.txt)
if [ "$gpu" = 1 ]; then
  grep -v '^faiss-cpu==' requirements.txt > .venv/requirements-gpu-base.txt
  reqs=(-r .venv/requirements-gpu-base.txt -r requirements-gpu.txt)
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "gpu=$gpu" ] || [ requirements.txt -nt "$stamp" ] \
   || [ requirements-gpu.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing the Python stack into .venv (a few minutes; log: .venv/install.log)" >&2
  [ "$gpu" = 1 ] && .venv/bin/pip uninstall -y faiss-cpu > /dev/null 2>&1 || true
  if ! .venv/bin/pip install --disable-pip-version-check "${reqs[@]}" -e . > .venv/install.log 2>&1; then
    tail -n 20 .venv/install.log >&2
    echo "error: pip install failed; see .venv/install.log" >&2
    exit 1
  fi
  echo "gpu=$gpu" > "$stamp"
fi
