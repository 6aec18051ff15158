# Validate the config, expand the study grid into runs; the rules' helpers (every name: sslstudy.names).
import glob
import json
import os
import re
import shlex
import sys
import time

from sslstudy import axes, names, provenance
from sslstudy import config as studyconfig
from sslstudy.errors import UserError, failed_job_lines
from sslstudy.names import pattern
from sslstudy.report.dag import named

try:
    # the config, validated, with the schema's defaults filled in
    STUDY = studyconfig.validate(config, " + ".join(map(str, workflow.configfiles)) or "config")
    MODELS = axes.models(STUDY)
    EVALUATION_PLAN = axes.evaluation_plan(STUDY)  # each evaluated model's evaluate job
    # each model's config hash (sslstudy.provenance): a param of every rule that reads the model, so a changed
    # model reruns them, also when a failed job left its final.pt missing (Snakemake does not rebuild a missing
    # file whose readers look current)
    MODEL_CONFIG = provenance.expected(STUDY)
    studyconfig.check_datasets(STUDY)
except UserError as e:
    sys.exit(f"error: {e}")

SIZE = STUDY["pretrain"]["views"]["size"]  # every evaluation is on clean images at this side
THREADS = STUDY["pretrain"]["threads"]
# launch.evaluate=executor: each evaluation-type job (evaluate, lowshot, supervised, fusion)
# runs its sslstudy command as a submitit job on launch.executor; the Snakemake job only waits.
EVAL_REMOTE = STUDY["launch"]["evaluate"] == "executor"
EVAL_THREADS = 1 if EVAL_REMOTE else THREADS  # what Snakemake reserves


wildcard_constraints:
    **names.WILDCARDS,
    name="|".join(map(re.escape, STUDY["data"]["ingest"])) or "(?!)",


def shell_json(obj):
    """obj as JSON, quoted as one shell argument."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def remote(rule):
    """--launch/--job-dir for an evaluation-type command under launch.evaluate=executor."""
    if not EVAL_REMOTE:
        return ""
    job_dir = pattern(names.job_dir(rule))
    launch = shell_json(studyconfig.job_launch(STUDY["launch"]))
    return lambda w: f"--launch {launch} --job-dir {job_dir.format(**dict(w.items()))}"


def eval_cpus(w, threads):
    """torch threads of an evaluation-type command: the SLURM job's CPUs, else the rule's threads."""
    if EVAL_REMOTE and STUDY["launch"]["executor"] == "slurm":
        return STUDY["launch"]["evaluation"]["cpus"]
    return threads


def run_of(w):
    """The model (SSL run or supervised network) a job's wildcards name."""
    rid = names.RUN.format(**{k: w[k] for k in names.RUN_FIELDS})
    if rid not in MODELS:
        raise ValueError(f"{rid} is not a model of this study")
    return MODELS[rid]


def id_columns_json(model):
    """--ids: the columns that identify a model in every table, as a shell argument."""
    return shell_json({k: model[k] for k in names.RUN_FIELDS})


def dataset_dir(domain, quality=names.CLEAN):
    return names.dataset_dir(STUDY, domain, quality)


def dataset_files(domain, quality=names.CLEAN):
    return names.dataset_files(STUDY, domain, quality)


def model_config(w):
    """The model config hash of the model w names."""
    return MODEL_CONFIG[run_of(w)["id"]]


def supervised_of(w):
    model = axes.supervised_model(w.domain, names.parse_labels_tag(w.labels), int(w.seed))
    if model["id"] not in MODELS:
        raise ValueError(f"{model['id']} is not a model of this study")
    return model


def plan_of(w):
    """What the evaluate job of the model w names does: frozen, dense and embed lists of (weights, on)."""
    rid = run_of(w)["id"]
    if rid not in EVALUATION_PLAN:
        raise ValueError(f"{rid} has no evaluation in this study")
    return EVALUATION_PLAN[rid]


def eval_checkpoints(w):
    """--checkpoint WEIGHTS=PATH of the evaluate job of w."""
    model, plan = run_of(w), plan_of(w)
    paths = dict(pretrained=names.final_checkpoint(model), random=names.random_weights(model))
    return named((weights, paths[weights]) for weights in dict.fromkeys(x for x, _ in plan["embed"] + plan["dense"]))


def eval_domains_of(w):
    """The domains the evaluate job of w reads."""
    plan = plan_of(w)
    return list(dict.fromkeys([on for _, on in plan["embed"] + plan["dense"]] + plan["cluster"]))


def eval_evaluations(w):
    """--frozen/--dense/--embed: what the job computes (embed: caches no frozen table row needs);
    --cluster: the domains every checkpoint of the run (--run-dir) is clustered on."""
    plan = plan_of(w)
    lists = dict(
        frozen=plan["frozen"], dense=plan["dense"], embed=[e for e in plan["embed"] if e not in plan["frozen"]]
    )
    out = [f"--{k} " + " ".join(names.evaluation(*e) for e in v) for k, v in lists.items() if v]
    if plan["cluster"]:
        out.append(f"--cluster {' '.join(plan['cluster'])} --run-dir {names.model_dir(run_of(w))}")
    return " ".join(out)


def eval_dir_of(model):
    """The model's evaluate folder (its tables and embedding caches)."""
    return names.EVAL_DIR.format(run=model["id"])


def embeddings_of(model, on):
    """The embedding cache of the model's pretrained weights on domain `on`, in its evaluate folder."""
    return names.EMBEDDINGS.format(run=model["id"], weights="pretrained", on=on)


def member_of(w, which):
    return axes.member(STUDY, w[which], int(w.seed))


# ---- every table the report reads, one list per kind
def eval_dirs():
    """The evaluate folders the report reads (models with frozen or dense tables)."""
    return [names.EVAL_DIR.format(run=rid) for rid, plan in EVALUATION_PLAN.items() if plan["frozen"] or plan["dense"]]


def eval_tables():
    return [names.EVAL_TABLE.format(run=rid) for rid, plan in EVALUATION_PLAN.items() if plan["frozen"]]


def dense_tables():
    return [names.DENSE_TABLE.format(run=rid) for rid, plan in EVALUATION_PLAN.items() if plan["dense"]]


def lowshot_tables():
    return [names.LOWSHOT_TABLE.format(run=rid, mode=mode) for rid, mode in axes.lowshot_jobs(STUDY)]


def supervised_tables():
    return [names.SUPERVISED_TABLE.format(**model) for model in axes.supervised_models(STUDY)]


def fusion_tables():
    return [
        names.FUSION_TABLE.format(
            seed=a["seed"],
            a=names.member_name(a["method"], a["domain"]),
            b=names.member_name(b["method"], b["domain"]),
            on=on,
        )
        for a, b in axes.fusion_pairs(STUDY)
        for on in axes.fusion_domains(a, b)
    ]


def cluster_tables():
    return [names.CLUSTERS_TABLE.format(run=rid) for rid, plan in EVALUATION_PLAN.items() if plan["cluster"]]


# launch.forkserver: one process imports torch and sslstudy once for this run's jobs, which fork it
# (sslstudy.forkserver; it exits with Snakemake). Not for SLURM runs, whose jobs run elsewhere.
FORKSERVER = (
    STUDY["launch"]["forkserver"]
    and STUDY["launch"]["executor"] != "slurm"
    and workflow.local_exec
    and not workflow.remote_exec
    and not workflow.subprocess_exec
)


# Before the first job (Snakemake runs onstart only when there is a job to run, and not in a dry run):
# `sslstudy preflight` on this very config; a grid that fails it submits nothing (sslstudy.preflight).
onstart:
    from sslstudy.preflight import before_jobs

    if not before_jobs(STUDY, workflow.configfiles):
        sys.exit("sslstudy preflight failed: nothing was submitted; the lines above say what to change")
    if FORKSERVER:
        from sslstudy import forkserver

        if forkserver.start(names.FORKSERVER_LOG) is None:
            print(
                f"sslstudy: the fork server did not start (see {names.FORKSERVER_LOG}); every job imports torch itself",
                file=sys.stderr,
            )


STARTED = time.time()  # the jobs of this run write their logs after this


onerror:
    # each failed job's one-line error with its log: with --quiet rules Snakemake shows neither
    for line in failed_job_lines("logs", STARTED):
        print(line, file=sys.stderr)
