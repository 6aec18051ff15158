"""Tidy tables of the study (one row per model x evaluation x level x metric) and the views of them
that each section of the report plots. Every function takes and returns plain DataFrames."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from .. import cpu_line, names, stats
from ..axes import SUPERVISED, models, pick, pools, qualities, quality_subset, random_twins, reference_subset
from ..errors import UserError
from ..names import CORRUPTIONS, RUN_FIELDS, parse_quality
from . import suspects

CORRUPTION_ORDER = {k: i for i, k in enumerate(CORRUPTIONS)}


def require(paths, what: str) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: {what} missing; run the study (snakemake) to produce it")


def load(paths: list[Path], check: Callable[[pd.DataFrame, Path], None] | None = None) -> pd.DataFrame:
    """The tables at paths as one; check(table, path), when given, sees each first (and may raise)."""
    require(paths, "evaluation table")
    frames = [pd.read_csv(p) for p in paths]
    for df, p in zip(frames, paths):
        if check:
            check(df, p)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def share_random(df: pd.DataFrame, config: dict, kind: str) -> pd.DataFrame:
    """The table (kind frozen or dense) with every run's random-weights rows: a run whose random
    weights another run evaluated (axes.random_twins) gets a copy of that run's rows under its own
    ids, with the evaluated run in column `random_of` (runs the table has pretrained rows of)."""
    if df.empty or "weights" not in df:
        return df
    rand, trained, add = df[df["weights"] == "random"], models(config), []
    have = set(zip(rand["run"], rand["eval_domain"]))
    evaluated = set(zip(df["run"], df["eval_domain"]))
    for (rid, on), src in random_twins(config, kind).items():
        if (rid, on) in have or (rid, on) not in evaluated or (src, on) not in have:
            continue
        ids = {k: trained[rid][k] for k in RUN_FIELDS}
        add.append(rand[(rand["run"] == src) & (rand["eval_domain"] == on)].assign(run=rid, random_of=src, **ids))
    return pd.concat([df, *add], ignore_index=True) if add else df


def finest(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of each evaluation domain's finest level."""
    if df.empty:
        return df
    top = df.groupby("eval_domain")["level_index"].transform("max")
    return df[df["level_index"] == top]


def quantity(lowshot: pd.DataFrame, supervised: pd.DataFrame) -> pd.DataFrame:
    """Few-label SSL rows beside the supervised baselines; empty without the former (a baseline of the
    granularity axis alone is no quantity curve)."""
    return pd.concat([lowshot, supervised], ignore_index=True) if not lowshot.empty else pd.DataFrame()


def domain_matrix(frozen: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Linear accuracy of every domain-axis model on every evaluation domain, per seed."""
    dom = config["domain"]
    pre = dom["domains"] + pools(config)
    if frozen.empty or not pre:
        return pd.DataFrame()
    d = frozen.query(
        "weights == 'pretrained' and quality == 'clean' and metric == 'linear' and subset == @ref",
        local_dict=dict(ref=reference_subset(config)),
    )
    d = d[d["domain"].isin(pre) & d["method"].isin(pick(config, "domain", "methods"))]
    return (
        d.groupby(["method", "domain", "seed", "eval_domain", "level_index", "level"], as_index=False)["value"]
        .mean()
        .rename(columns={"domain": "pretrain_domain"})
    )


def quality_drop(frozen: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Accuracy of each corrupted-pretraining run minus its clean twin (same method, domain, seed)."""
    tags = qualities(config)
    if frozen.empty or not tags:
        return pd.DataFrame()
    keys = ["method", "domain", "seed", "eval_domain", "level_index", "level", "metric"]
    d = frozen.query(
        "weights == 'pretrained' and subset == @ref and eval_domain == domain",
        local_dict=dict(ref=quality_subset(config)),
    )
    d = d[d["method"].isin(pick(config, "quality", "methods")) & d["domain"].isin(pick(config, "quality", "domains"))]
    clean = d[d["quality"] == "clean"][keys + ["value"]].rename(columns={"value": "clean"})
    out = d[d["quality"].isin(tags)].merge(clean, on=keys)
    out["drop"] = out["value"] - out["clean"]
    parsed = out["quality"].map(parse_quality)
    out["corruption"] = parsed.str[0]
    out["strength"] = parsed.str[1]
    out["order"] = out["corruption"].map(CORRUPTION_ORDER) * 1e6 + out["strength"]
    return out.sort_values(["order", "level_index"]).drop(columns="order")


def granularity(frozen: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Linear (finest, mapped up) and kNN accuracy per level and seed of SSL models and the supervised baseline."""
    if frozen.empty:
        return pd.DataFrame()
    methods = pick(config, "granularity", "methods") + ([SUPERVISED] if config["granularity"]["supervised"] else [])
    d = frozen[
        (frozen["weights"] == "pretrained")
        & (frozen["quality"] == "clean")
        & (frozen["eval_domain"] == frozen["domain"])
        & frozen["method"].isin(methods)
        & frozen["domain"].isin(pick(config, "granularity", "domains"))
        & frozen["metric"].isin(["linear", "knn"])
    ]
    d = d[(d["subset"] == reference_subset(config)) | (d["method"] == SUPERVISED)]
    return d.groupby(["method", "domain", "seed", "metric", "level_index", "level"], as_index=False)["value"].mean()


def fusion_table(fusion: pd.DataFrame) -> pd.DataFrame:
    """Per pair and evaluation domain (finest level): each member alone, the pair, and the gain over
    the better member."""
    if fusion.empty:
        return pd.DataFrame()
    d = finest(fusion).groupby(["pair", "eval_domain", "member"])["value"].mean().unstack("member")
    d = d.rename(columns={"a": "member a", "b": "member b", "a+b": "fused"})[["member a", "member b", "fused"]]
    d.columns.name = None
    d["gain over best member"] = d["fused"] - d[["member a", "member b"]].max(axis=1)
    return d.reset_index()


def summary(d: pd.DataFrame, by: list[str], flags: dict[str, str]) -> pd.DataFrame:
    """Per-seed rows -> one row per group of `by`: mean, low, high, n, interval (95% Student t over
    seeds) and `suspect` (the group's flagged runs, "run: flag; ..."; "" when none or no run column)."""
    s = stats.summarise(d, by)
    if "run" not in d or s.empty:
        return s.assign(suspect="")
    sus = d.groupby(by, dropna=False)["run"].agg(lambda rs: suspects.flagged(rs, flags)).rename("suspect")
    return s.merge(sus.reset_index(), on=by, how="left")


def cells(s: pd.DataFrame, index: list[str], columns: list[str], label: str | None = None) -> pd.DataFrame:
    """A summary as the report shows it: `index` x `columns`, cells ".412 ± .031 (n=3)" or
    ".412 (1 seed, no interval)"; `label` (an index column) carries the ⚠ mark of suspect rows."""
    if s.empty:
        return s
    s = s.assign(cell=[stats.cell(r.mean, r.low, r.high, r.n) for r in s.itertuples()])
    if label:
        s = s.assign(**{label: [suspects.with_mark(x, sus) for x, sus in zip(s[label], s["suspect"])]})
    return s.pivot_table(index=index, columns=columns, values="cell", aggfunc="first", sort=False).sort_index(axis=1)


def forked_cpu(tsv) -> float:
    """CPU seconds the job of benchmark file `tsv` spent in the fork server (from its log; 0 if none)."""
    log = names.benchmark_log(tsv)
    try:
        return cpu_line.worker_cpu(Path(log).read_text(errors="replace")) if log else 0.0
    except OSError:
        return 0.0


def walltime(benchmarks: list[tuple[str, Path]]) -> pd.DataFrame:
    """Per-stage wall time from Snakemake's benchmark files, given as (rule, file) of each job; CPU
    seconds from them plus what the job's log says its command used in the fork server."""
    require([f for _, f in benchmarks], "benchmark file")
    rows = []
    for stage, f in benchmarks:
        t = pd.read_csv(f, sep="\t")
        rows.append(
            dict(stage=stage, seconds=float(t["s"].iloc[-1]), cpu=float(t["cpu_time"].iloc[-1]) + forked_cpu(f))
        )
    if not rows:
        return pd.DataFrame()
    d = (
        pd.DataFrame(rows)
        .groupby("stage")
        .agg(
            jobs=("seconds", "count"),
            wall_total=("seconds", "sum"),
            wall_longest=("seconds", "max"),
            cpu_total=("cpu", "sum"),
        )
    )
    return d.sort_values("cpu_total", ascending=False).reset_index()
