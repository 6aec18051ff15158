"""The Snakemake workflow end to end on a tiny config, in a scratch copy of the workflow."""
import json
import re

import pandas as pd
import pytest
import yaml

from conftest import copy_workflow, run


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, tiny_data):
    wf = copy_workflow(tmp_path_factory.mktemp("wf"))
    params = yaml.safe_load((wf / "params/study.yaml").read_text())
    params["data"]["root"] = str(tiny_data)
    params["study"].update(domains=["natural"], subsets=[0.5, 1.0])
    params["pretrain"].update(epochs=2, batch_size=32, checkpoint_every=1, backbone=dict(arch="cnn4", width=4))
    params["pretrain"]["optim"]["warmup_epochs"] = 1
    params["eval"]["linear_epochs"] = 5
    (wf / "tiny.yaml").write_text(yaml.safe_dump(params))
    first = run(["snakemake", "--cores", "2", "--configfile", "tiny.yaml", "--quiet", "rules"], cwd=wf)
    return wf, first


def test_report_and_tables(tiny_study):
    wf, _ = tiny_study
    html = (wf / "results/report.html").read_text()
    assert html.count('src="data:image/png;base64,') >= 3  # results, loss curve, data sheet: inlined
    for section in ("Results", "Pretraining", "Data", "Config", "Versions"):
        assert f"<h2>{section}</h2>" in html
    df = pd.read_csv(wf / "results/metrics.csv")
    assert set(df["run"]) == {"simclr/natural_frac0.5_clean/seed0", "simclr/natural_frac1_clean/seed0"}
    assert set(df["weights"]) == {"pretrained", "random"} and set(df["level"]) == {"coarse", "mid", "fine"}
    assert set(df["metric"]) == {"knn", "linear", "nmi", "ari"}
    assert len(df) == 2 * 2 * 3 * 4 and df["value"].between(-1, 1).all()
    summary = json.loads((wf / "results/metrics.json").read_text())
    assert summary["simclr/natural_frac1_clean/seed0"]["random"]["coarse"]["knn"] == pytest.approx(
        df.query("run == 'simclr/natural_frac1_clean/seed0' and weights == 'random' and level == 'coarse' "
                 "and metric == 'knn'")["value"].item(), abs=1e-4)
    # the nested subsets: half inside the whole
    import numpy as np
    half = np.load(wf / "results/subsets/natural/seed0/frac0.5.npy")
    whole = np.load(wf / "results/subsets/natural/seed0/frac1.npy")
    assert len(half) * 2 == len(whole) and set(half) <= set(whole)
    # every run folder describes itself
    run_dir = wf / "results/runs/simclr/natural_frac1_clean/seed0"
    assert (run_dir / "job.json").is_file() and (run_dir / "train.log").is_file()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_rerun_does_nothing(tiny_study):
    wf, _ = tiny_study
    p = run(["snakemake", "--cores", "2", "--configfile", "tiny.yaml"], cwd=wf)
    assert "Nothing to be done" in p.stdout + p.stderr


def test_dry_run_lists_dag_and_lint_is_clean(tiny_study):
    wf, _ = tiny_study
    p = run(["snakemake", "-n", "--forceall", "--configfile", "tiny.yaml"], cwd=wf)
    out = p.stdout + p.stderr
    for rule, n in (("subset", 2), ("pretrain", 2), ("evaluate", 4), ("report", 1)):
        assert re.search(rf"^{rule}\s+{n}$", out, re.M), out
    lint = run(["snakemake", "--lint", "--configfile", "tiny.yaml"], cwd=wf)
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr


def test_changing_a_param_reruns_what_depends_on_it(tiny_study):
    wf, _ = tiny_study
    p = run(["snakemake", "-n", "--configfile", "tiny.yaml", "--config", "eval={'knn_k': 5}"], cwd=wf)
    out = p.stdout + p.stderr
    assert re.search(r"^evaluate\s+4$", out, re.M) and not re.search(r"^pretrain\s+\d", out, re.M), out
