# Validate the config, expand the study grid into runs, name every file.
import json
import re
import shlex
import sys

from sslstudy import config as studyconfig
from sslstudy.errors import UserError

try:
    C = studyconfig.validate(config, " + ".join(map(str, workflow.configfiles)) or "config")
    RUNS = {r["id"]: r for r in studyconfig.runs(C)}
    studyconfig.check_datasets(C)
except UserError as e:
    sys.exit(f"error: {e}")

RUN = "{method}/{domain}_{subset}_{quality}/seed{seed}"


wildcard_constraints:
    name="|".join(map(re.escape, C["data"]["ingest"])) or "(?!)",
    method="[a-z0-9]+",
    domain="[^/]+",
    subset="frac[0-9.e-]+|n[0-9]+",
    quality="[a-z0-9-]+",
    seed="[0-9]+",
    weights="pretrained|random",


def q(obj):
    """A JSON argument for the shell."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def run_of(w):
    rid = RUN.format(**{k: w[k] for k in ("method", "domain", "subset", "quality", "seed")})
    if rid not in RUNS:
        raise ValueError(f"{rid} is not a run of this study")
    return RUNS[rid]


def dataset_dir(domain):
    return studyconfig.dataset_path(C, domain)


def dataset_files(domain):
    return [f"{dataset_dir(domain)}/{f}" for f in ("images.npy", "labels.csv", "meta.json")]


def eval_tables():
    return [f"results/eval/{rid}/{w}.csv" for rid in RUNS for w in ("pretrained", "random")]
