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
