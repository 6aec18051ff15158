"""The GPU install (`make study GPU=1`) resolves: pip's resolver, in a dry run that reads only the
packages' metadata (nothing is downloaded or installed), on the GPU requirements for CPython 3.11 and
3.12 on manylinux x86_64. Needs the package index (the network): slow."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

# the pins the CUDA libraries come from: torch's (and torchvision's, numpy's) and the faiss GPU build's
TORCH_PINS = ("torch==", "torchvision==", "numpy==")
PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in range(17, 40)]


def gpu_requirements(tmp_path) -> list[str]:
    """pip's -r arguments of a GPU install, as workflow/scripts/setup.sh writes them (faiss-cpu left out),
    narrowed to the lines whose wheels carry CUDA: the rest is the same on a CPU install."""
    base = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln.startswith(TORCH_PINS)]
    (tmp_path / "torch.txt").write_text("\n".join(base) + "\n")
    return ["-r", str(tmp_path / "torch.txt"), "-r", str(ROOT / "requirements-gpu.txt")]


@pytest.mark.slow
@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_the_gpu_requirements_resolve_beside_the_pinned_torch(python, tmp_path):
    report = tmp_path / "report.json"
    # --isolated: PyPI as a fresh machine sees it (no local index, find-links or constraints of this one)
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed"]
    cmd += ["--cert", os.environ["PIP_CERT"]] if os.environ.get("PIP_CERT") else []
    cmd += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--target", str(tmp_path)]
    cmd += [x for p in PLATFORMS for x in ("--platform", p)]
    cmd += ["--report", str(report), *gpu_requirements(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    pinned = dict(ln.split("==") for ln in (ROOT / "requirements-gpu.txt").read_text().split() if "==" in ln)
    assert {k: got.get(k) for k in pinned} == pinned and got["torch"] == "2.14.1", got
    assert got.get("nvidia-cuda-runtime-cu12") and got.get("nvidia-cuda-runtime", "").startswith("13."), got
