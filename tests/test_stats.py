"""sslstudy.stats against scipy's own t interval and paired t-test, and a hand calculation."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from sslstudy.stats import compare, interval, paired_difference, summarise


def test_interval_by_hand():
    iv = interval([1.0, 2.0, 3.0])
    # mean 2, s = 1, t_{.975,2} = 4.302653 -> half-width 4.302653 / sqrt(3) = 2.484138
    assert (iv.mean, iv.n, iv.method) == (2.0, 3, "t")
    assert iv.half_width == pytest.approx(2.484138, abs=1e-6)
    assert (iv.low, iv.high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert iv.text() == "2.000 ± 2.484 (95% t, n=3)"


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_interval_matches_scipy(level):
    x = np.random.default_rng(0).normal(0.4, 0.03, size=5)
    low, high = st.t.interval(level, len(x) - 1, loc=x.mean(), scale=st.sem(x))
    iv = interval(x, level)
    assert (iv.low, iv.high) == pytest.approx((low, high), rel=1e-12)
    assert iv.mean == pytest.approx(x.mean())


def test_interval_text_and_edges():
    assert interval([0.40, 0.41, 0.43]).text().startswith(".413 ± .")
    one = interval([0.412, float("nan")])
    assert one.n == 1 and math.isnan(one.low) and math.isnan(one.high)
    assert one.text() == ".412 (1 seed, no interval)"
    assert interval([float("nan")]).text() == "no values"
    assert interval([1.0, float("nan"), 2.0, 3.0]).n == 3


def test_paired_difference_matches_ttest_rel():
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.01, 0.05, -0.05):
        b = rng.normal(0.5, 0.02, size=6)
        a = b + shift + rng.normal(0, 0.02, size=6)
        d = paired_difference(dict(enumerate(a)), dict(enumerate(b)))
        res = st.ttest_rel(a, b)
        low, high = res.confidence_interval(0.95)
        assert (d.low, d.high) == pytest.approx((low, high), rel=1e-10)
        assert d.significant == (res.pvalue < 0.05)
        assert d.verdict == ("inconclusive" if not d.significant else "higher" if d.mean > 0 else "lower")


def test_paired_difference_drops_unpaired_seeds():
    a = {0: 0.50, 1: 0.52, 2: 0.55, 5: 0.9}
    b = {0: 0.40, 1: 0.43, 2: 0.44, 3: 0.1, 1.5: float("nan")}
    d = paired_difference(a, pd.Series(b))
    assert d.seeds == (0, 1, 2) and d.n == 3
    assert d.mean == pytest.approx(np.mean([0.10, 0.09, 0.11]))
    assert d.verdict == "higher" and d.text().startswith("+.100 ± ")
    assert paired_difference({0: 0.5, 1: 0.6}, {1: 0.4}).verdict == "inconclusive"  # one paired seed


def _table() -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(2)
    for method in ("simclr", "byol"):
        for seed in range(3):
            base = rng.normal(0.3, 0.01)
            rows.append(dict(method=method, metric="linear", weights="random", seed=seed, value=base))
            rows.append(dict(method=method, metric="linear", weights="pretrained", seed=seed,
                             value=base + (0.2 if method == "simclr" else 0.0) + rng.normal(0, 0.01)))
    rows.append(dict(method="byol", metric="linear", weights="pretrained", seed=7, value=0.9))  # no random pair
    return pd.DataFrame(rows)


def test_summarise_one_row_per_group():
    df = _table()
    out = summarise(df, by=["method", "weights"])
    assert list(out.columns) == ["method", "weights", "mean", "low", "high", "n", "interval"]
    assert len(out) == 4
    g = df[(df.method == "simclr") & (df.weights == "random")]["value"].to_numpy()
    row = out[(out["method"] == "simclr") & (out["weights"] == "random")].iloc[0]
    low, high = st.t.interval(0.95, 2, loc=g.mean(), scale=st.sem(g))
    assert (row["low"], row["high"], row["n"]) == (pytest.approx(low), pytest.approx(high), 3)
    with pytest.raises(ValueError, match="several rows for one seed"):
        summarise(df, by=["method"])  # pretrained and random share seeds


def test_compare_pretrained_vs_random():
    out = compare(_table(), by=["method", "metric"], column="weights", a="pretrained", b="random").set_index("method")
    assert out.loc["simclr", "verdict"] == "higher" and bool(out.loc["simclr", "significant"])
    assert list(out.columns) == ["metric", "mean", "low", "high", "n", "interval", "significant", "verdict"]
    assert out.loc["simclr", "n"] == 3 and out.loc["byol", "n"] == 3  # seed 7 has no random run
    one_key = compare(_table(), by=["method"], column="weights", a="pretrained", b="random")
    assert list(one_key["method"]) == ["byol", "simclr"]
    with pytest.raises(ValueError, match="compared column"):
        compare(_table(), by=["weights"], column="weights", a="pretrained", b="random")
