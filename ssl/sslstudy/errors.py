"""User-facing errors: one line that names the file and the fix."""

from __future__ import annotations

import re
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (config, dataset, paths). The CLI prints it as one line."""


INTERRUPTED = "interrupted; rerun resumes"  # a command's one line on Ctrl-C (a job's log), instead of a traceback

_ONE_LINE = re.compile(rf"^sslstudy [\w-]+: (error: |{re.escape(INTERRUPTED)})")  # what cli.main prints
_EXCEPTION = re.compile(r"^[\w.]+(Error|Exception|Interrupt|Diverged|Collapsed|DiskFull)\b")


def failed_job_lines(logs: str | Path, since: float) -> list[str]:
    """'<log>: <line>' for each job log under `logs` written since `since` (time.time()) that holds an
    `sslstudy` command's one-line error (the last such line), else a traceback's last exception line:
    what failed jobs said, for Snakemake's onerror (with --quiet rules Snakemake shows no job's log)."""
    found = []
    for path in sorted(Path(logs).rglob("*.log")):
        try:
            if path.stat().st_mtime < since:
                continue
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        said = [ln for ln in lines if _ONE_LINE.match(ln)]
        if not said and any(ln.startswith("Traceback (most recent call last)") for ln in lines):
            said = [ln for ln in lines if _EXCEPTION.match(ln)]
        if said:
            found.append(f"{path}: {said[-1]}")
    return found
