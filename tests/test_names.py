"""sslstudy.names is the one source of the study's names: the rules' patterns (read with Snakemake's
own matching) give back the fields that name a file, and those fields format to the same path."""

import re

import pytest
from snakemake.io import regex_from_filepattern, update_wildcard_constraints
from sslstudy import axes, config, names
from sslstudy.errors import UserError


def parse(template: str, path: str, **values) -> dict:
    """The wildcards Snakemake reads from path for the rule output pattern(template, **values)."""
    pat = update_wildcard_constraints(names.pattern(template, **values), {}, names.WILDCARDS)
    m = re.match(regex_from_filepattern(pat), path)
    assert m, (pat, path)
    return m.groupdict()


@pytest.fixture(scope="module")
def study():
    raw = dict(
        study=dict(methods=["simclr"], domains=["natural", "aerial"], subsets=[0.25, 500]),
        quantity=dict(labels=[10, "all"]),
        quality=dict(jpeg=[10], lowres=[16]),
        domain=dict(domains=["natural"], pools=[["natural", "aerial"]]),
        fusion=dict(kinds=["supervised"], domains=["natural"]),
    )
    return config.validate(raw)


def test_run_pattern_and_run_ids_are_one_format(study):
    for m in axes.models(study).values():
        if m["kind"] == "ssl":
            fields = parse(names.RUN_DIR, names.model_dir(m))
            assert tuple(fields) == names.RUN_FIELDS and names.run_id(**fields) == m["id"]
        else:
            w = parse(names.SUPERVISED_DIR, names.model_dir(m))
            assert axes.supervised_model(w["domain"], names.parse_labels_tag(w["labels"]), int(w["seed"])) == m


def test_table_paths_round_trip(study):
    for rid, plan in axes.evaluation_plan(study).items():
        folder = names.EVAL_DIR.format(run=rid)
        w = parse(names.EVAL_DIR, folder)
        assert folder == f"results/eval/{rid}" and names.run_id(**{k: w[k] for k in names.RUN_FIELDS}) == rid
        assert names.log("evaluate").format(run=rid) == f"logs/evaluate/{rid}.log"
        assert (
            names.EVAL_TABLE.format(run=rid) == f"{folder}/frozen.csv"
            and names.DENSE_TABLE.format(run=rid) == f"{folder}/dense.csv"
        )
        for weights, on in plan["embed"]:
            emb = names.EMBEDDINGS.format(run=rid, weights=weights, on=on)
            assert emb == f"{folder}/embeddings/{weights}_on_{on}.npz" and parse(names.EMBEDDINGS, emb) == dict(
                w, weights=weights, on=on
            )
            assert names.parse_evaluation(names.evaluation(weights, on)) == (weights, on)
    for bad in ("pretrained", "finetuned_on_natural", "pretrained_on_a_b"):
        with pytest.raises(UserError, match="expected <pretrained|random>_on_<domain>"):
            names.parse_evaluation(bad)
    for rid, mode in axes.lowshot_jobs(study):
        w = parse(names.LOWSHOT_TABLE, names.LOWSHOT_TABLE.format(run=rid, mode=mode))
        assert names.run_id(**{k: w[k] for k in names.RUN_FIELDS}) == rid and w["mode"] == mode
    for a, b in axes.fusion_pairs(study):
        ma, mb = names.member_name(a["method"], a["domain"]), names.member_name(b["method"], b["domain"])
        assert parse(names.FUSION_TABLE, names.FUSION_TABLE.format(seed=0, a=ma, b=mb, on="natural")) == dict(
            seed="0", a=ma, b=mb, on="natural"
        )
        assert axes.member(study, ma, 0) == a and axes.member(study, mb, 0) == b


def test_dataset_and_checkpoint_names(study):
    run = next(r for r in axes.ssl_runs(study) if r["quality"] == "jpeg10")
    folder = names.dataset_dir(study, run["domain"], run["quality"])
    assert parse(names.DERIVED_DIR, folder, dataset=names.dataset_name("{domain}", "{quality}")) == dict(
        seed="0", domain="natural", quality="jpeg10"
    )
    pool = names.dataset_dir(study, "natural+aerial")
    assert parse(names.DERIVED_DIR, pool, dataset="{pool}") == dict(seed="0", pool="natural+aerial")
    assert names.dataset_dir(study, "natural") == names.dataset_path(study, "natural") == "data/synth/natural"
    assert names.dataset_files(study, "natural") == [f"data/synth/natural/{f}" for f in names.DATASET_FILES]
    assert parse(names.SUBSET_FILE, names.subset_path(study, "natural", "n500")) == dict(
        domain="natural", seed="0", subset="n500"
    )
    assert [names.parse_subset_tag(names.subset_tag(s)) for s in (0.25, 500)] == [("frac", 0.25), ("n", 500)]
    assert names.random_weights(run).endswith(f"/{names.CHECKPOINTS}/ep000.pt")
    assert [names.checkpoint_epoch(names.epoch_checkpoint(e)) for e in (0, 7, 120)] == [0, 7, 120]
    assert names.checkpoint_epoch(names.FINAL) is None


def test_a_jobs_log_is_named_by_its_benchmark_file():
    for rule in names.JOBS:
        assert names.benchmark_log(names.benchmark(rule)) == names.log(rule)
        assert names.benchmark_log(f"/study/{names.benchmark(rule)}") == f"/study/{names.log(rule)}"
    assert names.benchmark_log("elsewhere/x.tsv") is None
