"""Which config made each result: the model config hash, and the report's refusal of results of
another config or of a model without its final.pt (the workflow's side: tests/workflow/test_faults.py)."""

import json
import os
import re

import pandas as pd
import pytest
from sslstudy import axes, config, names, provenance
from sslstudy.cli import main
from sslstudy.report import tables

SEED0, SEED1 = (f"simclr/natural_frac1_clean/seed{s}" for s in (0, 1))


def study(lr: float = 1.0) -> dict:
    return config.validate(
        dict(
            study=dict(methods=["simclr"], domains=["natural"], seeds=[0, 1]),
            pretrain=dict(optim=dict(lr=lr)),
            clustering=dict(enabled=False),
        )
    )


def test_the_hash_changes_with_what_changes_the_weights_only():
    c = study()
    run = axes.models(c)[SEED0]
    spec = axes.pretrain_spec(c, run)
    h = provenance.model_hash(c, run)
    # what a checkpoint records: the spec the job got as JSON, with the SLURM job's threads and GPUs
    assert provenance.of_config(dict(json.loads(json.dumps(spec)), threads=8, gpus=1)) == h
    assert provenance.of_config(dict(spec, on_collapse="stop")) == h
    assert provenance.model_hash(study(lr=2.0), run) != h
    assert provenance.model_hash(c, axes.models(c)[SEED1]) != h
    sup = axes.supervised_model("natural", "all", 0)
    assert provenance.model_hash(c, sup) != provenance.model_hash(dict(c, finetune=dict(c["finetune"], lr=1)), sup)
    assert provenance.of_config(dict(run=sup["id"], model_config="abc")) == "abc"  # what a supervised job records


def frozen_rows(run: str, model_config: str) -> list[dict]:
    seed = int(run[-1])
    return [
        dict(run=run, method="simclr", domain="natural", subset="frac1", quality="clean", seed=seed, weights=w)
        | dict(epoch=6, eval_domain="natural", level_index=0, level="coarse", metric="knn", value=0.5)
        | dict(model_config=model_config)
        for w in ("pretrained", "random")
    ]


@pytest.fixture
def finished_study(tmp_path, monkeypatch):
    """A folder with every model's final.pt of study() and frozen.csv of seed 0 made from the current
    config, of seed 1 from a model trained with another learning rate (its job failed after the change)."""
    monkeypatch.chdir(tmp_path)
    c = study()
    for m in axes.models(c).values():
        final = tmp_path / names.final_checkpoint(m)
        final.parent.mkdir(parents=True)
        final.write_bytes(b"weights")
    old = provenance.model_hash(study(lr=2.0), axes.models(c)[SEED1])
    for run, h in ((SEED0, provenance.model_hash(c, axes.models(c)[SEED0])), (SEED1, old)):
        path = tmp_path / names.EVAL_TABLE.format(run=run)
        path.parent.mkdir(parents=True)
        pd.DataFrame(frozen_rows(run, h)).to_csv(path, index=False)
    return c, [names.EVAL_TABLE.format(run=r) for r in (SEED0, SEED1)]


def report_error(capsys, c: dict, frozen: list[str]) -> str:
    """`sslstudy report --verify-models` (as the workflow runs it): exit 2 and its one line."""
    argv = ["report", "--config", json.dumps(c), "--out", "results/report.html", "--frozen", *frozen]
    assert main(argv + ["--verify-models"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert not os.path.exists("results/report.html")  # refused before writing anything
    return err


def test_the_report_refuses_a_table_of_another_config(finished_study, capsys):
    c, frozen = finished_study
    err = report_error(capsys, c, frozen)
    assert err.startswith(f"sslstudy report: error: {SEED1}: {frozen[1]} was made from a model of another config")
    assert err.endswith("run the study again (snakemake) to redo it")
    # the loader passes the table of the current config, and refuses one without the column
    check = lambda df, path: provenance.check_rows("frozen", df, path, c, provenance.expected(c))  # noqa: E731
    assert set(tables.load([frozen[0]], check)["run"]) == {SEED0}
    pd.read_csv(frozen[0]).drop(columns="model_config").to_csv(frozen[0], index=False)
    with pytest.raises(Exception, match=f"{frozen[0]}: no model_config column"):
        tables.load([frozen[0]], check)


def test_the_report_refuses_a_model_without_its_final_weights(finished_study, capsys):
    c, frozen = finished_study
    final = names.final_checkpoint(axes.models(c)[SEED0])
    os.remove(final)
    err = report_error(capsys, c, frozen)
    assert err.startswith(f"sslstudy report: error: {SEED0}: {final} is missing")
    assert "run the study again (snakemake)" in err


def test_a_fusion_row_carries_both_members_hashes():
    c = study()
    pair = "simclr@natural + simclr@aerial"
    a, b = (provenance.model_hash(c, axes.member(c, n, 1)) for n in ("simclr@natural", "simclr@aerial"))
    rows = pd.DataFrame([dict(pair=pair, seed=1, member="a+b", value=0.5, model_config=f"{a}+{b}")])
    provenance.check_rows("fusion", rows, "fusion.csv", c, provenance.expected(c))
    with pytest.raises(Exception, match=re.escape(f"{pair} (seed 1): fusion.csv was made from a model of another")):
        provenance.check_rows("fusion", rows.assign(model_config=f"{a}+{a}"), "fusion.csv", c, provenance.expected(c))
