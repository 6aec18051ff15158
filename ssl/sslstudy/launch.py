"""Pretraining jobs through submitit: in-process (debug), a local subprocess, or SLURM."""
from __future__ import annotations

import json
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from .atomic import write_bytes
from .errors import UserError


class PretrainJob(submitit.helpers.Checkpointable):
    """On timeout/preemption submitit calls checkpoint() (inherited): the same job is requeued and
    train() resumes from the newest checkpoint in the run folder."""

    def __init__(self, spec: dict, run_dir: str):
        self.spec = spec
        self.run_dir = run_dir

    def __call__(self) -> str:
        from .train import train  # imported in the job's process

        return str(train(self.spec, self.run_dir))


def executor(run_dir: Path, launch: dict, threads: int) -> submitit.Executor:
    ex = submitit.AutoExecutor(folder=run_dir / "submitit", cluster=launch["cluster"])
    params = dict(timeout_min=launch["timeout_min"], name=f"sslstudy-{run_dir.parent.name}")
    if launch["cluster"] == "slurm":
        s = launch["slurm"]
        params.update(slurm_partition=s["partition"], slurm_account=s["account"], gpus_per_node=s["gpus_per_node"],
                      cpus_per_task=s["cpus_per_task"], mem_gb=s["mem_gb"], tasks_per_node=1, nodes=1)
        params = {k: v for k, v in params.items() if v is not None}
    elif launch["cluster"] == "local":
        params.update(cpus_per_task=threads, gpus_per_node=0)
    ex.update_parameters(**params)
    return ex


def _reattach(run_dir: Path, launch: dict):
    """A SLURM job of this run that is still queued or running, if a previous launcher left one."""
    job_file = run_dir / "job.json"
    if launch["cluster"] != "slurm" or not job_file.is_file():
        return None
    rec = json.loads(job_file.read_text())
    job = submitit.SlurmJob(folder=run_dir / "submitit", job_id=rec["job_id"])
    return None if job.done() else job


def launch_pretrain(spec: dict, run_dir: str | Path, launch: dict) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    job = _reattach(run_dir, launch)
    if job is None:
        job = executor(run_dir, launch, spec["threads"]).submit(PretrainJob(spec, str(run_dir)))
        write_bytes(run_dir / "job.json", (json.dumps(dict(job_id=str(job.job_id), cluster=launch["cluster"])) + "\n").encode())
    try:
        return Path(job.result())
    except UserError:
        raise  # debug executor: the trainer's own one-line error
    except (FailedJobError, UncompletedJobError) as e:
        tail = _tail(Path(job.paths.stderr))
        raise UserError(f"pretraining job {job.job_id} of {run_dir} failed ({str(e).splitlines()[0][:200]}); "
                        f"log: {job.paths.stderr}; last error line: {tail}") from None


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errs = [ln for ln in lines if "Error" in ln or "error:" in ln]
    return (errs or lines or ["(empty log)"])[-1].strip()[:300]
