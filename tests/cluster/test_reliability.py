"""Faults without a cluster: a killed launcher of a local job, two studies at once in one folder."""

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from sslstudy.launch import nvidia_devices

from tests import helpers
from tests.helpers import BIN, TINY_JOB, copy_workflow, run, tiny_params, tiny_spec, wait_for

pytestmark = pytest.mark.slow  # local studies and launchers, stopped and resumed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ignore_int_and_hup():
    """What a launcher inherits when a script starts it in the background (SIGINT) under nohup (SIGHUP)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


@pytest.mark.parametrize("started", ["foreground", "background"])
def test_stopped_launcher_stops_its_local_job_and_the_rerun_resumes(tiny_data, subset192, tmp_path, started):
    """A local submitit job ignores SIGTERM and can't be re-attached: stopping the launcher (as a
    killed Snakemake does) must stop the job, so a rerun never trains twice on one folder; also when
    the launcher inherited SIGINT and SIGHUP ignored (the job must not inherit that)."""
    spec = tiny_spec(tiny_data / "natural", subset192, epochs=30, batch_size=16)
    run_dir = tmp_path / "run"
    cmd = [
        str(BIN / "sslstudy"),
        "pretrain",
        "--run-dir",
        str(run_dir),
        "--spec",
        json.dumps(spec),
        "--launch",
        json.dumps(dict(executor="local", poll_s=1, pretrain=dict(time_min=10))),
    ]
    launcher = subprocess.Popen(
        cmd, stderr=subprocess.DEVNULL, preexec_fn=ignore_int_and_hup if started == "background" else None
    )
    wait_for(lambda: (run_dir / "checkpoints/ep002.pt").exists(), "local training")
    job_pid = int(json.loads((run_dir / "job.json").read_text())["job_id"])  # a local job's id is its pid
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(30) != 0
    wait_for(lambda: not alive(job_pid), "the local job to stop", timeout=30)
    assert not (run_dir / "final.pt").exists()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, timeout=600)
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert len((run_dir / "train.log").read_text().split("starting ")) == 2  # started once, resumed after


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_ctrl_c_ends_a_job_with_one_line_and_the_rerun_resumes(tiny_data, subset192, tmp_path, executor):
    """Ctrl-C (SIGINT) to a pretraining job's command: its log (stderr) ends with one line, no
    traceback, exit status 130 as a shell reports SIGINT; the rerun resumes from the last checkpoint."""
    spec = tiny_spec(tiny_data / "natural", subset192, epochs=8, batch_size=16)
    run_dir = tmp_path / "run"
    launch = dict(executor=executor, poll_s=1, pretrain=dict(time_min=10))
    cmd = [str(BIN / "sslstudy"), "pretrain", "--run-dir", str(run_dir), "--spec", json.dumps(spec)]
    cmd += ["--launch", json.dumps(launch)]
    job = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=helpers.sigint_as_a_terminal_sends_it)
    wait_for(lambda: (run_dir / "checkpoints/ep002.pt").exists(), "training")
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "sslstudy pretrain: interrupted; rerun resumes"
    assert not (run_dir / "final.pt").exists()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, timeout=600)
    assert "resumed from last.pt" in (run_dir / "train.log").read_text()


@pytest.mark.skipif(nvidia_devices(), reason="a GPU machine asks torch whether CUDA works")
def test_a_local_launcher_without_gpus_does_not_import_torch(tmp_path):
    """The launcher of a local job only submits and waits: torch (seconds of start-up per job) is
    imported in the job's process, not also in the launcher's."""
    code = (
        "import sys; from pathlib import Path; from sslstudy import launch, config; "
        "launch.executor(Path(sys.argv[1]), config.validate_launch({'executor': 'local'}), 1, 'x', launch.PRETRAIN); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_two_studies_at_once_in_one_folder(tiny_data, tmp_path):
    """The second study is refused by Snakemake's lock while the first runs (both write the report),
    before writing anything; the first finishes intact."""
    wf = copy_workflow(tmp_path)
    params = tiny_params(dict(root=str(tiny_data)), ["natural"], jobs=TINY_JOB)
    (wf / "tiny.yaml").write_text(yaml.safe_dump(params))
    params["study"]["domains"] = ["aerial"]
    (wf / "other.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    first = subprocess.Popen(
        ["snakemake", "--cores", "2", "--configfile", "tiny.yaml", "--quiet", "rules"],
        cwd=wf,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(
        lambda: any((wf / ".snakemake/locks").glob("*")) if (wf / ".snakemake/locks").is_dir() else False,
        "the first study's lock",
    )
    second = run(["snakemake", "--cores", "1", "--configfile", "other.yaml"], cwd=wf, check=False)
    assert second.returncode != 0 and "Directory cannot be locked" in second.stdout + second.stderr
    assert first.wait(600) == 0
    df = pd.read_csv(wf / "results/metrics.csv")
    assert set(df["domain"]) == {"natural"} and len(df) == 2 * 3 * 4
    assert not (wf / "results/runs/simclr/aerial_frac1_clean").exists()  # the refused study wrote nothing
