import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Two small synthetic domains (256 images each, 32 px)."""
    from sslstudy.data.synth import generate

    root = tmp_path_factory.mktemp("data") / "synth"
    generate(root, domains=("natural", "aerial"), n_images=256, image_size=32, seed=0)
    return root


def natural_subset(tiny_data: Path, path: Path, n: int) -> Path:
    """A nested subset of n images of tiny_data's natural domain (seed 0), saved at path."""
    from sslstudy.data.packed import load_dataset
    from sslstudy.data.subsets import nested_subsets, save_indices

    save_indices(path, nested_subsets(load_dataset(tiny_data / "natural").labels, [n], seed=0)[n])
    return path


def tiny_spec(dataset: Path, subset: Path, **over) -> dict:
    spec = dict(
        run="simclr/natural_frac1_clean/seed0", seed=0, epochs=3, batch_size=32, checkpoint_every=1, threads=1,
        backbone=dict(arch="cnn4", width=4, small_stem=True),
        optim=dict(name="lars", lr=1.0, final_lr=0.0, momentum=0.9, weight_decay=1e-6, eta=1e-3, warmup_epochs=1),
        views=[dict(size=32, scale=[0.2, 1.0])] * 2,
        method=dict(name="simclr", params=dict(temperature=0.2, proj_hidden=16, proj_dim=8, proj_layers=2)),
        data=dict(dataset=str(dataset), subset=str(subset)),
    )
    spec.update(over)
    return spec


def follow_study_seeds(params: dict) -> None:
    """The axes to which the shipped params/study.yaml gives seeds of their own follow study.seeds
    instead (tests that shrink study.seeds)."""
    for axis in ("quality", "granularity", "dense"):
        params[axis]["seeds"] = None


def run(cmd, cwd, check=True, timeout=900, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def copy_workflow(dst: Path) -> Path:
    """The workflow's files (not data/results) in a fresh folder, so tests never touch the checkout."""
    for name in ("Snakefile", "workflow", "params"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    return dst


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster (tests/slurm_cluster.py), installed with apt-get if missing,
    started for the session and stopped at its end; SLURM_CONF points the clients at it."""
    import slurm_cluster

    why = slurm_cluster.install()
    if why and os.environ.get("SSLSTUDY_REQUIRE_SLURM"):  # CI (.ci/run): never skip these
        pytest.fail(why)
    if why:
        pytest.skip(why)
    cluster = slurm_cluster.LocalSlurm(tmp_path_factory.mktemp("slurm"))
    old = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ.update(cluster.env)
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: runs jobs on the real one-node SLURM cluster the tests start")


class FakeCtx:
    """Context.features on fixed images: the encoder in eval mode on all of them."""
    seed = 0

    def __init__(self, x):
        self.x = x

    @torch.no_grad()
    def features(self, encoder):
        encoder.eval()
        out = encoder(self.x)
        encoder.train()
        return out
