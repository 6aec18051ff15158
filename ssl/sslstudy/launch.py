"""Jobs in the launcher's process (inline), or through submitit: in-process (debug), a local subprocess, or SLURM.

One job folder holds one job at a time: its id is stored in `job.json`, a restarted launcher
re-attaches to a queued or running SLURM job instead of submitting a second one, and a job that
ends without a result raises UserError naming its SLURM state, its log and the log's last lines.
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from . import names
from .atomic import write_bytes
from .errors import UserError

log = logging.getLogger("sslstudy.launch")

#: SLURM states of a job that may still produce a result (squeue(1), "JOB STATE CODES").
ACTIVE = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SUSPENDED",
        "PREEMPTED",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
    }
)
LOCAL_POLL_S = 0.05  # how often a launcher checks whether its local job's process has ended
UNREACHABLE = "UNREACHABLE"  # slurmctld did not answer: keep waiting, the job may be fine


# ----------------------------------------------------------------------------- the jobs
def distributed_env() -> dict:
    """Inside a SLURM or local job: export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for torch DDP
    (env:// init) from submitit's view of the SLURM/local task layout; returns them."""
    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return dict(
        master_addr=env.master_addr,
        master_port=env.master_port,
        rank=env.rank,
        world_size=env.world_size,
        local_rank=env.local_rank,
    )


class PretrainJob(submitit.helpers.Checkpointable):
    """On timeout or preemption (USR2) submitit calls checkpoint() in the job's process, requeues the
    same job, and the requeued train() resumes from the run folder's newest checkpoint."""

    def __init__(self, spec: dict, run_dir: str):
        self.spec = spec
        self.run_dir = run_dir

    def __call__(self) -> str:
        from .train import train  # imported in the job's process

        if os.environ.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
            distributed_env()
        return str(train(self.spec, self.run_dir))

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # train() caught the USR2 first, finished its step and wrote checkpoints/last.pt
        log.warning("job interrupted (timeout or preemption): requeued, will resume from the newest checkpoint")
        return super().checkpoint(*args, **kwargs)


# ----------------------------------------------------------------------------- executors
PRETRAIN, EVALUATION = "pretrain", "evaluation"  # the kinds of job; their resources: launch.<kind>
INLINE = "inline"  # launch.executor without submitit: the job runs in the launcher's process


def tasks_per_node(launch: dict, kind: str) -> int:
    """Pretraining: one task per GPU (DDP world size = nodes x tasks), or as configured; an
    evaluation-type job: one task, whatever its GPU count."""
    if kind == EVALUATION:
        return 1
    r = launch[PRETRAIN]
    return r["tasks_per_node"] or max(1, r["gpus"])


def task_cpus(launch: dict, kind: str) -> int:
    """CPUs (= torch threads) of one task: the node's CPUs shared among its tasks."""
    r, n = launch[kind], tasks_per_node(launch, kind)
    if r["cpus"] < n:
        raise UserError(
            f"launch.{kind}.cpus is {r['cpus']}, fewer than the {n} tasks per node; give every task a CPU in params"
        )
    return r["cpus"] // n


def slurm_parameters(launch: dict, kind: str) -> dict:
    """submitit's SLURM parameters of one job of this kind: the study's resources (launch.<kind>) and
    the cluster's settings (launch.slurm)."""
    r, s = launch[kind], launch["slurm"]
    extra = dict(s["extra"], **({"qos": s["qos"]} if s["qos"] else {}))
    params = dict(
        timeout_min=r["time_min"],
        slurm_partition=s["partition"],
        slurm_account=s["account"],
        nodes=r.get("nodes", 1),
        gpus_per_node=r["gpus"],
        tasks_per_node=tasks_per_node(launch, kind),
        cpus_per_task=task_cpus(launch, kind),
        mem_gb=r["mem_gb"],
        slurm_signal_delay_s=s["signal_delay_s"],
        slurm_additional_parameters=extra or None,
    )
    return {k: v for k, v in params.items() if v is not None}


def nvidia_devices() -> bool:
    """Whether this machine has NVIDIA device nodes (answers without importing torch)."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def local_gpus(asked: int) -> int:
    """GPUs of a local job: one (a local job is one task) where some were asked for and torch sees CUDA.
    A machine without NVIDIA device nodes answers 0 without importing torch (the launcher stays light)."""
    if not asked or not nvidia_devices():
        return 0
    import torch

    return 1 if torch.cuda.is_available() else 0


def job_name(folder: Path) -> str:
    """e.g. sslstudy-simclr_natural_frac1_clean_seed0 for results/runs/simclr/natural_frac1_clean/seed0"""
    return "sslstudy-" + "_".join(Path(folder).parts[-3:])


def executor(folder: Path, launch: dict, threads: int, name: str, kind: str) -> submitit.Executor:
    ex = submitit.AutoExecutor(folder=folder / "submitit", cluster=launch["executor"])
    if launch["executor"] == "slurm":
        params = slurm_parameters(launch, kind)
    else:
        params = dict(timeout_min=launch[kind]["time_min"])
        if launch["executor"] == "local":  # submitit hides the GPUs beyond gpus_per_node (CUDA_VISIBLE_DEVICES)
            params.update(cpus_per_task=threads, gpus_per_node=local_gpus(launch[kind]["gpus"]))
    ex.update_parameters(name=name, **params)
    return ex


# ----------------------------------------------------------------------------- SLURM state
@dataclass
class SlurmState:
    name: str  # JobState, e.g. RUNNING, COMPLETED, CANCELLED, OUT_OF_MEMORY; or UNREACHABLE / GONE
    detail: str = ""  # reason and exit code

    @property
    def active(self) -> bool:
        return self.name in ACTIVE or self.name == UNREACHABLE


def slurm_state(job_id: str) -> SlurmState:
    """The controller's view (scontrol; works without accounting), else the accounting database's
    (sacct) for jobs the controller has already forgotten."""
    p = _quiet(["scontrol", "show", "job", "-o", job_id])
    if p is not None and p.returncode == 0 and "JobState=" in p.stdout:
        f = dict(re.findall(r"\b(JobState|Reason|ExitCode)=(\S+)", p.stdout))
        return SlurmState(f["JobState"], f"reason {f.get('Reason', '?')}, exit code {f.get('ExitCode', '?')}")
    if p is None or "Invalid job id" not in p.stderr:
        return SlurmState(UNREACHABLE, (p.stderr.strip() if p is not None else "scontrol timed out")[:200])
    q = _quiet(["sacct", "-X", "-n", "-P", "-o", "State,ExitCode", "-j", job_id])
    if q is not None and q.returncode == 0 and q.stdout.strip():
        state, code = q.stdout.strip().splitlines()[0].split("|")[:2]
        return SlurmState(state.split()[0], f"exit code {code}")
    return SlurmState("GONE", "unknown to slurmctld and to accounting")


def _quiet(cmd: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None


# ----------------------------------------------------------------------------- submit / re-attach / wait
@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One launcher per job folder (two Snakemakes with --nolock, or an orphaned launcher): the
    second waits for the first, then finds its job."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".launch.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _reattach(folder: Path, launch: dict):
    """The SLURM job of a previous launcher, if it is still queued/running or left a result."""
    job_file = folder / "job.json"
    if launch["executor"] != "slurm" or not job_file.is_file():
        return None
    rec = json.loads(job_file.read_text())
    if rec.get("executor", rec.get("cluster")) != "slurm":  # "cluster": job.json written before the rename
        return None
    job = submitit.SlurmJob(folder=folder / "submitit", job_id=rec["job_id"])
    if job.paths.result_pickle.exists() or slurm_state(job.job_id).active:
        log.info("re-attached to SLURM job %s", job.job_id)
        return job
    return None


def run_job(
    fn: Callable,
    folder: Path,
    launch: dict,
    threads: int,
    what: str,
    kind: str = EVALUATION,
    valid: Callable[[object], bool] = lambda r: True,
):
    """Run fn (any picklable callable without arguments) through submitit, or re-attach to the job
    already running it, and return its result.
    kind: PRETRAIN or EVALUATION, whose resources (launch.<kind>) the job gets.
    A re-attached job's result is used only if `valid(result)` (e.g. its files still exist)."""
    folder = Path(folder)
    with _folder_lock(folder):
        if launch["executor"] == INLINE:
            return fn()
        job = _reattach(folder, launch)
        if job is not None:
            try:
                result = _wait(job, launch, what, kind)
                if valid(result):
                    return result
            except UserError as e:
                log.warning("previous job failed, submitting again: %s", e)
        with _cancel_local_on_exit(launch) as started:
            with _controller_stderr(launch, folder):
                job = executor(folder, launch, threads, name=job_name(folder), kind=kind).submit(fn)
            started(job)
            log.info("submitted %s job %s for %s", launch["executor"], job.job_id, what)
            write_bytes(
                folder / "job.json",
                (
                    json.dumps(dict(job_id=str(job.job_id), executor=launch["executor"], submitted=time.time())) + "\n"
                ).encode(),
            )
            return _wait(job, launch, what, kind)


@contextmanager
def _cancel_local_on_exit(launch: dict) -> Iterator:
    """A local submitit job ignores SIGTERM and cannot be re-attached: when the launcher is stopped
    (Snakemake killed), stop its job too, so a restart never runs two on one folder. Yields
    started(job), to call once the job is submitted. The handlers go in before the job starts, so it
    starts with default signal handling even when the launcher inherited some signals ignored (started
    in the background by a script, or by nohup): otherwise it would ignore job.cancel()'s SIGINT.
    What the launcher inherited ignored, it ignores again once the job has started."""
    if launch["executor"] != "local" or threading.current_thread() is not threading.main_thread():
        yield lambda job: None
        return
    submitted: list = []

    def stop(signum, frame):
        for job in submitted:
            job.cancel()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C: the command's one line (cli.main)
        sys.exit(128 + signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    def started(job) -> None:
        submitted.append(job)
        for s, h in old.items():
            if h is signal.SIG_IGN:
                signal.signal(s, h)

    try:
        yield started
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _controller_stderr(launch: dict, folder: Path) -> Iterator[None]:
    """submitit's local controller (the process that runs a local job) inherits the launcher's stderr,
    the rule's log, and writes a KeyboardInterrupt traceback there when Ctrl-C or a cancel stops it:
    it starts with stderr in submitit/controller.err instead."""
    if launch["executor"] != "local":
        yield
        return
    path = folder / "submitit" / "controller.err"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as err:
            os.dup2(err.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _wait(job, launch: dict, what: str, kind: str):
    if launch["executor"] == "slurm":
        ended = _wait_slurm(job, launch["poll_s"])
        if ended is not None:
            raise UserError(_failure(job, what, kind, f"ended {ended.name} ({ended.detail}) without a result"))
    elif launch["executor"] == "local":  # submitit's own wait polls once a second: a job's slot would idle
        while not job.done():
            time.sleep(LOCAL_POLL_S)
    try:
        return job.result()
    except UserError:
        raise  # debug executor: the job's own one-line error
    except (FailedJobError, UncompletedJobError) as e:
        raise UserError(_failure(job, what, kind, _last_error(str(e)))) from None


def _wait_slurm(job, poll_s: float, grace_s: float = 15) -> SlurmState | None:
    """Wait for the job's result file; None when it is there, else the state the job ended in."""
    warned = False
    while not job.paths.result_pickle.exists():
        state = slurm_state(job.job_id)
        if state.name == UNREACHABLE and not warned:
            log.warning("SLURM controller not answering (%s); still waiting for job %s", state.detail, job.job_id)
            warned = True
        if not state.active:
            # a job that ran to its end wrote a result (a shared filesystem may show it late);
            # one that SLURM killed (cancelled, out of memory, time limit) never will
            deadline = time.time() + (grace_s if state.name in ("COMPLETED", "FAILED") else 0)
            while not job.paths.result_pickle.exists() and time.time() < deadline:
                time.sleep(1)
            return None if job.paths.result_pickle.exists() else state
        time.sleep(poll_s)
    return None


def _failure(job, what: str, kind: str, headline: str) -> str:
    """Job id, what failed, the fix when known, the log path and the log's last meaningful lines."""
    err = Path(job.paths.stderr)
    tail = _tail(err) or _tail(Path(job.paths.stdout)) or ["(log empty or missing)"]
    hint = next((h.format(kind=kind) for key, h in HINTS if key in headline or any(key in ln for ln in tail)), "")
    return f"{what}: job {job.job_id} {headline}{hint}; log: {err}\n  last lines of the log:\n" + "\n".join(
        f"    {ln}" for ln in tail
    )


HINTS = (
    ("memory limit", " - out of memory: raise launch.{kind}.mem_gb"),
    ("OUT_OF_MEMORY", " - out of memory: raise launch.{kind}.mem_gb"),
    ("TIMEOUT", " - time limit: raise launch.{kind}.time_min"),
    ("CANCELLED", " - cancelled (scancel or an admin): run again to resume from the last checkpoint"),
    ("NODE_FAIL", " - node failure: run again to resume from the last checkpoint"),
)


def _tail(path: Path, n: int = 6) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    noise = ("submitit INFO", "submitit WARNING", "Traceback", "  File ", "    ")
    lines = [ln.rstrip() for ln in lines if ln.strip() and not ln.startswith(noise)]
    return [ln[:300] for ln in lines[-n:]]


def _last_error(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip() and not set(ln.strip()) <= {"-"}]
    errs = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Diverged|Collapsed|DiskFull)\b", ln)]
    return "failed: " + (errs[-1] if errs else lines[0] if lines else "no message")[:300]


# ----------------------------------------------------------------------------- pretraining
def launch_pretrain(spec: dict, run_dir: str | Path, launch: dict) -> Path:
    run_dir = Path(run_dir)
    if launch["executor"] == "slurm":  # use the CPUs the job was given; train() checks its GPUs are there
        spec = dict(spec, threads=task_cpus(launch, PRETRAIN), gpus=launch[PRETRAIN]["gpus"])
    result = run_job(
        PretrainJob(spec, str(run_dir)),
        run_dir,
        launch,
        spec["threads"],
        what=f"pretraining {run_dir}",
        kind=PRETRAIN,
        valid=lambda r: Path(r).is_file(),
    )
    _say_collapse(run_dir)
    return Path(result)


def _say_collapse(run_dir: Path) -> None:
    """A finished run whose last epoch train.py flagged as collapsed (pretrain.on_collapse: warn): its
    reason line on stdout (Snakemake's terminal; the rule's log is stderr)."""
    path = run_dir / names.METRICS
    try:
        last = json.loads(path.read_text().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return
    if last.get("collapsed"):
        print(last["collapse_reason"], flush=True)
