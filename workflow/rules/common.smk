# Validate the config, expand the study grid into runs, name every file.
import glob
import json
import os
import re
import shlex
import sys

from sslstudy import axes
from sslstudy import config as studyconfig
from sslstudy.errors import UserError

try:
    C = studyconfig.validate(config, " + ".join(map(str, workflow.configfiles)) or "config")
    MODELS = axes.models(C)
    studyconfig.check_datasets(C)
except UserError as e:
    sys.exit(f"error: {e}")

RUN = "{method}/{domain}_{subset}_{quality}/seed{seed}"
SIZE = C["pretrain"]["views"]["size"]  # every evaluation is on clean images at this side
THREADS = C["pretrain"]["threads"]
# launch.evaluate=cluster: each evaluation-type job (evaluate, lowshot, supervised, fusion, cluster)
# runs its sslstudy command as a submitit job on launch.cluster; the Snakemake job only waits.
EVAL_REMOTE = C["launch"]["evaluate"] == "cluster"
EVAL_THREADS = 1 if EVAL_REMOTE else THREADS  # what Snakemake reserves


wildcard_constraints:
    name="|".join(map(re.escape, C["data"]["ingest"])) or "(?!)",
    method="[a-z0-9]+",
    domain="[^/_]+",
    subset="frac[0-9.e-]+|n[0-9]+|l[0-9]+|lall",
    quality="clean|[a-z]+[0-9.]+",
    seed="[0-9]+",
    weights="pretrained|random",
    on="[^/_+]+",
    labels="l[0-9]+|lall",
    mode="linear|finetune",
    member="[a-z0-9]+@[^/@_]+",


def q(obj):
    """A JSON argument for the shell."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def remote(job_dir):
    """--launch/--job-dir for an evaluation-type command under launch.evaluate=cluster; job_dir is a
    pattern of the rule's wildcards (its log path without .log)."""
    if not EVAL_REMOTE:
        return ""
    return lambda w: f"--launch {q(C['launch'])} --job-dir {job_dir.format(**dict(w.items()))}"


def eval_cpus(w, threads):
    """torch threads of an evaluation-type command: the SLURM job's CPUs, else the rule's threads."""
    if EVAL_REMOTE and C["launch"]["cluster"] == "slurm":
        return C["launch"]["slurm"]["cpus_per_task"]
    return threads


def run_of(w):
    """The model (SSL run or supervised network) a job's wildcards name."""
    rid = RUN.format(**{k: w[k] for k in ("method", "domain", "subset", "quality", "seed")})
    if rid not in MODELS:
        raise ValueError(f"{rid} is not a model of this study")
    return MODELS[rid]


def ids(m):
    """The columns that identify a model in every table."""
    return q({k: m[k] for k in ("method", "domain", "subset", "quality", "seed")})


def supervised_dir(m):
    """The folder of a supervised baseline (the supervised rule's outputs)."""
    return f"results/supervised/{m['domain']}_{m['labels']}/seed{m['seed']}"


def checkpoint(m):
    if m["kind"] == "supervised":
        return f"{supervised_dir(m)}/final.pt"
    return f"results/runs/{m['id']}/final.pt"


def dataset_dir(domain, quality="clean"):
    return axes.dataset_dir(C, domain, quality)


def dataset_files(domain, quality="clean"):
    return [f"{dataset_dir(domain, quality)}/{f}" for f in ("images.npy", "labels.csv", "meta.json")]


def supervised_of(w):
    m = axes.supervised_model(w.domain, w.labels.removeprefix("l"), int(w.seed))
    if m["id"] not in MODELS:
        raise ValueError(f"{m['id']} is not a model of this study")
    return m


def member_of(w, which):
    return axes.member(C, w[which], int(w.seed))


# ---- every table the report reads, one list per kind
def eval_tables():
    return [f"results/eval/{rid}/{w}_on_{on}.csv" for rid, w, on in axes.evaluations(C)]


def lowshot_tables():
    return [f"results/lowshot/{rid}/{mode}_{lab}.csv" for rid, mode, lab in axes.lowshot_jobs(C)]


def supervised_tables():
    return [f"{supervised_dir(m)}/scores.csv" for m in axes.supervised_models(C)]


def fusion_tables():
    return [f"results/fusion/seed{a['seed']}/{axes.member_name(a)}/{axes.member_name(b)}/on_{on}.csv"
            for a, b in axes.fusion_pairs(C) for on in dict.fromkeys(axes.eval_domains(a) + axes.eval_domains(b))]


def cluster_tables():
    return [f"results/clusters/{rid}.csv" for rid in axes.cluster_runs(C)]
