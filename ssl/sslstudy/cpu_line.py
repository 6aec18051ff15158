"""The last line a job's log gets when its command ran in the fork server (sslstudy.forkserver), and
reading it back: the report's time table counts that CPU, which Snakemake's benchmark does not see.
Standard library only: the fork server's client imports it before anything else."""

from __future__ import annotations

import re

LINE = "sslstudy: ran in the fork server: {cpu:.2f} CPU-s"  # the client's last line on stderr (the job's log)
PATTERN = re.escape(LINE).replace(re.escape("{cpu:.2f}"), "([0-9.]+)")


def worker_cpu(log_text: str) -> float:
    """CPU seconds a job's log says its command used in the fork server (0 if it ran in its own process)."""
    return sum(float(m) for m in re.findall(PATTERN, log_text))
