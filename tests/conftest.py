import os
from pathlib import Path

import pytest

from tests.helpers import natural_subset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Two small synthetic domains (256 images each, 32 px)."""
    from sslstudy.data.synth import generate

    root = tmp_path_factory.mktemp("data") / "synth"
    generate(root, domains=("natural", "aerial"), n_images=256, image_size=32, seed=0)
    return root


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster (tests/slurm_cluster.py), installed with apt-get if missing,
    started for the session and stopped at its end; SLURM_CONF points the clients at it."""
    from tests import slurm_cluster

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


def pytest_collection_modifyitems(items):
    """Every test on the SLURM cluster is slow too (the markers: pyproject.toml)."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def subset128(tiny_data, tmp_path_factory) -> Path:
    """tiny_data's nested subset of 128 natural images (seed 0): 4 steps of batch 32 an epoch."""
    return natural_subset(tiny_data, tmp_path_factory.mktemp("subset") / "n128.npy", 128)


@pytest.fixture(scope="session")
def subset192(tiny_data, tmp_path_factory) -> Path:
    """tiny_data's nested subset of 192 natural images (seed 0): 12 steps of batch 16 an epoch."""
    return natural_subset(tiny_data, tmp_path_factory.mktemp("subset") / "n192.npy", 192)
