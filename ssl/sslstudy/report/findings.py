"""Cole et al.'s findings (CVPR 2022, ../shared/study.md) checked against this study: each finding is
one or more paired differences over seeds (from report.comparisons' per-seed table), each with the
direction the paper found. A part agrees when its 95% interval lies on the paper's side, disagrees
when it lies on the other, and is inconclusive otherwise (interval holding zero, or n < 2). A finding
agrees when all its parts agree, disagrees when any part disagrees, and is inconclusive otherwise,
and when its axis is off in params (nothing to compare)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import stats
from ..axes import pick
from ..names import parse_quality
from .comparisons import COMPARISON_KINDS, reference

COLUMNS = ["finding", "paper", "method", "domain", "found", "seeds", "verdict", "why"]
# fused minus its better member below this (upper end of the interval) is "adds little": the
# paper's SSL+SSL fusions moved accuracy by -0.6 and +1.4 points
FUSION_MARGIN = 0.02
RESOLUTION = ("downup", "lowres")  # corruptions that lose resolution
OTHER = ("jpeg", "saltpepper")  # the paper's other corruptions (blur is this study's own)
PAPER = {
    "quantity": (
        "Quantity saturates: gains from more pretraining images shrink (500k vs 1M: 1–2 points; 50k vs 250k: >10)."
    ),
    "domain": "In-domain pretraining beats pooled (adding another domain hurt), which beats cross-domain.",
    "quality": (
        "Resolution loss (downsample–upsample, smaller images) hurts most among corruptions; "
        "JPEG and salt-and-pepper far less."
    ),
    "granularity": "The SSL–supervised gap widens from coarse to fine labels (≈30 points at species on iNat21).",
    "fusion": (
        "SSL+SSL fusion adds little over the better member (−0.6 / +1.4 points); "
        f"here: gain below +{FUSION_MARGIN:.2f}."
    ),
    "dense": (
        "DenseCL (Wang et al., CVPR 2021): better dense features than MoCo v2 at equal cost (detection, segmentation) "
        "while matching it on classification; here: DenseCL − MoCo v2 frozen mIoU > 0 and linear accuracy "
        f"within ±{FUSION_MARGIN:.2f}."
    ),
}
DENSE_PAIR = ("densecl", "moco")


@dataclass(frozen=True)
class Part:
    label: str
    diff: stats.Difference
    expect: str  # "<0", ">0", "<margin" or "~0" (within ±FUSION_MARGIN)

    @property
    def verdict(self) -> str:
        d = self.diff
        if d.n < 2:
            return "inconclusive"
        if self.expect == "<margin":
            return "agrees" if d.high < FUSION_MARGIN else "disagrees" if d.low > FUSION_MARGIN else "inconclusive"
        if self.expect == "~0":
            inside = -FUSION_MARGIN < d.low and d.high < FUSION_MARGIN
            outside = d.low > FUSION_MARGIN or d.high < -FUSION_MARGIN
            return "agrees" if inside else "disagrees" if outside else "inconclusive"
        if not d.significant:
            return "inconclusive"
        return "agrees" if (d.mean < 0) == (self.expect == "<0") else "disagrees"

    @property
    def gap(self) -> float:
        """How far the mean lies from the value its interval must exclude to decide this part."""
        m = self.diff.mean
        if self.expect == "<margin":
            return abs(m - FUSION_MARGIN)
        if self.expect == "~0":
            return abs(FUSION_MARGIN - abs(m))
        return abs(m)

    def undecided(self) -> str:
        """Why an inconclusive part is, and (its power line) how many paired seeds would decide it."""
        d = self.diff
        if d.n < 2:
            return f"{self.label}: n < 2"
        holds = {"<margin": f"+{FUSION_MARGIN:.2f}", "~0": f"±{FUSION_MARGIN:.2f}"}.get(self.expect, "zero")
        need = stats.seeds_to_decide(d, self.gap)
        power = (
            f"{need} paired seeds would decide it at the observed mean and spread"
            if need is not None
            else f"no number of seeds up to {stats.MOST_SEEDS} would at the observed mean and spread"
        )
        return f"{self.label}: interval holds {holds}; {power}"

    def text(self) -> str:
        d = self.diff
        if d.n < 2:
            return f"{self.label}: " + (
                "no paired seeds" if d.n == 0 else f"{stats.cell(d.mean, d.low, d.high, d.n, sign=True)}: inconclusive"
            )
        return f"{self.label}: {stats.cell(d.mean, d.low, d.high, d.n, sign=True)}"


def verdict(parts: list[Part]) -> str:
    if not parts:
        return "inconclusive"
    vs = [p.verdict for p in parts]
    return "disagrees" if "disagrees" in vs else "agrees" if all(v == "agrees" for v in vs) else "inconclusive"


def _finest(d: pd.DataFrame) -> pd.DataFrame:
    return d[d["level_index"] == d.groupby("eval_domain")["level_index"].transform("max")] if not d.empty else d


def _kind(d: pd.DataFrame, i: int, **sel) -> pd.DataFrame:
    axis, comparison = COMPARISON_KINDS[i]
    g = d[(d["axis"] == axis) & (d["comparison"] == comparison)]
    for k, v in sel.items():
        g = g[g[k] == v]
    return g


def _seeds(g: pd.DataFrame) -> pd.Series:
    return g.set_index("seed")["diff"]


def _part(label: str, diff: pd.Series, expect: str) -> Part:
    return Part(label, stats.difference(diff.to_numpy(), diff.index), expect)


def _minus(x: pd.Series, y: pd.Series) -> pd.Series:
    both = x.index.intersection(y.index)
    return x[both] - y[both]


def quantity(d: pd.DataFrame, method: str, domain: str) -> tuple[list[Part], str]:
    """The gain per doubling of pretraining images between the two largest sizes minus that between
    the two smallest (linear probe, most labels, finest level): < 0 when it saturates."""
    g = _finest(_kind(d, 9, method=method, domain=domain, mode="linear"))
    if g.empty:
        return [], "no quantity rows (quantity.labels empty, or no linear mode in quantity.modes)"
    most = max(set(g["labels"]), key=lambda t: (t == "lall", int(t[1:]) if t[1:].isdigit() else 0))
    g = g[g["labels"] == most]
    steps = sorted({(r.count_b, r.count_a, r.b, r.a) for r in g.itertuples()})
    if len(steps) < 2:
        only = [_part(f"{a} vs {b}", _seeds(g[(g["a"] == a)]), ">0") for _, _, b, a in steps]
        return [], (
            "needs ≥ 3 pretraining sizes (quantity.subsets plus the largest of study.subsets); "
            f"this study has {len(steps) + 1}" + (f". Measured: {only[0].text()}" if only else "")
        )
    per = lambda s: _seeds(g[g["a"] == s[3]]) / np.log2(s[1] / s[0])  # noqa: E731
    lo, hi = steps[0], steps[-1]
    label = f"gain per doubling {hi[3]} vs {hi[2]} minus {lo[3]} vs {lo[2]}"
    return [_part(label, _minus(per(hi), per(lo)), "<0")], ""


def domain(d: pd.DataFrame, method: str) -> tuple[list[Part], str]:
    """Per evaluation domain (linear, finest level): pooled − in-domain < 0 and cross-domain − pooled < 0."""
    parts = []
    pooled = _finest(_kind(d, 3, method=method, metric="linear"))
    for r in pooled.drop_duplicates(["a", "b"]).itertuples():
        parts.append(
            _part(
                f"pooled {r.a} − in-domain {r.b} on {r.eval_domain}",
                _seeds(pooled[(pooled["a"] == r.a) & (pooled["b"] == r.b)]),
                "<0",
            )
        )
    cross = _finest(_kind(d, 5, method=method, metric="linear"))
    for r in cross.drop_duplicates(["a", "b", "eval_domain"]).itertuples():
        g = cross[(cross["a"] == r.a) & (cross["b"] == r.b) & (cross["eval_domain"] == r.eval_domain)]
        parts.append(_part(f"cross-domain {r.a} − pooled {r.b} on {r.eval_domain}", _seeds(g), "<0"))
    return (
        parts,
        "" if parts else "no pool holding a domain that is also pretrained on alone (domain.pools, domain.domains)",
    )


def quality(d: pd.DataFrame, method: str, domain: str) -> tuple[list[Part], str]:
    """The worst resolution corruption's drop minus each of JPEG's and salt-and-pepper's (linear,
    finest level): < 0 when resolution loss hurts most."""
    g = _finest(_kind(d, 2, method=method, domain=domain, metric="linear"))
    if g.empty:
        return [], "quality axis off (no corruption lists in params)"
    kind = g["a"].map(lambda t: parse_quality(t)[0])
    res, other = g[kind.isin(RESOLUTION)], g[kind.isin(OTHER)]
    if res.empty or other.empty:
        return [], "needs a resolution corruption (downup, lowres) and JPEG or salt-and-pepper in quality:"
    worst = res.groupby("a")["diff"].mean().idxmin()
    w = _seeds(res[res["a"] == worst])
    return [
        _part(f"drop {worst} − drop {t}", _minus(w, _seeds(other[other["a"] == t])), "<0")
        for t in sorted(set(other["a"]))
    ], ""


def granularity(d: pd.DataFrame, method: str, domain: str) -> tuple[list[Part], str]:
    """(SSL − supervised) at the finest level minus at the coarsest (linear): < 0 when the gap widens."""
    g = _kind(d, 8, method=method, domain=domain, metric="linear")
    if g.empty:
        return [], "granularity axis has no supervised baseline (granularity.supervised)"
    lo, hi = g["level_index"].min(), g["level_index"].max()
    if lo == hi:
        return [], "the domain has one label level"
    coarse, fine = g[g["level_index"] == lo], g[g["level_index"] == hi]
    label = f"gap at {fine['level'].iloc[0]} − gap at {coarse['level'].iloc[0]}"
    return [_part(label, _minus(_seeds(fine), _seeds(coarse)), "<0")], ""


def fusion(d: pd.DataFrame, method: str) -> tuple[list[Part], str]:
    """Fused − better member for each SSL+SSL pair with `method` (linear, finest level): below the margin."""
    g = _finest(_kind(d, 6, metric="linear"))
    g = g[g["a"].str.contains(f"{method}@", regex=False)]
    parts = [
        _part(
            f"{a.removesuffix(' (fused)')} on {e} − {b.removesuffix(' (better member)')}",
            _seeds(g[(g["a"] == a) & (g["eval_domain"] == e)]),
            "<margin",
        )
        for (a, b, e) in sorted(set(zip(g["a"], g["b"], g["eval_domain"])))
    ]
    return parts, "" if parts else "fusion axis has no SSL+SSL pair (fusion.kinds, fusion.pairs)"


def dense(eval_tables: dict, config: dict) -> tuple[list[Part], str]:
    """DenseCL − MoCo v2 per seed: frozen mIoU at the finest mask level (> 0) and linear accuracy at
    the finest label level (within ±FUSION_MARGIN), on the first dense domain."""
    a, b = DENSE_PAIR
    dn, fr = eval_tables.get("dense", pd.DataFrame()), eval_tables.get("frozen", pd.DataFrame())
    if dn is None or dn.empty or not {a, b} <= set(dn["method"]):
        return [], "needs a dense evaluation of densecl and moco (dense.enabled, dense.methods)"
    dom = (pick(config, "dense", "domains") or sorted(set(dn["eval_domain"])))[0]

    def per_seed(df: pd.DataFrame, m: str, **sel) -> pd.Series:
        g = df[
            (df["method"] == m) & (df["weights"] == "pretrained") & (df["eval_domain"] == dom) & (df["domain"] == dom)
        ]
        for k, v in sel.items():
            g = g[g[k] == v]
        return g.groupby("seed")["value"].mean()

    miou = dn[dn["metric"] == "miou"]
    level = miou["level"].iloc[-1] if not miou.empty else None
    parts = [
        _part(
            f"mIoU ({level}) {a} − {b} on {dom}",
            _minus(per_seed(miou, a, level=level), per_seed(miou, b, level=level)),
            ">0",
        )
    ]
    lin = _finest(fr[fr["metric"] == "linear"]) if not fr.empty else fr
    if not lin.empty:
        parts.append(_part(f"linear {a} − {b} on {dom}", _minus(per_seed(lin, a), per_seed(lin, b)), "~0"))
    return parts, ""


def _row(finding: str, method: str, dom: str, parts: list[Part], why: str) -> dict:
    n = sorted({p.diff.n for p in parts})
    v = verdict(parts)
    if not why and v == "inconclusive" and all(p.diff.n < 2 for p in parts if p.verdict == "inconclusive"):
        why = "fewer than 2 paired seeds: no interval (study.seeds)"
    elif not why and v == "inconclusive":
        why = "; ".join(p.undecided() for p in parts if p.verdict == "inconclusive")
    return dict(
        finding=finding,
        paper=PAPER[finding],
        method=method,
        domain=dom,
        found="; ".join(p.text() for p in parts) if parts else "–",
        seeds="/".join(map(str, n)) if n else "–",
        verdict=v,
        why=why,
    )


def findings(d: pd.DataFrame, config: dict, eval_tables: dict | None = None) -> pd.DataFrame:
    """One row per finding and method of its axis (d: report.comparisons.per_seed; eval_tables: the report's
    tables, for DenseCL's claim from the dense and frozen tables)."""
    rows = []
    first = lambda axis: pick(config, axis, "domains")[:1] or [""]  # noqa: E731
    for m in pick(config, "quantity", "methods"):
        for dom in first("quantity"):
            rows.append(_row("quantity", m, dom, *quantity(d, m, dom)))
    for m in pick(config, "domain", "methods"):
        rows.append(_row("domain", m, ", ".join(config["domain"]["domains"]), *domain(d, m)))
    for m in pick(config, "quality", "methods"):
        for dom in first("quality"):
            rows.append(_row("quality", m, dom, *quality(d, m, dom)))
    for m in pick(config, "granularity", "methods"):
        for dom in first("granularity"):
            rows.append(_row("granularity", m, dom, *granularity(d, m, dom)))
    for m in pick(config, "fusion", "methods"):
        rows.append(_row("fusion", m, ", ".join(pick(config, "fusion", "domains")), *fusion(d, m)))
    rows.append(
        _row("dense", DENSE_PAIR[0], ", ".join(pick(config, "dense", "domains")), *dense(eval_tables or {}, config))
    )
    return pd.DataFrame(rows, columns=COLUMNS)


def headline(f: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The report's table: per finding the reference method's row (the paper's SimCLR; else the
    axis's first), and how the axis's other methods came out."""
    ref = reference(config)
    out = []
    for finding in PAPER:
        g = f[f["finding"] == finding]
        if g.empty:
            continue
        main = g[g["method"] == ref].iloc[0] if ref in set(g["method"]) else g.iloc[0]
        rest = g[g["method"] != main["method"]]["verdict"].value_counts()
        others = ", ".join(f"{rest[v]} {v}" for v in ("agrees", "disagrees", "inconclusive") if v in rest) or "–"
        out.append({**main.to_dict(), "other methods": others})
    return pd.DataFrame(out, columns=COLUMNS + ["other methods"])
