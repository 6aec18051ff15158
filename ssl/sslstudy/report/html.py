"""One standalone HTML page (figures inlined) plus tidy tables that users can re-plot."""
from __future__ import annotations

import base64
import html
import importlib.metadata as md
import io
import json
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import yaml  # noqa: E402

from ..atomic import write_bytes  # noqa: E402
from ..errors import UserError  # noqa: E402

PACKAGES = ("torch", "torchvision", "faiss-cpu", "snakemake", "dvc", "submitit", "numpy", "pandas", "seaborn", "scikit-learn")
METRIC_NAMES = {"knn": "kNN accuracy", "linear": "linear accuracy", "nmi": "k-means NMI", "ari": "k-means ARI"}


def _png(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return base64.b64encode(buf.getvalue()).decode()


def _figure(b64: str, caption: str, csv: str | None = None) -> str:
    link = f' <a href="{html.escape(csv)}">data (CSV)</a>' if csv else ""
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(caption)}{link}</figcaption></figure>")


def load_tables(paths: list[Path]) -> pd.DataFrame:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{missing[0]}: evaluation table missing; run the study (snakemake) to produce it")
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def summary(df: pd.DataFrame) -> dict:
    """Nested run -> weights -> level -> metric, for `dvc metrics show`."""
    out: dict = {}
    for r in df.itertuples():
        out.setdefault(r.run, {}).setdefault(r.weights, {}).setdefault(r.level, {})[r.metric] = round(float(r.value), 4)
    return out


def accuracy_figure(df: pd.DataFrame, out_dir: Path) -> str:
    d = df.assign(metric=df["metric"].map(METRIC_NAMES)).sort_values(["level_index"])
    g = sns.catplot(data=d, x="level", y="value", hue="weights", col="metric", row="run", kind="bar",
                    height=2.8, aspect=0.9, hue_order=["random", "pretrained"], palette=["#bbbbbb", "#2a6fb0"],
                    col_order=list(METRIC_NAMES.values()), errorbar=None)
    g.set_titles("{col_name}" if d["run"].nunique() == 1 else "{row_name}\n{col_name}")
    g.set(ylim=(0, 1), xlabel="label level (coarse → fine)", ylabel="")
    return _png(g.figure, out_dir / "accuracy_per_level.png")


def loss_figure(runs_dir: Path, run_ids: list[str], out_dir: Path) -> tuple[str | None, pd.DataFrame]:
    frames = []
    for rid in run_ids:
        f = runs_dir / rid / "metrics.jsonl"
        if f.is_file():
            frames.append(pd.read_json(f, lines=True).assign(run=rid))
    if not frames:
        return None, pd.DataFrame()
    curves = pd.concat(frames).drop_duplicates(["run", "epoch"], keep="last")
    fig, ax = plt.subplots(figsize=(5, 3))
    sns.lineplot(data=curves, x="epoch", y="loss", hue="run", ax=ax)
    ax.set_title("pretraining loss")
    return _png(fig, out_dir / "pretrain_loss.png"), curves


def data_figures(config: dict, out_dir: Path) -> list[str]:
    from ..config import dataset_path
    from ..data.packed import load_dataset
    from ..data.synth import contact_sheet

    figs = []
    for domain in dict.fromkeys(config["study"]["domains"]):
        ds = load_dataset(dataset_path(config, domain))
        path = out_dir / f"data_{domain}.png"
        contact_sheet(ds.images, ds.labels, path, level=ds.levels[0])
        caption = (f"Domain {domain}: {ds.meta['n_images']} images of {ds.meta['image_size']} px; "
                   + ", ".join(f"{lv} {ds.n_classes(lv)} classes" for lv in ds.levels) + ".")
        figs.append(_figure(base64.b64encode(path.read_bytes()).decode(), caption))
    return figs


def versions() -> dict:
    v = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return v


def build_report(inputs: list[Path], config: dict, out: Path) -> None:
    df = load_tables(inputs)
    out_dir = out.parent
    fig_dir = out_dir / "figures"
    write_bytes(out_dir / "metrics.csv", df.to_csv(index=False).encode())
    write_bytes(out_dir / "metrics.json", (json.dumps(summary(df), indent=2, sort_keys=True) + "\n").encode())

    wide = (df.pivot_table(index=["run", "weights"], columns=["level_index", "level", "metric"], values="value")
            .sort_index(axis=1).droplevel(0, axis=1))
    loss_b64, curves = loss_figure(out_dir / "runs", sorted(df["run"].unique()), fig_dir)
    times = (curves.groupby("run")["seconds"].agg(["sum", "count"]).rename(columns={"sum": "pretrain seconds", "count": "epochs"})
             if len(curves) else pd.DataFrame())
    dvc_file = Path("data.dvc")
    data_version = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"] if dvc_file.is_file() else "(no data.dvc)"

    sections = [
        "<h1>sslstudy report</h1>",
        f"<p>{df['run'].nunique()} run(s); pretrained weights against the same backbone at its random initialisation "
        "(epoch 0 of the same seed). Linear probe trained on the finest labels and mapped up the hierarchy; "
        "kNN and k-means scored at each level.</p>",
        "<h2>Results</h2>",
        _figure(accuracy_figure(df, fig_dir), "Accuracy and clustering scores per label level, pretrained vs random weights.", "metrics.csv"),
        "<h3>Metrics</h3>", wide.to_html(float_format=lambda x: f"{x:.3f}", border=0),
    ]
    if loss_b64:
        sections += ["<h2>Pretraining</h2>", _figure(loss_b64, "Pretraining loss per epoch."),
                     times.to_html(float_format=lambda x: f"{x:.1f}", border=0)]
    sections += ["<h2>Data</h2>", f"<p>data.dvc md5: <code>{html.escape(str(data_version))}</code></p>", *data_figures(config, fig_dir),
                 "<h2>Config</h2>", f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>",
                 "<h2>Versions</h2>", pd.Series(versions(), name="version").to_frame().to_html(border=0)]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sslstudy report</title><style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:13px}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}
figure{{margin:1em 0}} img{{max-width:100%}} figcaption{{color:#555;font-size:14px}} pre{{background:#f6f6f6;padding:1em;font-size:12px}}
</style></head><body>{''.join(sections)}</body></html>"""
    write_bytes(out, page.encode())
