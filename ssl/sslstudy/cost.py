"""What each job of a grid needs (GPU memory, host memory, FLOPs, disk) and what the grid costs.

The steps come from sslstudy.estimate (one step under fake tensors); what fake tensors can't run is
sized here by formula from the code it mirrors: faiss k-means, kNN and the linear probes on the
embedding caches (sslstudy.eval), the caches themselves, checkpoints and packed data. A job fits when
its peak is at most HEADROOM of launch.<kind>.gpu_mem_gb (and its host arrays of launch.<kind>.mem_gb);
its GPU-hours are its FLOPs at launch.<kind>.tflops_per_gpu. docs/preflight.md: how the defaults
were chosen and how the estimate compares with measured peaks.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from . import axes, names

# the share of a GPU's memory the tensors may take; the rest: CUDA context, library workspaces, fragmentation
HEADROOM = 0.9
KMEANS_NITER = 20  # eval.kmeans.kmeans's Lloyd iterations
KMEANS_NREDO = 5  # eval.kmeans.cluster_scores's restarts, as methods.pcl.KMEANS's
PROBE_BATCH = 256  # eval.probes.linear_heads's minibatch (eval.frozen.choose_linear passes none)
TORCH_SIMS = 1 << 28  # eval.probes._TORCH_SIMS: similarities the CUDA kNN holds at once
F32, F16, I64 = 4, 2, 8
GB = 1e9

MOMENTUM = "the momentum copy made without deepcopy"
WORKED_AROUND = dict(  # method -> what its estimate replaces (sslstudy.estimate's harness; preflight prints it)
    moco=f"{MOMENTUM}; Queue.push's int(ptr) reads 0",
    densecl=f"{MOMENTUM}; Queue.push's int(ptr) reads 0",
    byol=MOMENTUM,
    pcl=f"{MOMENTUM}; Queue.push's int(ptr) and the logged .item() read 0; negative prototypes drawn without "
    "nonzero; the E-step's k-means by formula",
    swav="sized with the queue in use (its fill counter a plain int); Queue.push's int(ptr) reads 0",
    deepcluster="the NMI log's isnan() reads False; the per-epoch whitening sized on fake features, "
    "its k-means by formula",
)


@dataclass
class Row:
    """One kind of job of one axis and method: what each needs and what all of them cost."""

    kind: str  # pretrain, evaluate, lowshot linear, lowshot finetune, supervised, fusion
    axis: str
    method: str
    jobs: int
    gpus: int  # per job
    per_gpu_batch: float
    peak_gb: float  # per GPU, the largest of these jobs
    gpu_mem_gb: float  # the limit
    host_gb: float  # host arrays of one job (evaluation-type jobs)
    mem_gb: float  # the limit (per node)
    gflop_per_image: float  # one training step's (pretrain, fine-tuning) or the embedding's
    images_per_job: float  # images a job trains on (epochs x subset) or embeds
    gpu_hours: float  # all of these jobs
    key: str  # what to change when one does not fit


# ----------------------------------------------------------------------------- the tasks sized by estimate
def task_key(task: dict) -> str:
    return hashlib.sha1(json.dumps(task, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_task(job) -> dict:
    """What sizes a pretraining run: everything of its spec that shapes a step (not its seed, data
    paths or threads), its per-GPU batch, world and stored image size (DeepCluster: its subset too)."""
    spec = {k: v for k, v in job.spec.items() if k not in ("run", "seed", "data", "threads", "on_collapse")}
    return dict(
        kind="pretrain",
        spec=spec,
        per_gpu=int(job.per_gpu),
        world=job.world,
        n_train=job.n_train if job.method == "deepcluster" else 0,
        image_size=job.data.image_size,
    )


def embed_task(config: dict, data) -> dict:
    return dict(
        kind="embed",
        backbone=config["pretrain"]["backbone"],
        batch=config["eval"]["batch_size"],
        image_size=data.image_size,
        size=config["pretrain"]["views"]["size"],
    )


def finetune_task(config: dict, data) -> dict:
    return dict(
        kind="finetune",
        backbone=config["pretrain"]["backbone"],
        batch=config["finetune"]["batch_size"],
        size=config["pretrain"]["views"]["size"],
        n_classes=list(data.classes.values())[-1],
    )


def tasks(config: dict, jobs: list, plain: dict) -> dict[str, dict]:
    """Every distinct step the grid's jobs take, by task_key. A pretraining task's n_train (the
    buffers sized by the subset) is its largest run's."""
    out = {}
    for job in jobs:
        t = pretrain_task(job)
        key = task_key(t)
        t["n_train"] = max(job.n_train, out.get(key, t)["n_train"])
        out[key] = t
    for data in plain.values():
        for t in (embed_task(config, data), finetune_task(config, data)):
            out[task_key(t)] = t
    return out


def code_version() -> str:
    """A digest of the package's source and torch's version: a cached estimate is reused only by the
    code that made it."""
    h = hashlib.sha1(importlib.metadata.version("torch").encode())
    for f in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def estimates(task_list: dict[str, dict], cache: Path, workers: int) -> dict[str, dict]:
    """`estimate` of every task not in the cache file (same code, same task) -> {key: result, or
    {"error": why}}; results (not errors) are added to the cache."""
    from .atomic import write_bytes

    version = code_version()
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    known = known if known.get("version") == version else {"version": version}
    todo = {k: t for k, t in task_list.items() if k not in known}
    fresh = estimate(todo, workers) if todo else {}
    known.update({k: v for k, v in fresh.items() if "error" not in v})
    write_bytes(cache, json.dumps(known, sort_keys=True).encode())
    return {k: fresh.get(k) or known[k] for k in task_list}


def estimate(tasks: dict[str, dict], workers: int = 2) -> dict[str, dict]:
    """run_task of every task, shared among `workers` processes (`python -m sslstudy.estimate`) -> {key:
    result, or {"error": why}}. A process that dies (fake tensors have crashed the interpreter) fails
    only its task: the tasks it left unfinished run again, each in a process of its own."""
    results: dict[str, dict] = {}
    keys = list(tasks)
    shares = [keys[i :: max(1, workers)] for i in range(max(1, workers))]
    for attempt in ("shared", "alone"):
        procs = [_worker({k: tasks[k] for k in share}) for share in shares if share]
        for proc in procs:
            out, _ = proc.communicate()
            for line in out.splitlines():
                results.update(json.loads(line))
        left = [k for k in keys if k not in results]
        if not left:
            break
        shares = [[k] for k in left] if attempt == "shared" else []
    for key in keys:
        results.setdefault(key, dict(error="the sizing process died (an interpreter crash under fake tensors)"))
    return results


def _worker(tasks: dict[str, dict]) -> subprocess.Popen:
    """A worker process on `tasks` (given in a file it reads first, then deletes)."""
    fd, path = tempfile.mkstemp(prefix="sslstudy-estimate-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(tasks, f)
    return subprocess.Popen(
        [sys.executable, "-m", "sslstudy.estimate", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


# ----------------------------------------------------------------------------- formulas
def linear_probe_bytes(n: int, dim: int, classes: int, heads: int) -> int:
    """eval.probes.linear_heads on the device: the standardised features, the heads' weight, momentum,
    gradient and update, the softmax of a minibatch and its gradient."""
    return n * dim * F32 + 4 * heads * classes * dim * F32 + 2 * PROBE_BATCH * heads * classes * F32


def linear_probe_flops(n: int, dim: int, classes: int, heads: int, epochs: int) -> float:
    """Forward and gradient products of every epoch (2 x 2 n d h C)."""
    return 4.0 * epochs * n * dim * heads * classes


def knn_bytes(n_fit: int, dim: int) -> int:
    """The kNN index on the device (torch or faiss GPU) and one block of similarities."""
    return n_fit * dim * F32 + min(TORCH_SIMS, 8192 * n_fit) * F32


def knn_flops(n_fit: int, n_query: int, dim: int) -> float:
    return 2.0 * n_fit * n_query * dim


def kmeans_flops(n: int, k: int, dim: int, niter: int = KMEANS_NITER, nredo: int = KMEANS_NREDO) -> float:
    return 2.0 * n * k * dim * niter * nredo


def splits(data) -> tuple[int, int, int, int]:
    """(fit, val, test, all) images of a domain as the evaluation splits it (eval.features.probe_splits)."""
    fit = int(data.fit_per_class.sum()) if len(data.fit_per_class) else data.splits["train"]
    n_all = sum(data.splits.values())
    return fit, n_all - fit - data.splits["test"], data.splits["test"], n_all


def frozen(config: dict, data, dim: int) -> tuple[int, int, float]:
    """One frozen evaluation of a domain (eval.frozen.evaluate on the embedding cache) -> (device bytes,
    host bytes, FLOPs after the embedding): the multi-head linear probe on the finest labels, kNN and
    k-means at every level."""
    e = config["eval"]
    fit, val, test, n_all = splits(data)
    heads = len(e["linear_lr"]) * len(e["linear_wd"])
    fine = list(data.classes.values())[-1]
    device = max(linear_probe_bytes(fit, dim, fine, heads), knn_bytes(fit, dim))
    host = n_all * dim * (F16 + F32) + fit * dim * F32  # the cache, its float32 splits, kNN's normalised copy
    flops = linear_probe_flops(fit, dim, fine, heads, e["linear_epochs"])
    flops += sum(knn_flops(fit, val + test, dim) + kmeans_flops(test, k, dim) for k in data.classes.values())
    return device, host, flops


# ----------------------------------------------------------------------------- the rows
def _axis_of(config: dict) -> dict[str, str]:
    """Each run's axis: the first part of the study that asks for it (axes.runs_by_axis order)."""
    out: dict[str, str] = {}
    for axis, runs in axes.runs_by_axis(config).items():
        for r in runs:
            out.setdefault(r["id"], axis)
    return out


def _limits(config: dict, kind: str) -> tuple[float, float, float]:
    r = config["launch"][kind]
    return r["gpu_mem_gb"], r["mem_gb"], r["tflops_per_gpu"]


def pretrain_rows(config: dict, jobs: list, sizes: dict[str, dict]) -> list[Row]:
    """One row per (axis, method): the largest per-GPU peak of its runs (the step, DDP's gradient
    buckets, the per-epoch clustering) and their GPU-hours."""
    gpu, host, tflops = _limits(config, "pretrain")
    axis_of, rows = _axis_of(config), {}
    for job in jobs:
        s = sizes[task_key(pretrain_task(job))]
        peak = pretrain_peak(job, s)
        seen = job.spec["epochs"] * (job.n_train // job.spec["batch_size"]) * job.spec["batch_size"]
        flops = seen * s["flops_per_image"] + clustering_flops(job, s)
        key = (axis_of[job.run["id"]], job.method)
        row = rows.get(key) or Row(
            "pretrain", *key, 0, job.world, job.per_gpu, 0.0, gpu, 0.0, host, s["flops_per_image"] / 1e9, 0.0, 0.0, ""
        )
        row.jobs += 1
        row.gpu_hours += flops / (tflops * 1e12) / 3600
        row.images_per_job = max(row.images_per_job, seen)
        if peak / GB > row.peak_gb:
            row.peak_gb, row.per_gpu_batch = peak / GB, job.per_gpu
            row.key = pretrain_key(config, job, s)
        rows[key] = row
    return list(rows.values())


def pretrain_peak(job, s: dict) -> float:
    """Bytes per GPU: the step's peak, with DDP's gradient buckets on several ranks; or the per-epoch
    clustering's, where larger."""
    step = s["peak_bytes"] + (s["grad_bytes"] if job.world > 1 else 0)
    return max(step, clustering_bytes(job, s))


def clustering_bytes(job, s: dict) -> float:
    """The per-epoch clustering on a rank beside the model and optimiser state. DeepCluster: its
    whitening (estimated), then faiss on rank 0 with the gathered (N, pca_dim) features and their host
    copy, the centroids, the shared assignments and distances. PCL: train.Context.features (the rank's
    share embedded in batches and concatenated, all_gather's buffers and their concatenation, the
    normalised copy), then faiss the same way at its largest k."""
    c, n = job.spec["method"]["params"], job.n_train
    state = s["model_bytes"] + s["optimizer_bytes"]
    shared = n * (I64 + F32)  # assignments, squared distances
    if job.method == "deepcluster":
        d = c["pca_dim"]
        return max(s["clustering_peak_bytes"], state + 2 * n * d * F32 + c["k"] * d * F32 + shared)
    if job.method == "pcl":
        d, per = c["proj_dim"], -(-n // job.world)
        features = 2 * per * d * F32 + 3 * n * d * F32
        return state + features + n * d * F32 + max(c["num_clusters"]) * d * F32 + shared
    return 0.0


def clustering_flops(job, s: dict) -> float:
    """FLOPs of the run's clustering, every epoch (PCL: from proto_warmup_epochs on): embedding the
    subset (a forward: a third of a step's FLOPs per view) and k-means (DeepCluster: one run; PCL: its
    restarts, at every k)."""
    c, n, epochs = job.spec["method"]["params"], job.n_train, job.spec["epochs"]
    forward = s["flops_per_image"] / 3 / len(job.spec["views"])
    if job.method == "deepcluster":
        return epochs * (n * forward + kmeans_flops(n, c["k"], c["pca_dim"], nredo=1))
    if job.method == "pcl":
        per_epoch = n * forward + sum(kmeans_flops(n, k, c["proj_dim"]) for k in c["num_clusters"])
        return max(0, epochs - c["proto_warmup_epochs"]) * per_epoch
    return 0.0


def pretrain_key(config: dict, job, s: dict) -> str:
    """What to change when a pretraining run does not fit."""
    batch = axes.method_pretrain(config, job.method, "batch_size")[1]
    if clustering_bytes(job, s) > s["peak_bytes"]:
        what = "proj_hidden" if job.method == "deepcluster" else "proj_dim"
        return (
            f"raise launch.pretrain.gpus or nodes (each GPU clusters its share of the features), or lower "
            f"methods.{job.method}.{what}"
        )
    return f"lower {batch} or raise launch.pretrain.gpus / nodes"


def eval_rows(config: dict, plain: dict, sizes: dict[str, dict]) -> list[Row]:
    """The evaluation-type jobs: evaluate (embedding + frozen probes, periodic clustering), lowshot
    (linear on the cache, fine-tuning), supervised, fusion; one row per kind and axis."""
    gpu, mem, tflops = _limits(config, "evaluation")
    rows: dict[tuple, Row] = {}
    plan, models, axis_of = axes.evaluation_plan(config), axes.models(config), _axis_of(config)

    def add(kind, axis, method, peak, host, per_image, images, flops, key, batch=0.0):
        row = rows.setdefault(
            (kind, axis), Row(kind, axis, method, 0, 1, batch, 0.0, gpu, 0.0, mem, 0.0, 0.0, 0.0, key)
        )
        row.jobs += 1
        row.peak_gb, row.host_gb = max(row.peak_gb, peak / GB), max(row.host_gb, host / GB)
        row.gflop_per_image = max(row.gflop_per_image, per_image / 1e9)
        row.images_per_job = max(row.images_per_job, images)
        row.gpu_hours += flops / (tflops * 1e12) / 3600

    for rid, p in plan.items():
        m = models[rid]
        embeds = p["embed"]
        peak = host = flops = images = 0.0
        for _, on in embeds:
            data = plain[on]
            e = sizes[task_key(embed_task(config, data))]
            dev, h, f = frozen(config, data, e["embed_dim"])
            n_all = sum(data.splits.values())
            peak, host = max(peak, e["peak_bytes"], dev), max(host, h)
            flops += n_all * e["flops_per_image"] + (f if (_, on) in p["frozen"] else 0)
            images += n_all
        for on in p["cluster"]:
            data = plain[on]
            e = sizes[task_key(embed_task(config, data))]
            checkpoints = config["pretrain"]["epochs"] // config["pretrain"]["checkpoint_every"] + 1
            test = data.splits["test"]
            per = test * e["flops_per_image"] + sum(
                kmeans_flops(test, k, e["embed_dim"]) for k in data.classes.values()
            )
            flops += checkpoints * per
        axis = "supervised" if m["kind"] == "supervised" else axis_of.get(rid, "study")
        add("evaluate", axis, m["method"], peak, host, 0.0, images, flops, "lower eval.batch_size")

    def training(kind, axis, method, data, labelled):
        """Fine-tuning or training from scratch on each of the labelled counts (one job)."""
        s = sizes[task_key(finetune_task(config, data))]
        seen = sum(finetune_steps(config, n) for n in labelled) * config["finetune"]["batch_size"]
        batch = config["finetune"]["batch_size"]
        per_image = s["flops_per_image"]
        add(
            kind,
            axis,
            method,
            s["peak_bytes"],
            0.0,
            per_image,
            seen,
            seen * per_image,
            "lower finetune.batch_size",
            batch,
        )

    for rid, mode in axes.lowshot_jobs(config):
        m = models[rid]
        data = plain[m["domain"]]
        counts = [n for n in config["quantity"]["labels"]]
        labelled = [lowshot_images(data, n) for n in counts]
        if mode == "finetune":
            training("lowshot finetune", "quantity", m["method"], data, labelled)
        else:
            e = sizes[task_key(embed_task(config, data))]
            heads = len(config["eval"]["linear_lr"]) * len(config["eval"]["linear_wd"])
            fine = list(data.classes.values())[-1]
            dim = e["embed_dim"]
            flops = sum(linear_probe_flops(n, dim, fine, heads, config["eval"]["linear_epochs"]) for n in labelled)
            peak = max(linear_probe_bytes(n, dim, fine, heads) for n in labelled)
            add(
                "lowshot linear",
                "quantity",
                m["method"],
                peak,
                sum(data.splits.values()) * dim * (F16 + F32),
                0.0,
                max(labelled),
                flops,
                "lower quantity.labels",
            )
    for m in axes.supervised_models(config):
        data = plain[m["domain"]]
        training(
            "supervised", "supervised", "supervised", data, [lowshot_images(data, names.parse_labels_tag(m["labels"]))]
        )
    for a, b in axes.fusion_pairs(config):
        for on in axes.fusion_domains(a, b):
            data = plain[on]
            dim = sizes[task_key(embed_task(config, data))]["embed_dim"]
            fit, _, _, n_all = splits(data)
            heads = len(config["eval"]["linear_lr"]) * len(config["eval"]["linear_wd"])
            fine = list(data.classes.values())[-1]
            # eval.fusion.fusion_scores: both caches, their float32 splits and the concatenation
            host = 2 * n_all * dim * (F16 + F32) + n_all * 2 * dim * F32
            flops = sum(
                linear_probe_flops(fit, d, fine, heads, config["eval"]["linear_epochs"]) for d in (dim, dim, 2 * dim)
            )
            add(
                "fusion",
                "fusion",
                a["method"],
                linear_probe_bytes(fit, 2 * dim, fine, heads),
                host,
                0.0,
                fit,
                flops,
                "use fewer heads (eval.linear_lr x eval.linear_wd)",
            )
    return list(rows.values())


def lowshot_images(data, per_class) -> int:
    """Labelled images of `per_class` per finest class (eval.lowshot.labelled_indices)."""
    fit = int(data.fit_per_class.sum())
    return fit if per_class == names.ALL else min(fit, int(per_class) * len(data.fit_per_class))


def finetune_steps(config: dict, n: int) -> int:
    f = config["finetune"]
    bs = min(f["batch_size"], n)
    return max(f["min_steps"], f["epochs"] * math.ceil(n / bs))


# ----------------------------------------------------------------------------- fit and disk
def fit_problems(rows: list[Row]) -> list[str]:
    """One line per kind of job whose peak does not fit HEADROOM of its GPU (or its host arrays the job's memory)."""
    out = []
    for r in rows:
        where = f"{r.kind} {r.method} ({r.axis} axis, {r.jobs} job{'s' * (r.jobs > 1)})"
        kind = "pretrain" if r.kind == "pretrain" else "evaluation"
        if r.peak_gb > HEADROOM * r.gpu_mem_gb:
            out.append(
                f"{where}: {r.peak_gb:.1f} GB per GPU exceeds {HEADROOM:.0%} of launch.{kind}.gpu_mem_gb "
                f"{r.gpu_mem_gb:g} ({HEADROOM * r.gpu_mem_gb:.1f} GB); {r.key}"
            )
        if r.host_gb > r.mem_gb:
            out.append(
                f"{where}: {r.host_gb:.1f} GB of host arrays exceeds launch.{kind}.mem_gb {r.mem_gb:g}; raise "
                f"launch.{kind}.mem_gb"
            )
    return out


def disk_rows(config: dict, jobs: list, plain: dict, sizes: dict[str, dict]) -> list[dict]:
    """Bytes on disk: the packed datasets (plain, corrupted copies, pools), every run's checkpoints
    (ep*.pt backbones, last.pt and final.pt with the optimiser), the embedding caches (float16)."""
    image = lambda d: sum(d.splits.values()) * d.image_size**2 * 3  # noqa: E731
    plain_bytes = sum(image(d) for d in plain.values())
    derived = {(j.run["domain"], j.run["quality"]): j.data for j in jobs}  # each run's dataset
    derived_bytes = sum(
        image(data) for (d, q), data in derived.items() if (d, q) not in {(p, names.CLEAN) for p in plain}
    )
    ckpt = 0.0
    for job in jobs:
        s = sizes[task_key(pretrain_task(job))]
        n = (
            job.spec["epochs"] // job.spec["checkpoint_every"]
            + 1
            + (job.spec["epochs"] % job.spec["checkpoint_every"] > 0)
        )
        ckpt += n * s["backbone_bytes"] + 2 * (s["model_bytes"] + s["optimizer_bytes"])
    caches = 0.0
    for p in axes.evaluation_plan(config).values():
        for _, on in p["embed"]:
            dim = sizes[task_key(embed_task(config, plain[on]))]["embed_dim"]
            caches += sum(plain[on].splits.values()) * dim * F16
    return [
        dict(what="packed datasets", bytes=plain_bytes),
        dict(what="corrupted copies and pools", bytes=derived_bytes),
        dict(what="checkpoints", bytes=ckpt),
        dict(what="embedding caches", bytes=caches),
    ]


def table(rows: list[Row], disk: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame([asdict(r) for r in rows])
    disk_df = pd.DataFrame([dict(kind="disk", axis="", method=d["what"], disk_gb=d["bytes"] / GB) for d in disk])
    return pd.concat([df, disk_df], ignore_index=True)
