"""Cole et al.'s findings checked from small fixed tables: for each finding an agreeing, a disagreeing
and an inconclusive study (three seeds; the per-seed noise is fixed, so each verdict is known)."""

import pandas as pd
import pytest
from sslstudy.config import load
from sslstudy.report import comparisons, findings

from tests.helpers import ROOT
from tests.study_tables import fusion_row, run_ids

SEEDS = (0, 1, 2)
NOISE = (0.0, 0.004, -0.003)  # per seed: a difference of 0.02 or more excludes zero (half-width ~.009)
WIDE = (0.03, -0.02, -0.01)  # mean 0, half-width ~.062: any effect below that is inconclusive
LEVELS = ("coarse", "fine")


@pytest.fixture(scope="module")
def config():
    c = load(ROOT / "params/study.yaml")
    c["study"]["seeds"] = list(SEEDS)
    # the quality cases below use every corruption, on a 25% subset
    c["quality"].update(subset=0.25, downup=[2, 4], jpeg=[10], saltpepper=[0.01], blur=[1.0], lowres=[16])
    return c


def frozen(method, domain, subset, quality, eval_domain, values, metric="linear", noise=(0, 0, 0), seeds=SEEDS):
    """values: level -> accuracy (noise[s] added per seed); pretrained weights."""
    return [
        dict(
            run_ids(method, domain, subset, quality, s),
            weights="pretrained",
            epoch=2,
            eval_domain=eval_domain,
            level_index=i,
            level=lv,
            metric=metric,
            value=values[lv] + noise[k],
        )
        for k, s in enumerate(seeds)
        for i, lv in enumerate(LEVELS)
    ]


def tables(frozen_rows=(), lowshot=(), fusion=()):
    return dict(
        frozen=pd.DataFrame(list(frozen_rows)),
        lowshot=pd.DataFrame(list(lowshot)),
        supervised=pd.DataFrame(),
        fusion=pd.DataFrame(list(fusion)),
        clusters=pd.DataFrame(),
    )


def verdict(t, config, finding, method="simclr"):
    f = findings.findings(comparisons.per_seed(t, config), config, t)
    row = f[(f["finding"] == finding) & (f["method"] == method)]
    assert len(row) == 1, f
    return row.iloc[0]


# ----------------------------------------------------------------------------- quantity
def lowshot(accs, noise=NOISE, seeds=SEEDS):
    """accs: pretraining images -> finest-level accuracy (noise on the largest size)."""
    top = max(accs)
    return [
        dict(
            run_ids("simclr", "natural", f"n{n}", "clean", s),
            mode="linear",
            labels="lall",
            labelled_images=640,
            pretrain_images=n,
            eval_domain="natural",
            level_index=i,
            level=lv,
            metric="linear",
            value=acc + (noise[k] if n == top else 0.0),
        )
        for n, acc in accs.items()
        for k, s in enumerate(seeds)
        for i, lv in enumerate(LEVELS)
    ]


@pytest.mark.parametrize(
    "accs, noise, expected",
    [
        ({100: 0.30, 200: 0.40, 400: 0.45}, NOISE, "agrees"),  # +.10 then +.05 per doubling
        ({100: 0.30, 200: 0.32, 400: 0.45}, NOISE, "disagrees"),  # +.02 then +.13
        ({100: 0.30, 200: 0.40, 400: 0.50}, WIDE, "inconclusive"),  # +.10 then +.10 ± noise
    ],
)
def test_quantity(config, accs, noise, expected):
    row = verdict(tables(lowshot=lowshot(accs, noise)), config, "quantity")
    assert row["verdict"] == expected and row["seeds"] == "3"
    assert "gain per doubling n400 (400) vs n200 (200) minus n200 (200) vs n100 (100)" in row["found"]


def test_quantity_with_two_sizes_is_inconclusive(config):
    row = verdict(tables(lowshot=lowshot({100: 0.30, 400: 0.50})), config, "quantity")
    assert (
        row["verdict"] == "inconclusive"
        and "needs ≥ 3 pretraining sizes" in row["why"]
        and "this study has 2" in row["why"]
    )
    assert "+.200 ± " in row["why"]  # the one gain measured is still reported


# ----------------------------------------------------------------------------- domain
def domain_rows(home, pooled, cross, noise):
    rows = []
    for e, other in (("natural", "aerial"), ("aerial", "natural")):
        rows += frozen("simclr", e, "frac1", "clean", e, dict(coarse=home, fine=home))
        rows += frozen("simclr", "natural+aerial", "frac1", "clean", e, dict(coarse=pooled, fine=pooled), noise=noise)
        rows += frozen("simclr", other, "frac1", "clean", e, dict(coarse=cross, fine=cross))
    return rows


@pytest.mark.parametrize(
    "home, pooled, cross, noise, expected",
    [
        (0.60, 0.50, 0.30, NOISE, "agrees"),
        (0.60, 0.70, 0.30, NOISE, "disagrees"),  # pooling helps
        (0.60, 0.60, 0.30, WIDE, "inconclusive"),  # pooled = in-domain within noise
    ],
)
def test_domain(config, home, pooled, cross, noise, expected):
    row = verdict(tables(domain_rows(home, pooled, cross, noise)), config, "domain")
    assert row["verdict"] == expected
    assert "pooled natural+aerial − in-domain natural on natural: " in row["found"]
    assert "cross-domain aerial − pooled natural+aerial on natural: " in row["found"]


# ----------------------------------------------------------------------------- quality
def quality_rows(drops, noise, seeds=SEEDS):
    rows = frozen("simclr", "natural", "frac0.25", "clean", "natural", dict(coarse=0.8, fine=0.6), seeds=seeds)
    for tag, drop in drops.items():
        rows += frozen(
            "simclr",
            "natural",
            "frac0.25",
            tag,
            "natural",
            dict(coarse=0.8, fine=0.6 + drop),
            noise=noise if tag == "jpeg10" else (0, 0, 0),
            seeds=seeds,
        )
    return rows


@pytest.mark.parametrize(
    "drops, noise, expected",
    [
        (
            {
                "downup2": -0.15,
                "downup4": -0.30,
                "lowres16": -0.10,
                "jpeg10": -0.02,
                "saltpepper0.01": -0.01,
                "blur1": -0.05,
            },
            NOISE,
            "agrees",
        ),
        ({"downup2": -0.05, "lowres16": -0.03, "jpeg10": -0.20, "saltpepper0.01": -0.01}, NOISE, "disagrees"),
        ({"downup2": -0.05, "jpeg10": -0.05, "saltpepper0.01": -0.01}, WIDE, "inconclusive"),
    ],
)
def test_quality(config, drops, noise, expected):
    row = verdict(tables(quality_rows(drops, noise)), config, "quality")
    assert row["verdict"] == expected
    worst = min((d, t) for t, d in drops.items() if t.startswith(("downup", "lowres")))[1]
    assert f"drop {worst} − drop jpeg10: " in row["found"] and f"drop {worst} − drop saltpepper0.01: " in row["found"]
    assert "blur" not in row["found"]  # not one of the paper's corruptions


def test_quality_with_one_seed_is_inconclusive(config):
    drops = {"downup4": -0.30, "jpeg10": -0.02}
    row = verdict(tables(quality_rows(drops, NOISE, seeds=(0,))), config, "quality")
    assert (
        row["verdict"] == "inconclusive"
        and row["seeds"] == "1"
        and row["why"] == "fewer than 2 paired seeds: no interval (study.seeds)"
    )
    assert "drop downup4 − drop jpeg10: -.280 (1 seed, no interval): inconclusive" in row["found"]


def test_quality_axis_off(config):
    c = {
        **config,
        "quality": {**config["quality"], **{k: [] for k in ("downup", "jpeg", "saltpepper", "blur", "lowres")}},
    }
    row = verdict(tables(quality_rows({"downup4": -0.3, "jpeg10": -0.02}, NOISE)), c, "quality")
    assert row["verdict"] == "inconclusive" and "quality axis off" in row["why"] and row["found"] == "–"


# ----------------------------------------------------------------------------- granularity
@pytest.mark.parametrize(
    "ssl, noise, expected",
    [
        (dict(coarse=0.85, fine=0.50), NOISE, "agrees"),  # gap -.05 -> -.30
        (dict(coarse=0.60, fine=0.75), NOISE, "disagrees"),  # gap -.30 -> -.05
        (dict(coarse=0.85, fine=0.75), WIDE, "inconclusive"),  # gap -.05 -> -.05
    ],
)
def test_granularity(config, ssl, noise, expected):
    rows = frozen("simclr", "natural", "frac1", "clean", "natural", ssl, noise=noise) + frozen(
        "supervised", "natural", "lall", "clean", "natural", dict(coarse=0.9, fine=0.8)
    )
    row = verdict(tables(rows), config, "granularity")
    assert row["verdict"] == expected and "gap at fine − gap at coarse: " in row["found"]
    assert verdict(tables(rows), config, "granularity", method="byol")["why"].startswith("granularity axis has no")


# ----------------------------------------------------------------------------- fusion
def fusion_rows(a, b, fused, noise):
    return [
        fusion_row("simclr@natural", "simclr@aerial", m, s, i, lv, v + (noise[k] if m == "a+b" else 0.0))
        for m, v in (("a", a), ("b", b), ("a+b", fused))
        for k, s in enumerate(SEEDS)
        for i, lv in enumerate(LEVELS)
    ]


@pytest.mark.parametrize(
    "fused, noise, expected",
    [
        (0.605, NOISE, "agrees"),  # +.005: below the +.02 margin
        (0.700, NOISE, "disagrees"),  # +.10
        (0.610, WIDE, "inconclusive"),  # +.01 ± .06 holds the margin
    ],
)
def test_fusion(config, fused, noise, expected):
    row = verdict(tables(fusion=fusion_rows(0.60, 0.40, fused, noise)), config, "fusion")
    assert row["verdict"] == expected
    assert "simclr@natural + simclr@aerial on natural − simclr@natural: " in row["found"]


def test_headline_keeps_the_reference_method_and_counts_the_others(config):
    rows = frozen("supervised", "natural", "lall", "clean", "natural", dict(coarse=0.9, fine=0.8))
    for m, ssl in (
        ("simclr", dict(coarse=0.85, fine=0.5)),
        ("byol", dict(coarse=0.6, fine=0.75)),
        ("moco", dict(coarse=0.85, fine=0.5)),
    ):
        rows += frozen(m, "natural", "frac1", "clean", "natural", ssl, noise=NOISE)
    f = findings.findings(comparisons.per_seed(tables(rows), config), config)
    head = findings.headline(f, config).set_index("finding")
    assert head.loc["granularity", "method"] == "simclr" and head.loc["granularity", "verdict"] == "agrees"
    # byol disagrees, moco agrees, the five methods without rows are inconclusive
    assert head.loc["granularity", "other methods"] == "1 agrees, 1 disagrees, 5 inconclusive"
    assert set(head.index) == set(findings.PAPER)


# ----------------------------------------------------------------------------- the comparisons behind them
def test_quantity_comparisons_labels_and_supervised_from_scratch(config):
    low = []
    for labels, n, acc in (("l1", 64, 0.20), ("l10", 640, 0.35), ("lall", 2048, 0.45)):
        low += [dict(r, labels=labels, labelled_images=n, value=r["value"] - 0.45 + acc) for r in lowshot({3276: 0.45})]
    sup = [
        dict(
            r,
            run=f"supervised/natural_{r['labels']}_clean/seed{r['seed']}",
            method="supervised",
            subset=r["labels"],
            mode="supervised",
            metric="supervised",
            pretrain_images=0,
            value=r["value"] - 0.05,
        )
        for r in low
    ]
    t = dict(tables(lowshot=low), supervised=pd.DataFrame(sup))
    c = comparisons.summary(comparisons.per_seed(t, config), {})
    labels = c[c["comparison"] == "more vs fewer labels"].query("level == 'fine'")
    assert labels[["a", "b"]].values.tolist() == [["l10 (640)", "l1 (64)"], ["lall (2048)", "l10 (640)"]]
    assert labels["mean"].tolist() == pytest.approx([0.15, 0.10]) and labels["n"].tolist() == [3, 3]
    scratch = c[c["comparison"] == "SSL vs supervised from scratch, same labels"].query("level == 'fine'")
    assert len(scratch) == 3 and scratch["mean"].tolist() == pytest.approx([0.05] * 3)
    assert set(scratch["verdict"]) == {"higher"} and set(scratch["metric"]) == {"linear"}


def test_cross_domain_vs_in_domain_rows(config):
    c = comparisons.summary(comparisons.per_seed(tables(domain_rows(0.6, 0.5, 0.3, NOISE)), config), {})
    cross = c[(c["comparison"] == "cross-domain vs in-domain") & (c["level"] == "fine")]
    assert cross[["a", "b", "eval_domain"]].values.tolist() == [
        ["aerial", "natural", "natural"],
        ["natural", "aerial", "aerial"],
    ]
    assert cross["mean"].tolist() == pytest.approx([-0.3, -0.3]) and set(cross["verdict"]) == {"lower"}


# ----------------------------------------------------------------------------- DenseCL's claim
def dense_rows(method, miou, noise):
    return [
        dict(
            run_ids(method, "natural", "frac1", "clean", s),
            weights="pretrained",
            epoch=2,
            eval_domain="natural",
            level=lv,
            metric="miou",
            value=v + noise[k],
        )
        for k, s in enumerate(SEEDS)
        for lv, v in (("coarse", miou + 0.2), ("mid", miou))
    ]


@pytest.mark.parametrize(
    "miou, linear, noise, expected",
    [
        (0.40, 0.505, NOISE, "agrees"),  # +.10 mIoU, linear +.005: within ±.02
        (0.40, 0.60, NOISE, "disagrees"),  # linear +.10: not matching MoCo on classification
        (0.20, 0.50, NOISE, "disagrees"),  # mIoU −.10: worse dense features
        (0.33, 0.50, WIDE, "inconclusive"),  # +.03 ± .06
    ],
)
def test_densecl_claim(config, miou, linear, noise, expected):
    t = tables(
        frozen("densecl", "natural", "frac1", "clean", "natural", dict(coarse=0.8, fine=linear), noise=noise)
        + frozen("moco", "natural", "frac1", "clean", "natural", dict(coarse=0.8, fine=0.50))
    )
    t["dense"] = pd.DataFrame(dense_rows("densecl", miou, noise) + dense_rows("moco", 0.30, (0, 0, 0)))
    row = verdict(t, config, "dense", method="densecl")
    assert row["verdict"] == expected, row["found"]
    assert row["found"].startswith("mIoU (mid) densecl − moco on natural: ") and row["seeds"] == "3"


def test_densecl_claim_without_a_dense_evaluation_is_inconclusive(config):
    row = verdict(tables(), config, "dense", method="densecl")
    assert row["verdict"] == "inconclusive" and "dense.enabled" in row["why"]


def test_an_undecided_part_says_how_many_seeds_would_decide_it(config):
    """The power line: mIoU +.03 with WIDE's spread (s = .0265) needs 6 seeds (t_4 · s/√5 = .033 > .03,
    t_5 · s/√6 = .028 < .03); linear 0 ± WIDE must fit inside ±.02: 10 seeds (t_8 · s/3 = .0203)."""
    t = tables(
        frozen("densecl", "natural", "frac1", "clean", "natural", dict(coarse=0.8, fine=0.50), noise=WIDE)
        + frozen("moco", "natural", "frac1", "clean", "natural", dict(coarse=0.8, fine=0.50))
    )
    t["dense"] = pd.DataFrame(dense_rows("densecl", 0.33, WIDE) + dense_rows("moco", 0.30, (0, 0, 0)))
    row = verdict(t, config, "dense", method="densecl")
    assert row["verdict"] == "inconclusive"
    assert row["why"] == (
        "mIoU (mid) densecl − moco on natural: interval holds zero; 6 paired seeds would decide it at the observed "
        "mean and spread; linear densecl − moco on natural: interval holds ±0.02; 10 paired seeds would decide it "
        "at the observed mean and spread"
    )
