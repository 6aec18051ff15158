#!/usr/bin/env bash
# Create .venv and install the pinned stack + sslstudy (editable) into it, once; again only when
# requirements.txt or pyproject.toml change. pip's output goes to .venv/install.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing the Python stack into .venv (a few minutes; log: .venv/install.log)" >&2
  if ! .venv/bin/pip install --disable-pip-version-check -r requirements.txt -e . > .venv/install.log 2>&1; then
    tail -n 20 .venv/install.log >&2
    echo "error: pip install failed; see .venv/install.log" >&2
    exit 1
  fi
  touch "$stamp"
fi
