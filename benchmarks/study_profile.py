"""Where a finished study's time went: per stage, jobs, summed job wall time and CPU seconds from
Snakemake's benchmark files (plus, for jobs run in the fork server, the CPU seconds their logs
report), split into start-up (interpreter + the stage's imports, measured here in fresh
interpreters, times the count of jobs that ran in their own process) and the rest (reading data
and checkpoints, compute).

    PYTHONPATH=ssl .venv/bin/python benchmarks/study_profile.py results/benchmarks
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from sslstudy.report.tables import forked_cpu

# What each stage's `sslstudy` command imports before it does any work (sslstudy/cli.py); torch._dynamo:
# what a process's first torch.optim optimizer imports (pretraining, fine-tuning; the dense probe too,
# in the evaluate jobs of the dense axis, not counted here; the linear probe has its own SGD).
IMPORTS = {
    "pretrain": "sslstudy.launch, sslstudy.train, torch._dynamo",
    # + eval.dense / eval.checkpoint_clustering where the model has them
    "evaluate": "torch, sslstudy.eval.frozen, sslstudy.checkpoint",
    "lowshot": "torch, sslstudy.eval.lowshot, sslstudy.checkpoint, torch._dynamo",
    "supervised": "torch, sslstudy.eval.lowshot, sslstudy.models, sslstudy.checkpoint, torch._dynamo",
    "fusion": "torch, sslstudy.eval.fusion, sslstudy.eval.features",
    "subset": "sslstudy.data.packed, sslstudy.data.subsets",
    "corrupt": "sslstudy.data.corrupt",
    "pool": "sslstudy.data.pool",
    "report": "sslstudy.report.html",
}


def import_cpu_seconds(modules: str, rounds: int = 3) -> float:
    """Best CPU time (user + sys) of a fresh interpreter importing ``modules``."""
    best = float("inf")
    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, "-c", f"import {modules}"], env=os.environ)
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            return float("nan")
        best = min(best, usage.ru_utime + usage.ru_stime)
    return best


def profile(bench_dir: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted(bench_dir.rglob("*.tsv")):
        b = pd.read_csv(tsv, sep="\t")
        forked = forked_cpu(tsv)
        rows.append(
            dict(
                stage=tsv.relative_to(bench_dir).parts[0],
                wall=float(b["s"].iloc[-1]),
                cpu=float(b["cpu_time"].iloc[-1]) + forked,
                own=not forked,
            )
        )
    if not rows:
        raise SystemExit(f"{bench_dir}: no Snakemake benchmark files; run the study first")
    df = (
        pd.DataFrame(rows)
        .groupby("stage")
        .agg(jobs=("wall", "size"), wall_s=("wall", "sum"), cpu_s=("cpu", "sum"), own=("own", "sum"))
    )
    start = {s: import_cpu_seconds(IMPORTS[s]) if s in IMPORTS else float("nan") for s in df.index}
    # a job run in the fork server imported nothing: only those in their own process pay the imports
    df["startup_cpu_s"] = [min(start[s] * n, c) for s, n, c in zip(df.index, df.pop("own"), df["cpu_s"])]
    df["rest_cpu_s"] = df["cpu_s"] - df["startup_cpu_s"]
    df = df.sort_values("cpu_s", ascending=False)
    df.loc["total"] = df.sum(numeric_only=True)
    return df.round(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_dir", type=Path, nargs="?", default=Path("results/benchmarks"))
    df = profile(ap.parse_args().bench_dir)
    print("| stage | jobs | job wall s | CPU s | start-up CPU s | rest CPU s |")
    print("|---|---|---|---|---|---|")
    for stage, r in df.iterrows():
        print(
            f"| {stage} | {int(r.jobs)} | {r.wall_s:,.0f} | {r.cpu_s:,.0f} | {r.startup_cpu_s:,.0f} | "
            f"{r.rest_cpu_s:,.0f} |"
        )


if __name__ == "__main__":
    main()
