"""The benchmarks on the CPU: bench_step.py at its tiny size (the project's step and the bare step for
SimCLR, BYOL and SwAV multi-crop print their images/s and ratio; speed itself is not asserted); the GPU
check (gpu_check.sh, gpu_wheels.sh, gpu_tiny_study.py) rehearsed without a GPU; host_syncs.py."""

import importlib.util

import pytest

from tests.helpers import ROOT


def test_bench_step_runs_at_its_tiny_size(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_step", ROOT / "benchmarks/bench_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(
        ["--tiny", "--steps", "2", "--rounds", "1", "--threads", "1", "--json", str(tmp_path / "rows.json")]
    )["rows"]
    assert [r["method"] for r in rows] == ["simclr", "byol", "swav"]
    assert [r["views"] for r in rows] == [2, 2, 8]  # SwAV: 2 full-size crops + 6 small ones
    for r in rows:
        assert (
            r["ours_img_s"] > 0 and r["bare_img_s"] > 0 and abs(r["ratio"] - r["ours_img_s"] / r["bare_img_s"]) < 0.01
        ), r
        assert r["device"] == "cpu" and r["host_peak_rss_gb"] > 0
    out = capsys.readouterr().out
    assert out.count("ratio=") == 3 and (tmp_path / "rows.json").is_file()


def test_gpu_check_script_parses_and_fits_its_budget():
    """benchmarks/gpu_check.sh: `bash -n` clean; the time limits of its parts (the compiled bench_step,
    run on request only, aside) leave at least half a minute of 8 minutes for its start."""
    import re
    import subprocess

    script = ROOT / "benchmarks/gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    limits = dict(re.findall(r"^\s*(?:cuda_)?part (\w+) (\d+) ", script.read_text(), re.M))
    assert list(limits) == ["install", "cuda_tests", "tiny_study", "bench_step_eager", "bench_step_compiled", "nccl"]
    assert sum(int(v) for k, v in limits.items() if k != "bench_step_compiled") <= 450, limits


def test_gpu_check_rehearses_on_the_cpu(tmp_path):
    """CI's rehearsal of the GPU check on its own interpreter: benchmarks/gpu_wheels.sh fetches the wheel
    set (for this CPython), gpu_check.sh installs it into its own folder and imports faiss from there,
    says "no CUDA" for each CUDA part and writes its summary. Needs the package index."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, WHEELS_DIR=str(tmp_path / "whl"), OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    env["WHEELS_PYTHON"] = f"{sys.version_info.major}.{sys.version_info.minor}"
    got = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_wheels.sh")], env=env, capture_output=True, text=True)
    assert got.returncode == 0, got.stderr[-2000:]
    size = int(got.stdout.strip().splitlines()[-1].split()[-2])
    assert size <= 60 * 2**20, size  # the wheel set that travels to the GPU machine
    p = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh")], env=env, capture_output=True, text=True)
    summary = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert p.returncode == 0 and summary.startswith("gpu_check "), p.stderr[-2000:]
    lines = summary.splitlines()
    assert any(ln.startswith("== install: ok") for ln in lines), summary
    assert "faiss 1.15.1 from the wheels" in summary and "0 CUDA device(s)" in summary, summary
    for name in ("cuda_tests", "tiny_study", "bench_step_eager", "nccl"):
        assert f"== {name}: no CUDA: skipped" in lines, summary
    assert lines[-1].startswith("done ")


@pytest.mark.slow
def test_the_gpu_checks_tiny_study_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_tiny_study.py, which the GPU check runs on CUDA, rehearsed on the CPU: every stage,
    then the pretraining again on two processes (gloo) under torch.distributed.run, as the NCCL part."""
    import os
    import subprocess
    import sys

    script, env = str(ROOT / "benchmarks/gpu_tiny_study.py"), dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run(
        [sys.executable, script, "--work", str(tmp_path), "--device", "cpu", "--methods", "simclr"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    said = [ln.split(":")[0] for ln in one.stdout.splitlines()]
    assert said == [
        "data",
        "pretrain simclr",
        "evaluate simclr",
        "lowshot linear simclr",
        "lowshot finetune simclr",
    ] + ["supervised"], one.stdout
    ddp = tmp_path / "ddp"  # a fresh folder: in the first one the run is done and would only be resumed
    data = subprocess.run([sys.executable, script, "--work", str(ddp), "--device", "cpu", "--stage", "data"], env=env)
    assert data.returncode == 0
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", script, "--work", str(ddp)]
        + ["--device", "cpu", "--stage", "pretrain", "--methods", "simclr"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "pretrain simclr: 2 epochs on 2 process(es)" in two.stdout, two.stdout


SYNC_CHECK = """
import json, sys
sys.argv = ["host_syncs"]
sys.path.insert(0, sys.argv[0])
import importlib.util
spec = importlib.util.spec_from_file_location("host_syncs", {path!r})
hs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hs)
from sslstudy.methods.base import Queue
push = Queue.push
def push_reading_the_pointer(self, k):  # the host sync Queue.push made before: int() of the device pointer
    int(self.ptr)
    return push(self, k)
if {inject!r}:
    Queue.push = push_reading_the_pointer
print("ROWS", json.dumps(hs.count({methods!r}, 3)))
"""


def _sync_rows(methods: list[str], inject: bool) -> list[dict]:
    import json
    import subprocess
    import sys

    code = SYNC_CHECK.format(path=str(ROOT / "benchmarks/host_syncs.py"), methods=methods, inject=inject)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("ROWS "))[5:])


def test_training_steps_make_no_host_sync():
    """benchmarks/host_syncs.py (in its own process: it wraps torch.Tensor's reads) over every method
    whose step had syncs (the trainer's loss checks and logs, MoCo/DenseCL/PCL's queue pointer,
    SwAV's queue count, PCL's logs and negatives, DeepCluster's NMI): none is left in the step."""
    rows = _sync_rows(["moco", "densecl", "pcl", "swav", "deepcluster", "simclr"], inject=False)
    assert {r["method"]: r["syncs_per_step"] for r in rows} == dict.fromkeys(
        ["moco", "densecl", "pcl", "swav", "deepcluster", "simclr"], 0
    ), rows
    assert all(r["steps"] == 2 and r["device_ops_per_step"] > 50 for r in rows), rows


def test_the_sync_counter_sees_a_read_of_a_device_value():
    """The counter is not blind: Queue.push reading its pointer back (as it did) is one sync per step,
    found in MoCo's forward (the innermost line of the package on the way to it)."""
    (row,) = _sync_rows(["moco"], inject=True)
    (site,) = row["sites"]
    assert row["syncs_per_step"] == 1 and site.startswith("sslstudy/methods/moco.py:") and site.endswith("int()"), row
