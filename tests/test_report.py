"""`sslstudy report` on hand-made tables: it reads only the files it is given, and escapes text from the study."""
import json
import shutil

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from sslstudy.cli import main
from sslstudy.config import load

RUN = "simclr/natural_<script>alert(1)</script>/seed0"
EVIL = "<img src=x onerror=alert(2)>"


def metrics(path, epochs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(dict(epoch=e, loss=1.0 / e, seconds=2.0)) + "\n" for e in range(1, epochs + 1)))
    return path


def bench(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\tcpu_time\n{seconds}\t{seconds / 2}\n")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_data):
    d = tmp_path_factory.mktemp("report")
    rows = [dict(run=RUN, method="simclr", domain="natural", subset="frac1", quality="clean", seed=0, weights=w, epoch=2,
                 eval_domain="natural", level_index=i, level=lv, metric=m, value=0.5)
            for w in ("pretrained", "random") for i, lv in enumerate(("coarse", "fine")) for m in ("knn", "linear")]
    pd.DataFrame(rows).to_csv(d / "frozen.csv", index=False)
    captions = d / "captions"
    shutil.copytree(ROOT / "workflow/report", captions)
    (captions / "accuracy_per_level.rst").write_text(f"Accuracy {EVIL} & more.\n")
    config = load(ROOT / "params/study.yaml")
    config["data"]["root"] = f"data/{EVIL}"
    out = d / "results"
    # files of another study where the report used to look for them
    bench(out / "benchmarks/pretrain/byol/natural_frac1_clean/seed0.tsv", 100.0)
    bench(out / "benchmarks/evaluate/byol/natural_frac1_clean/seed0/pretrained_on_natural.tsv", 100.0)
    metrics(out / "runs" / RUN / "metrics.jsonl", epochs=1)
    (d / "data.dvc").write_text(yaml.safe_dump(dict(outs=[dict(md5="stale-md5")])))
    # this study's
    given = bench(d / "mine/pretrain.tsv", 3.0)
    curve = metrics(d / "mine/metrics.jsonl", epochs=3)
    dvc = d / "mine/data.dvc"
    dvc.write_text(yaml.safe_dump(dict(outs=[dict(md5="given-md5")])))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)  # where the stale data.dvc is
        rc = main(["report", "--config", json.dumps(config), "--out", str(out / "report.html"), "--captions", str(captions),
                   "--frozen", str(d / "frozen.csv"), "--benchmarks", f"pretrain={given}", "--curves", f"{RUN}={curve}",
                   "--datasets", f"natural={tiny_data / 'natural'}", "--data-dvc", str(dvc)])
    assert rc == 0
    return out, (out / "report.html").read_text()


def test_walltime_counts_only_the_given_benchmark_files(report):
    out, html = report
    wall = pd.read_csv(out / "tables/walltime.csv")
    assert wall[["stage", "jobs", "wall_total"]].values.tolist() == [["pretrain", 1, 3.0]]
    assert "Wall time per stage" in html


def test_report_reads_the_files_it_is_given_and_no_others(report):
    out, html = report
    assert pd.read_csv(out / "tables/pretrain_loss.csv")["epoch"].tolist() == [1, 2, 3]
    assert "given-md5" in html and "stale-md5" not in html
    assert 'id="fig-data_natural"' in html and "Domain natural: 256 images of 32 px" in html
    for section in ("Results", "Quantity", "Domain", "Quality", "Granularity", "Fusion", "Periodic clustering",
                    "Pretraining", "Data", "Config", "Versions"):
        assert f">{section}</h2>" in html, section


def test_text_from_the_study_is_escaped(report):
    _, html = report
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # run id in the tables
    assert "data/&lt;img src=x onerror=alert(2)&gt;" in html  # config
    assert html.count("Accuracy &lt;img src=x onerror=alert(2)&gt; &amp; more.") == 2  # caption and alt text
