# Validate the config, expand the study grid into runs; the rules' helpers (every name: sslstudy.names).
import glob
import json
import os
import re
import shlex
import sys

from sslstudy import axes, names
from sslstudy import config as studyconfig
from sslstudy.errors import UserError
from sslstudy.names import pattern
from sslstudy.report.dag import named

try:
    C = studyconfig.validate(config, " + ".join(map(str, workflow.configfiles)) or "config")
    MODELS = axes.models(C)
    PLAN = axes.evaluation_plan(C)  # each evaluated model's evaluate job
    studyconfig.check_datasets(C)
except UserError as e:
    sys.exit(f"error: {e}")

SIZE = C["pretrain"]["views"]["size"]  # every evaluation is on clean images at this side
THREADS = C["pretrain"]["threads"]
# launch.evaluate=executor: each evaluation-type job (evaluate, lowshot, supervised, fusion)
# runs its sslstudy command as a submitit job on launch.executor; the Snakemake job only waits.
EVAL_REMOTE = C["launch"]["evaluate"] == "executor"
EVAL_THREADS = 1 if EVAL_REMOTE else THREADS  # what Snakemake reserves


wildcard_constraints:
    **names.WILDCARDS,
    name="|".join(map(re.escape, C["data"]["ingest"])) or "(?!)",


def q(obj):
    """A JSON argument for the shell."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def remote(rule):
    """--launch/--job-dir for an evaluation-type command under launch.evaluate=executor."""
    if not EVAL_REMOTE:
        return ""
    job_dir = pattern(names.job_dir(rule))
    return lambda w: f"--launch {q(studyconfig.job_launch(C['launch']))} --job-dir {job_dir.format(**dict(w.items()))}"


def eval_cpus(w, threads):
    """torch threads of an evaluation-type command: the SLURM job's CPUs, else the rule's threads."""
    if EVAL_REMOTE and C["launch"]["executor"] == "slurm":
        return C["launch"]["evaluation"]["cpus"]
    return threads


def run_of(w):
    """The model (SSL run or supervised network) a job's wildcards name."""
    rid = names.RUN.format(**{k: w[k] for k in names.RUN_FIELDS})
    if rid not in MODELS:
        raise ValueError(f"{rid} is not a model of this study")
    return MODELS[rid]


def ids(m):
    """The columns that identify a model in every table."""
    return q({k: m[k] for k in names.RUN_FIELDS})


def dataset_dir(domain, quality=names.CLEAN):
    return names.dataset_dir(C, domain, quality)


def dataset_files(domain, quality=names.CLEAN):
    return names.dataset_files(C, domain, quality)


def supervised_of(w):
    m = axes.supervised_model(w.domain, names.parse_labels_tag(w.labels), int(w.seed))
    if m["id"] not in MODELS:
        raise ValueError(f"{m['id']} is not a model of this study")
    return m


def plan_of(w):
    """What the evaluate job of the model w names does: frozen, dense and embed lists of (weights, on)."""
    rid = run_of(w)["id"]
    if rid not in PLAN:
        raise ValueError(f"{rid} has no evaluation in this study")
    return PLAN[rid]


def eval_checkpoints(w):
    """--checkpoint WEIGHTS=PATH of the evaluate job of w."""
    m, p = run_of(w), plan_of(w)
    paths = dict(pretrained=names.final_checkpoint(m), random=names.random_weights(m))
    return named((weights, paths[weights]) for weights in dict.fromkeys(x for x, _ in p["embed"] + p["dense"]))


def eval_domains_of(w):
    """The domains the evaluate job of w reads."""
    p = plan_of(w)
    return list(dict.fromkeys([on for _, on in p["embed"] + p["dense"]] + p["cluster"]))


def eval_evaluations(w):
    """--frozen/--dense/--embed: what the job computes (embed: caches no frozen table row needs);
    --cluster: the domains every checkpoint of the run (--run-dir) is clustered on."""
    p = plan_of(w)
    lists = dict(frozen=p["frozen"], dense=p["dense"], embed=[e for e in p["embed"] if e not in p["frozen"]])
    out = [f"--{k} " + " ".join(names.evaluation(*e) for e in v) for k, v in lists.items() if v]
    if p["cluster"]:
        out.append(f"--cluster {' '.join(p['cluster'])} --run-dir {names.model_dir(run_of(w))}")
    return " ".join(out)


def eval_dir_of(m):
    """Model m's evaluate folder (its tables and embedding caches)."""
    return names.EVAL_DIR.format(run=m["id"])


def embeddings_of(m, on):
    """The embedding cache of model m's pretrained weights on domain `on`, in its evaluate folder."""
    return names.EMBEDDINGS.format(run=m["id"], weights="pretrained", on=on)


def member_of(w, which):
    return axes.member(C, w[which], int(w.seed))


# ---- every table the report reads, one list per kind
def eval_dirs():
    """The evaluate folders the report reads (models with frozen or dense tables)."""
    return [names.EVAL_DIR.format(run=rid) for rid, p in PLAN.items() if p["frozen"] or p["dense"]]


def eval_tables():
    return [names.EVAL_TABLE.format(run=rid) for rid, p in PLAN.items() if p["frozen"]]


def dense_tables():
    return [names.DENSE_TABLE.format(run=rid) for rid, p in PLAN.items() if p["dense"]]


def lowshot_tables():
    return [names.LOWSHOT_TABLE.format(run=rid, mode=mode) for rid, mode in axes.lowshot_jobs(C)]


def supervised_tables():
    return [names.SUPERVISED_TABLE.format(**m) for m in axes.supervised_models(C)]


def fusion_tables():
    return [
        names.FUSION_TABLE.format(
            seed=a["seed"],
            a=names.member_name(a["method"], a["domain"]),
            b=names.member_name(b["method"], b["domain"]),
            on=on,
        )
        for a, b in axes.fusion_pairs(C)
        for on in axes.fusion_domains(a, b)
    ]


def cluster_tables():
    return [names.CLUSTERS_TABLE.format(run=rid) for rid, p in PLAN.items() if p["cluster"]]


# launch.forkserver: one process imports torch and sslstudy once for this run's jobs, which fork it
# (sslstudy.forkserver; it exits with Snakemake). Not for SLURM runs, whose jobs run elsewhere.
FORKSERVER = (
    C["launch"]["forkserver"]
    and C["launch"]["executor"] != "slurm"
    and workflow.local_exec
    and not workflow.remote_exec
    and not workflow.subprocess_exec
)


# Before the first job (Snakemake runs onstart only when there is a job to run, and not in a dry run):
# `sslstudy preflight` on this very config; a grid that fails it submits nothing (sslstudy.preflight).
onstart:
    from sslstudy.preflight import before_jobs

    if not before_jobs(C, workflow.configfiles):
        sys.exit("sslstudy preflight failed: nothing was submitted; the lines above say what to change")
    if FORKSERVER:
        from sslstudy import forkserver

        if forkserver.start(names.FORKSERVER_LOG) is None:
            print(
                f"sslstudy: the fork server did not start (see {names.FORKSERVER_LOG}); every job imports torch itself",
                file=sys.stderr,
            )
