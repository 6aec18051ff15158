"""Everyday faults through Snakemake on a tiny study (SimCLR, seeds 0 and 1): the report is never
silently wrong after them. A fault is injected by an `sslstudy` put first on PATH, which stops or
fails one run's pretraining job and runs every other command as it is."""

import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.helpers import BIN, copy_workflow, read_metrics, run, tiny_params

pytestmark = pytest.mark.slow  # whole studies through Snakemake

SEED0, SEED1 = (f"simclr/natural_frac1_clean/seed{s}" for s in (0, 1))
WALL_CLOCK = ("seconds", "views_per_s")  # differ between any two runs

FAULTY = """#!{python}
# `sslstudy` with a fault for the pretraining job of one run folder (FAULT=<kind>:<run folder>):
# stop: it trains STOP_AFTER steps and stops, as Ctrl-C or a preemption stops it after a checkpoint;
# fail: it trains to the end, then fails, as a worker killed after its last checkpoint.
import json, os, sys
from sslstudy.cli import main
argv = sys.argv[1:]
kind, _, target = os.environ["FAULT"].partition(":")
if argv[0] == "pretrain" and argv[argv.index("--run-dir") + 1] == target:
    if kind == "stop":
        from sslstudy.train import train
        train(json.loads(argv[argv.index("--spec") + 1]), target, stop_after=int(os.environ["STOP_AFTER"]))
    main(argv)
    sys.exit(1)
sys.exit(main(argv))
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_data):
    wf = copy_workflow(tmp_path_factory.mktemp("wf"))
    params = tiny_params(dict(root=str(tiny_data)), ["natural"])
    params["study"]["seeds"] = [0, 1]
    (wf / "tiny.yaml").write_text(yaml.safe_dump(params))
    faulty = wf / "faulty" / "sslstudy"
    faulty.parent.mkdir()
    faulty.write_text(FAULTY.format(python=sys.executable))
    faulty.chmod(faulty.stat().st_mode | stat.S_IXUSR)
    snakemake(wf)
    return wf, params


def snakemake(wf, *args, configfile="tiny.yaml", fault=None, **env) -> subprocess.CompletedProcess:
    """Snakemake on the study (checked to succeed unless a fault is injected: FAULT=<kind>:<run folder>)."""
    cmd = ["snakemake", "--cores", "2", "--configfile", configfile, *args]
    if fault is None:
        return run(cmd, cwd=wf, timeout=1800)
    path = f"{wf / 'faulty'}:{BIN}:{os.environ['PATH']}"
    return subprocess.run(
        cmd, cwd=wf, env=dict(os.environ, PATH=path, FAULT=fault, **env), capture_output=True, text=True, timeout=1800
    )


def run_dir(run_id: str) -> str:
    return f"results/runs/{run_id}"


def records(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in read_metrics(run_dir)]


def test_a_run_stopped_and_rerun_has_the_curve_of_an_uninterrupted_one(study):
    """Stopped mid-epoch 2 and its job run again: Snakemake deletes metrics.jsonl before the job
    starts; the resumed run's record is the whole uninterrupted one, and so is the loss curve the
    report draws from it (plots/loss_per_epoch.csv)."""
    wf, _ = study
    folder = wf / run_dir(SEED0)
    uninterrupted = records(folder)
    curve = (wf / "results/plots/loss_per_epoch.csv").read_text()
    assert [r["epoch"] for r in uninterrupted] == [1, 2]
    shutil.rmtree(folder / "checkpoints")  # the rerun trains from scratch: the same weights, seed for seed
    steps = len(np.load(wf / "results/subsets/natural/seed0/frac1.npy")) // 32  # an epoch's steps (batch 32)
    again = ("--forcerun", f"{run_dir(SEED0)}/final.pt")
    stopped = snakemake(wf, *again, fault=f"stop:{run_dir(SEED0)}", STOP_AFTER=str(steps + 1))
    assert stopped.returncode != 0 and "Stopped" in (wf / f"logs/pretrain/{SEED0}.log").read_text()
    assert "resumed" not in (folder / "train.log").read_text().split("starting ")[-1]
    snakemake(wf, *again)
    assert f"resumed from last.pt (epoch 1 of 2, step 1 of {steps})" in (folder / "train.log").read_text()
    assert records(folder) == uninterrupted
    assert (wf / "results/plots/loss_per_epoch.csv").read_text() == curve


def test_a_failed_job_after_a_config_change_leaves_no_old_result_standing(study):
    """The learning rate changed, then seed 1's pretraining job failed (Snakemake deleted its
    final.pt), then the study is run again unchanged: every evaluation is redone from the new
    config's models, or the run fails; never exit 0 with the old config's results."""
    wf, params = study
    tables = {r: wf / f"results/eval/{r}/frozen.csv" for r in (SEED0, SEED1)}
    before = {r: t.read_bytes() for r, t in tables.items()}
    params = dict(params, pretrain=dict(params["pretrain"], optim=dict(params["pretrain"]["optim"], lr=0.5)))
    (wf / "lr.yaml").write_text(yaml.safe_dump(params))
    failed = snakemake(wf, configfile="lr.yaml", fault=f"fail:{run_dir(SEED1)}")
    assert failed.returncode != 0 and not (wf / run_dir(SEED1) / "final.pt").exists()
    again = snakemake(wf, configfile="lr.yaml")  # checked: exit 0
    for r, t in tables.items():
        assert t.read_bytes() != before[r], f"{r}: its evaluation of the old config's model stands"
    from sslstudy import axes, config, provenance

    c = config.validate(params)
    df = pd.read_csv(wf / "results/metrics.csv")
    assert dict(zip(df["run"], df["model_config"])) == {
        r: provenance.model_hash(c, axes.models(c)[r]) for r in (SEED0, SEED1)
    }, again.stderr[-3000:]
    done = snakemake(wf, "-n", configfile="lr.yaml")
    assert "Nothing to be done" in done.stdout + done.stderr  # and it stays done


def test_a_missing_final_checkpoint_is_rebuilt_with_what_reads_it(study):
    """final.pt deleted (a failed job, by hand) while its evaluation and the report look current:
    the next run retrains it (resuming at its end) and redoes its evaluation and the report."""
    wf, _ = study
    os.remove(wf / run_dir(SEED0) / "final.pt")
    current = "lr.yaml" if (wf / "lr.yaml").exists() else "tiny.yaml"  # the config the study last ran
    p = snakemake(wf, "-n", configfile=current)
    jobs = dict(re.findall(r"^(pretrain|evaluate|report)\s+(\d+)$", p.stdout + p.stderr, re.M))
    assert jobs == dict(pretrain="1", evaluate="1", report="1"), p.stdout[-3000:]
