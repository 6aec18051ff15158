"""What the study compares, as paired differences over seeds: per seed a - b (same seed on both
sides: the same pretraining subsets, the same initialisation regime), then the mean difference with
its 95% Student t interval and n, marked when the interval excludes zero (sslstudy.stats).

`per_seed` gives one row per comparison and seed (columns CONTEXT, then seed, value_a, value_b,
diff, run_a, run_b, count_a, count_b); `summary` one row per comparison (CONTEXT, then the columns
of stats.summarise_differences and `suspect`: the flagged runs among those compared)."""

from __future__ import annotations

import pandas as pd

from .. import stats
from ..axes import SUPERVISED, member, pick, pools, qualities, quality_subset, reference_subset
from ..names import CLEAN, parse_member, pool_members
from . import suspects

# what names one comparison; blank ("") where a column does not apply
CONTEXT = [
    "axis",
    "comparison",
    "a",
    "b",
    "method",
    "domain",
    "subset",
    "quality",
    "eval_domain",
    "mode",
    "labels",
    "level_index",
    "level",
    "metric",
]
PER_SEED = CONTEXT + ["seed", "value_a", "value_b", "diff", "run_a", "run_b", "count_a", "count_b"]
KEYS = ["method", "domain", "subset", "quality", "eval_domain", "level_index", "level", "metric"]
# the comparisons in the order the report shows them: (axis, comparison)
COMPARISON_KINDS = [
    ("baseline", "pretrained vs random weights"),
    ("methods", "method vs reference"),
    ("quality", "corrupted vs clean"),
    ("domain", "pooled vs in-domain"),
    ("domain", "cross-domain vs in-domain"),
    ("domain", "cross-domain vs pooled"),
    ("fusion", "fused vs better member (SSL+SSL)"),
    ("fusion", "fused vs better member (SSL+supervised)"),
    ("granularity", "SSL vs supervised"),
    ("quantity", "more vs fewer pretraining images"),
    ("quantity", "more vs fewer labels"),
    ("quantity", "SSL vs supervised from scratch, same labels"),
]


def reference(config: dict) -> str:
    """The method others are compared with: SimCLR (the paper's) when the study has it, else its first."""
    methods = config["study"]["methods"]
    return "simclr" if "simclr" in methods else methods[0]


def _pair(
    a: pd.DataFrame, b: pd.DataFrame, on: list[str], axis: str, comparison: str, label_a: str, label_b: str, **context
) -> pd.DataFrame:
    """Per-seed a - b joined on `on` + seed, with the comparison's context columns."""
    if a.empty or b.empty:
        return pd.DataFrame(columns=PER_SEED)
    keep = [c for c in ("run", "count") if c in a and c in b]
    d = stats.differences(a, b, on, keep=keep).rename(columns={"a": "value_a", "b": "value_b"})
    d = d.assign(axis=axis, comparison=comparison, a=label_a, b=label_b, **context)
    return d.reindex(columns=PER_SEED)


def _frozen(frozen: pd.DataFrame) -> pd.DataFrame:
    """Pretrained rows evaluated on clean images, one per run, evaluation and seed (repeats averaged)."""
    if frozen.empty:
        return frozen
    return frozen.groupby(KEYS + ["weights", "seed", "run"], as_index=False, dropna=False)["value"].mean()


def baseline(frozen: pd.DataFrame) -> pd.DataFrame:
    """The study's own runs (those with random weights evaluated), on their pretraining domain."""
    if frozen.empty:
        return frozen
    d = frozen[frozen["run"].isin(frozen.loc[frozen["weights"] == "random", "run"])]
    return d[d["eval_domain"] == d["domain"]]


def pretrained_vs_random(frozen: pd.DataFrame) -> list[pd.DataFrame]:
    d = _frozen(baseline(frozen))
    if d.empty:
        return []
    return [
        _pair(
            d[d["weights"] == "pretrained"],
            d[d["weights"] == "random"],
            KEYS,
            *COMPARISON_KINDS[0],
            "pretrained",
            "random weights",
        )
    ]


def methods_vs_reference(frozen: pd.DataFrame, config: dict) -> list[pd.DataFrame]:
    d = _frozen(baseline(frozen))
    if d.empty:
        return []
    d = d[d["weights"] == "pretrained"]
    ref = reference(config)
    on = [k for k in KEYS if k != "method"]
    return [
        _pair(d[d["method"] == m], d[d["method"] == ref], on, *COMPARISON_KINDS[1], m, ref, method=m)
        for m in sorted(set(d["method"]) - {ref})
    ]


def _pretrained(frozen: pd.DataFrame) -> pd.DataFrame:
    d = _frozen(frozen)
    return d[d["weights"] == "pretrained"] if not d.empty else d


def corrupted_vs_clean(frozen: pd.DataFrame, config: dict) -> list[pd.DataFrame]:
    tags = qualities(config)
    d = _pretrained(frozen)
    if d.empty or not tags:
        return []
    d = d[
        (d["subset"] == quality_subset(config))
        & (d["eval_domain"] == d["domain"])
        & d["method"].isin(pick(config, "quality", "methods"))
        & d["domain"].isin(pick(config, "quality", "domains"))
    ]
    on = [k for k in KEYS if k != "quality"]
    clean = d[d["quality"] == CLEAN]
    return [_pair(d[d["quality"] == t], clean, on, *COMPARISON_KINDS[2], t, CLEAN, quality=t) for t in tags]


def domains(frozen: pd.DataFrame, config: dict) -> list[pd.DataFrame]:
    """For each evaluation domain E: pretraining on a pool holding E or on another plain domain,
    against pretraining on E itself; and each other plain domain against each pool holding E."""
    dom = config["domain"]
    d = _pretrained(frozen)
    if d.empty or not (dom["domains"] or dom["pools"]):
        return []
    d = d[
        (d["quality"] == CLEAN)
        & (d["subset"] == reference_subset(config))
        & d["method"].isin(pick(config, "domain", "methods"))
    ]
    on = [k for k in KEYS if k != "domain"]
    out = []
    for e in sorted(set(d["eval_domain"])):
        on_e = d[d["eval_domain"] == e]
        home = on_e[on_e["domain"] == e]
        held = [p for p in pools(config) if e in pool_members(p)]
        others = [x for x in dom["domains"] if x != e]
        out += [_pair(on_e[on_e["domain"] == p], home, on, *COMPARISON_KINDS[3], p, e, domain=p) for p in held]
        out += [_pair(on_e[on_e["domain"] == x], home, on, *COMPARISON_KINDS[4], x, e, domain=x) for x in others]
        out += [
            _pair(on_e[on_e["domain"] == x], on_e[on_e["domain"] == p], on, *COMPARISON_KINDS[5], x, p, domain=x)
            for p in held
            for x in others
        ]
    return out


def fusion(table: pd.DataFrame, config: dict) -> list[pd.DataFrame]:
    """Fused minus the better member (the one of higher mean over seeds at that level and metric)."""
    if table.empty:
        return []
    on = ["pair", "eval_domain", "level_index", "level", "metric"]
    d = table.groupby(on + ["member", "seed"], as_index=False)["value"].mean()
    # the members' names from the pair ("simclr@natural + barlow@natural"), as `sslstudy fusion` writes it
    names = {(p, m): name for p in set(table["pair"]) for m, name in zip(("a", "b"), p.split(" + "))}
    d["run"] = [
        member(config, names[(p, m)], s)["id"] if m != "a+b" else ""
        for p, m, s in zip(d["pair"], d["member"], d["seed"])
    ]
    out = []
    for key, g in d.groupby(on, sort=True):
        pair = key[0]
        means = g[g["member"] != "a+b"].groupby("member")["value"].mean()
        if means.empty or "a+b" not in set(g["member"]):
            continue
        best = means.idxmax()
        fused = (
            g[g["member"] == "a+b"]
            .drop(columns="run")
            .merge(g[g["member"].isin(["a", "b"])].groupby("seed")["run"].agg(";".join).reset_index(), on="seed")
        )
        sup = any(parse_member(names[(pair, m)])[0] == SUPERVISED for m in ("a", "b") if (pair, m) in names)
        comparison = COMPARISON_KINDS[7 if sup else 6][1]
        out.append(
            _pair(
                fused,
                g[g["member"] == best],
                on,
                "fusion",
                comparison,
                f"{pair} (fused)",
                f"{names[(pair, best)]} (better member)",
                eval_domain=key[1],
                level_index=key[2],
                level=key[3],
                metric=key[4],
            )
        )
    return out


def ssl_vs_supervised(frozen: pd.DataFrame, config: dict) -> list[pd.DataFrame]:
    d = _pretrained(frozen)
    if d.empty or not config["granularity"]["supervised"]:
        return []
    d = d[
        (d["quality"] == CLEAN)
        & (d["eval_domain"] == d["domain"])
        & d["domain"].isin(pick(config, "granularity", "domains"))
        & d["metric"].isin(["linear", "knn"])
    ]
    sup = d[d["method"] == SUPERVISED]
    ssl = d[d["method"].isin(pick(config, "granularity", "methods")) & (d["subset"] == reference_subset(config))]
    on = ["domain", "eval_domain", "level_index", "level", "metric"]
    return [
        _pair(ssl[ssl["method"] == m], sup, on, *COMPARISON_KINDS[8], m, SUPERVISED, method=m)
        for m in sorted(set(ssl["method"]))
    ]


def _steps(
    d: pd.DataFrame, column: str, count: str, on: list[str], kind: tuple[str, str], **context
) -> list[pd.DataFrame]:
    """Each value of `column` against the next smaller one (ordered by the mean of `count`)."""
    sizes = d.groupby(column)[count].mean().sort_values()
    out = []
    for small, big in zip(sizes.index[:-1], sizes.index[1:]):
        a, b = d[d[column] == big], d[d[column] == small]
        out.append(_pair(a, b, on, *kind, f"{big} ({sizes[big]:.0f})", f"{small} ({sizes[small]:.0f})", **context))
    return out


def quantity(lowshot: pd.DataFrame, supervised: pd.DataFrame) -> list[pd.DataFrame]:
    """More vs fewer pretraining images (same labels and mode), more vs fewer labels (same
    pretraining subset and mode), and SSL (its largest pretraining set) vs the network trained from
    scratch on the same labels."""
    if lowshot.empty:
        return []
    ids = ["method", "domain", "quality", "eval_domain", "mode", "labels", "level_index", "level", "metric"]
    d = lowshot.groupby(ids + ["subset", "seed", "run"], as_index=False, dropna=False).agg(
        value=("value", "mean"),
        pretrain_images=("pretrain_images", "first"),
        labelled_images=("labelled_images", "first"),
    )
    out = []
    for (m, dom, mode, lab), g in d.groupby(["method", "domain", "mode", "labels"], sort=True):
        g = g.assign(count=g["pretrain_images"])
        out += _steps(
            g, "subset", "pretrain_images", ids, COMPARISON_KINDS[9], method=m, domain=dom, mode=mode, labels=lab
        )
    on = [c for c in ids if c != "labels"] + ["subset"]
    for (m, dom, sub, mode), g in d.groupby(["method", "domain", "subset", "mode"], sort=True):
        g = g.assign(count=g["labelled_images"])
        out += _steps(
            g, "labels", "labelled_images", on, COMPARISON_KINDS[10], method=m, domain=dom, subset=sub, mode=mode
        )
    if not supervised.empty:
        sup = supervised.groupby(
            ["domain", "eval_domain", "labels", "level_index", "level", "seed", "run"], as_index=False
        )["value"].mean()
        ref = d[d["pretrain_images"] == d.groupby(["method", "domain"])["pretrain_images"].transform("max")]
        on = ["domain", "eval_domain", "labels", "level_index", "level"]
        for (m, mode), g in ref.groupby(["method", "mode"], sort=True):
            out.append(
                _pair(
                    g,
                    sup,
                    on,
                    *COMPARISON_KINDS[11],
                    f"{m} ({mode})",
                    "supervised from scratch",
                    method=m,
                    mode=mode,
                    metric=mode,
                )
            )
    return out


def per_seed(eval_tables: dict[str, pd.DataFrame], config: dict) -> pd.DataFrame:
    """Every comparison of the study, one row per seed (eval_tables: the evaluation tables by kind)."""
    frozen = eval_tables["frozen"]
    parts = (
        pretrained_vs_random(frozen)
        + methods_vs_reference(frozen, config)
        + corrupted_vs_clean(frozen, config)
        + domains(frozen, config)
        + fusion(eval_tables["fusion"], config)
        + ssl_vs_supervised(frozen, config)
        + quantity(eval_tables["lowshot"], eval_tables["supervised"])
    )
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=PER_SEED)
    d = pd.concat(parts, ignore_index=True)
    text = [c for c in PER_SEED if c not in ("level_index", "seed", "value_a", "value_b", "diff", "count_a", "count_b")]
    d[text] = d[text].astype(object).where(d[text].notna(), "").astype(str)
    order = {k: i for i, k in enumerate(COMPARISON_KINDS)}
    d["_order"] = [order[k] for k in zip(d["axis"], d["comparison"])]
    return (
        d.sort_values(["_order", "method", "a", "b", "eval_domain", "metric", "level_index", "seed"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def summary(d: pd.DataFrame, flags: dict[str, str]) -> pd.DataFrame:
    """One row per comparison: its context, the paired difference over seeds, and `suspect`."""
    cols = CONTEXT + stats.DIFF_COLUMNS + ["seeds", "suspect"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    out = stats.summarise_differences(d, CONTEXT)
    runs = d.melt(id_vars=CONTEXT, value_vars=["run_a", "run_b"], value_name="run")
    runs = runs.assign(run=runs["run"].str.split(";")).explode("run")
    sus = runs.groupby(CONTEXT, dropna=False)["run"].agg(lambda rs: suspects.flagged(rs, flags)).rename("suspect")
    out = out.merge(sus.reset_index(), on=CONTEXT, how="left")
    order = {k: i for i, k in enumerate(COMPARISON_KINDS)}
    out["_order"] = [order[k] for k in zip(out["axis"], out["comparison"])]
    return out.sort_values(["_order"], kind="stable").drop(columns="_order").reset_index(drop=True)[cols]


def shown(s: pd.DataFrame, comparison: str, metrics=("knn", "linear")) -> pd.DataFrame:
    """One comparison kind as the report shows it: a row per compared pair (a ⚠ mark naming the
    flagged runs), a column per level, cells of `diff_cell`."""
    d = s[
        (s["comparison"] == comparison)
        & s["metric"].isin(metrics if comparison != COMPARISON_KINDS[11][1] else s["metric"])
    ]
    if d.empty:
        return d
    index = []
    for c in ("method", "a", "b", "domain", "subset", "quality", "eval_domain", "mode", "labels", "metric"):
        if c in ("a", "b") or (d[c].nunique() > 1 and not any(d[c].eq(d[k]).all() for k in index + ["a"])):
            index.append(c)
    first = index[0]
    d = d.assign(
        **{first: [suspects.with_mark(x, sus) for x, sus in zip(d[first], d["suspect"])]},
        cell=[diff_cell(r) for r in d.itertuples()],
    )
    wide = d.pivot_table(index=index, columns=["level_index", "level"], values="cell", aggfunc="first", sort=False)
    wide = wide.sort_index(axis=1).droplevel(0, axis=1)
    wide.columns.name = "level"
    return wide


def diff_cell(row) -> str:
    """A summary row's cell: "+.031 ± .012 (n=3) *" (* the interval excludes zero); below 2 seeds inconclusive."""
    if not row.n:
        return "inconclusive (no paired seeds)"
    text = stats.cell(row.mean, row.low, row.high, row.n, sign=True)
    if row.n < 2:
        return f"{text[:-1]}: inconclusive)"
    return f"{text} *" if row.significant else text
