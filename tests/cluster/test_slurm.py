"""Pretraining and the workflow on a real one-node SLURM cluster (the `slurm_cluster` fixture):
preemption and requeue, re-attaching after Snakemake is killed, failures, DDP env, the profile."""

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import submitit
import torch
import yaml
from sslstudy import config as studyconfig
from sslstudy.errors import UserError
from sslstudy.launch import distributed_env, executor, launch_pretrain

from tests.helpers import (
    BIN,
    ROOT,
    TINY_JOB,
    copy_workflow,
    run,
    sigint_as_a_terminal_sends_it,
    tiny_params,
    tiny_spec,
    wait_for,
)

pytestmark = pytest.mark.slurm


def slurm_launch(**pretrain) -> dict:
    """The launch of SLURM jobs for these tests (TINY_JOB, polled every 0.5 s); pretrain: changes to
    the pretraining job's resources."""
    params = yaml.safe_load((ROOT / "params/study.yaml").read_text())
    params["launch"] = dict(
        executor="slurm", poll_s=0.5, pretrain=dict(TINY_JOB, **pretrain), evaluation=dict(TINY_JOB)
    )
    return studyconfig.validate(params)["launch"]  # schema defaults filled in


class Background(threading.Thread):
    """launch_pretrain in a thread; .result or .error once joined."""

    def __init__(self, *args):
        super().__init__(daemon=True)
        self.args, self.result, self.error = args, None, None
        self.start()

    def run(self):
        try:
            self.result = launch_pretrain(*self.args)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


@pytest.fixture()
def idle_cluster(slurm_cluster):
    """The cluster once the jobs of earlier tests have left the queue (a job whose launcher already
    has its result may still be COMPLETING): tests that count jobs in squeue start from zero."""
    wait_for(lambda: not slurm_cluster.jobs(), "an empty queue", timeout=120)
    return slurm_cluster


def job_id(run_dir: Path) -> str:
    return json.loads((run_dir / "job.json").read_text())["job_id"]


def last_epoch(run_dir: Path) -> int:
    """The epoch of the run's checkpoints/last.pt (-1 before there is one; it is replaced atomically)."""
    path = run_dir / "checkpoints" / "last.pt"
    return torch.load(path, weights_only=False)["epoch"] if path.is_file() else -1


def task_pids(cluster, job_id: str) -> list[int]:
    """The PIDs of a running job's tasks (its step 0: submitit's process) on the test cluster's one node."""
    out = cluster.run(["scontrol", "listpids", f"{job_id}.0"]).stdout
    return [int(ln.split()[0]) for ln in out.splitlines()[1:] if ln.strip()]


def test_preempted_and_requeued_job_resumes_to_identical_weights(slurm_cluster, tiny_data, subset192, tmp_path):
    """Two faults on one job: submitit's preemption (SIGTERM + USR2: checkpoint() and requeue by
    submitit), then `scontrol requeue` with its task killed at once (SIGKILL, no warning). It resumes from
    its checkpoints both times and ends with exactly the weights of an uninterrupted run of the same spec."""
    # 120 short epochs (0.1-0.4 s each on an idle node, by CPU): both faults land in the first 25 or so
    spec = tiny_spec(tiny_data / "natural", subset192, epochs=120, batch_size=16, backbone=dict(arch="cnn4", width=8))
    launch = slurm_launch()
    ref = Background(spec, tmp_path / "ref", launch)
    cut = Background(spec, tmp_path / "cut", launch)
    run_dir = tmp_path / "cut"
    ck = run_dir / "checkpoints"
    wait_for(lambda: (ck / "ep002.pt").exists(), "epoch 2 of the job to be interrupted")
    jid = job_id(run_dir)
    submitit.SlurmJob(run_dir / "submitit", jid)._interrupt()  # preemption, as SLURM signals it
    log = run_dir / "train.log"
    wait_for(lambda: "resumed from" in log.read_text(), "the first resume")
    first = int(re.search(r"resumed from last\.pt \(epoch (\d+) of", log.read_text()).group(1))
    assert 2 <= first < 20
    # the second fault. `scontrol requeue` alone sends SIGTERM, which submitit ignores, and SIGKILL only
    # max(KillWait, 5) s later: the job trains on meanwhile, to its end on a fast CPU, and is killed wherever
    # it is then. So once SLURM holds the requeue, the test kills the job's task itself, at once.
    wait_for(lambda: last_epoch(run_dir) >= first + 2, "last.pt to hold two more epochs")
    tasks = task_pids(slurm_cluster, jid)
    assert tasks and slurm_cluster.job(jid)["JobState"] == "RUNNING", "the job ended before the second fault"
    assert slurm_cluster.run(["scontrol", "requeue", jid]).returncode == 0
    wait_for(lambda: slurm_cluster.job(jid)["JobState"] != "RUNNING", "SLURM to take the requeue")
    for pid in tasks:
        os.kill(pid, signal.SIGKILL)
    for t in (ref, cut):
        t.join(600)
        assert t.error is None, t.error
    resumes = re.findall(r"resumed from last\.pt \(epoch (\d+) of 120, step (\d+) of", log.read_text())
    assert len(resumes) == 2 and int(resumes[1][0]) >= first + 2, log.read_text()
    assert resumes[1][1] == "0", log.read_text()  # killed outright: from the last.pt of an epoch's end
    assert job_id(run_dir) == jid and slurm_cluster.job(jid)["Restarts"] == "2"  # one job, requeued twice
    submitit_log = (run_dir / "submitit" / f"{jid}_0_log.out").read_text()
    assert "Requeued job" in submitit_log
    a = torch.load(ref.result, weights_only=False)
    b = torch.load(cut.result, weights_only=False)
    assert a["epoch"] == b["epoch"] == 120
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert not list(run_dir.rglob(".*.tmp-*"))  # none left half-written by the kills (the resumed trainer clears them)


@pytest.mark.usefixtures("idle_cluster")
def test_two_launchers_of_one_run_share_one_job(slurm_cluster, tiny_data, subset192, tmp_path):
    """Two launchers started at once for the same run folder (e.g. `--nolock`, or a launcher
    orphaned by a killed Snakemake): one SLURM job, both get its result."""
    spec = tiny_spec(tiny_data / "natural", subset192, epochs=2)
    seen = set()
    threads = [Background(spec, tmp_path / "run", slurm_launch()) for _ in range(2)]
    while any(t.is_alive() for t in threads):
        jobs = slurm_cluster.jobs()  # this test's jobs are the only ones on the cluster
        assert len(jobs) <= 1, jobs
        seen |= {j["id"] for j in jobs}
        time.sleep(0.2)
    assert [t.error for t in threads] == [None, None]
    assert threads[0].result == threads[1].result and threads[0].result.is_file()
    assert seen == {job_id(tmp_path / "run")}


def test_out_of_memory_and_scancel_fail_with_the_log(slurm_cluster, tiny_data, subset192, tmp_path):
    spec = tiny_spec(tiny_data / "natural", subset192, epochs=500)  # both jobs are killed long before the end
    # the rule's command, with too little memory: SLURM kills the job, the command says why and where
    p = run(
        [
            BIN / "sslstudy",
            "pretrain",
            "--run-dir",
            str(tmp_path / "oom"),
            "--spec",
            json.dumps(spec),
            "--launch",
            json.dumps(slurm_launch(mem_gb=0.2)),
        ],
        cwd=tmp_path,
        check=False,
    )
    assert p.returncode == 2, p.stderr
    err = p.stderr
    log = re.search(r"log: (\S+)", err).group(1)
    assert Path(log).is_file() and log.startswith(str(tmp_path / "oom" / "submitit"))
    assert "ended FAILED" in err and "exceeded memory limit" in err and "raise launch.pretrain.mem_gb" in err, err
    # scancel while it runs
    t = Background(spec, tmp_path / "cancel", slurm_launch())
    wait_for(lambda: (tmp_path / "cancel" / "checkpoints" / "ep001.pt").exists(), "the job to train")
    slurm_cluster.run(["scancel", job_id(tmp_path / "cancel")])
    t.join(120)
    assert isinstance(t.error, UserError)
    msg = str(t.error)
    assert "ended CANCELLED" in msg and "CANCELLED AT" in msg and str(tmp_path / "cancel" / "submitit") in msg, msg


def test_multi_task_job_gets_the_ddp_environment(slurm_cluster, tmp_path):
    """The launch side of DDP: tasks per node from the profile, env:// variables per rank."""
    launch = slurm_launch(tasks_per_node=2, cpus=2, mem_gb=0.5)
    job = executor(tmp_path, launch, threads=1, name="ddp-env", kind="pretrain").submit(distributed_env)
    envs = job.results()
    assert sorted(e["rank"] for e in envs) == [0, 1] and {e["world_size"] for e in envs} == {2}
    assert len({(e["master_addr"], e["master_port"]) for e in envs}) == 1


# A task of a GPU job on the test cluster's fake GPUs: DDP env from SLURM, train on the CPU (gloo),
# print this rank's parameters' digest and world size.
RANK_SCRIPT = """
import hashlib, json, sys
import torch
from sslstudy import distributed as dist
from sslstudy.launch import distributed_env
from sslstudy.train import _Trainer
distributed_env()
t = _Trainer(json.loads(sys.argv[1]), __import__("pathlib").Path(sys.argv[2]))
t.run(None)
w = dict(t.model.named_parameters())  # the weights DDP keeps equal (BN statistics stay each rank's own)
digest = hashlib.sha256(b"".join(w[k].detach().numpy().tobytes() for k in sorted(w))).hexdigest()
print("RANK", dist.rank(), dist.world(), digest)
"""


def ended(cluster, job_id: str, timeout: float = 300) -> None:
    """Wait for a job submitted without our launcher to complete (submitit alone would wait forever for
    a killed job here: the test cluster has no accounting)."""
    t0 = time.time()
    while (state := cluster.job(job_id).get("JobState")) in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", None):
        assert time.time() - t0 < timeout, f"job {job_id} still {state} after {timeout} s"
        time.sleep(1)
    assert state == "COMPLETED", cluster.job(job_id)


def test_gpu_jobs_on_fake_gpus_one_task_per_gpu_for_pretraining_one_for_evaluation(
    slurm_cluster, subset192, tiny_data, tmp_path
):
    """The test cluster declares 2 GPUs (generic resources, no devices). A 2-GPU pretraining job runs 2
    DDP tasks (gloo: pretrain.device cpu) whose ranks end with identical parameters; a 2-GPU evaluation
    job runs one task."""
    import sys

    launch = slurm_launch(gpus=2, cpus=2, mem_gb=4)  # 2 tasks, each a submitit process and its training child
    launch["evaluation"].update(gpus=2, cpus=1)
    spec = dict(
        tiny_spec(tiny_data / "natural", subset192, epochs=1, threads=1, device="cpu"),
        optim=dict(tiny_spec(tiny_data, subset192)["optim"], warmup_epochs=0),
    )
    # no env=: the command inherits each task's SLURM/submitit environment
    cmd = submitit.helpers.CommandFunction([sys.executable, "-c", RANK_SCRIPT, json.dumps(spec), str(tmp_path / "run")])
    job = executor(tmp_path / "pre", launch, threads=1, name="fake-gpu-pretrain", kind="pretrain").submit(cmd)
    ended(slurm_cluster, job.job_id)
    outs = job.results()
    ranks = sorted(ln.split()[1:] for o in outs for ln in o.splitlines() if ln.startswith("RANK"))
    assert [r[:2] for r in ranks] == [["0", "2"], ["1", "2"]] and ranks[0][2] == ranks[1][2], outs
    fields = slurm_cluster.job(job.job_id)  # SLURM allotted the 2 GPUs (scontrol: TresPerNode=gres:gpu:2)
    assert any(v.endswith("gpu:2") for k, v in fields.items() if k.startswith("TresPer")), fields
    ev = executor(tmp_path / "eval", launch, threads=1, name="fake-gpu-eval", kind="evaluation").submit(distributed_env)
    ended(slurm_cluster, ev.job_id)
    envs = ev.results()
    assert len(envs) == 1 and envs[0]["world_size"] == 1, envs


# ----------------------------------------------------------------------------- through Snakemake
def new_dir(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    return tmp_path / name


def slurm_profile(wf: Path, **launch) -> None:
    """Our ./slurm profile, its launch line polling fast for the tests."""
    shutil.copytree(ROOT / "slurm", wf / "slurm")
    prof = yaml.safe_load((wf / "slurm/config.yaml").read_text())
    ours = dict(executor="slurm", poll_s=0.5, **launch)
    prof["config"] = [f"launch={json.dumps(ours)}"]
    prof["cores"] = 2
    (wf / "slurm/config.yaml").write_text(yaml.safe_dump(prof))


def with_supervised_baseline(params: dict) -> dict:
    """The tiny study plus the granularity axis's supervised baseline (natural, all labels) and its
    evaluation: a training job of another rule than pretrain."""
    params["granularity"]["supervised"] = True
    params["finetune"].update(epochs=1, min_steps=3, batch_size=16)
    return params


def test_profile_study_on_slurm_matches_local_run(slurm_cluster, tiny_data, tmp_path):
    # one pretraining on natural, its 2 evaluations, the supervised baseline, the report; the study
    # names its jobs' resources (TINY_JOB), the profile the cluster's
    params = with_supervised_baseline(tiny_params(dict(root=str(tiny_data)), ["natural"], jobs=TINY_JOB))
    local = copy_workflow(new_dir(tmp_path, "local"))
    (local / "tiny.yaml").write_text(yaml.safe_dump(params))
    t0 = time.time()
    run(["snakemake", "--cores", "2", "--configfile", "tiny.yaml", "--quiet", "rules"], cwd=local)
    print(f"local study {time.time() - t0:.0f} s")
    wf = copy_workflow(new_dir(tmp_path, "slurm"))
    (wf / "tiny.yaml").write_text(yaml.safe_dump(params))
    slurm_profile(wf, evaluate="executor")
    t0 = time.time()
    run(["snakemake", "--profile", "slurm", "--configfile", "tiny.yaml", "--quiet", "rules"], cwd=wf)
    print(f"SLURM study {time.time() - t0:.0f} s")
    # every pretraining, evaluation and the supervised baseline ran as a SLURM job
    jobs = {p.parent.relative_to(wf).as_posix(): json.loads(p.read_text()) for p in wf.rglob("job.json")}
    # one evaluate job per model (the run: pretrained and random weights; the baseline)
    assert sorted(k.split("/")[:2] for k in jobs) == [["logs", "evaluate"]] * 2 + [
        ["logs", "supervised"],
        ["results", "runs"],
    ]
    assert {j["executor"] for j in jobs.values()} == {"slurm"}
    for j in jobs.values():  # the last one may still be COMPLETING
        wait_for(lambda j=j: slurm_cluster.job(j["job_id"])["JobState"] == "COMPLETED", f"job {j} to complete", 60)
    a, b = (pd.read_csv(d / "results/metrics.csv") for d in (local, wf))
    assert len(a[a["eval"] == "frozen"]) == 3 * 3 * 4 and (a["eval"] == "supervised").any()
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # CPU, same seeds and threads: same numbers


@pytest.mark.parametrize("kill", ["ctrl-c", "sigkill"])
@pytest.mark.usefixtures("idle_cluster")
def test_killed_snakemake_reattaches_to_its_running_job(slurm_cluster, tiny_data, tmp_path, kill):
    """Ctrl-C (SIGINT to Snakemake's process group: Snakemake and our launcher stop) or SIGKILL of
    Snakemake alone (our launcher lives on, orphaned): either way the SLURM job runs on, and the
    restarted Snakemake's launcher re-attaches to it; squeue never shows a second job."""
    wf = copy_workflow(new_dir(tmp_path, "wf"))
    # 60 epochs (~25 s idle): the job still runs while Snakemake is killed, unlocked and restarted
    params = tiny_params(
        dict(root=str(tiny_data)),
        ["natural"],
        jobs=TINY_JOB,
        epochs=60,
        batch_size=16,
        backbone=dict(arch="cnn4", width=8),
    )
    (wf / "tiny.yaml").write_text(yaml.safe_dump(params))
    slurm_profile(wf)
    cmd = [
        str(BIN / "snakemake"),
        "--profile",
        "slurm",
        "--configfile",
        "tiny.yaml",
        "--quiet",
        "rules",
        "--",
        "results/runs/simclr/natural_frac1_clean/seed0/final.pt",
    ]
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    run_dir = wf / "results/runs/simclr/natural_frac1_clean/seed0"
    out1, out2 = (open(tmp_path / f"snakemake{i}.out", "w+") for i in (1, 2))  # an orphan keeps a pipe open
    first = subprocess.Popen(
        cmd,
        cwd=wf,
        env=env,
        stdout=out1,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=sigint_as_a_terminal_sends_it,
    )
    wait_for(lambda: (run_dir / "checkpoints/ep002.pt").exists(), "training on SLURM")
    jid = job_id(run_dir)
    if kill == "ctrl-c":
        os.killpg(first.pid, signal.SIGINT)
    else:
        first.kill()
    assert first.wait(120) != 0
    assert not (run_dir / "final.pt").exists()
    assert slurm_cluster.job(jid)["JobState"] == "RUNNING", "the SLURM job must outlive its launcher"
    if kill == "sigkill":  # a killed Snakemake leaves its lock: the user unlocks, as Snakemake says
        run(["snakemake", "--profile", "slurm", "--configfile", "tiny.yaml", "--unlock"], cwd=wf)
    second = subprocess.Popen(cmd, cwd=wf, env=env, stdout=out2, stderr=subprocess.STDOUT)
    seen = set()
    while second.poll() is None:
        jobs = [j["id"] for j in slurm_cluster.jobs()]  # this test's run is the only job on the cluster
        assert len(jobs) <= 1, jobs
        seen |= set(jobs)
        time.sleep(0.3)
    assert second.returncode == 0, (tmp_path / "snakemake1.out").read_text() + (tmp_path / "snakemake2.out").read_text()
    assert seen <= {jid} and job_id(run_dir) == jid
    assert (run_dir / "final.pt").is_file() and (run_dir / "checkpoints/ep000.pt").is_file()
    assert "re-attached to SLURM job" in (wf / "logs/pretrain/simclr/natural_frac1_clean/seed0.log").read_text()
    assert torch.load(run_dir / "final.pt", weights_only=False)["epoch"] == 60
