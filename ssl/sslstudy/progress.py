"""A quiet terminal for a study: run a command (`dvc repro`, which runs Snakemake) with its whole output
kept in a log file, and show only one line per stage once its jobs are done, each failed job (its rule,
wildcards, log and the log's last lines) and a last line that sums up.

    python -m sslstudy.progress [--log logs/study.log] -- dvc repro --quiet

On a terminal a status line under them shows the jobs done and the stages running. What Snakemake
prints per job (its block, "Finished jobid", "k of n steps") and its start-up lines are dropped;
every line this module does not know is shown as it comes, so an error of any other kind stays
visible. Ctrl-C reaches the command (Snakemake stops its jobs) and this keeps reading until it exits;
the exit status is the command's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import names
from .cpu_line import PATTERN as CPU_PATTERN

TAIL_LINES = 5  # the last lines of a failed job's log shown on the terminal
DEFAULT_TARGET = "all"  # the Snakefile's target rule: no stage line of its own

# Snakemake's lines (9.x), matched from the start of a line
JOB = re.compile(r"(?:local)?(?:rule|checkpoint) (?P<rule>\w+):$")  # the head of a job's block
ERROR = re.compile(r"Error in rule (?P<rule>\w+):$")  # the head of a failed job's block
FINISHED = re.compile(r"Finished jobid: (?P<jobid>\d+) \(Rule: (?P<rule>\w+)\)")
FIELD = re.compile(r"    (?P<key>\w+): (?P<value>.*)$")  # a field of a job's or error's block
TIMESTAMP = re.compile(r"\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]$")  # the line before a job's block
STATS_ROW = re.compile(r"(?P<rule>\w+)\s+(?P<count>\d+)$")  # a row of the "Job stats:" table
LOGFILE = re.compile(r"Logfile (?P<path>.+):$")  # --show-failed-logs: the log between two ==== lines
CALLED_PROCESS = re.compile(r"CalledProcessError in ")  # after "RuleException:": the failed shell command
NOISE = re.compile(  # start-up, scheduling and progress lines: dropped (the stage lines say what they said)
    r"(?:Assuming unrestricted shared filesystem usage\.|Building DAG of jobs\.\.\.|Using shell: |"
    r"Provided (?:cores|resources): |Rules claiming more threads will be scaled down\.|"
    r"(?:Conda environments|Singularity containers): ignored|host: |Select jobs to execute\.\.\.|"
    rf"Execute \d+ jobs\.\.\.|{TIMESTAMP.pattern}|\d+ of \d+ steps \(\d+%\) done$|"
    r"Logfile .+ not found\.$|Complete log\(s\): |Elapsed time: |$)"
)


@dataclass
class Stage:
    """One rule's jobs in this run: how many, and how many started, done and failed so far."""

    total: int
    started: int = 0
    done: int = 0
    failed: int = 0


@dataclass
class Progress:
    """Reads the command's output line by line (`feed`) and says what to show for it."""

    t0: float = field(default_factory=time.monotonic)
    stages: dict[str, Stage] = field(default_factory=dict)  # by rule, in the order of the job stats
    wildcards: dict[str, str] = field(default_factory=dict)  # of each job, by jobid
    state: str = "normal"  # or the block being read: stats, job, error, logfile, rule_exception, command
    block: dict = field(default_factory=dict)  # the fields of the job or error block being read

    def feed(self, line: str) -> list[str]:
        """The lines to show for one line of the command's output: itself, a summary, or none."""
        return getattr(self, f"_in_{self.state}")(line.rstrip("\n"))

    def _in_normal(self, line: str) -> list[str]:
        self.state = "normal"
        if m := JOB.match(line):
            self.state, self.block = "job", {}
            if stage := self.stages.get(m["rule"]):
                stage.started += 1
        elif m := ERROR.match(line):
            self.state, self.block = "error", dict(rule=m["rule"])
        elif m := FINISHED.match(line):
            return self._finished(m["rule"])
        elif line == "Job stats:":
            self.state, self.stages = "stats", {}
        elif LOGFILE.match(line):
            self.state, self.block = "logfile", dict(separators=0)
        elif line == "RuleException:":
            self.state = "rule_exception"
        elif not NOISE.match(line):
            return [line]
        return []

    def _in_stats(self, line: str) -> list[str]:
        """A row of the job stats table (rule, count) up to its total."""
        m = STATS_ROW.match(line)
        if m and m["rule"] == "total":
            self.state = "normal"
        elif m and m["rule"] != "job":
            self.stages[m["rule"]] = Stage(int(m["count"]))
        return []

    def _in_job(self, line: str) -> list[str]:
        """A job's block: its jobid and wildcards are kept (a failed job's line names them)."""
        if self._block_line(line):
            return []
        self.wildcards[self.block.get("jobid", "")] = self.block.get("wildcards", "")
        return self._in_normal(line)

    def _in_error(self, line: str) -> list[str]:
        """A failed job's block (its log paths kept); once it ends, the failed job's lines."""
        if self._block_line(line):
            return []
        return self._failed_job() + self._in_normal(line)

    def _block_line(self, line: str) -> bool:
        """Whether line is one of the block's (indented); a field ("    jobid: 3") is kept in self.block."""
        if m := FIELD.match(line):
            self.block[m["key"]] = m["value"]
        return line.startswith((" ", "\t"))

    def _in_logfile(self, line: str) -> list[str]:
        """--show-failed-logs: a failed job's log between two ==== lines (the failed job's lines show its tail)."""
        self.block["separators"] += line.startswith("=" * 20)
        if self.block["separators"] == 2:
            self.state = "normal"
        return []

    def _in_rule_exception(self, line: str) -> list[str]:
        """After "RuleException:": a failed shell command is dropped (its error block follows), anything else shown."""
        if CALLED_PROCESS.match(line):
            self.state = "command"
            return []
        return ["RuleException:", *self._in_normal(line)]

    def _in_command(self, line: str) -> list[str]:
        """The failed shell command's lines, up to the time stamp of its error block."""
        return self._in_normal(line) if TIMESTAMP.match(line) or ERROR.match(line) else []

    def _finished(self, rule: str) -> list[str]:
        stage = self.stages.get(rule)
        if stage is None:
            return []
        stage.done += 1
        if stage.done < stage.total or rule == DEFAULT_TARGET:
            return []
        return [stage_line(rule, stage.done, stage.total, time.monotonic() - self.t0)]

    def _failed_job(self) -> list[str]:
        """The failed job's lines: its rule, wildcards and log, then the log's last lines."""
        rule = self.block["rule"]
        self.stages.setdefault(rule, Stage(total=0)).failed += 1
        wildcards = self.wildcards.get(self.block.get("jobid", ""), "")
        logs = [p.strip() for p in self.block.get("log", "").split(" (check log")[0].split(",") if p.strip()]
        head = f"FAILED {rule}" + (f" ({wildcards})" if wildcards else "")
        if not logs:
            return [head]
        return [f"{head}: {logs[0]}", *(f"  | {ln}" for ln in log_tail(logs[0]))]

    def status(self) -> str:
        """The terminal's status line: jobs done of all, and the stages with jobs started and not all done."""
        if not self.stages or self.state == "stats":
            return ""
        done = sum(s.done for s in self.stages.values())
        total = sum(s.total for s in self.stages.values())
        running = [
            f"{r} {s.done}/{s.total} ({s.started - s.done - s.failed} running)"
            for r, s in self.stages.items()
            if s.started > s.done + s.failed
        ]
        return f"[{done}/{total} jobs] " + ", ".join(running)

    def summary(self, returncode: int, log: str) -> str:
        """The last line: jobs done (and failed) of all, the time, where the whole output is."""
        took = clock(time.monotonic() - self.t0)
        if not self.stages:
            ended = (
                f"done in {took}: no jobs ran"
                if returncode == 0
                else f"stopped (exit status {returncode}) after {took}"
            )
            return f"{ended}; full log: {log}"
        done = sum(s.done for s in self.stages.values())
        total = sum(s.total for s in self.stages.values())
        if returncode == 0:
            return f"done: {done} jobs in {took}; full log: {log}"
        failed = ", ".join(f"{r} {s.failed}" for r, s in self.stages.items() if s.failed)
        failed = f", failed: {failed}" if failed else ""
        return f"stopped (exit status {returncode}) after {took}: {done} of {total} jobs done{failed}; full log: {log}"


def stage_line(rule: str, done: int, total: int, seconds: float) -> str:
    """One stage's line once all its jobs are done, in columns: pretrain 63/63 at 1:02:03 (h:mm:ss since the start)."""
    return f"{rule:<12} {done:>4}/{total:<4} at {clock(seconds)}"


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def log_tail(path: str, n: int = TAIL_LINES) -> list[str]:
    """The last n non-empty lines of a job's log (without the fork server's CPU line), or why there are none."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        return [f"({path}: {e.strerror})"]
    return [ln for ln in lines if ln.strip() and not re.fullmatch(CPU_PATTERN, ln)][-n:]


def run(cmd: list[str], log: Path, out=sys.stdout) -> int:
    """Run cmd with its output (stdout and stderr) in log and the quiet view of it on out; its exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    progress, screen = Progress(), Screen(out)
    with log.open("w") as keep:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        previous = _forward_signals(proc)  # after Popen: the command keeps the default Ctrl-C
        try:
            for line in proc.stdout:
                keep.write(line)
                keep.flush()
                screen.show(progress.feed(line), progress.status())
            returncode = proc.wait()
            returncode = (
                128 - returncode if returncode < 0 else returncode
            )  # killed by signal N: 128 + N, as a shell says
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    screen.show([*progress.feed(""), progress.summary(returncode, str(log))], "")  # "": the output ended a block
    return returncode


class Screen:
    """Lines written to out as they come; on a terminal, a status line kept under them, redrawn when it changes."""

    def __init__(self, out):
        self.out, self.tty, self.drawn = out, out.isatty(), ""

    def show(self, lines: list[str], status: str) -> None:
        status = status[: shutil.get_terminal_size().columns - 1] if self.tty else ""
        if not lines and status == self.drawn:
            return
        if self.drawn:
            self.out.write("\r\x1b[K")  # back to the line's start, clear it
        self.out.writelines(f"{s}\n" for s in lines)
        self.out.write(status)
        self.out.flush()
        self.drawn = status


def _forward_signals(proc: subprocess.Popen) -> dict:
    """Ctrl-C reaches the command from the terminal: ignore it here and read on until the command exits;
    SIGTERM and SIGHUP sent to this process are passed on to it."""
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, lambda signum, frame: proc.send_signal(signum))
    return previous


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sslstudy.progress", description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", type=Path, default=Path(names.STUDY_LOG), help="where the whole output goes")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("give the command to run after --")
    if not shutil.which(cmd[0]):
        ap.error(f"{cmd[0]}: command not found (is .venv/bin on PATH?)")
    return run(cmd, a.log)


if __name__ == "__main__":
    sys.exit(main())
