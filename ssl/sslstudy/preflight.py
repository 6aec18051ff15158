"""`sslstudy preflight`: every job of a grid checked, sized and priced on the CPU before any job runs.

It takes the config Snakemake would run (params/study.yaml with the --configfile list merged over
it, as Snakemake merges them, then validated) and, without reading one image:

* checks what the schema can't: queues against the global batch, the per-GPU batch (batch norm
  needs 2 images), clusters against the training images, subsets and labelled counts against the
  datasets' labels.csv, view sizes against the stored images, and method settings that reached a
  grid at another scale from params/study.yaml rather than the grid's own files;
* sizes every distinct job (sslstudy.estimate: one training step under fake tensors) and refuses
  one that does not fit launch.pretrain.gpu_mem_gb / launch.evaluation.gpu_mem_gb;
* prices the grid (GPU-hours per axis and per method at launch.*.tflops_per_gpu, images seen, disk)
  and writes the table to results/preflight.csv.

Every problem is one line: the job kind, the value, the limit and the key to change. The workflow
runs it in Snakemake's onstart (workflow/rules/common.smk), so a failing preflight submits nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from . import axes, names
from .config import validate
from .errors import UserError

STUDY_PARAMS = "params/study.yaml"  # the Snakefile's configfile: every grid is merged over it
TABLE = names.PREFLIGHT
GB = 1e9  # memory and disk in decimal gigabytes, as GPU memory is sold (80 GB)


# ----------------------------------------------------------------------------- the config
def merge(base: dict, over: dict) -> dict:
    """Snakemake's merge of a config file over the config so far (snakemake.utils.update_config):
    mappings merge key by key, anything else (lists included) replaces."""
    for key, value in over.items():
        if isinstance(value, dict):
            base[key] = merge(base[key] if isinstance(base.get(key), dict) else {}, value)
        else:
            base[key] = value
    return base


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such params file; pass an existing one (e.g. params/paper.yaml)")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{path}: not valid YAML; fix the syntax") from None


def _leaves(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


@dataclass
class Grid:
    """A validated config and where its method settings came from."""

    config: dict
    files: list[str]  # params/study.yaml, then the --configfile list, in merge order
    origin: dict[tuple, tuple[str, object]] = field(default_factory=dict)  # methods.* leaf -> (file, value)


def load_grid(configfiles: list[str], study: str = STUDY_PARAMS) -> Grid:
    """params/study.yaml with every config file merged over it in order (what `snakemake --configfile
    ...` runs), validated."""
    files = [study, *[str(f) for f in configfiles if str(f) != study]]
    raw: dict = {}
    for f in files:
        merge(raw, _read_yaml(f))
    return Grid(validate(raw, " + ".join(files)), files, origins(files))


def origins(files: list[str]) -> dict[tuple, tuple[str, object]]:
    """For every leaf under methods: the last of ``files`` that sets it, and the value it sets."""
    out = {}
    for f in files:
        for path, value in _leaves(_read_yaml(f).get("methods") or {}, ("methods",)):
            out[path] = (f, value)
    return out


# ----------------------------------------------------------------------------- the datasets
@dataclass
class Data:
    """What preflight reads of a packed folder: meta.json, labels.csv's split and finest-label
    columns, images.npy's header (no image)."""

    path: str
    image_size: int
    splits: dict[str, int]  # images per split
    classes: dict[str, int]  # classes per level, coarse to fine
    train_per_class: np.ndarray  # finest-class images in the train split
    fit_per_class: np.ndarray  # and in the probes' fit split (train less the val holdout)
    class_names: list[str]  # the finest classes

    @property
    def finest(self) -> str:
        return list(self.classes)[-1]


def read_data(path: str, eval_cfg: dict) -> Data:
    """A plain domain's facts: meta.json, labels.csv's split and finest-label columns, images.npy's header."""
    folder = Path(path)
    for f in names.DATASET_FILES:
        if not (folder / f).is_file():
            raise UserError(f"{folder / f}: missing file; ingest the domain or fix its path in params (data:)")
    meta = json.loads((folder / names.META_FILE).read_text())
    finest = list(meta["levels"])[-1]
    labels = pd.read_csv(folder / names.LABELS_FILE, usecols=["index", "split", finest], dtype={"split": str})
    shape = np.load(folder / names.IMAGES_FILE, mmap_mode="r").shape
    return _facts(str(path), int(shape[1]), meta["levels"], meta["classes"], labels, eval_cfg)


def planned_data(config: dict, name: str) -> Data:
    """The facts of a data.ingest domain that is not packed yet (its ingest job runs after the
    preflight): the collection's listing and the ingest's plan (sslstudy.data.ingest), no image
    decoded. Images that will fail to decode (at most its max_failed share) are not known yet."""
    from .data.ingest import listed_plan

    e = config["data"]["ingest"][name]
    keys = ("hierarchy", "train_split", "levels", "val_fraction", "test_fraction", "seed", "max_per_class")
    _, p = listed_plan(e["source"], e["path"], name, **{k: e[k] for k in keys})
    finest = p["levels"][-1]
    labels = pd.DataFrame({"index": np.arange(len(p["keep"])), "split": p["split"], finest: p["labels"][-1]})
    return _facts(names.dataset_path(config, name), int(e["size"]), p["levels"], p["classes"], labels, config["eval"])


def _facts(path: str, image_size: int, levels: list, classes: dict, labels: pd.DataFrame, eval_cfg: dict) -> Data:
    """The fit split is the evaluation's (eval.features.probe_splits): train, less the first
    eval.val_fraction of its class-balanced order where the domain has no val split."""
    from .data.subsets import balanced_order

    levels = list(levels)
    finest = levels[-1]
    splits = {s: int((labels["split"] == s).sum()) for s in ("train", "val", "test")}
    train = fit = labels[labels["split"] == "train"]
    if not splits["val"] and splits["train"]:
        order = balanced_order(labels, eval_cfg["cluster_seed"], stratify=finest, split="train", dataset=path)
        held = order[: int(round(eval_cfg["val_fraction"] * len(order)))]
        fit = fit[~fit["index"].isin(held)]
    n_fine = len(classes[finest])
    return Data(
        path=str(path),
        image_size=image_size,
        splits=splits,
        classes={lv: len(classes[lv]) for lv in levels},
        train_per_class=np.bincount(train[finest].to_numpy(dtype=np.int64), minlength=n_fine),
        fit_per_class=np.bincount(fit[finest].to_numpy(dtype=np.int64), minlength=n_fine),
        class_names=[str(c) for c in classes[finest]],
    )


def derived(config: dict, plain: dict[str, Data], domain: str, quality: str = names.CLEAN) -> Data:
    """The facts of a pool (as many images per split as its smallest member) or a corrupted copy
    (lowres: smaller images), from its members' (sslstudy.data.pool, sslstudy.data.corrupt)."""
    members = [plain[d] for d in names.pool_members(domain)]
    first = members[0]
    same = all(m.classes == first.classes and m.class_names == first.class_names for m in members)
    splits = {s: min(m.splits[s] for m in members) for s in first.splits}
    classes = first.classes if same else {"source": len(members)}
    return Data(
        path=names.dataset_dir(config, domain, quality),
        image_size=names.image_size_after(quality, first.image_size),
        splits=splits,
        classes=classes,
        train_per_class=first.train_per_class if len(members) == 1 else np.zeros(0, dtype=np.int64),
        fit_per_class=first.fit_per_class if len(members) == 1 else np.zeros(0, dtype=np.int64),
        class_names=first.class_names if same else [],
    )


def subset_images(train: int, tag: str) -> int:
    """Images of a pretraining subset (sslstudy.cli cmd_subset: a fraction of train, or a count)."""
    from .data.subsets import fractions_to_sizes

    kind, value = names.parse_subset_tag(tag)
    return fractions_to_sizes(train, [value])[0] if kind == "frac" else int(value)


# ----------------------------------------------------------------------------- the jobs
def world_size(config: dict) -> int:
    """Processes of one pretraining job (DDP ranks): nodes x tasks per node on SLURM, else one
    (sslstudy.launch: the local and inline executors run one task)."""
    from .launch import PRETRAIN, tasks_per_node

    launch = config["launch"]
    if launch["executor"] != "slurm":
        return 1
    return launch[PRETRAIN]["nodes"] * tasks_per_node(launch, PRETRAIN)


@dataclass
class Pretrain:
    """One pretraining run as preflight sees it."""

    run: dict
    spec: dict  # axes.pretrain_spec
    data: Data  # the dataset it trains on (a pool or corrupted copy where it is one)
    n_train: int  # images of its subset
    world: int  # DDP ranks

    @property
    def method(self) -> str:
        return self.run["method"]

    @property
    def per_gpu(self) -> float:
        return self.spec["batch_size"] / self.world

    @property
    def kind(self) -> str:
        return f"pretrain {self.method}"


def pretrain_jobs(config: dict, plain: dict[str, Data]) -> list[Pretrain]:
    world = world_size(config)
    out = []
    for run in axes.ssl_runs(config):
        data = derived(config, plain, run["domain"], run["quality"])
        n = subset_images(data.splits["train"], run["subset"])
        out.append(Pretrain(run, axes.pretrain_spec(config, run), data, n, world))
    return out


# ----------------------------------------------------------------------------- checks
QUEUES = dict(moco="queue", densecl="queue", pcl="queue", swav="queue_length")  # a multiple of the global batch
SHUFFLED = ("moco", "densecl", "pcl")  # shuffle-BN: the key encoder's batch norm over per-GPU batch / shuffle_groups


def _batch_key(config: dict, method: str) -> str:
    return axes.method_pretrain(config, method, "batch_size")[1]


def check_pretrain(config: dict, job: Pretrain) -> list[str]:
    """What makes a pretraining job fail at its model build or first step, found from the config."""
    m, c, kind = job.method, job.spec["method"]["params"], job.kind
    batch, bkey, world = job.spec["batch_size"], _batch_key(config, job.method), job.world
    where = f"{kind} ({job.run['domain']} {job.run['subset']} {job.run['quality']})"
    out = []
    if m in QUEUES and c.get(QUEUES[m]) and c[QUEUES[m]] % batch:
        key, length = f"methods.{m}.{QUEUES[m]}", c[QUEUES[m]]
        fit = max(batch, length // batch * batch)
        out.append(f"{kind}: {key} {length} is not a multiple of the global batch {batch} ({bkey}); set {key} to {fit}")
    if batch % world:
        out.append(
            f"{kind}: the global batch {batch} ({bkey}) does not divide over {world} GPUs "
            "(launch.pretrain.nodes x gpus); make it a multiple of the GPU count"
        )
    elif batch // world < 2:
        out.append(
            f"{kind}: {batch // world} image per GPU (global batch {batch} over {world} GPUs) is below the 2 "
            f"batch norm needs; raise {bkey} to at least {2 * world} or lower launch.pretrain.gpus"
        )
    elif m in SHUFFLED and batch // world // c["shuffle_groups"] < 2:
        per, groups = batch // world, c["shuffle_groups"]
        out.append(
            f"{kind}: {per} images per GPU in {groups} shuffle-BN groups (methods.{m}.shuffle_groups) leave "
            f"{per // groups} per group, below the 2 batch norm needs; lower methods.{m}.shuffle_groups"
        )
    if job.n_train < batch:
        out.append(
            f"{where}: {job.n_train} training images, fewer than one global batch of {batch}; lower {bkey} "
            "or pick a larger subset"
        )
    clusters = dict(deepcluster=[("k", c.get("k"))], pcl=[("num_clusters", k) for k in c.get("num_clusters", [])])
    for key, k in clusters.get(m, []):
        if k > job.n_train:
            out.append(
                f"{where}: methods.{m}.{key} {k} clusters exceed its {job.n_train} training images; "
                f"lower methods.{m}.{key} to at most {job.n_train}"
            )
    if m == "swav" and len(job.spec["views"]) < 2:
        out.append(f"{kind}: 1 view, swav needs the 2 large crops; list them in methods.swav.views")
    for i, view in enumerate(job.spec["views"]):
        if view["size"] > job.data.image_size:
            out.append(
                f"{where}: view {i + 1} is {view['size']} px but {job.data.path} stores {job.data.image_size} px "
                f"images; lower the view size (methods.{m}.views, pretrain.views.size) or ingest larger images"
            )
            break
    return out


def check_subsets(config: dict, plain: dict[str, Data]) -> list[str]:
    """Every count of study.subsets, quantity.subsets and quality.subset against the train split of
    each domain (or pool) it is drawn from: one line per subset job."""
    keys = {names.subset_tag(v): "study.subsets" for v in config["study"]["subsets"]}
    for v in config["quantity"]["subsets"]:
        keys.setdefault(names.subset_tag(v), "quantity.subsets")
    if config["quality"]["subset"] is not None:
        keys.setdefault(names.subset_tag(config["quality"]["subset"]), "quality.subset")
    out = []
    for domain, tag in dict.fromkeys((r["domain"], r["subset"]) for r in axes.ssl_runs(config)):
        kind, value = names.parse_subset_tag(tag)
        train = derived(config, plain, domain).splits["train"]
        if kind == "n" and value > train:
            out.append(
                f"subset {domain} {tag}: {value} images exceed the {train} train images of "
                f"{names.dataset_dir(config, domain)}; lower {keys[tag]} to at most {train}"
            )
    return out


def check_labels(config: dict, plain: dict[str, Data]) -> list[str]:
    """quantity.labels (images per finest class) against the smallest class of each domain's fit split,
    and the sizes the evaluation needs (a test image per k-means cluster, the eval view size)."""
    out = []
    q = config["quantity"]
    counts = [n for n in q["labels"] if n != names.ALL]
    domains = axes.pick(config, "quantity", "domains") if q["labels"] else []
    for d in domains:
        data = plain[d]
        for n in counts:
            small = np.flatnonzero(data.fit_per_class < n)
            if len(small):
                i = int(small[np.argmin(data.fit_per_class[small])])
                out.append(
                    f"lowshot {d}: {n} labelled images per class (quantity.labels) but class {data.class_names[i]!r} "
                    f"of {data.path} has {int(data.train_per_class[i])} train images ({int(data.fit_per_class[i])} "
                    f"less the val holdout); lower quantity.labels to at most {int(data.fit_per_class.min())}"
                )
    size = config["pretrain"]["views"]["size"]
    for d in sorted({on for _, _, on in axes.evaluations(config)}):
        data = plain[d]
        if size > data.image_size:
            out.append(
                f"evaluate {d}: the evaluation view is {size} px (pretrain.views.size) but {data.path} stores "
                f"{data.image_size} px images; ingest larger images or lower pretrain.views.size"
            )
        level, k = max(data.classes.items(), key=lambda kv: kv[1])
        if data.splits["test"] < k:
            out.append(
                f"evaluate {d}: k-means at level {level} needs {k} clusters but {data.path} has "
                f"{data.splits['test']} test images; ingest a larger test split (data.ingest.{d}.test_fraction)"
            )
    return out


def scale(config: dict) -> tuple[str, int]:
    return config["pretrain"]["backbone"]["arch"], config["pretrain"]["views"]["size"]


def check_method_origins(grid: Grid, methods: list[str]) -> list[str]:
    """In a grid at another scale (backbone or view size) than params/study.yaml's, a method setting
    that still comes from params/study.yaml (its CPU-scale choice) rather than the grid's own files."""
    study = grid.files[0]
    base = validate(_read_yaml(study), study)
    if scale(grid.config) == scale(base):
        return []
    arch, size = scale(grid.config)
    out = []
    for path, (f, value) in grid.origin.items():
        if f != study or path[1] not in methods:
            continue
        final = grid.config
        for key in path:
            final = final.get(key) if isinstance(final, dict) else None
        if final != value:  # replaced by a --config override
            continue
        key, text = ".".join(path), json.dumps(value)
        text = text if len(text) <= 40 else text[:37] + "..."
        out.append(
            f"pretrain {path[1]}: {key} = {text} comes from {study} (chosen for {scale(base)[0]} at "
            f"{scale(base)[1]} px) but this grid trains {arch} at {size} px; set {key} in the grid's own "
            f"files (official values: params/methods/{path[1]}.yaml)"
        )
    return out


def _dedupe(lines: list[str]) -> list[str]:
    """One line per distinct problem, with how many jobs share it."""
    counts = Counter(lines)
    return [ln if counts[ln] == 1 else f"{ln} ({counts[ln]} jobs)" for ln in counts]


def checks(grid: Grid, plain: dict[str, Data], jobs: list[Pretrain]) -> list[str]:
    config = grid.config
    out = check_method_origins(grid, sorted({j.method for j in jobs}))
    subsets = check_subsets(config, plain)
    out += subsets
    if not subsets:  # with every subset in its dataset, the jobs' sizes mean something
        out += [p for j in jobs for p in check_pretrain(config, j)]
    out += check_labels(config, plain)
    return _dedupe(out)


def plain_data(config: dict) -> dict[str, Data]:
    """Facts of every plain domain of the grid (UserError for a missing folder, as the workflow's, and
    for a data.ingest argument its source does not take, as its ingest job's)."""
    from .config import check_datasets
    from .data.ingest import source_options

    check_datasets(config)
    out = {}
    for d in axes.check(config):
        entry = config["data"].get("ingest", {}).get(d)
        path = names.dataset_path(config, d)
        if entry is None:
            out[d] = read_data(path, config["eval"])
        elif Path(path).is_dir():  # packed; a changed entry reruns its ingest job, which would refuse it
            source_options(entry["source"], d, hierarchy=entry["hierarchy"], train_split=entry["train_split"])
            out[d] = read_data(path, config["eval"])
        else:
            out[d] = planned_data(config, d)  # its listed_plan refuses it
    return out


# ----------------------------------------------------------------------------- the command
@dataclass
class Report:
    problems: list[str]
    rows: list = field(default_factory=list)  # cost.Row
    disk: list[dict] = field(default_factory=list)
    worked_around: dict[str, str] = field(default_factory=dict)  # method -> what its estimate replaces


def run(grid: Grid, out: str | Path = TABLE, estimate: bool = True, workers: int = 2) -> Report:
    """Check the grid, then (estimate) size and price every job, write the cost table to `out`.
    Report.problems is empty when the grid passes."""
    from . import cost

    config = grid.config
    plain = plain_data(config)
    jobs = pretrain_jobs(config, plain)
    problems = checks(grid, plain, jobs)
    if problems or not estimate:
        return Report(problems)
    task_list = cost.tasks(config, jobs, plain)
    out = Path(out)
    sizes = cost.estimates(task_list, out.with_name(f".{out.stem}-estimates.json"), workers)
    failed = {k: v["error"] for k, v in sizes.items() if "error" in v}
    if failed:
        return Report([f"{_what(task_list[k])}: could not be sized ({why})" for k, why in failed.items()])
    rows = cost.pretrain_rows(config, jobs, sizes) + cost.eval_rows(config, plain, sizes)
    disk = cost.disk_rows(config, jobs, plain, sizes)
    from .atomic import write_bytes

    write_bytes(out, cost.table(rows, disk).to_csv(index=False).encode())
    around = {m: cost.WORKED_AROUND[m] for m in sorted({j.method for j in jobs}) if m in cost.WORKED_AROUND}
    return Report(cost.fit_problems(rows), rows, disk, around)


def _what(task: dict) -> str:
    if task["kind"] == "pretrain":
        return f"pretrain {task['spec']['method']['name']} ({task['per_gpu']} images per GPU)"
    return f"{task['kind']} ({task['backbone']['arch']})"


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def summary(report: Report) -> list[str]:
    """The printed table: every method's peak per GPU and GPU-hours, the GPU-hours per axis and in total, the disk."""
    df = pd.DataFrame([r.__dict__ for r in report.rows])
    pre = df[df["kind"] == "pretrain"]
    lines = ["pretraining, per method (largest run): peak GB per GPU at its per-GPU batch, GFLOP per image, GPU-hours"]
    for method, g in pre.groupby("method", sort=False):
        top = g.loc[g["peak_gb"].idxmax()]
        lines.append(
            f"  {method:12s} {_num(top['peak_gb']):>6s} GB at {top['per_gpu_batch']:g} per GPU x {top['gpus']} GPUs  "
            f"{_num(top['gflop_per_image']):>6s} GFLOP/image  {g['images_per_job'].max():,.0f} images per run  "
            f"{g['jobs'].sum():4d} runs  {_num(g['gpu_hours'].sum()):>10s} GPU-h"
        )
    lines.append("evaluation-type jobs: peak GB per GPU, host GB, GPU-hours")
    for (kind, axis), g in df[df["kind"] != "pretrain"].groupby(["kind", "axis"], sort=False):
        lines.append(
            f"  {kind:17s} {axis:12s} {_num(g['peak_gb'].max()):>6s} GB  {_num(g['host_gb'].max()):>6s} GB host  "
            f"{g['jobs'].sum():5d} jobs  {_num(g['gpu_hours'].sum()):>10s} GPU-h"
        )
    by_axis = df.groupby("axis", sort=False)["gpu_hours"].sum()
    lines.append("GPU-hours per axis: " + ", ".join(f"{a} {_num(h)}" for a, h in by_axis.items()))
    lines.append(f"GPU-hours in total: {_num(df['gpu_hours'].sum())}")
    lines.append("disk: " + ", ".join(f"{d['what']} {_num(d['bytes'] / GB)} GB" for d in report.disk))
    for m, what in report.worked_around.items():
        lines.append(f"sized around fake tensors' limits, {m}: {what}")
    return lines


def before_jobs(config: dict, configfiles: list, out: str | Path = TABLE) -> bool:
    """The workflow's gate (workflow/rules/common.smk, onstart): the preflight of the config Snakemake
    validated (its config files: Snakemake's list, the Snakefile's params/study.yaml last) -> whether
    it passed; prints its problems or its summary."""
    files = [str(f) for f in configfiles]
    study = [f for f in files if Path(f).resolve() == Path(STUDY_PARAMS).resolve()]
    files = study + [f for f in files if f not in study]
    print(f"sslstudy preflight: checking, sizing and pricing every job of {' + '.join(files)} before the first runs")
    try:
        report = run(Grid(config, files, origins(files)), out)
    except UserError as e:
        print(f"sslstudy preflight: error: {e}")
        return False
    for line in report.problems or summary(report):
        print(line)
    return not report.problems


def main(configfiles: list[str], out: str | Path = TABLE, workers: int = 2, study: str = STUDY_PARAMS) -> None:
    """The command: print every problem (one line each) and raise UserError if there is one; else the
    cost summary (the table: `out`)."""
    grid = load_grid(configfiles, study)
    report = run(grid, out, workers=workers)
    for p in report.problems:
        print(p)
    if report.problems:
        raise UserError(f"{len(report.problems)} problem(s) in {' + '.join(grid.files)}; fix them before submitting")
    for line in summary(report):
        print(line)
    print(f"preflight: {' + '.join(grid.files)}: ok; the table: {out}")
