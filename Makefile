# The two commands of README.md.
.PHONY: study test lint
# GPU=1: install the GPU build of faiss (requirements-gpu.txt) instead of faiss-cpu
GPU ?= 0
study:  ## install, run the default study end to end -> results/report.html
	GPU=$(GPU) bash workflow/scripts/study.sh
test:   ## install, check the style, run the test suite (pytest -m "not slow" for the fast part)
	GPU=$(GPU) bash workflow/scripts/setup.sh && $(MAKE) --no-print-directory lint && .venv/bin/python -m pytest
lint:   ## ruff (lint + format) and snakefmt, as configured in pyproject.toml; `ruff format .` fixes
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/snakefmt --check Snakefile workflow
