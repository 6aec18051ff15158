"""The evaluation engine, old path vs new, side by side in one process on the same checkpoint.

    PYTHONPATH=ssl python benchmarks/bench_eval.py [--dataset data/synth/natural] [--reads 2] [--threads 1]

old: what the jobs of one checkpoint did before the embedding cache: the `evaluate` job embeds
train + test and runs one linear probe (lr 0.5, wd 5e-4), kNN (k 20) and k-means at every level;
each of ``--reads`` further jobs (fusion, few-label linear) loads the backbone and embeds train +
test again before its one-head probe.
new: the `evaluate` job embeds train/val/test once into the float16 cache and runs the probes with
their grids chosen on val (params/study.yaml eval: kNN k grid, multi-head linear); each further job
loads the cache and runs the multi-head probe.
Printed: CPU seconds of each stage, both totals and their ratio, the cache's size, and the start-up
of one evaluation job (a fresh interpreter importing the CLI's modules, reading the dataset and the
checkpoint) against its compute. The backbone is params/study.yaml's at its random initialisation.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from sslstudy import config
from sslstudy.checkpoint import BACKBONE, load_backbone
from sslstudy.data.packed import load_dataset
from sslstudy.eval.features import Features, embed, embed_dataset, probe_splits
from sslstudy.eval.frozen import choose_linear, evaluate
from sslstudy.eval.kmeans import cluster_scores
from sslstudy.eval.probes import knn_accuracy, linear_probe
from sslstudy.models import build_backbone

STARTUP = """
import time, sys
t = time.process_time()
import torch, faiss, sslstudy.cli, sslstudy.eval.frozen, sslstudy.checkpoint
from sslstudy.data.packed import load_dataset
from sslstudy.checkpoint import load_backbone
ds = load_dataset(sys.argv[1]); load_backbone(sys.argv[2])
print(time.process_time() - t)
"""


class Clock:
    def __init__(self):
        self.stages: dict[str, float] = {}

    def __call__(self, name, fn, *a, **kw):
        t = time.process_time()
        out = fn(*a, **kw)
        self.stages[name] = self.stages.get(name, 0.0) + time.process_time() - t
        return out

    @property
    def total(self) -> float:
        return sum(self.stages.values())


def old_path(ckpt: Path, ds, ev: dict, size: int, reads: int) -> Clock:
    c = Clock()
    tr, te = ds.split_indices("train"), ds.split_indices("test")
    finest = ds.levels[-1]
    for job in range(1 + reads):
        net, _ = c("load backbone", load_backbone, ckpt)
        x_tr = c("embed", lambda net=net: embed(net, ds.images, tr, size, batch_size=ev["batch_size"]).numpy())
        x_te = c("embed", lambda net=net: embed(net, ds.images, te, size, batch_size=ev["batch_size"]).numpy())
        c(
            "linear",
            linear_probe,
            x_tr,
            ds.label_array(finest, tr),
            x_te,
            ds.n_classes(finest),
            epochs=ev["linear_epochs"],
            seed=ev["cluster_seed"],
        )
        if job == 0:
            for level in ds.levels:
                c(
                    "knn",
                    knn_accuracy,
                    x_tr,
                    ds.label_array(level, tr),
                    x_te,
                    ds.label_array(level, te),
                    k=20,
                    temperature=ev["knn_temperature"],
                )
                c(
                    "k-means",
                    cluster_scores,
                    x_te,
                    ds.label_array(level, te),
                    k=ds.n_classes(level),
                    seed=ev["cluster_seed"],
                )
    return c


def new_path(ckpt: Path, ds, ev: dict, size: int, reads: int, cache: Path) -> Clock:
    c = Clock()
    net, _ = c("load backbone", load_backbone, ckpt)
    c("embed", lambda: embed_dataset(net, ds, size, ev["batch_size"]).save(cache))
    c("probes (kNN grid, multi-head linear, k-means)", evaluate, Features.load(cache), ds, ev, "cpu")
    sp = probe_splits(ds, ev)
    finest = ds.levels[-1]
    for _ in range(reads):
        f = c("load cache", Features.load, cache)
        c(
            "linear",
            choose_linear,
            (f.take(sp["fit"]), ds.label_array(finest, sp["fit"])),
            (f.take(sp["val"]), ds.label_array(finest, sp["val"])),
            f.take(sp["test"]),
            ds.n_classes(finest),
            ev,
            "cpu",
        )
    return c


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="data/synth/natural")
    p.add_argument("--reads", type=int, default=2, help="jobs besides evaluate that read the checkpoint's features")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    params = config.validate(yaml.safe_load(Path("params/study.yaml").read_text()), "params/study.yaml")
    ev, size = params["eval"], params["pretrain"]["views"]["size"]
    ds = load_dataset(a.dataset)
    torch.manual_seed(0)
    net = build_backbone(**params["pretrain"]["backbone"])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ep000.pt"
        torch.save(
            dict(
                config=dict(backbone=params["pretrain"]["backbone"]),
                model={BACKBONE + k: v for k, v in net.state_dict().items()},
            ),
            ckpt,
        )
        old = old_path(ckpt, ds, ev, size, a.reads)
        new = new_path(ckpt, ds, ev, size, a.reads, Path(tmp) / "emb.npz")
        size_mb = (Path(tmp) / "emb.npz").stat().st_size / 2**20
        start = [
            float(
                subprocess.run(
                    [sys.executable, "-c", STARTUP, a.dataset, str(ckpt)], capture_output=True, text=True, check=True
                ).stdout
            )
            for _ in range(2)
        ]
    print(
        f"{a.dataset}: {len(ds)} images, backbone {params['pretrain']['backbone']}, {a.threads} thread(s), "
        f"{a.reads} further job(s) reading the features"
    )
    for name, clock in (("old", old), ("new", new)):
        print(
            f"{name}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in clock.stages.items())
            + f"; total {clock.total:.2f} CPU-s"
        )
    print(f"old / new: {old.total / new.total:.2f}x")
    n, d = len(ds), net.out_dim
    print(f"cache: {size_mb:.2f} MiB ({n} images x {d} dims x 2 bytes = {n * d * 2 / 2**20:.2f} MiB)")
    print(
        f"per job start-up (interpreter + imports + dataset + checkpoint): {np.median(start):.2f} CPU-s; "
        f"new path compute {new.total - new.stages['load backbone']:.2f} CPU-s"
    )


if __name__ == "__main__":
    main()
