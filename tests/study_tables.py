"""Hand-made evaluation tables of a whole study (every axis of params/study.yaml, a few seeds), in
the format the workflow writes, for the report's figure tests and for rendering a page to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sslstudy import axes
from sslstudy.config import load

from tests.helpers import write_metrics

_STUDY = load(Path(__file__).resolve().parents[1] / "params" / "study.yaml")
QUALITY_SUBSET, QUALITIES = axes.quality_subset(_STUDY), axes.qualities(_STUDY)  # the shipped quality axis
METHODS = ["simclr", "moco", "byol", "swav", "barlow", "densecl", "deepcluster", "pcl"]
LEVELS = ["coarse", "mid", "fine"]
CHANCE = [0.25, 1 / 16, 1 / 64]


def run_ids(method, domain, subset, quality, seed) -> dict:
    """The columns that name a pretraining run in the evaluation tables (run, method, ..., seed)."""
    return dict(
        run=f"{method}/{domain}_{subset}_{quality}/seed{seed}",
        method=method,
        domain=domain,
        subset=subset,
        quality=quality,
        seed=seed,
    )


def fusion_row(a: str, b: str, member: str, seed: int, level_index: int, level: str, value: float) -> dict:
    """A row of the fusion table of the pair a + b (models as method@domain): the linear probe on
    natural of member a, b or a+b (their features concatenated), features of dim 64."""
    pair = f"{a} + {b}"
    return dict(
        pair=pair,
        seed=seed,
        eval_domain="natural",
        model={"a": a, "b": b, "a+b": pair}[member],
        member=member,
        level_index=level_index,
        level=level,
        metric="linear",
        value=value,
        dim=64,
    )


def _levels(ids, base, rng, metrics=("knn", "linear", "nmi", "ari"), **extra):
    """One row per level x metric: accuracy falls from coarse to fine; seed noise of about .01."""
    out = []
    for i, lv in enumerate(LEVELS):
        for m in metrics:
            v = base * (0.85**i) if m in ("knn", "linear") else base * 0.6 / (1 + i)
            v = float(np.clip(v + rng.normal(0, 0.01), CHANCE[i] if m in ("knn", "linear") else 0.0, 1))
            out.append(dict(ids, **extra, level_index=i, level=lv, metric=m, value=v))
    return out


def study(seeds=(0, 1, 2), seed: int = 0) -> dict[str, pd.DataFrame]:
    """kind -> table (frozen, lowshot, supervised, fusion, clusters) and "curves": run -> metrics rows."""
    rng = np.random.default_rng(seed)
    frozen, lowshot, supervised, fusion, clusters, curves = [], [], [], [], [], {}
    for s in seeds:
        for k, m in enumerate(METHODS):
            ids = run_ids(m, "natural", "frac1", "clean", s)
            frozen += _levels(ids, 0.55 + 0.03 * k, rng, weights="pretrained", epoch=30, eval_domain="natural")
            frozen += _levels(ids, 0.45, rng, weights="random", epoch=0, eval_domain="natural")
            scale = 140.0 if m == "barlow" else 1.0 + k
            curves[ids["run"]] = [
                dict(epoch=e, loss=scale * (0.5 + 1 / e) + rng.normal(0, 0.01), seconds=2.0) for e in range(1, 31)
            ]
            for e in range(0, 31, 5):
                clusters += _levels(
                    ids, 0.3 + 0.01 * e + 0.02 * k, rng, metrics=("nmi", "ari"), epoch=e, eval_domain="natural"
                )
        for dom in ("natural", "aerial", "natural+aerial"):
            ids = run_ids("simclr", dom, "frac1", "clean", s)
            for ev in ("natural", "aerial", "texture"):
                if dom == "natural" and ev == "natural":
                    continue  # the comparison's run above
                frozen += _levels(ids, 0.6 if ev in dom else 0.45, rng, weights="pretrained", epoch=30, eval_domain=ev)
        for q in (
            [] if QUALITY_SUBSET == "frac1" else ["clean"]
        ) + QUALITIES:  # frac1: the clean twin is the comparison's run
            ids = run_ids("simclr", "natural", QUALITY_SUBSET, q, s)
            frozen += _levels(
                ids,
                0.6 - (0.1 if q.startswith("lowres") else 0.02),
                rng,
                weights="pretrained",
                epoch=30,
                eval_domain="natural",
            )
        for lab, n in (("l1", 64), ("l10", 640), ("lall", 3000)):
            for sub, imgs in (("frac0.25", 800), ("frac1", 3200)):
                ids = run_ids("simclr", "natural", sub, "clean", s)
                for mode in ("linear", "finetune"):
                    lowshot += _levels(
                        ids,
                        0.3 + 0.1 * np.log10(n) + 0.02 * (sub == "frac1"),
                        rng,
                        metrics=(mode,),
                        mode=mode,
                        labels=lab,
                        labelled_images=n,
                        pretrain_images=imgs,
                        eval_domain="natural",
                    )
            ids = run_ids("supervised", "natural", lab, "clean", s)
            supervised += _levels(
                ids,
                0.2 + 0.12 * np.log10(n),
                rng,
                metrics=("supervised",),
                mode="supervised",
                labels=lab,
                labelled_images=n,
                pretrain_images=0,
                eval_domain="natural",
            )
            if lab == "lall":
                frozen += _levels(
                    ids, 0.7, rng, metrics=("knn", "linear"), weights="pretrained", epoch=8, eval_domain="natural"
                )
        for pair, base in (("simclr@natural + barlow@natural", 0.6), ("simclr@natural + simclr@aerial", 0.55)):
            for member, gain in (("a", 0), ("b", -0.02), ("a+b", 0.01)):
                fusion += _levels(
                    dict(pair=pair, seed=s),
                    base + gain,
                    rng,
                    metrics=("linear",),
                    member=member,
                    model=member,
                    eval_domain="natural",
                )
    frames = dict(frozen=frozen, lowshot=lowshot, supervised=supervised, fusion=fusion, clusters=clusters)
    return {**{k: pd.DataFrame(v) for k, v in frames.items()}, "curves": curves}


def write(tables: dict, folder: Path) -> dict:
    """Writes the tables as CSVs and the curves as metrics.jsonl files under folder; returns the
    `sslstudy report` arguments that name them (kind -> paths; curves -> run=path items)."""
    folder.mkdir(parents=True, exist_ok=True)
    args = {}
    for kind in ("frozen", "lowshot", "supervised", "fusion", "clusters"):
        f = folder / f"{kind}.csv"
        tables[kind].to_csv(f, index=False)
        args[kind] = [str(f)]
    items = []
    for run, recs in tables["curves"].items():
        items.append(f"{run}={write_metrics(folder / 'runs' / run / 'metrics.jsonl', recs)}")
    args["curves"] = items
    return args
