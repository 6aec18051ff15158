"""The tiny study on one device without Snakemake, DVC or submitit (what benchmarks/gpu_check.sh runs
on a GPU machine that has none of them): the study's own commands on two small synthetic domains.

    PYTHONPATH=ssl python benchmarks/gpu_tiny_study.py --work DIR --device cuda [--methods simclr moco]
    PYTHONPATH=ssl python -m torch.distributed.run --nproc_per_node 2 benchmarks/gpu_tiny_study.py \\
        --work DIR --device cuda --stage pretrain          (data-parallel: NCCL on GPUs, gloo on the CPU)

Stages (--stage all runs them in order): data (two domains of 256 images at 32 px, a 128-image subset),
pretrain (each method, 2 epochs, `sslstudy.train.train` with pretrain.device = --device), evaluate
(`sslstudy evaluate`: kNN, linear probe, k-means and embeddings of the pretrained and random weights),
lowshot (`sslstudy lowshot`, frozen linear and fine-tuning, 1 label per class) and supervised
(`sslstudy supervised`, from scratch on the same labels), each with --device. Prints one line per job
with its seconds and result; exits non-zero at the first failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))

import pandas as pd  # noqa: E402
from sslstudy import axes, config, names  # noqa: E402
from sslstudy.cli import run_command  # noqa: E402
from sslstudy.data.packed import load_dataset  # noqa: E402
from sslstudy.data.subsets import nested_subsets, save_indices  # noqa: E402
from sslstudy.data.synth import generate  # noqa: E402
from sslstudy.train import train  # noqa: E402

STAGES = ("data", "pretrain", "evaluate", "lowshot", "supervised")


def study_config(methods: list[str], device: str) -> dict:
    """The validated config of the tiny study: schema defaults, a cnn4 of width 8, 2 epochs, small probes."""
    params = dict(
        study=dict(methods=methods, domains=["natural"]),
        pretrain=dict(
            epochs=2,
            batch_size=32,
            checkpoint_every=1,
            threads=2,
            device=device,
            backbone=dict(arch="cnn4", width=8),
            optim=dict(warmup_epochs=1),
        ),
        eval=dict(linear_epochs=5, knn_k=[5, 10], batch_size=128),
        finetune=dict(epochs=2, min_steps=10, batch_size=32),
    )
    return config.validate(params, "benchmarks/gpu_tiny_study.py")


def run_spec(cfg: dict, method: str, work: Path) -> dict:
    run = next(r for r in axes.ssl_runs(cfg) if r["method"] == method)
    spec = axes.pretrain_spec(cfg, run)
    spec["data"] = dict(dataset=str(work / "data" / "natural"), subset=str(work / "subset.npy"))
    return spec


def say(what: str, t0: float, result: str) -> None:
    print(f"{what}: {result} ({time.time() - t0:.1f} s)", flush=True)


def stage_data(work: Path) -> None:
    t0 = time.time()
    generate(work / "data", domains=("natural", "aerial"), n_images=256, image_size=32, seed=0)
    labels = load_dataset(work / "data" / "natural").labels
    save_indices(work / "subset.npy", nested_subsets(labels, [128], seed=0)[128])
    say("data", t0, "2 domains of 256 images at 32 px, a 128-image subset")


def stage_pretrain(cfg: dict, methods: list[str], work: Path) -> None:
    for method in methods:
        t0 = time.time()
        run_dir = work / "runs" / method
        train(run_spec(cfg, method, work), run_dir)
        if int(os.environ.get("RANK", "0")) == 0:
            rec = [json.loads(ln) for ln in (run_dir / names.METRICS).read_text().splitlines()]
            device = next(ln for ln in (run_dir / names.TRAIN_LOG).read_text().splitlines() if " device " in ln)
            world = os.environ.get("WORLD_SIZE", "1")
            say(
                f"pretrain {method}",
                t0,
                f"{len(rec)} epochs on {world} process(es), loss {rec[0]['loss']:.3f} -> {rec[-1]['loss']:.3f}, "
                f"{rec[-1]['views_per_s']:.0f} views/s; {device.split(' INFO ', 1)[-1]}",
            )


def common(cfg: dict, device: str, work: Path, run: str) -> list[str]:
    return ["--size", "32", "--run", run, "--eval", json.dumps(cfg["eval"]), "--device", device, "--threads", "2"]


def stage_evaluate(cfg: dict, methods: list[str], device: str, work: Path) -> None:
    for method in methods:
        t0, run_dir, out = time.time(), work / "runs" / method, work / "eval" / method
        checkpoints = [f"pretrained={run_dir / names.FINAL}", f"random={run_dir / names.CHECKPOINTS / 'ep000.pt'}"]
        run_command(
            ["evaluate", "--checkpoint", *checkpoints, "--dataset", f"natural={work / 'data' / 'natural'}"]
            + ["--frozen", "pretrained_on_natural", "random_on_natural", "--out", str(out)]
            + common(cfg, device, work, method)
        )
        df = pd.read_csv(out / names.FROZEN_FILE)
        knn = df[(df["metric"] == "knn") & (df["level_index"] == 0)].set_index("weights")["value"]
        say(f"evaluate {method}", t0, f"kNN coarse pretrained {knn['pretrained']:.3f}, random {knn['random']:.3f}")


def stage_lowshot(cfg: dict, methods: list[str], device: str, work: Path) -> None:
    for method in methods:
        run_dir = work / "runs" / method
        cache = work / "eval" / method / names.EMBEDDINGS_FILE.format(weights="pretrained", on="natural")
        for mode, extra in (
            ("linear", ["--embeddings", str(cache)]),
            ("finetune", ["--finetune", json.dumps(cfg["finetune"])]),
        ):
            t0, out = time.time(), work / f"lowshot_{method}_{mode}.csv"
            run_command(
                ["lowshot", "--checkpoint", str(run_dir / names.FINAL), "--dataset", str(work / "data" / "natural")]
                + ["--mode", mode, "--labels", "l1", *extra, "--out", str(out)]
                + common(cfg, device, work, method)
            )
            say(f"lowshot {mode} {method}", t0, _coarse(out))


def stage_supervised(cfg: dict, device: str, work: Path) -> None:
    t0, out = time.time(), work / "supervised.csv"
    run_command(
        ["supervised", "--dataset", str(work / "data" / "natural"), "--labels", "l1", "--seed", "0"]
        + ["--backbone", json.dumps(cfg["pretrain"]["backbone"]), "--finetune", json.dumps(cfg["finetune"])]
        + ["--checkpoint", str(work / "supervised.pt"), "--out", str(out)]
        + common(cfg, device, work, "supervised")
    )
    say("supervised", t0, _coarse(out))


def _coarse(csv: Path) -> str:
    df = pd.read_csv(csv)
    return f"coarse accuracy {df[df['level_index'] == 0]['value'].iloc[0]:.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the data, runs and tables")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--methods", nargs="+", default=["simclr", "moco"])
    ap.add_argument("--stage", default="all", choices=("all", *STAGES))
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    cfg = study_config(a.methods, a.device)
    for stage in STAGES if a.stage == "all" else (a.stage,):
        if stage == "data":
            stage_data(a.work)
        elif stage == "pretrain":
            stage_pretrain(cfg, a.methods, a.work)
        elif stage == "evaluate":
            stage_evaluate(cfg, a.methods, a.device, a.work)
        elif stage == "lowshot":
            stage_lowshot(cfg, a.methods, a.device, a.work)
        else:
            stage_supervised(cfg, a.device, a.work)


if __name__ == "__main__":
    main()
