"""Every name and path of the study, as plain strings (no torch import: Snakemake imports this at
parse time). Tags: corruptions (``jpeg10``), pools (``natural+aerial``), pretraining subsets
(``frac0.25``, ``n500``), labelled counts (``l10``, ``lall``). Run ids: :data:`RUN`.

Paths are format strings. Fill them with ``str.format`` for one file, or with :func:`pattern` for
the Snakemake rule that writes them: fields left out stay wildcards, ``{run}`` becomes RUN's.
"""

from __future__ import annotations

import os
import re
import string

from .errors import UserError

CORRUPTIONS = ("downup", "jpeg", "saltpepper", "blur", "lowres")  # the corruptions of sslstudy.data.corrupt
_TAG = re.compile(rf"^({'|'.join(CORRUPTIONS)})([0-9]+(?:\.[0-9]+)?)$")
POOL_SEP = "+"
ALL = "all"
CLEAN = "clean"
SUPERVISED = "supervised"  # the method name of the networks trained from scratch on labels


# ----------------------------------------------------------------------------- tags
def quality_tag(kind: str, strength: float) -> str:
    return f"{kind}{float(strength):g}"


def parse_quality(tag: str) -> tuple[str, float]:
    """``"jpeg10"`` -> ``("jpeg", 10.0)``; raises UserError for an unknown tag."""
    match = _TAG.match(tag)
    if not match:
        kinds = ", ".join(kind + "<strength>" for kind in CORRUPTIONS)
        raise UserError(f"unknown corruption {tag!r}; use one of {kinds} (quality: in params)")
    return match.group(1), float(match.group(2))


def image_size_after(tag: str, size: int) -> int:
    """Side of the corrupted images (only lowres changes it)."""
    if tag == CLEAN:
        return size
    kind, s = parse_quality(tag)
    return int(s) if kind == "lowres" else size


def pool_name(domains: list[str]) -> str:
    return POOL_SEP.join(domains)


def pool_members(name: str) -> list[str]:
    return name.split(POOL_SEP)


def subset_tag(size: float) -> str:
    """study.subsets entries: a number <= 1 is a fraction of the train split, an integer > 1 a count."""
    if size <= 1:
        return f"frac{size:g}"
    if size != int(size):
        raise UserError(
            f"subset size {size} is neither a fraction <= 1 nor a whole number of images; fix study.subsets in params"
        )
    return f"n{int(size)}"


def parse_subset_tag(tag: str) -> tuple[str, float | int]:
    """``"frac0.25"`` -> ``("frac", 0.25)``, ``"n500"`` -> ``("n", 500)``."""
    if tag.startswith("frac"):
        try:
            return "frac", float(tag[4:])
        except ValueError:
            pass
    elif tag.startswith("n") and tag[1:].isdigit():
        return "n", int(tag[1:])
    raise UserError(f"subset {tag!r}: expected frac<fraction> or n<count>")


def labels_tag(per_class: int | str) -> str:
    """Labelled images per class as a path component: 10 -> l10, "all" -> lall."""
    return f"l{per_class}"


def parse_labels_tag(tag: str) -> int | str:
    body = tag.removeprefix("l")
    if body == ALL:
        return ALL
    if not body.isdigit() or int(body) < 1:
        raise UserError(f"labelled count {tag!r}: expected l<images per class> or lall")
    return int(body)


# ----------------------------------------------------------------------------- models
#: An SSL run ``simclr/natural_frac0.25_clean/seed0``, or a supervised network
#: ``supervised/natural_l10_clean/seed0`` (its subset is the labelled count).
RUN = "{method}/{domain}_{subset}_{quality}/seed{seed}"
RUN_FIELDS = tuple(f for _, f, _, _ in string.Formatter().parse(RUN) if f)  # the columns naming a model in every table

_LABELS = f"l[0-9]+|l{ALL}"
_MEMBER = "[a-z0-9]+@[^/@_]+"
#: What each field of a path may hold (Snakemake's wildcard constraints).
WILDCARDS = dict(
    method="[a-z0-9]+",
    domain="[^/_]+",
    subset=f"frac[0-9.e-]+|n[0-9]+|{_LABELS}",
    quality=f"{CLEAN}|[a-z]+[0-9.]+",
    seed="[0-9]+",
    weights="pretrained|random",
    on="[^/_+]+",
    labels=_LABELS,
    mode="linear|finetune",
    a=_MEMBER,  # the fusion pair's members
    b=_MEMBER,
    pool=rf"[^/_+]+(\{POOL_SEP}[^/_+]+)+",
)


def run_id(method: str, domain: str, subset: str, seed: int, quality: str = CLEAN) -> str:
    return RUN.format(method=method, domain=domain, subset=subset, quality=quality, seed=seed)


def member_name(method: str, domain: str) -> str:
    """A fusion member: ``simclr@natural`` (``supervised@natural``: the baseline with all labels)."""
    return f"{method}@{domain}"


def parse_member(name: str) -> tuple[str, str]:
    method, _, domain = name.partition("@")
    return method, domain


# ----------------------------------------------------------------------------- paths
class _Wildcards(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def pattern(template: str, **values) -> str:
    """A path template as a Snakemake pattern: ``{run}`` -> RUN, other fields given or left as wildcards."""
    return template.format_map(_Wildcards({"run": RUN, **values}))


#: The key of one job of each rule: its log is logs/<rule>/<key>.log, its benchmark
#: results/benchmarks/<rule>/<key>.tsv, and what it writes (below) is named after the key too.
JOBS = dict(
    ingest="{name}",
    subset="{domain}/seed{seed}/{subset}",
    corrupt="seed{seed}/{dataset}",
    pool="seed{seed}/{dataset}",
    pretrain="{run}",
    evaluate="{run}",  # one job per model: every frozen and dense evaluation of its checkpoints
    lowshot="{run}/{mode}",  # every labelled count of one mode
    supervised="{domain}_{labels}/seed{seed}",
    fusion="seed{seed}/{a}/{b}/on_{on}",
)


def job_dir(rule: str) -> str:
    """Where an evaluation-type job sent to the executor keeps job.json and submitit's logs."""
    return f"logs/{rule}/{JOBS[rule]}"


def log(rule: str) -> str:
    return f"{job_dir(rule)}.log"


FORKSERVER_LOG = "logs/forkserver.log"  # the preloaded server's own messages (sslstudy.forkserver)
STUDY_LOG = "logs/study.log"  # the whole output of the last `make study` (sslstudy.progress shows a summary)


def benchmark(rule: str) -> str:
    return f"results/benchmarks/{rule}/{JOBS[rule]}.tsv"


def benchmark_log(tsv: str | os.PathLike) -> str | None:
    """The log of the job whose benchmark file is `tsv` (.../results/benchmarks/R/J.tsv -> .../logs/R/J.log)."""
    head, sep, tail = str(tsv).rpartition("results/benchmarks/")
    return f"{head}logs/{tail.removesuffix('.tsv')}.log" if sep else None


# packed datasets (sslstudy.data.packed)
IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.csv"
META_FILE = "meta.json"
DATASET_FILES = (IMAGES_FILE, LABELS_FILE, META_FILE)
MASKS_FILE = "masks.npy"  # optional per-pixel label maps beside the images (meta.json "masks" describes them)
IGNORE = 255  # the mask value of pixels no class is scored on (PASCAL VOC's boundary / void label)
SYNTH_ROOT = "data/synth"  # where `sslstudy synth` writes the built-in domains
INGEST_ROOT = "data"  # where the ingest rule writes data.ingest entries (as `sslstudy ingest` does by default)
INGEST_DIR = f"{INGEST_ROOT}/{JOBS['ingest']}"
DERIVED_DIR = f"results/data/{JOBS['pool']}"  # pools and corrupted copies, by dataset_name
SUBSET_FILE = f"results/subsets/{JOBS['subset']}.npy"

# models
RUN_DIR = f"results/runs/{JOBS['pretrain']}"
SUPERVISED_DIR = f"results/supervised/{JOBS['supervised']}"
FINAL = "final.pt"  # a model's trained weights, in its folder
METRICS = "metrics.jsonl"  # a run's per-epoch records (loss, lr, health), in its folder
# beside the report (results/): what dvc.yaml's plots: and metrics: read (sslstudy.report.dvc)
PLOTS = ("knn_per_level", "linear_per_level", "loss_per_epoch", "nmi_per_epoch")
PLOT_FILE = "plots/{name}.csv"
HEADLINE = "headline.json"
TRAIN_LOG = "train.log"  # the trainer's log, in the run folder
CURVES = "events.out.tfevents.curves"  # the TensorBoard event file of a run's epochs, in its folder
CHECKPOINTS = "checkpoints"  # a run's subfolder of epoch checkpoints and last.pt
LAST = "last.pt"  # the state to resume from (mid-epoch included), in CHECKPOINTS
EPOCH_FILE = "ep{epoch:03d}.pt"  # the checkpoint after `epoch` epochs, in CHECKPOINTS (ep000.pt: the random weights)
EPOCH_GLOB = "ep[0-9][0-9][0-9].pt"
_EPOCH = re.compile(r"^ep([0-9]{3,})\.pt$")

# tables
#: One evaluation of a model: its weights (pretrained or random) on a domain.
EVALUATION = "{weights}_on_{on}"
_EVALUATION = re.compile(rf"^({WILDCARDS['weights']})_on_({WILDCARDS['on']})$")
#: The evaluate job's folder (one per model): the frozen table, the dense table (models with dense
#: evaluations), the periodic clustering table (runs of the clustering axis) and the embedding caches
#: of train/val/test (sslstudy.eval.features), one per evaluation, read by fusion and the few-label
#: linear probe.
EVAL_DIR = f"results/eval/{JOBS['evaluate']}"
FROZEN_FILE = "frozen.csv"
DENSE_FILE = "dense.csv"
CLUSTERS_FILE = "clusters.csv"
EMBEDDINGS_FILE = f"embeddings/{EVALUATION}.npz"
EVAL_TABLE = f"{EVAL_DIR}/{FROZEN_FILE}"
DENSE_TABLE = f"{EVAL_DIR}/{DENSE_FILE}"
EMBEDDINGS = f"{EVAL_DIR}/{EMBEDDINGS_FILE}"
LOWSHOT_TABLE = f"results/lowshot/{JOBS['lowshot']}.csv"
SUPERVISED_TABLE = f"{SUPERVISED_DIR}/scores.csv"
FUSION_TABLE = f"results/fusion/{JOBS['fusion']}.csv"
CLUSTERS_TABLE = f"{EVAL_DIR}/{CLUSTERS_FILE}"
PREFLIGHT = "results/preflight.csv"  # `sslstudy preflight`'s cost table (the report's Cost section)


def evaluation(weights: str, on: str) -> str:
    return EVALUATION.format(weights=weights, on=on)


def parse_evaluation(name: str) -> tuple[str, str]:
    """``"pretrained_on_natural"`` -> ``("pretrained", "natural")``."""
    m = _EVALUATION.match(name)
    if not m:
        raise UserError(f"evaluation {name!r}: expected <pretrained|random>_on_<domain>")
    return m.group(1), m.group(2)


def packed_files(folder: str) -> list[str]:
    return [f"{folder}/{f}" for f in DATASET_FILES]


def ingest_report(folder: str | os.PathLike) -> str:
    """The list of an ingested folder's unreadable images, beside it."""
    return f"{os.fspath(folder)}.ingest-report.csv"


def dataset_name(domain: str, quality: str = CLEAN) -> str:
    """A derived dataset: a pool ``natural+aerial`` or a corrupted copy ``natural_jpeg10``."""
    return domain if quality == CLEAN else f"{domain}_{quality}"


def dataset_path(config: dict, domain: str) -> str:
    """A plain domain's packed folder: data.datasets[domain], data/<domain> for data.ingest entries,
    or data.root/<domain> (the synthetic domains)."""
    d = config["data"]
    if domain in d.get("datasets", {}):
        return d["datasets"][domain]
    if domain in d.get("ingest", {}):
        return INGEST_DIR.format(name=domain)
    return f"{d['root']}/{domain}"


def dataset_dir(config: dict, domain: str, quality: str = CLEAN) -> str:
    """Packed folder of any domain: dataset_path for plain clean ones, DERIVED_DIR otherwise."""
    if quality == CLEAN and POOL_SEP not in domain:
        return dataset_path(config, domain)
    return DERIVED_DIR.format(seed=config["seed"], dataset=dataset_name(domain, quality))


def dataset_files(config: dict, domain: str, quality: str = CLEAN) -> list[str]:
    return packed_files(dataset_dir(config, domain, quality))


def subset_path(config: dict, domain: str, subset: str) -> str:
    return SUBSET_FILE.format(domain=domain, seed=config["seed"], subset=subset)


def model_dir(model: dict) -> str:
    """The folder of a model (axes.ssl_runs / axes.supervised_models entry)."""
    if model["method"] == SUPERVISED:
        return SUPERVISED_DIR.format(**model)
    return RUN_DIR.format(run=model["id"])


def final_checkpoint(model: dict) -> str:
    return f"{model_dir(model)}/{FINAL}"


def epoch_checkpoint(epoch: int) -> str:
    return EPOCH_FILE.format(epoch=epoch)


def checkpoint_epoch(name: str) -> int | None:
    """``"ep005.pt"`` -> 5; None for another file name (final.pt)."""
    m = _EPOCH.match(name)
    return int(m.group(1)) if m else None


def random_weights(model: dict) -> str:
    return f"{model_dir(model)}/{CHECKPOINTS}/{epoch_checkpoint(0)}"
