"""Must show: a 5,000-image ImageFolder tree ingests, and the tiny study runs on it end to end
(beside a synthetic domain, in one grid)."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tests import replicas
from tests.helpers import copy_workflow, run, tiny_params

pytestmark = pytest.mark.slow  # whole studies through Snakemake


@pytest.fixture(scope="module")
def real_study(tmp_path_factory, tiny_data):
    base = tmp_path_factory.mktemp("real")
    src = replicas.synth_imagefolder(base / "tree", n_images=5000, size=32)
    wf = base / "wf"
    wf.mkdir()
    copy_workflow(wf)
    # the README's worked example: ingest, version with DVC, name it in the grid, run
    ingest = run(
        [
            "sslstudy",
            "ingest",
            "imagefolder",
            str(base / "tree"),
            "--name",
            "shapes",
            "--size",
            "32",
            "--hierarchy",
            str(src["hierarchy"]),
        ],
        cwd=wf,
    )
    run(["dvc", "init", "--no-scm", "-q"], cwd=wf)
    run(["dvc", "add", "-q", "data"], cwd=wf)
    data = dict(root=str(tiny_data), datasets={"shapes": "data/shapes"})
    params = tiny_params(data, ["shapes", "natural"], shipped=False)
    (wf / "params/study.yaml").write_text(yaml.safe_dump(params))  # alone: --configfile would merge into it
    run(["snakemake", "--cores", "2", "--quiet", "rules"], cwd=wf, timeout=3600)
    return wf, ingest


def test_5000_image_tree_ingests(real_study):
    wf, ingest = real_study
    assert (
        "data/shapes: 5000 images of 32 px (classes: coarse 4, mid 16, fine 64); 0 unreadable (listed in"
        in ingest.stdout
    )
    assert yaml.safe_load((wf / "data.dvc").read_text())["outs"][0]["nfiles"] == 4  # 3 files + the report
    meta = json.loads((wf / "data/shapes/meta.json").read_text())
    assert meta["n_images"] == 5000 and meta["source"]["ingest"] == "imagefolder"


def test_tiny_study_runs_on_it_beside_a_synthetic_domain(real_study):
    wf, _ = real_study
    df = pd.read_csv(wf / "results/metrics.csv")
    df = df[df["eval"] == "frozen"] if "eval" in df else df
    assert set(df["run"]) == {"simclr/shapes_n128_clean/seed0", "simclr/natural_n128_clean/seed0"}
    shapes = df[df["domain"] == "shapes"]
    assert set(shapes["level"]) == {"coarse", "mid", "fine"} and set(shapes["weights"]) == {"pretrained", "random"}
    assert len(shapes) == 2 * 3 * 4 and shapes["value"].between(-1, 1).all()
    # the pretraining subset: 128 train images of the ingested data, 2 of each fine class
    labels = pd.read_csv(wf / "data/shapes/labels.csv").set_index("index")
    subset = np.load(wf / "results/subsets/shapes/seed0/n128.npy")
    assert len(subset) == 128 and set(labels.loc[subset, "split"]) == {"train"}
    assert labels.loc[subset, "fine"].value_counts().eq(2).all()
    html = (wf / "results/report.html").read_text()
    assert "Domain shapes: 5000 images of 32 px; coarse 4 classes, mid 16 classes, fine 64 classes." in html
