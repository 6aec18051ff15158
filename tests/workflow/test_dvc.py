"""data.dvc pins the built-in data: regenerating it from params gives the same DVC hash; dvc.yaml's
plots and metrics read the report's DVC tables."""

import json
import shutil

import pytest
import yaml
from sslstudy import config
from sslstudy.data.synth import generate

from tests.helpers import ROOT, run

pytestmark = pytest.mark.slow  # whole studies through Snakemake


def dvc_md5(dvc_file):
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def test_regenerated_data_matches_data_dvc(tmp_path):
    s = config.load(ROOT / "params/study.yaml")["data"]["synth"]
    generate(
        tmp_path / "data" / "synth",
        domains=s["domains"],
        n_images=s["n_images"],
        image_size=s["image_size"],
        seed=s["seed"],
    )
    run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path)
    run(["dvc", "add", "-q", "data"], cwd=tmp_path)
    assert dvc_md5(tmp_path / "data.dvc") == dvc_md5(ROOT / "data.dvc")


def test_dvc_yaml_stage_is_valid():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["study"]["cmd"].startswith("snakemake ")
    p = run(["dvc", "stage", "list"], cwd=ROOT)
    assert "study" in p.stdout


def test_dvc_lock_is_not_git_ignored():
    # DVC refuses to run (`'dvc.lock' is git-ignored`) when it is: seen once, keep it out of .gitignore
    p = run(["git", "check-ignore", "-q", "dvc.lock"], cwd=ROOT, check=False)
    assert p.returncode == 1


# ----------------------------------------------------------------------------- plots and metrics
def dvc_tables(folder, seeds=(0, 1, 2)):
    """The report's DVC files (plots/*.csv, headline.json) from a hand-made study, under folder."""
    import sys

    import pandas as pd

    sys.path.insert(0, str(ROOT / "tests"))
    from sslstudy.report import dvc

    from tests.study_tables import study

    t = study(seeds)
    f = t["frozen"]
    base = f[f["run"].isin(f.loc[f["weights"] == "random", "run"]) & (f["eval_domain"] == f["domain"])]
    curves = pd.DataFrame([dict(r, run=run) for run, recs in t["curves"].items() for r in recs])
    dvc.write(folder, base, curves, t["clusters"])
    return t


def test_dvc_tables_are_means_over_seeds_of_the_comparison(tmp_path):
    import pandas as pd

    t = dvc_tables(tmp_path)
    knn = pd.read_csv(tmp_path / "plots/knn_per_level.csv")
    f = t["frozen"].query(
        "method == 'swav' and subset == 'frac1' and domain == 'natural' and weights == 'pretrained' "
        "and metric == 'knn' and level == 'fine' and eval_domain == 'natural'"
    )
    assert len(f) == 3 and knn.set_index("level").loc["fine", "swav"] == pytest.approx(f["value"].mean(), abs=1e-4)
    assert knn.columns.tolist()[2:] == yaml.safe_load((ROOT / "params/study.yaml").read_text())["study"]["methods"]
    loss = pd.read_csv(tmp_path / "plots/loss_per_epoch.csv")
    assert loss.iloc[0, 1:].tolist() == [1.0] * 8 and (loss.iloc[-1, 1:] < 1).all()  # over the first epoch's loss
    nmi = pd.read_csv(tmp_path / "plots/nmi_per_epoch.csv")
    assert nmi["epoch"].tolist() == [0, 5, 10, 15, 20, 25, 30]
    head = json.loads((tmp_path / "headline.json").read_text())
    assert head["swav"]["knn_fine"] == pytest.approx(f["value"].mean(), abs=1e-4) and head["swav"]["seeds"] == 3


def test_dvc_plots_show_diff_and_exp_show_read_the_declared_plots_and_metrics(tmp_path):
    """In a copy of the project's dvc.yaml: `dvc plots show` writes its HTML with the four declared plots,
    `dvc plots diff` puts a committed revision beside the workspace, `dvc exp show` lists the headline metrics."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    for d in ("data", "workflow", "ssl/sslstudy", "params"):  # the stage's deps, so `dvc commit` records it
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "x").write_text("x")
    (tmp_path / "Snakefile").write_text("")
    (tmp_path / "params/study.yaml").write_text("seed: 0\n")
    results = tmp_path / "results"
    dvc_tables(results)
    for f in ("report.html", "metrics.csv", "metrics.json"):
        (results / f).write_text("{}")
    run(["git", "init", "-q"], cwd=tmp_path)
    run(["dvc", "init", "-q"], cwd=tmp_path)
    run(["dvc", "commit", "-f", "-q", "study"], cwd=tmp_path)
    run(["git", "add", "-A"], cwd=tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "study"], cwd=tmp_path)

    declared = [next(iter(p)) for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]]
    assert declared == ["knn_per_level", "linear_per_level", "loss_per_epoch", "nmi_per_epoch"]
    p = run(["dvc", "plots", "show", "-o", "shown"], cwd=tmp_path)
    assert p.returncode == 0
    html = (tmp_path / "shown/index.html").read_text()
    assert all(name in html for name in declared)

    knn = results / "plots/knn_per_level.csv"
    rows = knn.read_text().splitlines()
    cells = rows[1].split(",")
    cells[2] = "0.9999"
    knn.write_text("\n".join([rows[0], ",".join(cells), *rows[2:]]) + "\n")
    p = run(["dvc", "plots", "diff", "HEAD", "--json"], cwd=tmp_path)
    data = json.loads(p.stdout)["data"]
    assert set(data) == set(declared)  # only the declared plots, not each table again
    [plot] = data["knn_per_level"]
    assert sorted(plot["revisions"]) == ["HEAD", "workspace"]
    simclr = {
        r["rev"]: float(r["simclr"])
        for r in plot["content"]["data"]["values"]
        if r["field"] == "simclr" and r["level_index"] == "0"
    }
    assert simclr["workspace"] == 0.9999 and simclr["HEAD"] != 0.9999

    p = run(["dvc", "exp", "show", "--csv"], cwd=tmp_path)
    header = p.stdout.splitlines()[0].split(",")
    assert {"simclr.knn_coarse", "pcl.linear_fine", "swav.seeds"} <= set(header)
