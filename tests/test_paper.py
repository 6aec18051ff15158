"""params/paper.yaml, the paper-scale grid: valid, eight methods, every axis, and `snakemake -n`
builds its whole DAG in seconds without any image (placeholder dataset folders)."""
import re
import time

import yaml

from conftest import ROOT, copy_workflow, run
from sslstudy import config, methods

EIGHT = ["simclr", "moco", "byol", "swav", "barlow", "densecl", "deepcluster", "pcl"]


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
    per_method = len(EIGHT)
    assert n["pretrain"] == per_method * (4 + 3 * 4 + 9 + 4), n  # domains, quantity subsets, corruptions, pools
    assert n["lowshot"] == per_method * 3 * 5 * 6 * 2 and n["supervised"] == 3 * 6, n
    assert seconds < 120, seconds  # generous: a busy shared machine; see the README for the measured time
