"""benchmarks/bench_step.py at its tiny CPU size: the project's step and the bare step both run for
SimCLR, BYOL and SwAV multi-crop and print their images/s and ratio (speed itself is not asserted)."""

import importlib.util

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
    """benchmarks/gpu_check.sh: `bash -n` clean; its parts' time limits add up to at most 8 minutes."""
    import re
    import subprocess

    script = ROOT / "benchmarks/gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    limits = [int(x) for x in re.findall(r"^part \w+ (\d+) ", script.read_text(), re.M)]
    assert len(limits) == 6 and sum(limits) <= 480, limits


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
