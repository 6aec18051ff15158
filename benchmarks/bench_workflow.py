"""The cost of the workflow machinery itself: Snakemake dry-runs, a re-run with nothing to do, and
`dvc status` on the default data, in wall-clock and CPU seconds.

    PYTHONPATH=ssl python benchmarks/bench_workflow.py [PARAMS.yaml ...] [--rounds 3] [--rerun-study]

* `snakemake -n` on each params file given (default: params/study.yaml, and params/paper.yaml
  when it exists), run from the repository root with `--configfile` -- target <= 20 s for the
  paper-scale grid.
* A re-run with nothing changed (`snakemake --cores 2` on finished outputs) -- target <= 5 s.
  Measured in the repository when `snakemake -n` there has nothing to do (after `make study`);
  otherwise, with --rerun-study, on a copy of the workflow (Snakefile, workflow/, params/, ssl/,
  data linked) in a temporary folder where the default study's DAG (the same jobs and files) is
  first run with 1 epoch and a 1-epoch linear probe, then timed with nothing to do.
* `dvc status data.dvc` (the default data) and plain `dvc status` -- target <= 2 s.

Each command runs --rounds times (after one untimed warm-up run); the best and median wall-clock
seconds are printed, and the CPU seconds (user + system of the command and its children) of the
best round: on this shared 2-core machine the wall clock mostly measures waiting for a core, while
the CPU seconds are what the command itself costs.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["pretrain={'epochs': 1, 'checkpoint_every': 1, 'optim': {'warmup_epochs': 0}}", "eval={'linear_epochs': 1}"]


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"  # the venv's snakemake, dvc and sslstudy
    return e


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall-clock and CPU seconds (user + sys of the command and its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"error: `{' '.join(cmd)}` failed in {cwd}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout + proc.stderr


def measure(label: str, cmd: list[str], cwd: Path, rounds: int, target: float) -> str:
    _, _, out = timed(cmd, cwd)  # warm-up: page cache, .pyc files, DVC's state database
    runs = [timed(cmd, cwd)[:2] for _ in range(rounds)]
    walls = [w for w, _ in runs]
    best = min(runs)
    verdict = "meets" if best[0] <= target else "MISSES"
    print(
        f"  {label:<52} best {best[0]:6.2f} s  median {statistics.median(walls):6.2f} s  "
        f"(all: {', '.join(f'{w:.2f}' for w in walls)})  CPU {best[1]:5.2f} s   target <= {target:g} s: {verdict}"
    )
    return out


def nothing_to_do(out: str) -> bool:
    return "Nothing to be done" in out


def copy_workflow(dest: Path) -> None:
    for name in ("Snakefile", "workflow", "params", "ssl", "slurm"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    (dest / "data").symlink_to(ROOT / "data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "params",
        nargs="*",
        help="params files for the dry-runs (default: params/study.yaml and params/paper.yaml if it exists)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--rerun-study",
        action="store_true",
        help="if the repository's results are not complete, time the no-change re-run on a 1-epoch "
        "copy of the default study in a temporary folder (runs it once first: a few minutes)",
    )
    args = ap.parse_args()
    params = args.params or [p for p in ("params/study.yaml", "params/paper.yaml") if (ROOT / p).is_file()]
    smk = [str(BIN / "snakemake")]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.rounds} timed rounds each")

    print("\n[snakemake -n]")
    dry = {}
    for p in params:
        out = measure(f"snakemake -n --configfile {p}", smk + ["-n", "--configfile", p], ROOT, args.rounds, 20)
        jobs = [ln for ln in out.splitlines() if ln.startswith("total")]
        print(f"  {'':<52} ({jobs[-1].split()[-1] + ' jobs' if jobs else 'nothing to do'})")
        dry[p] = out

    print("\n[re-run with nothing changed]")
    default = "params/study.yaml"
    if default in dry and nothing_to_do(dry[default]):
        measure("snakemake --cores 2 (finished default study)", smk + ["--cores", "2"], ROOT, args.rounds, 5)
    elif args.rerun_study:
        with tempfile.TemporaryDirectory(prefix="sslstudy-bench-workflow-") as tmp:
            tmp = Path(tmp)
            copy_workflow(tmp)
            cmd = smk + ["--cores", "2", "--quiet", "all", "--config", *TINY]
            t = time.perf_counter()
            timed(cmd, tmp)
            print(f"  (ran the default study's DAG with 1 epoch in a temporary copy: {time.perf_counter() - t:.0f} s)")
            check = timed(smk + ["-n", "--config", *TINY], tmp)[2]
            if not nothing_to_do(check):
                sys.exit(f"error: the finished copy still has jobs to run:\n{check[-2000:]}")
            measure("snakemake --cores 2 (finished 1-epoch copy)", cmd, tmp, args.rounds, 5)
    else:
        print(
            "  skipped: results/ of the default study are not complete here; run `make study` first, "
            "or pass --rerun-study"
        )

    print("\n[dvc status]")
    dvc = [str(BIN / "dvc"), "status"]
    measure("dvc status data.dvc (the default data)", dvc + ["data.dvc"], ROOT, args.rounds, 2)
    measure("dvc status (data and the study stage)", dvc, ROOT, args.rounds, 2)


if __name__ == "__main__":
    main()
