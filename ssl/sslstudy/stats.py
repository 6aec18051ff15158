"""Uncertainty over seeds: Student t intervals of a mean, paired differences between two settings
(paired on seed), and both applied group-wise to a tidy table of per-seed results."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as st

# What `summarise` / `compare` add per group; "interval" holds Interval.method, since the tables
# have a column "method" of their own (the SSL method).
COLUMNS = ["mean", "low", "high", "n", "interval"]
DIFF_COLUMNS = COLUMNS + ["significant", "verdict"]


def _num(x: float, digits: int, sign: bool = False) -> str:
    """0.412 -> ".412" (the leading zero dropped, as in tables of accuracies)."""
    s = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    return s.replace("0.", ".", 1) if s.lstrip("+-").startswith("0.") else s


@dataclass(frozen=True)
class Interval:
    """The mean of n values and its two-sided `level` interval; low/high are NaN below 2 values."""
    mean: float
    low: float
    high: float
    n: int
    level: float
    method: str  # "t": mean ± t_{(1+level)/2, n-1} · s/√n

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def row(self) -> dict:
        return dict(mean=self.mean, low=self.low, high=self.high, n=self.n, interval=self.method)

    def text(self, digits: int = 3) -> str:
        """".412 ± .031 (95% t, n=3)"; ".412 (1 seed, no interval)"; "no values"."""
        if self.n == 0:
            return "no values"
        if self.n == 1:
            return f"{_num(self.mean, digits)} (1 seed, no interval)"
        return f"{_num(self.mean, digits)} ± {_num(self.half_width, digits)} ({self.level:.0%} {self.method}, n={self.n})"


def interval(values: Iterable[float], level: float = 0.95) -> Interval:
    """Student t interval of the mean over seeds (s with ddof=1); NaN values are dropped first."""
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level, "t")
    half = float(st.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n, level, "t")


@dataclass(frozen=True)
class Difference(Interval):
    """The interval of the per-seed differences a_s - b_s over the seeds both have."""
    seeds: tuple
    significant: bool  # the interval excludes zero
    verdict: str       # "higher" / "lower" (a against b) or "inconclusive"

    def row(self) -> dict:
        return {**super().row(), "significant": self.significant, "verdict": self.verdict}

    def text(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"inconclusive ({self.n} paired seed{'s' * (self.n != 1)}, no interval)"
        return (f"{_num(self.mean, digits, sign=True)} ± {_num(self.half_width, digits)} "
                f"({self.level:.0%} {self.method}, n={self.n}): {self.verdict}")


def _series(x) -> pd.Series:
    return x if isinstance(x, pd.Series) else pd.Series(dict(x) if isinstance(x, Mapping) else x, dtype=float)


def paired_difference(a, b, level: float = 0.95) -> Difference:
    """a, b: seed -> value (mappings or Series indexed by seed). Seeds missing or NaN on either
    side are dropped; the rest give the differences a_s - b_s and their t interval."""
    a, b = _series(a).astype(float), _series(b).astype(float)
    both = a.index.intersection(b.index)
    d = (a[both] - b[both]).dropna()
    iv = interval(d.to_numpy(), level)
    significant = iv.n >= 2 and (iv.low > 0 or iv.high < 0)
    verdict = ("higher" if iv.mean > 0 else "lower") if significant else "inconclusive"
    return Difference(**asdict(iv), seeds=tuple(sorted(d.index)), significant=significant, verdict=verdict)


def _groups(df: pd.DataFrame, by: list[str]):
    if not by:
        yield (), df
        return
    for key, g in df.groupby(by, dropna=False, sort=True):
        yield key, g


def _check_unique(g: pd.DataFrame, cols: list[str], key: tuple, by: list[str]) -> None:
    if g.duplicated(cols).any():
        raise ValueError(f"group {key}: several rows for one seed; add the columns that tell them apart "
                         f"to by={by}")


def summarise(df: pd.DataFrame, by: list[str], value: str = "value", seed: str = "seed",
              level: float = 0.95) -> pd.DataFrame:
    """Per-seed rows -> one row per group of `by`: the group's keys, then mean, low, high, n, interval."""
    by = list(by)
    rows = []
    for key, g in _groups(df, by):
        _check_unique(g, by + [seed], key, by)
        rows.append({**dict(zip(by, key)), **interval(g[value].to_numpy(), level).row()})
    return pd.DataFrame(rows, columns=by + COLUMNS)


def compare(df: pd.DataFrame, by: list[str], column: str, a, b, value: str = "value", seed: str = "seed",
            level: float = 0.95) -> pd.DataFrame:
    """Within each group of `by`, the paired difference (on seed) of the rows with column == a minus
    those with column == b: the group's keys, then mean, low, high, n, interval, significant, verdict."""
    by = list(by)
    if column in by:
        raise ValueError(f"compare: {column!r} is the compared column; leave it out of by={by}")
    rows = []
    for key, g in _groups(df[df[column].isin([a, b])], by):
        _check_unique(g, by + [column, seed], key, by)
        side = {v: g[g[column] == v].set_index(seed)[value] for v in (a, b)}
        rows.append({**dict(zip(by, key)), **paired_difference(side[a], side[b], level).row()})
    return pd.DataFrame(rows, columns=by + DIFF_COLUMNS)
