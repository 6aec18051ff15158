"""The report's Dense section (sslstudy.eval.dense's tables): mIoU, pixel accuracy and the
correspondence score per method with a t interval over seeds, and DenseCL minus MoCo v2 paired
on seed (DenseCL's claim: better dense features than MoCo v2 at equal cost)."""

from __future__ import annotations

import pandas as pd

from .. import stats

KEY = "dense"
TITLE = "Dense"
QUESTION = (
    "Does dense pretraining help dense prediction? A frozen linear 1x1-conv probe on each backbone's last "
    "feature map (mIoU per mask level) and the label-free correspondence of DenseCL's matching, DenseCL "
    "against MoCo v2."
)
PAIR = ("densecl", "moco")  # DenseCL is MoCo v2 plus its dense head
_BY = ["eval_domain", "level", "metric"]


def summary(dense: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, weights, eval domain, level, metric): mean and interval over seeds."""
    return stats.summarise(dense, ["method", "weights", *_BY])


def versus(dense: pd.DataFrame, a: str = PAIR[0], b: str = PAIR[1]) -> pd.DataFrame:
    """a minus b (pretrained weights), paired on seed, per (eval domain, level, metric); empty
    unless both methods are in the table."""
    pre = dense[dense["weights"] == "pretrained"]
    if not {a, b} <= set(pre["method"]):
        return pd.DataFrame()
    return stats.compare(pre, _BY, "method", a, b).assign(comparison=f"{a} - {b}")


def shown(s: pd.DataFrame) -> pd.DataFrame:
    """summary() as the page shows it: methods x (level, metric), each cell 'mean [low, high]'."""
    cells = s.assign(cell=[stats.Interval(r.mean, r.low, r.high, r.n, 0.95, r.interval).text() for r in s.itertuples()])
    return cells.pivot_table(
        index=["eval_domain", "method", "weights"], columns=["level", "metric"], values="cell", aggfunc="first"
    )


def section(page, dense: pd.DataFrame) -> dict:
    """What templates/dense.html shows: the summary and the DenseCL - MoCo v2 difference, each
    linked to its CSV; ``empty`` names the params key when the study has no dense evaluation."""
    out = dict(key=KEY, title=TITLE, question=QUESTION, empty=None, summary=None, versus=None, pair=" - ".join(PAIR))
    if dense.empty:
        return dict(out, empty="dense.enabled")
    s = summary(dense)
    out["summary"] = page.linked("dense_summary", s, shown(s), index=True)
    out["versus"] = page.linked("dense_versus", versus(dense))
    return out
