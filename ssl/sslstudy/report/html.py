"""One standalone HTML page (figures inlined), one section per axis of the study, plus tidy tables
(results/tables/*.csv, results/metrics.csv) that users can re-plot with pandas.

Every figure has a one-sentence caption, read from ``<captions>/<figure>.rst`` (the workflow ships
them in workflow/report/), and a link to the CSV it was drawn from. The page is templates/report.html
(Jinja2, autoescaped): text from the study (run ids, config values, captions) is escaped there.
"""

from __future__ import annotations

import base64
import functools
import importlib.metadata as md
import json
import platform
from pathlib import Path

import pandas as pd
import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from .. import provenance, stats
from ..atomic import write_bytes
from ..errors import UserError
from . import comparisons, dvc, figures, findings, suspects, tables
from . import cost as cost_report
from . import dense as dense_report

# templates/report.html; None renders as nothing (an absent figure or table)
ENV = Environment(
    loader=PackageLoader("sslstudy.report"),
    autoescape=True,
    undefined=StrictUndefined,
    finalize=lambda v: "" if v is None else v,
)
PACKAGES = (
    "torch",
    "torchvision",
    "faiss-cpu",
    "snakemake",
    "dvc",
    "submitit",
    "numpy",
    "pandas",
    "seaborn",
    "scikit-learn",
)
# section title -> what it answers (the first paragraph of each section)
SECTIONS = {
    "findings": ("Findings", "Does this study find what Cole et al. (CVPR 2022) found?"),
    "quantity": (
        "Quantity",
        "How much do more pretraining images and more labels help, frozen and fine-tuned, "
        "against the same network trained from scratch on the same labels?",
    ),
    "domain": (
        "Domain",
        "Does pretraining on the evaluation domain matter, and does pooling domains (equal total size) help?",
    ),
    "quality": ("Quality", "How much accuracy on clean images is lost when pretraining images are corrupted?"),
    "granularity": (
        "Granularity",
        "How does accuracy fall from coarse to fine labels, for SSL and for supervised training?",
    ),
    "fusion": ("Fusion", "Do two models' concatenated features beat the better one alone?"),
    "clustering": (
        "Periodic clustering",
        "How does the cluster structure of the features (faiss k-means, K = classes "
        "per level) develop over pretraining?",
    ),
    dense_report.KEY: (dense_report.TITLE, dense_report.QUESTION),
    "comparisons": (
        "Comparisons",
        "Which differences can be told from noise? Each is a paired difference over seeds "
        "(a − b per seed, then the mean and its 95% Student t interval).",
    ),
}
# columns of the evaluation tables that name a model, an evaluation or a score; any other column
# (e.g. a probe hyper-parameter chosen on val) is listed in the report's probe-settings table
KNOWN = {
    "run",
    "method",
    "domain",
    "subset",
    "quality",
    "seed",
    "weights",
    "epoch",
    "eval_domain",
    "level_index",
    "level",
    "metric",
    "value",
    "split",
    "mode",
    "labels",
    "labelled_images",
    "pretrain_images",
    "pair",
    "model",
    "member",
    "dim",
    provenance.COLUMN,
}
METRICS = ["knn", "linear"]  # what the report's tables show (every metric is in the CSVs)


def summary(df: pd.DataFrame) -> dict:
    """Nested run -> weights -> eval domain -> level -> metric, for `dvc metrics show`."""
    out: dict = {}
    for r in df.itertuples():
        out.setdefault(r.run, {}).setdefault(r.weights, {}).setdefault(r.eval_domain, {}).setdefault(r.level, {})[
            r.metric
        ] = round(float(r.value), 4)
    return out


def versions() -> dict:
    v = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return v


class Page:
    """Writes each figure's PNG and each table's CSV beside the page; returns what the template shows."""

    def __init__(self, out_dir: Path, captions: Path):
        self.out_dir, self.captions = out_dir, captions

    def caption(self, key: str) -> str:
        f = self.captions / f"{key}.rst"
        if not f.is_file():
            raise UserError(f"{f}: caption missing; add a one-sentence caption for figure {key!r}")
        return " ".join(f.read_text().split())

    def csv(self, name: str, df: pd.DataFrame) -> str:
        write_bytes(self.out_dir / "tables" / f"{name}.csv", df.to_csv(index=False).encode())
        return f"tables/{name}.csv"

    def figure(
        self, key: str, fig: figures.Drawn | bytes | None, data: pd.DataFrame | None, caption: str | None = None
    ) -> dict | None:
        """figures/<key>.png (and .svg for a Drawn figure; bytes: a PNG only) and its CSV."""
        if fig is None:
            return None
        png = fig.png if isinstance(fig, figures.Drawn) else fig
        write_bytes(self.out_dir / "figures" / f"{key}.png", png)
        svg = None
        if isinstance(fig, figures.Drawn):
            write_bytes(self.out_dir / "figures" / f"{key}.svg", fig.svg)
            svg = f"figures/{key}.svg"
        return dict(
            key=key,
            caption=caption or self.caption(key),
            png=base64.b64encode(png).decode(),
            svg=svg,
            link=self.csv(key, data) if data is not None else None,
        )

    def linked(self, name: str, df: pd.DataFrame, shown: pd.DataFrame | None = None, **fmt) -> dict | None:
        """A table shown in the page (shown, else df) beside the link to df's CSV; None when df is empty."""
        if df.empty:
            return None
        return dict(link=self.csv(name, df), html=table(df if shown is None else shown, **fmt))

    def axis(self, key: str, table: pd.DataFrame, draw, params: str, data: pd.DataFrame | None = None) -> dict:
        """An axis's section: its figure (draw(table)) and CSV, or a note naming the empty params."""
        if table.empty:
            return section(key, empty=params)
        return section(key, figure=self.figure(key, draw(table), table if data is None else data))


def splits(eval_tables: dict[str, pd.DataFrame]) -> str:
    """Which split the numbers come from: the tables' split column, else what the evaluation does (test)."""
    seen = {
        k: sorted(map(str, d["split"].dropna().unique()))
        for k, d in eval_tables.items()
        if not d.empty and "split" in d
    }
    if not seen:
        return "the test split (the evaluation tables carry no split column)"
    return "; ".join(f"{k}: {', '.join(v)} split" for k, v in seen.items())


def probe_settings(eval_tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The extra columns of each table (the probes' settings chosen on val): their values per method and metric."""
    rows = []
    for kind, d in eval_tables.items():
        extra = [c for c in d.columns if c not in KNOWN] if not d.empty else []
        for c in extra:
            for (m, metric), g in d.groupby(["method", "metric"] if "method" in d else ["pair", "metric"], sort=True):
                vals = sorted(map(str, g[c].dropna().unique()))
                if vals:
                    rows.append(dict(table=kind, method=m, metric=metric, setting=c, values=", ".join(vals)))
    return pd.DataFrame(rows)


def results_summary(base: pd.DataFrame, flags: dict[str, str]) -> pd.DataFrame:
    """Means over seeds of the study's own runs (pretrained and random weights) per level and metric."""
    if base.empty:
        return base
    single = base[["domain", "subset", "quality"]].drop_duplicates().shape[0] == 1
    model = (
        base["method"]
        if single
        else base["method"] + "/" + base["domain"] + "_" + base["subset"] + "_" + base["quality"]
    )
    d = (
        base.assign(model=model)
        .groupby(["model", "weights", "eval_domain", "level_index", "level", "metric", "seed", "run"], as_index=False)[
            "value"
        ]
        .mean()
    )
    return tables.summary(d, ["model", "weights", "eval_domain", "level_index", "level", "metric"], flags)


def comparison_tables(cs: pd.DataFrame) -> list[dict]:
    """One table per comparison kind present (title, table html)."""
    out = []
    for axis, kind in comparisons.COMPARISON_KINDS:
        wide = comparisons.shown(cs, kind)
        if not wide.empty:
            out.append(dict(title=f"{axis}: {kind}", html=table(wide, index=True)))
    return out


def fusion_pairs(fusion: pd.DataFrame, cs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each pair and evaluation domain at the finest level: each member and the fused features
    (mean ± interval over seeds), and the paired gain of fused over the better member; and the
    summary behind it (its CSV)."""
    f = tables.finest(fusion)
    s = tables.summary(f, ["pair", "eval_domain", "member", "metric"], {})
    s["column"] = s["member"].map({"a": "member a", "b": "member b", "a+b": "fused"})
    wide = tables.cells(s, ["pair", "eval_domain"], ["column"])
    wide = wide[[c for c in ("member a", "member b", "fused") if c in wide.columns]]
    gain = tables.finest(cs[cs["axis"] == "fusion"])
    if not gain.empty:  # (pair, evaluation domain) -> (the pair marked when a member is suspect, the gain's cell)
        by = {
            (r.a.removesuffix(" (fused)"), r.eval_domain): (
                suspects.with_mark(r.a.removesuffix(" (fused)"), r.suspect),
                comparisons.diff_cell(r),
            )
            for r in gain.itertuples()
        }
        keys = list(wide.index)
        wide = wide.assign(**{"gain over better member": [by.get(k, ("", "–"))[1] for k in keys]})
        wide.index = pd.MultiIndex.from_tuples(
            [(by.get(k, (k[0], ""))[0], k[1]) for k in keys], names=["pair", "eval_domain"]
        )
    wide.columns.name = None
    return wide, s.drop(columns="column")


def section(key: str, figure: dict | None = None, empty: str | None = None, **extra) -> dict:
    title, question = SECTIONS[key]
    return dict(key=key, title=title, question=question, figure=figure, empty=empty, **extra)


def table(df: pd.DataFrame, digits: int = 3, index: bool = False) -> Markup | None:
    """df as HTML (to_html escapes every cell and label); None when empty."""
    if df.empty:
        return None
    return Markup(df.to_html(float_format=lambda x: f"{x:.{digits}f}", border=0, index=index))


def _curves(files: dict[str, Path]) -> pd.DataFrame:
    """Each run's metrics.jsonl (run id -> file), in run order."""
    tables.require(files.values(), "pretraining metrics")
    frames = [pd.read_json(files[r], lines=True).assign(run=r) for r in sorted(files)]
    return pd.concat(frames).drop_duplicates(["run", "epoch"], keep="last") if frames else pd.DataFrame()


def _data_figures(page: Page, datasets: dict[str, Path]) -> list[dict]:
    from ..data.packed import load_dataset
    from ..data.synth import contact_sheet

    out = []
    for domain, folder in datasets.items():
        ds = load_dataset(folder)
        path = page.out_dir / "figures" / f"data_{domain}.png"
        contact_sheet(ds.images, ds.labels, path, level=ds.levels[0])
        caption = (
            f"Domain {domain}: {ds.meta['n_images']} images of {ds.meta['image_size']} px; "
            + ", ".join(f"{lv} {ds.n_classes(lv)} classes" for lv in ds.levels)
            + "."
        )
        out.append(page.figure(f"data_{domain}", path.read_bytes(), None, caption))
    return out


def _model_check(config: dict):
    """provenance.check_finals now, and check(kind, table, path): provenance.check_rows of one table."""
    provenance.check_finals(config)
    hashes = provenance.expected(config)
    return lambda kind, df, path: provenance.check_rows(kind, df, path, config, hashes)


def build_report(
    inputs: dict[str, list[Path]],
    config: dict,
    out: Path,
    captions: Path,
    curves: dict[str, Path] | None = None,
    benchmarks: list[tuple[str, Path]] = (),
    datasets: dict[str, Path] | None = None,
    data_dvc: Path | None = None,
    verify_models: bool = False,
    preflight: Path | None = None,
) -> None:
    """The page and tidy tables from the evaluation tables (inputs: kind -> CSVs) and the files named:
    curves (run id -> metrics.jsonl), benchmarks ((rule, TSV) of each job), datasets (evaluation
    domain -> packed folder, drawn as contact sheets), data_dvc (its hash is shown) and preflight (the
    cost table `sslstudy preflight` wrote before the study ran; shown where it exists). verify_models:
    first check that every model of the config has its final.pt and every row was made from the model
    the config now describes (sslstudy.provenance), else stop with one line."""
    check = _model_check(config) if verify_models else None
    eval_tables = {k: tables.load(v, functools.partial(check, k) if check else None) for k, v in inputs.items()}
    for kind in ("frozen", "dense"):  # random weights evaluated once per seed: every run's rows
        if kind in eval_tables:
            eval_tables[kind] = tables.share_random(eval_tables[kind], config, kind)
    frozen = eval_tables["frozen"]
    if frozen.empty:
        raise UserError("no frozen evaluation tables given; the study has no runs (check study: in params)")
    out_dir = out.parent
    page = Page(out_dir, captions)

    eval_tables.setdefault("dense", pd.DataFrame())
    tagged = [
        eval_tables[k].assign(eval=k)
        for k in ("frozen", "lowshot", "supervised", "fusion", "clusters", "dense")
        if not eval_tables[k].empty
    ]
    write_bytes(out_dir / "metrics.csv", pd.concat(tagged, ignore_index=True).to_csv(index=False).encode())
    write_bytes(out_dir / "metrics.json", (json.dumps(summary(frozen), indent=2, sort_keys=True) + "\n").encode())

    # runs not to show as plain results: collapsed, or below their own random weights
    loss = _curves(curves or {})
    suspect = suspects.suspects(frozen, loss)
    flags = dict(zip(suspect["run"], suspect["flag"]))

    # baseline: the study's own runs, pretrained vs random weights
    base = comparisons.baseline(frozen)
    dvc.write(out_dir, base, loss, eval_tables["clusters"])
    rs = results_summary(base, flags)
    shown = rs[rs["metric"].isin(METRICS)]
    wide = (
        shown
        if shown.empty
        else tables.cells(
            shown,
            ["model", "weights", "eval_domain"] if rs["eval_domain"].nunique() > 1 else ["model", "weights"],
            ["metric", "level_index", "level"],
            label="model",
        ).droplevel(1, axis=1)
    )

    # every comparison, paired on seed; the findings from them
    per_seed = comparisons.per_seed(eval_tables, config)
    cs = comparisons.summary(per_seed, flags)
    found = findings.findings(per_seed, config, eval_tables)
    head = findings.headline(found, config)

    gr = tables.granularity(frozen, config)
    ft = tables.fusion_table(eval_tables["fusion"])
    fusion = page.axis(
        "fusion",
        ft,
        lambda _: figures.fusion(eval_tables["fusion"]),
        "fusion.kinds and fusion.pairs",
        data=eval_tables["fusion"],
    )
    fusion["pairs"] = None
    if fusion["figure"]:
        pairs, pair_summary = fusion_pairs(eval_tables["fusion"], cs)
        fusion["pairs"] = page.linked("fusion_pairs", pair_summary, pairs, index=True)

    seconds = (
        loss
        if loss.empty
        else (
            loss.groupby("run")["seconds"]
            .agg(["sum", "count"])
            .rename(columns={"sum": "pretrain seconds", "count": "epochs"})
        )
    )
    seconds = suspects.marked(seconds, flags)
    data_version = yaml.safe_load(data_dvc.read_text())["outs"][0]["md5"] if data_dvc else "(no data.dvc)"

    doc = ENV.get_template("report.html").render(
        n_models=frozen["run"].nunique(),
        nav=SECTIONS,
        warnings=dict(
            rows=suspect.to_dict("records"), checked=suspects.CHECKED, link=page.csv("suspect_runs", suspect)
        ),
        split=splits(eval_tables),
        interval=stats.INTERVAL_NOTE,
        findings=dict(
            table=table(
                head.drop(columns=["why"]).rename(
                    columns={"found": "this study found (a − b ± 95% t half-width, n seeds)"}
                )
            )
            if not head.empty
            else None,
            why=head[["finding", "why"]].to_dict("records"),
            link=page.csv("findings", found),
            margin=findings.FUSION_MARGIN,
        ),
        comparisons=dict(
            tables=comparison_tables(cs),
            link=page.csv("comparisons", cs),
            per_seed=page.csv("comparisons_per_seed", per_seed),
        ),
        probes=page.linked("probe_settings", probe_settings(eval_tables)),
        results=dict(
            summary=page.csv("results_summary", rs),
            figure=page.figure("accuracy_per_level", figures.accuracy_per_level(base, flags), base),
            table=table(wide, index=True),
        ),
        quantity=page.axis(
            "quantity",
            tables.quantity(eval_tables["lowshot"], eval_tables["supervised"]),
            figures.quantity,
            "quantity.labels",
        ),
        domain=page.axis("domain", tables.domain_matrix(frozen, config), figures.domain_heatmap, "domain.domains"),
        quality=page.axis(
            "quality", tables.quality_drop(frozen, config), figures.quality_drop, "quality (every corruption list)"
        ),
        granularity=section("granularity", figure=page.figure("granularity", figures.granularity(gr), gr)),
        fusion=fusion,
        clustering=page.axis("clustering", eval_tables["clusters"], figures.clustering, "clustering.enabled"),
        dense=dense_report.section(page, eval_tables["dense"]),
        pretraining=dict(
            figure=page.figure("pretrain_loss", figures.loss(loss, flags), loss),
            table=table(seconds, digits=1, index=True),
            wall=page.linked("walltime", tables.walltime(benchmarks), digits=1),
        ),
        cost=cost_report.section(page, preflight),
        data=dict(version=str(data_version), figures=_data_figures(page, datasets or {})),
        config=yaml.safe_dump(config, sort_keys=False),
        versions=table(pd.Series(versions(), name="version").to_frame(), index=True),
    )
    write_bytes(out, doc.encode())
