# The two commands of README.md.
.PHONY: study test
# GPU=1: install the GPU build of faiss (requirements-gpu.txt) instead of faiss-cpu
GPU ?= 0
study:  ## install, run the default study end to end -> results/report.html
	GPU=$(GPU) bash workflow/scripts/study.sh
test:   ## install, run the test suite
	GPU=$(GPU) bash workflow/scripts/setup.sh && .venv/bin/python -m pytest
