"""The fork server (sslstudy.forkserver): a command run as a fork of it behaves as in its own process
(streams, exit status, folder, environment, numbers), signals and a killed client reach its worker,
and the server ends with its parent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from sslstudy import cpu_line, forkserver
from sslstudy.checkpoint import load_checkpoint

from tests.helpers import BIN, tiny_spec, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server started as Snakemake's onstart does (a child of this process, 1-thread environment)."""
    path = str(tmp_path_factory.mktemp("fs") / "socket")
    env = dict(os.environ, **{v: "1" for v in forkserver.THREAD_VARS})
    proc = subprocess.Popen([sys.executable, "-m", "sslstudy.forkserver", path], env=env)
    wait_for(lambda: os.path.exists(path), "the server to listen", timeout=120)
    yield proc, path
    proc.terminate()
    proc.wait(30)


def sslstudy(args, cwd, path=None, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != forkserver.ENV}
    env.update(OMP_NUM_THREADS="1", PATH=f"{BIN}:{env['PATH']}", **({forkserver.ENV: path} if path else {}))
    return subprocess.run(
        [str(BIN / "sslstudy"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw
    )


def without_cpu_line(stderr: str) -> tuple[str, float]:
    lines = stderr.splitlines(keepends=True)
    assert lines and cpu_line.worker_cpu(lines[-1]) > 0, stderr
    return "".join(lines[:-1]), cpu_line.worker_cpu(lines[-1])


def test_a_command_in_the_server_behaves_as_in_its_own_process(server, tiny_data, tmp_path):
    """Relative paths from the client's folder, its output files, stdout, stderr and exit status."""
    _, path = server
    (tmp_path / "own").mkdir()
    (tmp_path / "forked").mkdir()
    args = [
        "subset",
        "--dataset",
        os.path.relpath(tiny_data / "natural", tmp_path / "own"),
        "--subset",
        "frac0.5",
        "--seed",
        "3",
        "--out",
        "idx.npy",
    ]
    own, forked = sslstudy(args, tmp_path / "own"), sslstudy(args, tmp_path / "forked", path)
    assert own.returncode == forked.returncode == 0
    assert (tmp_path / "forked" / "idx.npy").read_bytes() == (tmp_path / "own" / "idx.npy").read_bytes()
    assert forked.stdout == own.stdout and without_cpu_line(forked.stderr)[0] == own.stderr

    bad = ["subset", "--dataset", "nowhere", "--subset", "frac0.5", "--seed", "0", "--out", "x.npy"]
    own, forked = sslstudy(bad, tmp_path), sslstudy(bad, tmp_path, path)
    assert own.returncode == forked.returncode == 2
    assert without_cpu_line(forked.stderr)[0] == own.stderr and "nowhere: no such dataset folder" in own.stderr


def test_a_pretraining_in_the_server_gives_the_same_weights(server, tiny_data, subset128, tmp_path):
    """Same spec, inline: the fork trains to the same weights bit for bit, in the job's thread count."""
    _, path = server
    spec = json.dumps(tiny_spec(tiny_data / "natural", subset128, epochs=2))
    runs = {}
    for name, via in (("own", None), ("forked", path)):
        p = sslstudy(
            ["pretrain", "--run-dir", name, "--spec", spec, "--launch", json.dumps(dict(executor="inline"))],
            tmp_path,
            via,
        )
        assert p.returncode == 0, p.stderr
        runs[name] = load_checkpoint(tmp_path / name / "final.pt")["model"]
    assert runs["own"].keys() == runs["forked"].keys()
    assert all(torch.equal(runs["own"][k], runs["forked"][k]) for k in runs["own"])


def _worker_of(server_proc, cwd: Path) -> psutil.Process:
    """The worker under the server (server -> supervisor -> worker) of the command run from cwd; the
    worker of an earlier test may still be exiting beside it."""
    found = []

    def look() -> bool:
        for proc in psutil.Process(server_proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):  # ended while looked at
                if Path(proc.cwd()) == cwd.resolve():
                    found.append(proc)
        return bool(found)

    wait_for(look, "the worker to start", timeout=120)
    return found[0]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_stopped_client_stops_its_worker(server, tiny_data, subset192, tmp_path, how):
    """SIGTERM and SIGINT to the client are forwarded (the client exits as its worker did: 128 + the
    signal, as a shell reports it; the job's log holds no traceback, and after Ctrl-C one line); a
    client killed outright (SIGKILL: nothing forwarded) takes the worker with it."""
    proc, path = server
    spec = json.dumps(tiny_spec(tiny_data / "natural", subset192, epochs=50, batch_size=16))
    env = dict(os.environ, OMP_NUM_THREADS="1", **{forkserver.ENV: path})
    client = subprocess.Popen(
        [
            str(BIN / "sslstudy"),
            "pretrain",
            "--run-dir",
            "run",
            "--spec",
            spec,
            "--launch",
            json.dumps(dict(executor="inline")),
        ],
        cwd=tmp_path,
        env=env,
        stderr=(tmp_path / "job.log").open("w"),
    )
    worker = _worker_of(proc, tmp_path)
    wait_for(lambda: (tmp_path / "run/checkpoints/ep001.pt").exists(), "training", timeout=120)
    client.send_signal(how)
    assert client.wait(30) == (-signal.SIGKILL if how == signal.SIGKILL else 128 + how)
    wait_for(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, "the worker to stop", 30)
    assert not (tmp_path / "run/final.pt").exists()
    log = (tmp_path / "job.log").read_text()
    assert "Traceback" not in log, log
    if how == signal.SIGINT:
        assert log.splitlines()[-2] == "sslstudy pretrain: interrupted; rerun resumes", log


def test_the_server_runs_the_command_it_was_started_with(tmp_path, capfd):
    """The entry point named at start ("module:function", here not sslstudy's) is what a job's worker
    calls with the job's argv; its return value is the job's exit status."""
    (tmp_path / "echo.py").write_text("def main(argv):\n    print('echo', *argv)\n    return 7\n")
    path = str(tmp_path / "socket")
    code = "import sys; from sslstudy import forkserver; forkserver.serve(sys.argv[1], 'echo:main', preload=())"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code, path], env=env)
    try:
        wait_for(lambda: os.path.exists(path), "the server to listen", timeout=60)
        assert forkserver.run(["a", "b"], path) == 7
        out, err = capfd.readouterr()
        assert out == "echo a b\n" and cpu_line.worker_cpu(err) > 0, (out, err)
    finally:
        proc.terminate()
        proc.wait(30)


def test_no_server_means_the_command_runs_in_its_own_process(tiny_data, tmp_path):
    p = sslstudy(
        ["subset", "--dataset", str(tiny_data / "natural"), "--subset", "frac0.5", "--seed", "0", "--out", "idx.npy"],
        tmp_path,
        str(tmp_path / "no-such-socket"),
    )
    assert p.returncode == 0 and (tmp_path / "idx.npy").is_file() and "fork server" not in p.stderr


def test_the_server_ends_with_its_parent(tmp_path):
    """start() (Snakemake's onstart) in a process that then exits: the server removes its socket and
    folder and exits too."""
    code = (
        "import os, sys; from sslstudy import forkserver; p = forkserver.start(sys.argv[1]); "
        "print(p, os.path.exists(p), os.environ[forkserver.ENV] == p)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "fs.log")], capture_output=True, text=True, check=True, timeout=180
    )
    path, listening, exported = out.stdout.split()
    assert listening == exported == "True"  # start() returns once the server listens
    sock = Path(path)
    wait_for(lambda: not sock.parent.exists(), "the server to end", 30)
    assert (tmp_path / "fs.log").read_text() == ""


def test_a_killed_parent_takes_the_server_and_its_workers_with_it(tiny_data, subset192, tmp_path):
    """kill -9 of the Snakemake that started the server (here: a process that called start()): the
    server, the supervisor and the worker training in it all end within seconds (they once ran on,
    trainers named `python -m sslstudy.forkserver`); the job's command gets the worker's status."""
    code = (
        "import sys, time; from sslstudy import forkserver; "
        "print(forkserver.start(sys.argv[1]), flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "fs.log")], stdout=subprocess.PIPE, text=True)
    path = parent.stdout.readline().strip()
    assert path != "None"
    server = psutil.Process(parent.pid).children()[0]
    spec = json.dumps(tiny_spec(tiny_data / "natural", subset192, epochs=50, batch_size=16))
    client = subprocess.Popen(
        [str(BIN / "sslstudy"), "pretrain", "--run-dir", "run", "--spec", spec, "--launch", '{"executor": "inline"}'],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1", **{forkserver.ENV: path}),
        stderr=subprocess.DEVNULL,
    )
    worker = _worker_of(server, tmp_path)
    supervisor = worker.parent()
    try:
        wait_for(lambda: (tmp_path / "run/checkpoints/ep001.pt").exists(), "training", timeout=120)
        parent.kill()
        parent.wait(10)

        def gone(p: psutil.Process) -> bool:
            return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE

        wait_for(lambda: gone(server) and gone(supervisor) and gone(worker), "the server and its jobs to end", 15)
        assert client.wait(30) == 128 + signal.SIGTERM
        assert not (tmp_path / "run/final.pt").exists() and not Path(path).exists()
    finally:  # whatever still runs after a failure
        for p in (worker, supervisor, server):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        client.kill()
