"""params/paper.yaml, the paper-scale grid: valid, eight methods, every axis, and `snakemake -n`
builds its whole DAG in seconds without any image (placeholder dataset folders)."""

import json
import re
import shutil
import time

import pandas as pd
import pytest
import yaml
from sslstudy import config, methods
from sslstudy.launch import EVALUATION, PRETRAIN, slurm_parameters

from tests.helpers import ROOT, copy_workflow, paper_datasets, run

EIGHT = ["simclr", "moco", "byol", "swav", "barlow", "densecl", "deepcluster", "pcl"]
FILES = "--configfile params/paper.yaml params/methods/*.yaml"  # the paper grid's config files, everywhere
PREFLIGHT = f"sslstudy preflight {FILES}"


def test_paper_grid_declares_eight_methods_resnet50_and_every_axis():
    raw = yaml.safe_load((ROOT / "params/paper.yaml").read_text())
    assert raw["study"]["methods"] == EIGHT == sorted(methods.REGISTRY, key=EIGHT.index)
    c = config.validate(raw, "params/paper.yaml")
    assert c["pretrain"]["backbone"]["arch"] == "resnet50" and c["pretrain"]["views"]["size"] == 224
    assert c["quantity"]["labels"] and c["domain"]["pools"] and c["fusion"]["kinds"] and c["granularity"]["supervised"]
    assert all(c["quality"][k] for k in ("downup", "jpeg", "saltpepper", "blur", "lowres"))


def test_paper_dag_builds_in_seconds(tmp_path):
    wf = copy_workflow(tmp_path)
    raw = yaml.safe_load((wf / "params/paper.yaml").read_text())
    for d in raw["study"]["domains"]:
        (wf / "data/real" / d).mkdir(parents=True)
        for f in ("images.npy", "labels.csv", "meta.json"):
            (wf / "data/real" / d / f).touch()
    t0 = time.time()
    official = sorted(str(p.relative_to(wf)) for p in (wf / "params/methods").glob("*.yaml"))
    assert len(official) == 8
    p = run(["snakemake", "-n", "--quiet", "rules", "--configfile", "params/paper.yaml", *official], cwd=wf)
    seconds = time.time() - t0
    n = {m.group(1): int(m.group(2)) for m in re.finditer(r"^([a-z_]+)\s+(\d+)$", p.stdout + p.stderr, re.M)}
    quantity = len(EIGHT) - 1  # every method but PCL (params/paper.yaml: its prototypes exceed the 50k subset)
    # domains, corruptions and pools for every method; the quantity axis's subsets for its seven
    assert n["pretrain"] == len(EIGHT) * (4 + 9 + 4) + quantity * 3 * 4, n
    assert n["lowshot"] == quantity * 3 * 5 * 2 and n["supervised"] == 3 * 6, n  # per (run, mode): every count
    assert seconds < 120, seconds  # generous: a busy shared machine; see the README for the measured time


def test_the_profile_gives_the_paper_its_resources(tmp_path):
    """`snakemake -n -p --profile slurm --configfile params/paper.yaml`: every pretraining job asks SLURM
    for paper.yaml's node (8 GPUs = 8 DDP tasks, 64 CPUs, 480 GB, 2,880 min), every evaluation-type job
    for one task on paper.yaml's evaluation resources; the profile adds only the cluster's settings."""
    wf = copy_workflow(tmp_path)
    shutil.copytree(ROOT / "slurm", wf / "slurm")
    raw = yaml.safe_load((wf / "params/paper.yaml").read_text())
    for d in raw["study"]["domains"]:
        (wf / "data/real" / d).mkdir(parents=True)
        for f in ("images.npy", "labels.csv", "meta.json"):
            (wf / "data/real" / d / f).touch()
    official = sorted(str(p.relative_to(wf)) for p in (wf / "params/methods").glob("*.yaml"))
    p = run(["snakemake", "-n", "-p", "--profile", "slurm", "--configfile", "params/paper.yaml", *official], cwd=wf)
    launches = {}  # command -> the --launch JSON of each of its jobs
    for m in re.finditer(r"sslstudy ([\w-]+) .*?--launch '([^']+)'", p.stdout):
        launches.setdefault(m.group(1), []).append(json.loads(m.group(2)))
    assert {"pretrain", "evaluate", "lowshot", "supervised", "fusion"} <= set(launches), sorted(launches)
    assert re.search(
        r"sslstudy evaluate .*--cluster \S+ --run-dir results/runs/", p.stdout
    )  # periodic clustering in its evaluate job
    pre = {json.dumps(slurm_parameters(la, PRETRAIN), sort_keys=True) for la in launches["pretrain"]}
    assert [json.loads(x) for x in pre] == [
        dict(
            timeout_min=2880,
            nodes=1,
            gpus_per_node=8,
            tasks_per_node=8,
            cpus_per_task=8,
            mem_gb=480,
            slurm_signal_delay_s=90,
        )
    ]
    ev = {
        json.dumps(slurm_parameters(la, EVALUATION), sort_keys=True)
        for cmd, las in launches.items()
        if cmd != "pretrain"
        for la in las
    }
    want = raw["launch"]["evaluation"]
    assert [json.loads(x) for x in ev] == [
        dict(
            timeout_min=want["time_min"],
            nodes=1,
            gpus_per_node=want["gpus"],
            tasks_per_node=1,
            cpus_per_task=want["cpus"],
            mem_gb=want["mem_gb"],
            slurm_signal_delay_s=90,
        )
    ]
    # the cluster's settings: from the profile, never from the study's params
    assert all(
        la["executor"] == "slurm" and la["evaluate"] == "executor" and la["slurm"]["partition"] is None
        for las in launches.values()
        for la in las
    )


def test_official_method_blocks_survive_the_merge_over_study_yaml():
    """Snakemake merges params/paper.yaml and params/methods/*.yaml over params/study.yaml: every
    method setting that study.yaml makes for its CPU scale must be overridden by the official file,
    or the paper grid would run it."""

    def leaks(study, official, where):
        for k, v in study.items():
            if k not in official:
                yield f"{where}.{k}"
            elif isinstance(v, dict) and isinstance(official[k], dict):
                yield from leaks(v, official[k], f"{where}.{k}")

    study = yaml.safe_load((ROOT / "params/study.yaml").read_text())["methods"]
    found = []
    for f in sorted((ROOT / "params/methods").glob("*.yaml")):
        for m, block in yaml.safe_load(f.read_text())["methods"].items():
            found += leaks(study.get(m, {}), block, f"methods.{m}")
    assert not found, f"params/study.yaml settings the paper grid would inherit: {found}"


def test_one_documented_command_everywhere():
    """README and params/paper.yaml's header give the same two commands (the preflight, then the
    cluster run) with the same config files; docs/study.md names the preflight's."""
    for f in ("README.md", "params/paper.yaml"):
        text = (ROOT / f).read_text()
        assert PREFLIGHT in text and f"snakemake --profile slurm {FILES}" in text, f
        assert not re.search(r"--configfile params/paper\.yaml(?! params/methods/\*\.yaml)", text), f
    assert PREFLIGHT in " ".join((ROOT / "docs/study.md").read_text().split())


@pytest.mark.slow
def test_the_paper_grid_passes_its_preflight(tmp_path):
    """The documented command on paper-size datasets (sparse: labels.csv real, no pixels) passes and
    prints every method's peak per GPU at the paper's per-GPU batch (each within 90% of an 80 GB GPU)
    and the grid's GPU-hours; the table is written."""
    wf = copy_workflow(tmp_path)
    paper_datasets(wf / "data/real")
    t0 = time.time()
    p = run(["bash", "-c", PREFLIGHT], cwd=wf, timeout=1800)
    seconds = time.time() - t0
    peaks = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"^  (\w+) +([\d.]+) GB at \d+ per GPU", p.stdout, re.M)
    }
    assert sorted(peaks) == sorted(EIGHT), p.stdout
    assert all(0.5 < gb <= 0.9 * 80 for gb in peaks.values()), peaks
    total = re.search(r"^GPU-hours in total: ([\d,]+)$", p.stdout, re.M)
    assert total and float(total.group(1).replace(",", "")) > 1000, p.stdout
    table = pd.read_csv(wf / "results/preflight.csv")
    assert set(table.loc[table["kind"] == "pretrain", "method"]) == set(EIGHT)
    assert p.stdout.rstrip().endswith("ok; the table: results/preflight.csv")
    print(f"paper-grid preflight: {seconds:.0f} s")  # docs/preflight.md quotes the measured time
