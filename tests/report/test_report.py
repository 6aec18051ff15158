"""`sslstudy report` on hand-made tables: it reads only the files it is given, and escapes text from the study."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from sslstudy.cli import main
from sslstudy.config import load

from tests.helpers import REPORT_SECTIONS, ROOT, write_metrics
from tests.study_tables import METHODS, fusion_row, study

RUN = "simclr/natural_<script>alert(1)</script>/seed0"
EVIL = "<img src=x onerror=alert(2)>"


def metrics(path, epochs):
    return write_metrics(path, [dict(epoch=e, loss=1.0 / e, seconds=2.0) for e in range(1, epochs + 1)])


def report_html(config: dict, out, captions=ROOT / "workflow/report", **inputs) -> str:
    """`sslstudy report` of config into out/report.html, which it must exit 0 from -> the page.
    inputs: option -> a value or a list of them (frozen=path, curves=["run=path", ...], data_dvc=path)."""
    args = ["report", "--config", json.dumps(config), "--out", str(out / "report.html"), "--captions", str(captions)]
    for option, values in inputs.items():
        args += [f"--{option.replace('_', '-')}", *(str(v) for v in (values if isinstance(values, list) else [values]))]
    assert main(args) == 0
    return (out / "report.html").read_text()


def bench(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\tcpu_time\n{seconds}\t{seconds / 2}\n")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_data):
    d = tmp_path_factory.mktemp("report")
    rows = [dict(r, epoch=2) for r in frozen_rows(RUN, 0.5)]
    pd.DataFrame(rows).to_csv(d / "frozen.csv", index=False)
    captions = d / "captions"
    shutil.copytree(ROOT / "workflow/report", captions)
    (captions / "accuracy_per_level.rst").write_text(f"Accuracy {EVIL} & more.\n")
    config = load(ROOT / "params/study.yaml")
    config["data"]["root"] = f"data/{EVIL}"
    out = d / "results"
    # files of another study where the report used to look for them
    bench(out / "benchmarks/pretrain/byol/natural_frac1_clean/seed0.tsv", 100.0)
    bench(out / "benchmarks/evaluate/byol/natural_frac1_clean/seed0/pretrained_on_natural.tsv", 100.0)
    metrics(out / "runs" / RUN / "metrics.jsonl", epochs=1)
    (d / "data.dvc").write_text(yaml.safe_dump(dict(outs=[dict(md5="stale-md5")])))
    # this study's
    given = bench(d / "mine/pretrain.tsv", 3.0)
    curve = metrics(d / "mine/metrics.jsonl", epochs=3)
    dvc = d / "mine/data.dvc"
    dvc.write_text(yaml.safe_dump(dict(outs=[dict(md5="given-md5")])))
    preflight = d / "mine/preflight.csv"
    preflight.write_text(preflight_table().to_csv(index=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)  # where the stale data.dvc is
        html = report_html(
            config,
            out,
            captions,
            frozen=d / "frozen.csv",
            benchmarks=f"pretrain={given}",
            curves=f"{RUN}={curve}",
            datasets=f"natural={tiny_data / 'natural'}",
            data_dvc=dvc,
            preflight=preflight,
        )
    return out, html


def preflight_table() -> pd.DataFrame:
    """A cost table as `sslstudy preflight` writes it (sslstudy.cost.table): two pretraining rows of
    one method on two axes, an evaluation row, the disk."""
    from sslstudy.cost import Row, table

    def row(kind, axis, jobs, peak, hours):
        return Row(kind, axis, "simclr", jobs, 8, 512, peak, 80, 0.0, 480, 48.8, 2e8, hours, "")

    rows = [row("pretrain", "study", 4, 46.9, 100.0), row("pretrain", "quality", 2, 12.5, 20.0)]
    rows.append(row("evaluate", "study", 4, 21.9, 3.5))
    return table(rows, [dict(what="checkpoints", bytes=5e11)])


def test_cost_section_shows_the_preflight_table(report):
    """GPU-hours per method and per axis, their total, the largest peak per GPU and the disk, from the
    preflight table the report is given (and its CSVs beside the page)."""
    out, html = report
    cost = html.split('<h2 id="cost">', 1)[1].split("<h2", 1)[0]
    assert "123.5 GPU-hours in all" in cost
    per_method = pd.read_csv(out / "tables/cost_per_method.csv")
    assert per_method.to_dict("records")[0] == dict(
        method="simclr",
        runs=6,
        peak_gb_per_gpu=46.9,
        per_gpu_batch=512,
        gpus=8,
        gflop_per_image=48.8,
        images_per_run=2e8,
        gpu_hours=120.0,
    )
    per_axis = pd.read_csv(out / "tables/cost_per_axis.csv").set_index("axis")
    assert per_axis.loc["study", "total"] == 103.5 and per_axis.loc["quality", "total"] == 20.0
    assert pd.read_csv(out / "tables/cost_disk.csv").to_dict("records") == [dict(what="checkpoints", disk_gb=500.0)]


def test_walltime_counts_only_the_given_benchmark_files(report):
    out, html = report
    wall = pd.read_csv(out / "tables/walltime.csv")
    assert wall[["stage", "jobs", "wall_total"]].values.tolist() == [["pretrain", 1, 3.0]]
    assert "Wall time per stage" in html


def test_report_reads_the_files_it_is_given_and_no_others(report):
    out, html = report
    assert pd.read_csv(out / "tables/pretrain_loss.csv")["epoch"].tolist() == [1, 2, 3]
    assert "given-md5" in html and "stale-md5" not in html
    assert 'id="fig-data_natural"' in html and "Domain natural: 256 images of 32 px" in html
    for section in REPORT_SECTIONS:
        assert f">{section}</h2>" in html, section


def test_text_from_the_study_is_escaped(report):
    _, html = report
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # run id in the tables
    assert "data/&lt;img src=x onerror=alert(2)&gt;" in html  # config
    assert html.count("Accuracy &lt;img src=x onerror=alert(2)&gt; &amp; more.") == 2  # caption and alt text


# ----------------------------------------------------------------------------- suspect runs
OK = "byol/natural_frac1_clean/seed0"
COLLAPSED = "swav/natural_frac1_clean/seed0"
BELOW = "simclr/natural_frac1_clean/seed0"
WHY = f"{COLLAPSED}: collapsed at epoch 3 (effective rank 1.1 of 64; loss 3.871 = ln 48) {EVIL}"


def frozen_rows(run, pretrained, random=0.5, seed=0):
    method = run.split("/")[0]
    return [
        dict(
            run=run,
            method=method,
            domain="natural",
            subset="frac1",
            quality="clean",
            seed=seed,
            weights=w,
            epoch=2 if w == "pretrained" else 0,
            eval_domain="natural",
            level_index=i,
            level=lv,
            metric=m,
            value=pretrained if w == "pretrained" else random,
        )
        for w in ("pretrained", "random")
        for i, lv in enumerate(("coarse", "fine"))
        for m in ("knn", "linear")
    ]


def health_curve(path, collapsed_last):
    """Three epochs with the health keys; the last one collapsed when asked (the first is, and recovered, otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = [
        dict(epoch=e, loss=1.0 / e, seconds=2.0, effective_rank=10.0, normalized_std=0.5, dim=64, trivial_loss=3.87)
        for e in (1, 2, 3)
    ]
    bad = recs[2] if collapsed_last else recs[0]
    bad.update(effective_rank=1.1, collapsed=True, collapse_reason=WHY)
    return write_metrics(path, recs)


def build(d, rows, curves):
    pd.DataFrame(rows).to_csv(d / "frozen.csv", index=False)
    out = d / "results"
    html = report_html(
        load(ROOT / "params/study.yaml"), out, frozen=d / "frozen.csv", curves=[f"{r}={f}" for r, f in curves.items()]
    )
    return out, html


def warnings_box(html):
    start = html.index('<section id="warnings"')
    assert start < html.index(">Results</h2>")  # at the top, before the first section
    return html[start : html.index("</section>", start)]


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    d = tmp_path_factory.mktemp("flagged")
    rows = frozen_rows(OK, 0.8) + frozen_rows(COLLAPSED, 0.8) + frozen_rows(BELOW, 0.3)
    curves = {
        OK: health_curve(d / "ok.jsonl", False),
        COLLAPSED: health_curve(d / "swav.jsonl", True),
        BELOW: metrics(d / "simclr.jsonl", 3),
    }  # an older file, without the health keys
    return build(d, rows, curves)


def test_collapsed_run_is_listed_with_its_reason_and_folder(flagged):
    out, html = flagged
    box = warnings_box(html)
    assert COLLAPSED in box and f"results/runs/{COLLAPSED}" in box
    assert "collapsed at epoch 3 (effective rank 1.1 of 64; loss 3.871 = ln 48)" in box
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in box  # the reason is escaped
    assert OK not in box  # collapsed at epoch 1 only: recovered
    sus = pd.read_csv(out / "tables/suspect_runs.csv")
    assert sus.set_index("run")["flag"].to_dict() == {COLLAPSED: "collapsed", BELOW: "below random"}


def test_suspect_runs_are_marked_in_the_tables(flagged):
    _, html = flagged
    results = html[html.index(">Results</h2>") : html.index('id="quantity"')]
    comparisons = html[html.index('id="comparisons"') : html.index(">Pretraining</h2>")]
    pretraining = html[html.index(">Pretraining</h2>") : html.index(">Data</h2>")]
    # tables of means over seeds and of paired differences name the flagged runs of a row
    for part in (results, comparisons):
        assert f"swav ⚠ ({COLLAPSED}: collapsed)" in part
        assert f"simclr ⚠ ({BELOW}: below random)" in part
    assert ">byol</th>" in results and "byol ⚠" not in results
    assert f"byol ⚠ ({BELOW}: below random)" in comparisons  # against the reference, simclr
    assert f"{COLLAPSED} ⚠ (collapsed)" in pretraining and f"{BELOW} ⚠ (below random)" in pretraining
    assert f">{OK}</th>" in pretraining and f"{OK} ⚠" not in pretraining
    cs = pd.read_csv(out_of(flagged) / "tables/comparisons.csv", keep_default_na=False)
    sus = cs[cs["comparison"] == "pretrained vs random weights"].groupby("method")["suspect"].first()
    assert sus.to_dict() == {"byol": "", "simclr": f"{BELOW}: below random", "swav": f"{COLLAPSED}: collapsed"}


def out_of(built):
    return built[0]


def test_run_below_its_random_weights_is_listed(flagged):
    _, html = flagged
    box = warnings_box(html)
    assert BELOW in box and f"results/runs/{BELOW}" in box
    assert "below random weights (1 seed, no interval)" in box and "kNN 0.300 vs random 0.500" in box


def test_healthy_runs_give_the_no_flag_line(tmp_path):
    _, html = build(tmp_path, frozen_rows(OK, 0.8), {OK: health_curve(tmp_path / "ok.jsonl", False)})
    box = warnings_box(html)
    assert "No run was flagged. Checked:" in box and "collapse check" in box
    assert "⚠" not in html.replace("marked ⚠", "")


def test_seeds_below_random_are_flagged_by_the_paired_difference():
    from sslstudy.report.suspects import suspects

    runs = [f"simclr/natural_frac1_clean/seed{s}" for s in range(3)]
    low = sum((frozen_rows(r, 0.30 + 0.01 * s, seed=s) for s, r in enumerate(runs)), [])
    sus = suspects(pd.DataFrame(low), pd.DataFrame())
    assert sus["run"].tolist() == runs and sus["flag"].eq("below random").all()
    assert "paired over seeds" in sus["reason"].iloc[0] and "n=3" in sus["reason"].iloc[0]
    noisy = sum((frozen_rows(r, 0.5 + (0.2 if s == 0 else -0.01), seed=s) for s, r in enumerate(runs)), [])
    assert suspects(pd.DataFrame(noisy), pd.DataFrame()).empty  # lower on average but inconclusive


def test_runs_of_a_seed_share_the_one_evaluation_of_their_random_weights():
    """share_random: a run whose random weights the seed's first run evaluated gets those rows under
    its own ids (random_of names the evaluated run); rows a run has of its own are kept as they are."""
    from sslstudy.report.tables import share_random

    c = load(ROOT / "params/study.yaml")
    src, moco, moco1 = (f"{m}/natural_frac1_clean/seed{s}" for m, s in (("simclr", 0), ("moco", 0), ("moco", 1)))
    rows = pd.DataFrame(
        frozen_rows(src, 0.8, random=0.4) + frozen_rows(moco, 0.6, random=0.9)[:4] + frozen_rows(moco1, 0.6, seed=1)[:4]
    )  # moco: pretrained rows only; seed 1: no evaluated random
    out = share_random(rows, c, "frozen")
    got = out[(out["run"] == moco) & (out["weights"] == "random")]
    assert (
        len(got) == 4
        and got["value"].eq(0.4).all()
        and got["method"].eq("moco").all()
        and got["random_of"].eq(src).all()
    )
    assert out[out["run"] == moco1]["weights"].eq("pretrained").all()  # its seed's random weights were not evaluated
    assert len(out) == len(rows) + 4 and out["run"].nunique() == 3  # no run only the random rows name
    own = pd.DataFrame(frozen_rows(src, 0.8) + frozen_rows(moco, 0.6, random=0.45))
    assert share_random(own, c, "frozen").equals(own)


# ----------------------------------------------------------------------------- figures


@pytest.fixture
def figs(monkeypatch):
    """The figure functions with their matplotlib Figure returned instead of its PNG/SVG bytes."""
    import matplotlib.pyplot as plt
    from sslstudy.report import figures

    monkeypatch.setattr(figures, "drawn", lambda fig: fig)
    yield figures
    plt.close("all")


def baseline(frozen):
    """What html.build_report draws in the overview: the runs with random weights, on their own domain."""
    b = frozen[frozen["run"].isin(frozen.loc[frozen["weights"] == "random", "run"])]
    return b[b["eval_domain"] == b["domain"]]


def every_figure(figs, t, flags=None):
    from sslstudy.report import tables

    config = load(ROOT / "params/study.yaml")
    curves = pd.DataFrame([dict(r, run=run) for run, recs in t["curves"].items() for r in recs])
    return dict(
        accuracy_per_level=figs.accuracy_per_level(baseline(t["frozen"]), flags),
        quantity=figs.quantity(tables.quantity(t["lowshot"], t["supervised"])),
        domain=figs.domain_heatmap(tables.domain_matrix(t["frozen"], config)),
        quality=figs.quality_drop(tables.quality_drop(t["frozen"], config)),
        granularity=figs.granularity(tables.granularity(t["frozen"], config)),
        fusion=figs.fusion(t["fusion"]),
        clustering=figs.clustering(t["clusters"]),
        loss=figs.loss(curves, flags),
    )


def error_bars(ax):
    """Each error bar drawn on ax as (x, low, high)."""
    from matplotlib.container import ErrorbarContainer

    out = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            for seg in c.lines[2][0].get_segments():
                out.append((round(float(seg[0][0]), 6), float(seg[0][1]), float(seg[1][1])))
    return out


def test_overview_bars_are_the_mean_and_t_interval_over_seeds(figs):
    from scipy import stats as st

    t = study(seeds=(0, 1, 2))
    fig = figs.accuracy_per_level(baseline(t["frozen"]))
    knn = fig.axes[0]
    assert knn.get_title() == "kNN accuracy" and "mean of 3 seeds, 95% Student t interval" in fig.texts[0].get_text()
    v = t["frozen"].query("method == 'swav' and weights == 'pretrained' and metric == 'knn' and level == 'mid'")[
        "value"
    ]
    assert len(v) == 3
    low, high = st.t.interval(0.95, 2, loc=v.mean(), scale=st.sem(v))
    # swav is the 4th of 8 methods: its mid-level bar sits at 1 - 0.4 + 0.1 * 3.5
    bar = [b for b in error_bars(knn) if abs(b[0] - 0.95) < 1e-6]
    assert len(bar) == 1 and bar[0][1] == pytest.approx(low) and bar[0][2] == pytest.approx(high)
    heights = [p.get_height() for p in knn.patches]
    assert v.mean() == pytest.approx(heights[3 * 3 + 1])  # bars in method order, 3 levels each


def test_one_seed_draws_no_interval_and_says_so(figs):
    t = study(seeds=(0,))
    for name, fig in every_figure(figs, t).items():
        assert not any(error_bars(ax) for ax in fig.axes), name
        assert not any(c.__class__.__name__ == "PolyCollection" for ax in fig.axes for c in ax.collections), (
            name
        )  # no band
        if name != "loss":
            assert "1 seed, no interval" in fig.texts[0].get_text(), name


def test_every_method_has_one_colour_and_one_order_in_every_figure(figs):
    from matplotlib.colors import to_rgb

    t = study(seeds=(0, 1))
    f = every_figure(figs, t)
    bars = f["accuracy_per_level"].axes[0].patches
    assert [to_rgb(p.get_facecolor()) for p in bars[::3]] == [figs.PALETTE[m] for m in METHODS]  # 3 levels per method
    assert [a.get_title() for a in f["loss"].axes] == METHODS
    assert [to_rgb(a.lines[0].get_color()) for a in f["loss"].axes] == [figs.PALETTE[m] for m in METHODS]
    lines = {ln.get_label(): to_rgb(ln.get_color()) for ln in f["granularity"].axes[0].lines}
    assert all(lines[m] == figs.PALETTE[m] for m in METHODS + ["supervised"])
    legend = [x.get_text() for x in f["clustering"].legends[0].texts]
    assert legend[:8] == METHODS
    assert len(set(figs.PALETTE.values())) == len(figs.PALETTE)


def test_losses_are_faceted_per_method_each_on_its_own_scale(figs):
    f = every_figure(figs, study(seeds=(0,)))["loss"]
    top = {a.get_title(): a.get_ylim()[1] for a in f.axes if a.get_title()}
    assert top["barlow"] > 100 and top["simclr"] < 5  # barlow's scale no longer squashes the others


def overlaps(fig):
    """Pairs of visible texts of fig (titles, axis and tick labels, legends, notes) whose boxes intersect."""
    r = fig.canvas.get_renderer()
    texts = [t for t in fig.texts]
    for ax in fig.axes:
        if not ax.axison:
            continue
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        for axis in (ax.xaxis, ax.yaxis):  # the ticks drawn: those inside the view
            lo, hi = sorted(axis.get_view_interval())
            texts += [t.label1 for t in axis.get_major_ticks() if lo - 1e-9 <= t.get_loc() <= hi + 1e-9]
    for leg in fig.legends + [a.get_legend() for a in fig.axes if a.get_legend()]:
        texts += [*leg.texts, leg.get_title()]
    boxes = [(t.get_text(), t.get_window_extent(r)) for t in texts if t.get_visible() and t.get_text().strip()]
    return [
        (a, b)
        for i, (a, ba) in enumerate(boxes)
        for b, bb in boxes[i + 1 :]
        if ba.x0 + 1 < bb.x1 and bb.x0 + 1 < ba.x1 and ba.y0 + 1 < bb.y1 and bb.y0 + 1 < ba.y1
    ]


def test_no_text_overlaps_and_every_panel_row_has_labelled_axes(figs):
    flags = {"swav/natural_frac1_clean/seed0": "collapsed"}
    for name, fig in every_figure(figs, study(seeds=(0, 1, 2)), flags).items():
        fig.canvas.draw()
        assert overlaps(fig) == [], name
        for ax in fig.axes:
            if ax.axison:
                assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
                assert "/seed" not in ax.get_title(), (name, ax.get_title())  # method names, not run ids


def test_suspect_runs_stay_marked_on_the_figures(figs):
    run = "swav/natural_frac1_clean/seed1"
    f = every_figure(figs, study(seeds=(0, 1)), {run: "collapsed"})
    legend = [x.get_text() for x in f["accuracy_per_level"].legends[0].texts]
    assert "swav: collapsed, see warnings" in legend
    hatched = [p for p in f["accuracy_per_level"].axes[0].patches if p.get_hatch()]
    assert len(hatched) == 3  # swav's bar at each level
    swav = [a for a in f["loss"].axes if a.get_title().startswith("swav")][0]
    assert swav.get_title() == "swav: collapsed (dashed)"
    assert sorted(ln.get_linestyle() for ln in swav.lines) == ["-", "--"]  # seed1 dashed, seed0 not


def test_every_figure_is_saved_as_svg_beside_its_png_and_linked(report):
    out, html = report
    pngs = sorted(p.stem for p in (out / "figures").glob("*.png") if not p.stem.startswith("data_"))
    assert {"accuracy_per_level", "pretrain_loss"} <= set(pngs)
    for key in pngs:
        svg = (out / "figures" / f"{key}.svg").read_text()
        assert svg.startswith("<?xml") and "<svg" in svg, key
        assert f'href="figures/{key}.svg"' in html, key
    assert "1 seed, no interval" in (out / "figures/accuracy_per_level.svg").read_text()  # text stays text in the SVG


# ----------------------------------------------------------------------------- seeds, intervals, findings
SEEDS = (0, 1, 2)
NOISE = (0.0, 0.004, -0.003)


def seeded_rows():
    """Three seeds of: three methods and their random weights, two corruptions, a pool, a supervised
    baseline; each value has a fixed per-seed noise, with a `split` and a chosen-probe column."""
    rows = []
    for s, eps in zip(SEEDS, NOISE):
        for m, acc in (("simclr", 0.7), ("byol", 0.6), ("swav", 0.1)):
            rows += frozen_rows(f"{m}/natural_frac1_clean/seed{s}", acc + eps, random=0.3, seed=s)
        for q, acc in (("downup4", 0.4), ("jpeg10", 0.68)):  # the clean twin: simclr's run above (quality.subset null)
            rows += [
                dict(r, run=f"simclr/natural_frac1_{q}/seed{s}", quality=q)
                for r in frozen_rows("simclr/x", acc + 2 * eps, seed=s)
                if r["weights"] == "pretrained"
            ]
        rows += [
            dict(r, run=f"supervised/natural_lall_clean/seed{s}", subset="lall")
            for r in frozen_rows("supervised/x", 0.9 + eps, seed=s)
            if r["weights"] == "pretrained"
        ]
    for r in rows:
        r.update(split="test", linear_lr=0.1 if r["metric"] == "linear" else None)
    return rows


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeded")
    pd.DataFrame(seeded_rows()).to_csv(d / "frozen.csv", index=False)
    fusion = [
        fusion_row("simclr@natural", "barlow@natural", m, s, i, lv, v + eps * (2 if m == "a+b" else 1))
        for s, eps in zip(SEEDS, NOISE)
        for m, v in (("a", 0.6), ("b", 0.5), ("a+b", 0.9))
        for i, lv in enumerate(("coarse", "fine"))
    ]
    pd.DataFrame(fusion).to_csv(d / "fusion.csv", index=False)
    config = load(ROOT / "params/study.yaml")
    config["study"]["seeds"] = list(SEEDS)
    out = d / "results"
    return out, report_html(config, out, frozen=d / "frozen.csv", fusion=d / "fusion.csv")


def test_tables_show_means_with_intervals_and_n(seeded):
    out, html = seeded
    results = html[html.index(">Results</h2>") : html.index('id="quantity"')]
    mean = np.mean([0.7 + e for e in NOISE])
    assert f"{mean:.3f}".lstrip("0") + " ± " in results and "(n=3)" in results and "1 seed, no interval" not in results
    s = pd.read_csv(out / "tables/results_summary.csv")
    row = s.query("model == 'simclr' and weights == 'pretrained' and metric == 'knn' and level == 'fine'").iloc[0]
    assert (row["mean"], row["n"], row["interval"]) == (pytest.approx(mean), 3, "t")
    assert "Student t interval over seeds" in html
    assert (
        len(pd.read_csv(out / "tables/accuracy_per_level.csv").query("weights == 'pretrained' and method == 'simclr'"))
        == 12
    )


def test_one_seed_says_no_interval(report):
    _, html = report
    results = html[html.index(">Results</h2>") : html.index('id="quantity"')]
    assert ".500 (1 seed, no interval)" in results and " ± " not in results


def test_comparisons_are_paired_over_seeds(seeded):
    out, html = seeded
    cs = pd.read_csv(out / "tables/comparisons.csv", keep_default_na=False)
    got = cs.groupby("comparison")["n"].agg(["min", "max"])
    for kind in (
        "pretrained vs random weights",
        "method vs reference",
        "corrupted vs clean",
        "SSL vs supervised",
        "fused vs better member (SSL+SSL)",
    ):
        assert got.loc[kind].tolist() == [3, 3], kind
    r = cs.query("comparison == 'method vs reference' and a == 'byol' and metric == 'knn' and level == 'fine'").iloc[0]
    assert (r["b"], r["mean"], r["verdict"], r["significant"], r["seeds"]) == (
        "simclr",
        pytest.approx(-0.1),
        "lower",
        True,
        "0,1,2",
    )
    per = pd.read_csv(out / "tables/comparisons_per_seed.csv", keep_default_na=False)
    assert (
        len(per.query("comparison == 'method vs reference' and a == 'byol' and metric == 'knn' and level == 'fine'"))
        == 3
    )
    part = html[html.index('id="comparisons"') : html.index(">Pretraining</h2>")]
    assert "<h3>quality: corrupted vs clean</h3>" in part and "-.300 ± " in part and "(n=3) *" in part
    fusion = html[html.index('id="fusion"') : html.index('id="clustering"')]
    row = fusion[fusion.index("<th>simclr@natural + barlow@natural</th>") :]
    row = row[: row.index("</tr>")]
    assert re.findall(r"<td>([^<]*)</td>", row) == [
        ".600 ± .009 (n=3)",
        ".500 ± .009 (n=3)",
        ".901 ± .017 (n=3)",
        "+.300 ± .009 (n=3) *",
    ]
    # swav is below its random weights over 3 seeds: flagged and marked in the comparisons
    assert "swav ⚠ (swav/natural_frac1_clean/seed{0,1,2}: below random)" in part


def test_findings_table_is_at_the_top_with_verdicts(seeded):
    out, html = seeded
    top = html[html.index('id="findings"') : html.index(">Results</h2>")]
    assert html.index('<section id="warnings"') < html.index('id="findings"')
    f = pd.read_csv(out / "tables/findings.csv", keep_default_na=False)
    v = f[f["method"] == "simclr"].set_index("finding")["verdict"].to_dict()
    # downup4 loses .30, jpeg10 .02: agrees; fused gains .30 over the better member: disagrees
    assert v["quality"] == "agrees" and v["fusion"] == "disagrees"
    assert v["quantity"] == "inconclusive" and v["domain"] == "inconclusive"  # axes without rows here
    for finding in ("quantity", "domain", "quality", "granularity", "fusion"):
        assert f"<td>{finding}</td>" in top
    assert "drop downup4 − drop jpeg10: -.280 ± " in top


def test_split_and_probe_settings_are_shown(seeded, report):
    _, html = seeded
    assert "Every number is from frozen: test split" in html
    probes = pd.read_csv(seeded[0] / "tables/probe_settings.csv", dtype=str)
    assert probes.query("method == 'simclr' and metric == 'linear'")["values"].tolist() == ["0.1"]
    assert "the evaluation tables carry no split column" in report[1]


def test_flagged_runs_are_named_once_per_model_and_flag():
    from sslstudy.report.suspects import flagged, with_mark

    flags = {f"swav/natural_frac1_clean/seed{s}": "collapsed" for s in (0, 2, 10)} | {BELOW: "below random"}
    runs = [*flags, OK, "swav/natural_frac1_clean/seed1"]
    text = flagged(runs, flags)
    assert text == f"{BELOW}: below random; swav/natural_frac1_clean/seed{{0,2,10}}: collapsed"
    assert with_mark("swav", text).startswith("swav ⚠ (simclr/") and with_mark("byol", flagged([OK], flags)) == "byol"


def test_walltime_adds_the_cpu_a_job_spent_in_the_fork_server(tmp_path):
    """Snakemake's benchmark counts the fork server's client only: the job's log says what its fork used."""
    from sslstudy import cpu_line
    from sslstudy.report.tables import walltime

    own = bench(tmp_path / "results/benchmarks/evaluate/a/seed0.tsv", 4.0)  # no log: its own process
    forked = bench(tmp_path / "results/benchmarks/evaluate/b/seed0.tsv", 6.0)
    log = tmp_path / "logs/evaluate/b/seed0.log"
    log.parent.mkdir(parents=True)
    log.write_text("INFO evaluating\n" + cpu_line.LINE.format(cpu=5.25) + "\n")
    wall = walltime([("evaluate", own), ("evaluate", forked)])
    assert wall[["stage", "jobs", "wall_total", "cpu_total"]].values.tolist() == [
        ["evaluate", 2, 10.0, 2.0 + 3.0 + 5.25]
    ]
