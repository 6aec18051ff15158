"""The default study (params/study.yaml as shipped) end to end: every axis lands in the report, and
every method beats the same backbone at its random initialisation, paired over the study's seeds.
Takes the README's measured time on 2 cores."""

import pandas as pd
import pytest
from sslstudy import axes, config, stats
from sslstudy.data.synth import generate

from tests.helpers import copy_workflow, run

pytestmark = pytest.mark.slow  # whole studies through Snakemake

MARGIN = 0.04  # accuracy points: all labels help every classifier by more than this over one per class


@pytest.fixture(scope="module")
def default_study(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("default"))
    s = config.load(wf / "params/study.yaml")["data"]["synth"]
    generate(
        wf / "data/synth", domains=s["domains"], n_images=s["n_images"], image_size=s["image_size"], seed=s["seed"]
    )
    run(["snakemake", "--cores", "2", "--quiet", "rules"], cwd=wf, timeout=3600)
    return pd.read_csv(wf / "results/metrics.csv"), wf


def vs_random(df, level, metric="knn"):
    """Pretrained minus random weights of the eight-method comparison, paired on seed, per method."""
    d = df.query("eval == 'frozen' and level == @level and metric == @metric and eval_domain == domain")
    d = d[d["run"].isin(d.loc[d["weights"] == "random", "run"])]
    return stats.compare(d, ["method"], "weights", "pretrained", "random").set_index("method")


def test_the_method_comparison_runs_every_method_on_every_seed(default_study):
    c = config.load("params/study.yaml")
    diff = vs_random(default_study[0], "coarse")
    assert sorted(diff.index) == sorted(c["study"]["methods"]) and set(diff["n"]) == {len(c["study"]["seeds"])}
    assert len(c["study"]["seeds"]) >= 3


@pytest.mark.parametrize("level", ["coarse", "mid"])
@pytest.mark.parametrize("metric", ["knn", "linear"])
def test_every_method_beats_its_random_weights(default_study, level, metric):
    """Paired over the study's seeds, the 95% interval of pretrained − random excludes zero."""
    diff = vs_random(default_study[0], level, metric)
    assert (diff["low"] > 0).all(), diff[["mean", "low", "high", "n"]]


def test_every_axis_is_in_the_tables(default_study):
    df, wf = default_study
    c = config.load("params/study.yaml")
    assert set(df["eval"]) == {"frozen", "lowshot", "supervised", "fusion", "clusters", "dense"}
    low = df[df["eval"] == "lowshot"]
    assert len(low.groupby(["run", "mode", "labels"])) == len(axes.lowshot_jobs(c)) * len(axes.lowshot_labels(c))
    frozen = df[df["eval"] == "frozen"]
    assert set(frozen["quality"]) == {"clean", *axes.qualities(c)}
    assert {"natural+aerial"} <= set(frozen["domain"]) and {"texture"} <= set(frozen["eval_domain"])
    clusters = df[df["eval"] == "clusters"]
    for method, epochs in clusters.groupby("method")["epoch"]:  # every checkpoint of the run, at its own epochs
        last, _ = axes.method_pretrain(c, method, "epochs")
        assert set(epochs) == set(range(0, last + 1, c["pretrain"]["checkpoint_every"])) | {last}, method
    for name in ("quantity", "domain", "quality", "granularity", "fusion", "clustering", "findings", "comparisons"):
        assert (wf / f"results/tables/{name}.csv").is_file(), name


def test_more_labels_help_every_trained_classifier(default_study):
    df = default_study[0]
    d = df[df["eval"].isin(["lowshot", "supervised"]) & (df["level"] == "coarse")]
    # a supervised baseline is one run per label count (supervised/<domain>_l<n>_clean/seed<s>)
    d = d.assign(run=d["run"].str.replace(r"^(supervised/[^/]+)_l(all|\d+)_", r"\1_", regex=True))
    acc = d.groupby(["run", "mode", "labels"])["value"].mean().unstack("labels")
    assert set(acc.index.get_level_values("mode")) >= {"linear", "finetune", "supervised"}, acc
    acc = acc[acc["l1"].notna()]  # granularity and fusion train other domains' baselines on all labels only
    assert acc["lall"].notna().all(), acc
    assert (acc["lall"] > acc["l1"] + MARGIN).all(), acc
