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
        """ ".412 ± .031 (95% t, n=3)"; ".412 (1 seed, no interval)"; "no values"."""
        if self.n == 0:
            return "no values"
        if self.n == 1:
            return f"{_num(self.mean, digits)} (1 seed, no interval)"
        return (
            f"{_num(self.mean, digits)} ± {_num(self.half_width, digits)} ({self.level:.0%} {self.method}, n={self.n})"
        )


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
    verdict: str  # "higher" / "lower" (a against b) or "inconclusive"

    def row(self) -> dict:
        return {**super().row(), "significant": self.significant, "verdict": self.verdict}

    def text(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"inconclusive ({self.n} paired seed{'s' * (self.n != 1)}, no interval)"
        return (
            f"{_num(self.mean, digits, sign=True)} ± {_num(self.half_width, digits)} "
            f"({self.level:.0%} {self.method}, n={self.n}): {self.verdict}"
        )


def _series(x) -> pd.Series:
    return x if isinstance(x, pd.Series) else pd.Series(dict(x) if isinstance(x, Mapping) else x, dtype=float)


def _verdict(iv: Interval) -> tuple[bool, str]:
    """(the interval excludes zero, "higher"/"lower"/"inconclusive"); below 2 values: inconclusive."""
    significant = iv.n >= 2 and (iv.low > 0 or iv.high < 0)
    return significant, ("higher" if iv.mean > 0 else "lower") if significant else "inconclusive"


def difference(values: Iterable[float], seeds: Iterable = (), level: float = 0.95) -> Difference:
    """The interval of per-seed differences already taken (NaN dropped), with its verdict."""
    x = pd.Series(list(values), index=list(seeds) or None, dtype=float).dropna()
    iv = interval(x.to_numpy(), level)
    significant, verdict = _verdict(iv)
    return Difference(**asdict(iv), seeds=tuple(sorted(x.index)), significant=significant, verdict=verdict)


MOST_SEEDS = 1000  # the largest count seeds_to_decide tries


def seeds_to_decide(iv: Interval, gap: float, most: int = MOST_SEEDS) -> int | None:
    """A power line: the fewest seeds whose t interval, at the spread iv's values showed, is narrower
    than `gap` (the distance from iv's mean to the value the interval must exclude to decide), i.e.
    how many paired seeds would decide the comparison if its mean and spread stayed as observed.
    None below 2 values, for a zero gap, or when no count up to `most` would."""
    if iv.n < 2 or not gap > 0:
        return None
    q = (1 + iv.level) / 2
    sd = iv.half_width * math.sqrt(iv.n) / float(st.t.ppf(q, iv.n - 1))
    n = np.arange(2, most + 1)
    narrow = st.t.ppf(q, n - 1) * sd / np.sqrt(n) < gap
    return int(n[narrow.argmax()]) if narrow.any() else None


def paired_difference(a, b, level: float = 0.95) -> Difference:
    """a, b: seed -> value (mappings or Series indexed by seed). Seeds missing or NaN on either
    side are dropped; the rest give the differences a_s - b_s and their t interval."""
    a, b = _series(a).astype(float), _series(b).astype(float)
    both = a.index.intersection(b.index)
    d = (a[both] - b[both]).dropna()
    return difference(d.to_numpy(), d.index, level)


def _groups(df: pd.DataFrame, by: list[str]):
    if not by:
        yield (), df
        return
    for key, g in df.groupby(by, dropna=False, sort=True):
        yield key, g


def _check_unique(g: pd.DataFrame, cols: list[str], key: tuple, by: list[str]) -> None:
    if g.duplicated(cols).any():
        raise ValueError(f"group {key}: several rows for one seed; add the columns that tell them apart to by={by}")


def summarise(
    df: pd.DataFrame, by: list[str], value: str = "value", seed: str = "seed", level: float = 0.95
) -> pd.DataFrame:
    """Per-seed rows -> one row per group of `by`: the group's keys, then mean, low, high, n, interval."""
    by = list(by)
    rows = []
    for key, g in _groups(df, by):
        _check_unique(g, by + [seed], key, by)
        rows.append({**dict(zip(by, key)), **interval(g[value].to_numpy(), level).row()})
    return pd.DataFrame(rows, columns=by + COLUMNS)


def differences(
    a: pd.DataFrame, b: pd.DataFrame, on: list[str], value: str = "value", seed: str = "seed", keep: Iterable[str] = ()
) -> pd.DataFrame:
    """Per-seed differences of two tables joined on `on` + seed: the keys, seed, then a, b and
    diff = a - b (rows without a partner, or NaN on either side, dropped). `keep`: columns of both
    sides kept as <column>_a / <column>_b (e.g. run, to mark suspect runs)."""
    on, keep = list(on), list(keep)
    for name, side in (("a", a), ("b", b)):
        dup = side.duplicated(on + [seed])
        if dup.any():
            key = tuple(side.loc[dup.idxmax(), on])
            raise ValueError(
                f"group {key}: several rows for one seed on side {name}; add the columns that tell "
                f"them apart to on={on}"
            )
    cols = on + [seed]
    pick = lambda side, tag: side[cols + [value] + keep].rename(  # noqa: E731
        columns={value: tag, **{k: f"{k}_{tag}" for k in keep}}
    )
    out = pick(a, "a").merge(pick(b, "b"), on=cols, how="inner")
    out["diff"] = out["a"] - out["b"]
    return out.dropna(subset=["diff"]).sort_values(cols, kind="stable").reset_index(drop=True)


def summarise_differences(
    d: pd.DataFrame, by: list[str], value: str = "diff", seed: str = "seed", level: float = 0.95
) -> pd.DataFrame:
    """Per-seed differences (one row per group of `by` and seed) -> one row per group: the keys, then
    mean, low, high, n, interval, significant, verdict and seeds (e.g. "0,1,2")."""
    by = list(by)
    rows = []
    for key, g in _groups(d, by):
        _check_unique(g, by + [seed], key, by)
        r = difference(g[value].to_numpy(), g[seed].to_numpy(), level)
        rows.append({**dict(zip(by, key)), **r.row(), "seeds": ",".join(map(str, r.seeds))})
    return pd.DataFrame(rows, columns=by + DIFF_COLUMNS + ["seeds"])


def compare(
    df: pd.DataFrame, by: list[str], column: str, a, b, value: str = "value", seed: str = "seed", level: float = 0.95
) -> pd.DataFrame:
    """Within each group of `by`, the paired difference (on seed) of the rows with column == a minus
    those with column == b: the group's keys, then mean, low, high, n, interval, significant, verdict
    (groups without a paired seed are left out)."""
    by = list(by)
    if column in by:
        raise ValueError(f"compare: {column!r} is the compared column; leave it out of by={by}")
    d = differences(df[df[column] == a], df[df[column] == b], by, value, seed)
    return summarise_differences(d, by, level=level)[by + DIFF_COLUMNS]


def cell(mean: float, low: float, high: float, n: int, digits: int = 3, sign: bool = False) -> str:
    """One table cell of a summary row: ".412 ± .031 (n=3)"; ".412 (1 seed, no interval)"; "–"
    (the interval's kind is said once, in the table's caption)."""
    if not n or pd.isna(mean):
        return "–"
    m = _num(float(mean), digits, sign)
    if n < 2:
        return f"{m} (1 seed, no interval)"
    return f"{m} ± {_num((float(high) - float(low)) / 2, digits)} (n={int(n)})"


INTERVAL_NOTE = "mean ± half-width of the 95% Student t interval over seeds (n seeds); 1 seed: no interval"
