"""One standalone HTML page (figures inlined), one section per axis of the study, plus tidy tables
(results/tables/*.csv, results/metrics.csv) that users can re-plot with pandas.

Every figure has a one-sentence caption, read from ``<captions>/<figure>.rst`` (the workflow ships
them in workflow/report/), and a link to the CSV it was drawn from.
"""
from __future__ import annotations

import base64
import html
import importlib.metadata as md
import json
import platform
from pathlib import Path

import pandas as pd
import yaml

from ..atomic import write_bytes
from ..config import dataset_path
from ..errors import UserError
from . import figures, tables

PACKAGES = ("torch", "torchvision", "faiss-cpu", "snakemake", "dvc", "submitit", "numpy", "pandas", "seaborn", "scikit-learn")
# section title -> what it answers (the first paragraph of each section)
SECTIONS = {
    "quantity": ("Quantity", "How much do more pretraining images and more labels help, frozen and fine-tuned, "
                             "against the same network trained from scratch on the same labels?"),
    "domain": ("Domain", "Does pretraining on the evaluation domain matter, and does pooling domains (equal total size) help?"),
    "quality": ("Quality", "How much accuracy on clean images is lost when pretraining images are corrupted?"),
    "granularity": ("Granularity", "How does accuracy fall from coarse to fine labels, for SSL and for supervised training?"),
    "fusion": ("Fusion", "Do two models' concatenated features beat the better one alone?"),
    "clustering": ("Periodic clustering", "How does the cluster structure of the features (faiss k-means, K = classes "
                                          "per level) develop over pretraining?"),
}


def summary(df: pd.DataFrame) -> dict:
    """Nested run -> weights -> eval domain -> level -> metric, for `dvc metrics show`."""
    out: dict = {}
    for r in df.itertuples():
        out.setdefault(r.run, {}).setdefault(r.weights, {}).setdefault(r.eval_domain, {}).setdefault(r.level, {})[r.metric] = (
            round(float(r.value), 4))
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
    """Collects sections; writes each figure's PNG and CSV beside the page and links them."""

    def __init__(self, out_dir: Path, captions: Path):
        self.out_dir, self.captions, self.parts = out_dir, captions, []

    def caption(self, key: str) -> str:
        f = self.captions / f"{key}.rst"
        if not f.is_file():
            raise UserError(f"{f}: caption missing; add a one-sentence caption for figure {key!r}")
        return " ".join(f.read_text().split())

    def csv(self, name: str, df: pd.DataFrame) -> str:
        write_bytes(self.out_dir / "tables" / f"{name}.csv", df.to_csv(index=False).encode())
        return f"tables/{name}.csv"

    def figure(self, key: str, png: bytes | None, data: pd.DataFrame, caption: str | None = None) -> None:
        if png is None:
            return
        write_bytes(self.out_dir / "figures" / f"{key}.png", png)
        link = self.csv(key, data) if data is not None else None
        cap = html.escape(caption or self.caption(key))
        a = f' <a href="{link}">data (CSV)</a>' if link else ""
        self.parts.append(f'<figure id="fig-{key}"><img alt="{cap}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                          f"<figcaption>{cap}{a}</figcaption></figure>")

    def table(self, df: pd.DataFrame, digits: int = 3, index: bool = False) -> None:
        if not df.empty:
            self.parts.append(df.to_html(float_format=lambda x: f"{x:.{digits}f}", border=0, index=index))

    def add(self, text: str) -> None:
        self.parts.append(text)

    def section(self, key: str) -> None:
        title, question = SECTIONS[key]
        self.parts.append(f'<h2 id="{key}">{title}</h2><p class="q">{html.escape(question)}</p>')

    def empty(self, what: str) -> None:
        self.parts.append(f"<p><em>Not in this study: {html.escape(what)} is empty in params.</em></p>")

    def axis(self, key: str, table: pd.DataFrame, draw, params: str, data: pd.DataFrame | None = None) -> bool:
        """An axis's section: its figure (draw(table)) and CSV, or a note naming the empty params."""
        self.section(key)
        if table.empty:
            self.empty(params)
            return False
        self.figure(key, draw(table), table if data is None else data)
        return True


def _curves(runs_dir: Path, run_ids: list[str]) -> pd.DataFrame:
    frames = [pd.read_json(runs_dir / r / "metrics.jsonl", lines=True).assign(run=r)
              for r in run_ids if (runs_dir / r / "metrics.jsonl").is_file()]
    return pd.concat(frames).drop_duplicates(["run", "epoch"], keep="last") if frames else pd.DataFrame()


def _data_figures(page: Page, config: dict, domains: list[str]) -> None:
    from ..data.packed import load_dataset
    from ..data.synth import contact_sheet

    for domain in domains:
        ds = load_dataset(dataset_path(config, domain))
        path = page.out_dir / "figures" / f"data_{domain}.png"
        contact_sheet(ds.images, ds.labels, path, level=ds.levels[0])
        caption = (f"Domain {domain}: {ds.meta['n_images']} images of {ds.meta['image_size']} px; "
                   + ", ".join(f"{lv} {ds.n_classes(lv)} classes" for lv in ds.levels) + ".")
        page.figure(f"data_{domain}", path.read_bytes(), None, caption)


def build_report(inputs: dict[str, list[Path]], config: dict, out: Path, captions: Path) -> None:
    t = {k: tables.load(v) for k, v in inputs.items()}
    frozen = t["frozen"]
    if frozen.empty:
        raise UserError("no frozen evaluation tables given; the study has no runs (check study: in params)")
    out_dir = out.parent
    page = Page(out_dir, captions)

    tagged = [t[k].assign(eval=k) for k in ("frozen", "lowshot", "supervised", "fusion", "clusters") if not t[k].empty]
    write_bytes(out_dir / "metrics.csv", pd.concat(tagged, ignore_index=True).to_csv(index=False).encode())
    write_bytes(out_dir / "metrics.json", (json.dumps(summary(frozen), indent=2, sort_keys=True) + "\n").encode())

    runs = sorted(r for r in frozen["run"].unique())
    page.add("<h1>sslstudy report</h1>"
             f"<p>{len(runs)} model(s) evaluated. Linear probes are trained on the finest labels and their predictions "
             "mapped up the hierarchy; kNN and k-means are scored at each level; every evaluation is on clean images "
             "of the test split. Tidy tables: <a href=\"metrics.csv\">metrics.csv</a> (every row of every evaluation, "
             "column <code>eval</code> says which) and one CSV per figure.</p>"
             "<nav>" + " · ".join(f'<a href="#{k}">{v[0]}</a>' for k, v in SECTIONS.items()) + "</nav>")

    # baseline: the study's own runs, pretrained vs random weights
    base = frozen[frozen["run"].isin(frozen.loc[frozen["weights"] == "random", "run"])]
    base = base[base["eval_domain"] == base["domain"]]
    page.add("<h2>Results</h2>")
    page.figure("accuracy_per_level", figures.accuracy_per_level(base), base)
    wide = (base.pivot_table(index=["run", "weights"], columns=["level_index", "level", "metric"], values="value")
            .sort_index(axis=1).droplevel(0, axis=1))
    page.table(wide, index=True)

    page.axis("quantity", tables.quantity(t["lowshot"], t["supervised"]), figures.quantity, "quantity.labels")
    page.axis("domain", tables.domain_matrix(frozen, config), figures.domain_heatmap, "domain.domains")
    page.axis("quality", tables.quality_drop(frozen, config), figures.quality_drop, "quality (every corruption list)")

    page.section("granularity")
    gr = tables.granularity(frozen, config)
    page.figure("granularity", figures.granularity(gr), gr)
    gap = tables.granularity_gap(gr)
    if not gap.empty:
        page.add(f'<p>SSL minus supervised, per level (<a href="{page.csv("granularity_gap", gap)}">CSV</a>):</p>')
        page.table(gap.pivot_table(index=["domain", "method", "metric"], columns=["level_index", "level"], values="gap")
                   .droplevel(0, axis=1), index=True)

    ft = tables.fusion_table(t["fusion"])
    if page.axis("fusion", ft, figures.fusion, "fusion.kinds and fusion.pairs", data=t["fusion"]):
        page.add(f'<p>Each pair vs its members, finest level (<a href="{page.csv("fusion_table", ft)}">CSV</a>):</p>')
        page.table(ft)

    page.axis("clustering", t["clusters"], figures.clustering, "clustering.enabled")

    curves = _curves(out_dir / "runs", sorted(set(frozen["run"]) | set(t["clusters"].get("run", []))))
    page.add("<h2>Pretraining</h2>")
    page.figure("pretrain_loss", figures.loss(curves), curves)
    if not curves.empty:
        page.table(curves.groupby("run")["seconds"].agg(["sum", "count"])
                   .rename(columns={"sum": "pretrain seconds", "count": "epochs"}), digits=1, index=True)
    wall = tables.walltime(out_dir / "benchmarks")
    if not wall.empty:
        page.add(f'<h3>Wall time per stage</h3><p>From Snakemake benchmark files (seconds of wall clock and of CPU; '
                 f'<a href="{page.csv("walltime", wall)}">CSV</a>); jobs of a stage may run in parallel, and the '
                 'report itself is not included.</p>')
        page.table(wall, digits=1)

    dvc_file = Path("data.dvc")
    data_version = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"] if dvc_file.is_file() else "(no data.dvc)"
    page.add(f"<h2>Data</h2><p>data.dvc md5: <code>{html.escape(str(data_version))}</code></p>")
    plain = [d for d in dict.fromkeys(frozen["eval_domain"]) if Path(dataset_path(config, d)).is_dir()]  # not pools
    _data_figures(page, config, plain)
    page.add("<h2>Config</h2>" f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>"
             "<h2>Versions</h2>" + pd.Series(versions(), name="version").to_frame().to_html(border=0))

    body = "".join(page.parts)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>sslstudy report</title><style>
body{{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:13px;margin:.5em 0}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}
figure{{margin:1em 0}} img{{max-width:100%}} figcaption{{color:#555;font-size:14px}} p.q{{font-style:italic}}
pre{{background:#f6f6f6;padding:1em;font-size:12px}} nav{{margin:1em 0}}
</style></head><body>{body}</body></html>"""
    write_bytes(out, doc.encode())
