# sslstudy: when does self-supervised visual representation learning work?
# The table of contents; each stage lives in workflow/rules/. Config: params/study.yaml
# (validated against workflow/schemas/config.schema.yaml before any job runs).
import os
import sys

from snakemake.utils import min_version

from sslstudy.config import read_yaml
from sslstudy.errors import UserError

min_version("9.0")

try:  # a YAML syntax error: file, line and column (Snakemake's own message names neither)
    if os.path.isfile("params/study.yaml"):
        read_yaml("params/study.yaml")
except UserError as e:
    sys.exit(f"error: {e}")


configfile: "params/study.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/lowshot.smk"
include: "workflow/rules/supervised.smk"
include: "workflow/rules/fusion.smk"
include: "workflow/rules/report.smk"


# every model's final.pt and evaluate folder too: a missing one (its job failed, or it was deleted) is
# rebuilt with everything that reads it, even when those look current (Snakemake rebuilds a missing file
# only for a job that runs); a target of rule all only has to exist
rule all:
    default_target: True
    input:
        "results/report.html",
        FINALS,
        [names.EVAL_DIR.format(run=rid) for rid in EVALUATION_PLAN],
