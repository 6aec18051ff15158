"""sslstudy.stats against scipy's own t interval and paired t-test, and a hand calculation."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from sslstudy.stats import (
    cell,
    compare,
    differences,
    interval,
    paired_difference,
    seeds_to_decide,
    summarise,
    summarise_differences,
)


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
            rows.append(
                dict(
                    method=method,
                    metric="linear",
                    weights="pretrained",
                    seed=seed,
                    value=base + (0.2 if method == "simclr" else 0.0) + rng.normal(0, 0.01),
                )
            )
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


def test_differences_join_on_keys_and_seed():
    a = pd.DataFrame(
        dict(level=["x", "x", "x", "y"], seed=[0, 1, 2, 0], value=[0.5, 0.6, 0.7, 0.9], run=["a0", "a1", "a2", "a0"])
    )
    b = pd.DataFrame(
        dict(
            level=["x", "x", "x", "y"],
            seed=[0, 1, 3, 0],
            value=[0.4, 0.4, 0.1, float("nan")],
            run=["b0", "b1", "b3", "b0"],
        )
    )
    d = differences(a, b, on=["level"], keep=["run"])
    assert d[["level", "seed"]].values.tolist() == [["x", 0], ["x", 1]]  # seed 2/3 unpaired, y NaN on b
    assert d["diff"].tolist() == pytest.approx([0.1, 0.2])
    assert d["run_a"].tolist() == ["a0", "a1"] and d["run_b"].tolist() == ["b0", "b1"]
    with pytest.raises(ValueError, match="several rows for one seed on side a"):
        differences(pd.concat([a, a]), b, on=["level"])


def test_summarise_differences_matches_ttest_rel():
    rng = np.random.default_rng(3)
    rows = []
    for g, shift in (("same", 0.0), ("up", 0.05)):
        b = rng.normal(0.5, 0.02, size=5)
        a = b + shift + rng.normal(0, 0.01, size=5)
        rows += [dict(group=g, seed=s, diff=x - y, a=x, b=y) for s, (x, y) in enumerate(zip(a, b))]
    d = pd.DataFrame(rows)
    out = summarise_differences(d, ["group"]).set_index("group")
    for g in ("same", "up"):
        part = d[d["group"] == g]
        res = st.ttest_rel(part["a"], part["b"])
        assert (out.loc[g, "low"], out.loc[g, "high"]) == pytest.approx(tuple(res.confidence_interval(0.95)), rel=1e-10)
        assert bool(out.loc[g, "significant"]) == (res.pvalue < 0.05)
        assert out.loc[g, "seeds"] == "0,1,2,3,4" and out.loc[g, "n"] == 5
    assert out.loc["up", "verdict"] == "higher"


def test_cell_text():
    iv = interval([1.0, 2.0, 3.0])
    assert cell(iv.mean, iv.low, iv.high, iv.n) == "2.000 ± 2.484 (n=3)"
    assert cell(0.412, float("nan"), float("nan"), 1) == ".412 (1 seed, no interval)"
    assert cell(-0.031, -0.05, -0.012, 2, sign=True) == "-.031 ± .019 (n=2)"
    assert cell(float("nan"), float("nan"), float("nan"), 0) == "–"


def test_seeds_to_decide_is_the_first_count_whose_interval_is_narrower_than_the_gap():
    iv = interval([0.06, 0.01, 0.02])  # mean .03, s = .0265
    assert seeds_to_decide(iv, 0.03) == 6  # t_4 · s/√5 = .033, t_5 · s/√6 = .028
    assert seeds_to_decide(iv, 0.5) == 2  # already narrower at any count
    assert seeds_to_decide(iv, 0.0) is None and seeds_to_decide(iv, 1e-6) is None
    assert seeds_to_decide(interval([0.03]), 0.03) is None  # no spread measured
