"""The quiet terminal of `make study` (sslstudy.progress) on Snakemake 9's own output, cut from real runs."""

import io
import re
import sys

from sslstudy import progress
from sslstudy.cpu_line import LINE as CPU_LINE

START = """\
Assuming unrestricted shared filesystem usage.
Building DAG of jobs...
Using shell: /usr/bin/bash
Provided cores: 2
Rules claiming more threads will be scaled down.
Conda environments: ignored
Job stats:
job           count
----------  -------
subset            2
pretrain          1
all               1
total             4

Select jobs to execute...
Execute 2 jobs...

"""


def job(rule: str, jobid: int, wildcards: str) -> str:
    return f"""\
[Sun Dec  6 05:53:45 2026]
localrule {rule}:
    input: data/synth/natural/images.npy, data/synth/natural/labels.csv, data/synth/natural/meta.json
    output: results/{rule}/{jobid}
    log: logs/{rule}/{jobid}.log
    jobid: {jobid}
    benchmark: results/benchmarks/{rule}/{jobid}.tsv
    wildcards: {wildcards}
    resources: tmpdir=/tmp
"""


def finished(rule: str, jobid: int, step: int) -> str:
    return (
        f"[Sun Dec  6 05:53:50 2026]\nFinished jobid: {jobid} (Rule: {rule})\n{step} of 4 steps ({step * 25}%) done\n"
    )


FAILED_PRETRAIN = """\
Select jobs to execute...
RuleException:
CalledProcessError in file "/tmp/wf/workflow/rules/pretrain.smk", line 29:
Command 'set -euo pipefail;  sslstudy pretrain --spec '{}' 2> logs/pretrain/3.log' returned non-zero exit status 2.
[Sun Dec  6 05:56:57 2026]
Error in rule pretrain:
    message: None
    jobid: 3
    log: logs/pretrain/3.log, results/runs/x/metrics.jsonl (check log file(s) for error details)
    shell:
        sslstudy pretrain --run-dir results/runs/x --spec '{"batch_size": 512}' 2> logs/pretrain/3.log
        (command exited with non-zero exit code)
Logfile logs/pretrain/3.log:
================================================================================
2026-12-06 05:56:56,499 sslstudy.train INFO device cpu (1 thread(s))
sslstudy pretrain: error: results/subsets/n.npy: 192 images, fewer than one batch of 512; lower pretrain.batch_size
sslstudy: ran in the fork server: 0.16 CPU-s
================================================================================
Logfile results/runs/x/metrics.jsonl not found.
Shutting down, this might take some time.
Exiting because a job execution failed. Look above for error messages
Complete log(s): /tmp/wf/.snakemake/log/2026-12-06T055632.988224.snakemake.log
Elapsed time: 0:00:24.799693
WorkflowError:
At least one job did not complete successfully.
"""

STAGE = r"(\w+) +(\d+)/(\d+) +at \d+:\d\d"


def feed(p: progress.Progress, text: str) -> list[str]:
    return [shown for line in text.splitlines(keepends=True) for shown in p.feed(line)]


def test_a_study_shows_one_line_per_stage_and_a_status_line():
    p = progress.Progress()
    assert feed(p, START) == [] and p.status() == "[0/4 jobs] "
    shown = feed(p, job("subset", 2, "domain=natural, seed=0, subset=frac1") + job("subset", 5, "domain=aerial"))
    assert shown == [] and p.status() == "[0/4 jobs] subset 0/2 (2 running)"
    assert feed(p, finished("subset", 2, 1)) == [] and p.status() == "[1/4 jobs] subset 1/2 (1 running)"
    shown = feed(p, finished("subset", 5, 2))
    assert len(shown) == 1 and re.fullmatch(STAGE, shown[0]).groups() == ("subset", "2", "2")
    shown = feed(p, job("pretrain", 1, "method=simclr") + finished("pretrain", 1, 3))
    assert [re.fullmatch(STAGE, s).groups() for s in shown] == [("pretrain", "1", "1")]
    # the target rule has no line of its own; the summary counts every job
    assert feed(p, job("all", 0, "") + finished("all", 0, 4) + "Complete log(s): /x.log\nElapsed time: 0:01:56\n") == []
    assert p.status() == "[4/4 jobs] "
    assert re.fullmatch(r"done: 4 jobs in \d+:\d\d; full log: logs/study.log", p.summary(0, "logs/study.log"))


def test_a_failed_job_shows_its_wildcards_log_and_error_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the logs are relative to the workflow folder
    (tmp_path / "logs/pretrain").mkdir(parents=True)
    log_lines = ["2026-12-06 05:56:56,499 sslstudy.train INFO device cpu (1 thread(s))"]
    log_lines += ["sslstudy pretrain: error: results/subsets/n.npy: 192 images, fewer than one batch of 512"]
    (tmp_path / "logs/pretrain/3.log").write_text("\n".join([*log_lines, "", CPU_LINE.format(cpu=0.16), ""]))
    p = progress.Progress()
    shown = feed(p, START + job("pretrain", 3, "method=simclr, seed=0") + FAILED_PRETRAIN)
    assert shown == [
        "FAILED pretrain (method=simclr, seed=0): logs/pretrain/3.log",
        *(f"  | {ln}" for ln in log_lines),  # the log's last lines, not the fork server's CPU line
        "Shutting down, this might take some time.",
        "Exiting because a job execution failed. Look above for error messages",
        "WorkflowError:",
        "At least one job did not complete successfully.",
    ]
    assert p.status() == "[0/4 jobs] "  # the failed job is no longer running
    summary = p.summary(1, "logs/study.log")
    assert re.fullmatch(r"stopped \(exit status 1\) after \d+:\d\d: 0 of 4 jobs done, failed: pretrain 1; .*", summary)


def test_unknown_lines_and_other_exceptions_are_shown():
    p = progress.Progress()
    text = START + (
        "MissingInputException in rule pretrain in file /tmp/wf/workflow/rules/pretrain.smk, line 8:\n"
        "RuleException:\n"
        "ValueError in file /tmp/wf/workflow/rules/report.smk, line 3:\n"
        "bad value\n"
        "Nothing to be done (all requested files are present and up to date).\n"
    )
    assert feed(p, text) == [
        "MissingInputException in rule pretrain in file /tmp/wf/workflow/rules/pretrain.smk, line 8:",
        "RuleException:",
        "ValueError in file /tmp/wf/workflow/rules/report.smk, line 3:",
        "bad value",
        "Nothing to be done (all requested files are present and up to date).",
    ]


def test_an_error_block_at_the_end_of_the_output_is_shown():
    p = progress.Progress()
    feed(
        p,
        START
        + job("subset", 2, "domain=natural")
        + "[Sun Dec  6 05:56:57 2026]\nError in rule subset:\n    jobid: 2\n",
    )
    assert p.feed("") == ["FAILED subset (domain=natural)"]


def test_run_keeps_the_whole_output_and_returns_the_exit_status(tmp_path):
    script = "import sys; sys.stdout.write(sys.argv[1]); sys.stderr.write('an unknown line\\n'); sys.exit(3)"
    out = io.StringIO()
    log = tmp_path / "logs/study.log"
    assert progress.run([sys.executable, "-c", script, START + job("subset", 2, "domain=natural")], log, out) == 3
    assert log.read_text() == START + job("subset", 2, "domain=natural") + "an unknown line\n"
    lines = out.getvalue().splitlines()
    assert lines[0] == "an unknown line" and len(lines) == 2
    assert re.fullmatch(r"stopped \(exit status 3\) after \d+:\d\d: 0 of 4 jobs done; full log: .*study.log", lines[1])


def test_stage_line_and_clock():
    assert progress.stage_line("pretrain", 63, 63, 3723.9) == "pretrain       63/63   at 1:02:03"
    assert progress.clock(59.9) == "0:59" and progress.clock(61) == "1:01"


def test_a_command_killed_by_a_signal_exits_as_a_shell_says(tmp_path):
    out = io.StringIO()
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    assert progress.run([sys.executable, "-c", kill], tmp_path / "study.log", out) == 128 + 15
    assert re.fullmatch(r"stopped \(exit status 143\) after 0:\d\d; full log: .*study.log\n", out.getvalue())
