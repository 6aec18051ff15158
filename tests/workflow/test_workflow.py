"""The Snakemake workflow end to end on a tiny config with every axis, in a scratch copy of the workflow."""

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from sslstudy import cpu_line

from tests.helpers import REPORT_SECTIONS, copy_workflow, read_metrics, run, tiny_params

pytestmark = pytest.mark.slow  # whole studies through Snakemake

RUN = "simclr/natural_frac1_clean/seed0"


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, tiny_data):
    wf = copy_workflow(tmp_path_factory.mktemp("wf"))
    # every axis (other methods: tests/methods/test_methods.py); tiny_data has natural and aerial
    params = tiny_params(dict(root=str(tiny_data)), ["natural", "aerial"], every_axis=True)
    (wf / "tiny.yaml").write_text(yaml.safe_dump(params))
    stale = wf / "results/benchmarks/pretrain/byol/natural_frac1_clean/seed0.tsv"  # of another study: not counted
    stale.parent.mkdir(parents=True)
    stale.write_text("s\tcpu_time\n100\t100\n")
    first = run(["snakemake", "--cores", "2", "--configfile", "tiny.yaml", "--quiet", "rules"], cwd=wf, timeout=3600)
    return wf, first


def test_report_has_every_section_and_tidy_tables(tiny_study):
    wf, _ = tiny_study
    html = (wf / "results/report.html").read_text()
    for section in (*REPORT_SECTIONS, "Dense"):
        assert re.search(rf"<h2[^>]*>{section}</h2>", html), section
    assert "Not in this study" not in html
    figures = re.findall(
        r'<figure id="fig-([a-z_]+)"><img alt="([^"]+)" src="data:image/png;base64,[^"]+">'
        r"<figcaption>([^<]+)(?:<a href=\"([^\"]+)\">)?",
        html,
    )
    keys = {f[0] for f in figures}
    assert {"accuracy_per_level", "quantity", "domain", "quality", "granularity", "fusion", "clustering"} <= keys
    for key, _alt, caption, link in figures:
        caption = caption.strip()
        assert caption.endswith(".") and caption.count(". ") == 0, (key, caption)  # one sentence
        if not key.startswith("data_"):
            assert link and (wf / "results" / link).is_file(), key
    df = pd.read_csv(wf / "results/metrics.csv")
    assert set(df["eval"]) == {"frozen", "lowshot", "supervised", "fusion", "clusters", "dense"}
    assert df["value"].between(-1, 1).all()
    frozen = df[df["eval"] == "frozen"]
    assert not frozen.duplicated(["run", "weights", "eval_domain", "level", "metric"]).any()
    # the periodic clustering covers every checkpoint (epochs 0, 1, 2) at every level of the method
    # comparison's runs (study.methods x study.domains), not of the axes' extra runs
    clusters = df[df["eval"] == "clusters"]
    runs = [p.parent.relative_to(wf / "results/runs").as_posix() for p in (wf / "results/runs").rglob("final.pt")]
    grid = {RUN, "simclr/aerial_frac1_clean/seed0"}
    assert set(clusters["run"]) == grid and grid < set(runs) and len(runs) == 6
    assert set(clusters["epoch"]) == {0, 1, 2} and len(clusters) == len(grid) * 3 * 3 * 2
    summary = json.loads((wf / "results/metrics.json").read_text())
    assert summary[RUN]["random"]["natural"]["coarse"]["knn"] == pytest.approx(
        frozen.query("run == @RUN and weights == 'random' and level == 'coarse' and metric == 'knn'")["value"].item(),
        abs=1e-4,
    )


def test_axes_produce_their_data(tiny_study, tiny_data):
    from sslstudy import config
    from sslstudy.data.packed import load_dataset
    from sslstudy.eval.features import probe_splits

    wf, _ = tiny_study
    half = np.load(wf / "results/subsets/natural/seed0/frac0.5.npy")
    whole = np.load(wf / "results/subsets/natural/seed0/frac1.npy")
    assert len(half) * 2 == len(whole) and set(half) <= set(whole)
    assert np.load(wf / "results/data/seed0/natural_lowres16/images.npy", mmap_mode="r").shape[1:] == (16, 16, 3)
    import torch

    spec = torch.load(wf / "results/runs/simclr/natural_frac0.5_lowres16/seed0/final.pt", weights_only=False)["config"]
    assert [v["size"] for v in spec["views"]] == [16, 16]
    low = pd.read_csv(wf / "results/lowshot/simclr/natural_frac0.5_clean/seed0/finetune.csv")  # every count of the run
    cfg = config.validate(yaml.safe_load((wf / "tiny.yaml").read_text()))["eval"]
    fit = probe_splits(load_dataset(tiny_data / "natural"), cfg)["fit"]
    assert low.groupby("labels")["labelled_images"].unique().map(list).to_dict() == {"l1": [64], "lall": [len(fit)]}
    assert set(low["pretrain_images"]) == {len(half)}
    run_dir = wf / "results/runs" / RUN
    assert (run_dir / "train.log").is_file() and not (run_dir / "job.json").exists()  # inline: no submitit job
    assert len(read_metrics(run_dir)) == 2
    wall = pd.read_csv(wf / "results/tables/walltime.csv")
    assert {"pretrain", "evaluate", "lowshot", "supervised", "fusion", "corrupt", "pool"} <= set(wall["stage"])
    jobs = wall.set_index("stage")["jobs"]
    # every job ran in the fork server (launch.forkserver), and the time table counts its CPU
    forked = {
        stage: [cpu_line.worker_cpu(p.read_text()) for p in (wf / "logs" / stage).rglob("*.log")]
        for stage in jobs.index
    }
    assert {stage: len(cpu) for stage, cpu in forked.items()} == jobs.to_dict()
    assert all(c > 0 for cpu in forked.values() for c in cpu), forked
    assert wall.set_index("stage")["cpu_total"]["pretrain"] >= sum(forked["pretrain"])
    assert jobs["pretrain"] == 6 and jobs["evaluate"] == 8 and jobs["lowshot"] == 4  # the study's, not the stale file
    # one evaluate folder per model: the plain grid's run has frozen, dense, periodic clustering and
    # embedding caches (fusion reads aerial)
    folder = wf / "results/eval" / RUN
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("[!.]*") if p.is_file()) == [
        "clusters.csv",
        "dense.csv",
        *(f"embeddings/{e}.npz" for e in ("pretrained_on_aerial", "pretrained_on_natural", "random_on_natural")),
        "frozen.csv",
    ]
    frozen = pd.read_csv(folder / "frozen.csv")
    assert set(zip(frozen["weights"], frozen["eval_domain"])) == {
        ("pretrained", "natural"),
        ("random", "natural"),
        ("pretrained", "aerial"),
    }  # the domain axis


def test_rerun_does_nothing(tiny_study):
    wf, _ = tiny_study
    p = run(["snakemake", "--cores", "2", "--configfile", "tiny.yaml"], cwd=wf)
    assert "Nothing to be done" in p.stdout + p.stderr


def counts(out: str) -> dict:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^([a-z_]+)\s+(\d+)$", out, re.M)}


def test_dry_run_lists_dag_and_lint_is_clean(tiny_study):
    wf, _ = tiny_study
    p = run(["snakemake", "-n", "--forceall", "--configfile", "tiny.yaml"], cwd=wf)
    n = counts(p.stdout + p.stderr)
    # evaluate: one per evaluated model (its periodic clustering included); lowshot: one per (run, mode)
    assert n == dict(
        subset=4,
        corrupt=2,
        pool=1,
        pretrain=6,
        evaluate=8,
        lowshot=4,
        supervised=3,
        fusion=4,
        report=1,
        all=1,
        total=34,
    ), n
    lint = run(["snakemake", "--lint", "--configfile", "tiny.yaml"], cwd=wf)
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr


@pytest.mark.parametrize(
    "section, change, expected",
    [
        # one more JPEG quality: its copy, run, clean-image evaluation; then the report
        ("quality", {"jpeg": [50]}, dict(corrupt=1, pretrain=1, evaluate=1, report=1)),
        # one more labelled count: linear + fine-tuning of both quantity runs (each job covers every count), one
        # supervised baseline
        ("quantity", {"labels": [1, 5, "all"]}, dict(lowshot=4, supervised=1, report=1)),
        # a training setting: fine-tuning jobs, supervised networks and what reads them (their evaluate job: frozen and
        # dense); no pretraining, no few-label linear probe
        ("finetune", {"lr": 0.02}, dict(lowshot=2, supervised=3, evaluate=2, fusion=2, report=1)),
        # a dense setting: the evaluate jobs of the models with dense evaluations and what reads their folders
        ("dense", {"lr": 0.02}, dict(evaluate=4, lowshot=1, fusion=4, report=1)),
    ],
)
def test_changing_one_axis_value_reruns_only_what_depends_on_it(tiny_study, section, change, expected):
    wf, _ = tiny_study
    params = yaml.safe_load((wf / "tiny.yaml").read_text())
    params[section].update(change)
    (wf / "changed.yaml").write_text(yaml.safe_dump(params))
    p = run(["snakemake", "-n", "--configfile", "changed.yaml"], cwd=wf)
    n = counts(p.stdout + p.stderr)
    n.pop("all", None), n.pop("total", None)
    assert n == expected, p.stdout[-3000:]


def test_report_renders_in_headless_chromium(tiny_study, tmp_path):
    """Every figure decodes (naturalWidth > 0) in a real browser, and a full-page screenshot is taken."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    wf, _ = tiny_study
    html = (wf / "results/report.html").read_text()
    probe = """<script>window.addEventListener('load', () => {
      const imgs = [...document.images].map(
        i => ({ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, alt: i.alt}));
      const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(imgs);
      document.body.appendChild(pre);});</script>"""
    (tmp_path / "probe.html").write_text(html.replace("</body>", probe + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run(
        flags + ["--dump-dom", f"file://{tmp_path / 'probe.html'}"], capture_output=True, text=True, timeout=120
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    imgs = json.loads(
        found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    )
    assert len(imgs) >= 9 and all(i["ok"] for i in imgs), [i for i in imgs if not i["ok"]]
    shot = tmp_path / "report.png"
    subprocess.run(
        flags + ["--window-size=1200,4000", f"--screenshot={shot}", f"file://{wf / 'results/report.html'}"],
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (4000, 1200) and img.std() > 10  # not a blank page
