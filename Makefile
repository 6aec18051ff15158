# The two commands of README.md.
.PHONY: study test
study:  ## install, run the default study end to end -> results/report.html
	bash workflow/scripts/study.sh
test:   ## install, run the test suite
	bash workflow/scripts/setup.sh && .venv/bin/python -m pytest
