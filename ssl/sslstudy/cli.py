"""`sslstudy`: the commands the Snakemake rules call (and users can call by hand)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import UserError


def cmd_validate(a) -> None:
    from . import config

    config.load(a.params)
    print(f"{a.params}: ok")


def cmd_synth(a) -> None:
    from . import config
    from .data.synth import generate

    s = config.load(a.params)["data"]["synth"]
    generate(a.out, domains=s["domains"], n_images=s["n_images"], image_size=s["image_size"], seed=s["seed"])


def cmd_subset(a) -> None:
    from .data.packed import load_dataset
    from .data.subsets import fractions_to_sizes, nested_subsets, save_indices

    ds = load_dataset(a.dataset)
    if a.subset.startswith("frac"):
        size = fractions_to_sizes(len(ds.split_indices("train")), [float(a.subset[4:])])[0]
    elif a.subset.startswith("n") and a.subset[1:].isdigit():
        size = int(a.subset[1:])
    else:
        raise UserError(f"subset {a.subset!r}: expected frac<fraction> or n<count>")
    idx = nested_subsets(ds.labels, [size], seed=a.seed, stratify=ds.levels[-1], dataset=str(a.dataset))[size]
    save_indices(a.out, idx)


def _log_launcher() -> None:
    """The launcher's messages (submitted, re-attached, requeued) go to stderr = the rule's log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def cmd_pretrain(a) -> None:
    from .launch import launch_pretrain

    _log_launcher()
    spec = json.loads(a.spec)
    launch = json.loads(a.launch)
    launch_pretrain(spec, a.run_dir, launch)


def cmd_evaluate(a) -> None:
    if a.launch:  # run this same command as a cluster job, and wait for it
        from .launch import CommandJob, run_job

        _log_launcher()
        run_job(CommandJob(a.argv), a.job_dir, json.loads(a.launch), a.threads, what=f"evaluation {a.out}")
        return
    import torch

    from .atomic import write_bytes
    from .data.packed import load_dataset
    from .eval.frozen import evaluate
    from .train import load_backbone

    torch.set_num_threads(a.threads)
    backbone, run_cfg = load_backbone(a.checkpoint)
    ds = load_dataset(a.dataset)
    df = evaluate(backbone, ds, json.loads(a.eval), size=run_cfg["views"]["size"])
    state_epoch = int(Path(a.checkpoint).stem.removeprefix("ep")) if a.checkpoint.name.startswith("ep") else run_cfg["epochs"]
    for col, val in reversed(list(dict(run=a.run, **json.loads(a.ids), weights=a.weights, epoch=state_epoch,
                                        eval_domain=ds.meta["name"]).items())):
        df.insert(0, col, val)
    write_bytes(a.out, df.to_csv(index=False).encode())


def cmd_report(a) -> None:
    from .report.html import build_report

    build_report([Path(p) for p in a.inputs], json.loads(a.config), Path(a.out))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslstudy", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("validate", help="check a params file against the schema")
    s.add_argument("params", type=Path)
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("synth", help="generate the built-in synthetic domains")
    s.add_argument("--params", type=Path, default=Path("params/study.yaml"))
    s.add_argument("--out", type=Path, default=Path("data/synth"))
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("subset", help="write a nested, class-balanced pretraining subset (index list)")
    s.add_argument("--dataset", type=Path, required=True)
    s.add_argument("--subset", required=True, help="frac<fraction of the train split> or n<number of images>")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(fn=cmd_subset)

    s = sub.add_parser("pretrain", help="pretrain one run through submitit")
    s.add_argument("--run-dir", type=Path, required=True)
    s.add_argument("--spec", required=True, help="JSON: the run's resolved config")
    s.add_argument("--launch", required=True, help="JSON: launch settings (cluster, slurm resources)")
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("evaluate", help="kNN, linear and k-means scores of a checkpoint at every label level")
    s.add_argument("--checkpoint", type=Path, required=True)
    s.add_argument("--dataset", type=Path, required=True)
    s.add_argument("--eval", required=True, help="JSON: eval settings")
    s.add_argument("--run", required=True)
    s.add_argument("--ids", default="{}", help="JSON: columns identifying the run (method, domain, ...)")
    s.add_argument("--weights", required=True, help="label of the weights, e.g. pretrained or random")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--launch", help="JSON: launch settings; run as a submitit job on launch.cluster")
    s.add_argument("--job-dir", type=Path, help="with --launch: the job's folder (job.json, submitit logs)")
    s.set_defaults(fn=cmd_evaluate, argv=None)

    s = sub.add_parser("report", help="tables, figures and results/report.html from evaluation CSVs")
    s.add_argument("--config", required=True, help="JSON: the validated study config")
    s.add_argument("--out", required=True)
    s.add_argument("inputs", nargs="+")
    s.set_defaults(fn=cmd_report)

    return p


def run_command(argv: list[str]) -> None:
    """Run one subcommand; errors raise (for cluster jobs, whose log keeps the trace)."""
    a = parser().parse_args(argv)
    a.fn(a)


def _strip_launch(argv: list[str]) -> list[str]:
    """The same command without its --launch/--job-dir options (what the cluster job runs)."""
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x in ("--launch", "--job-dir"):
            skip = True
        elif not x.startswith(("--launch=", "--job-dir=")):
            out.append(x)
    return out


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.cmd == "evaluate" and a.launch:
        if a.job_dir is None:
            parser().error("evaluate: --launch needs --job-dir")
        a.argv = _strip_launch(sys.argv[1:] if argv is None else argv)
    try:
        a.fn(a)
    except UserError as e:
        print(f"sslstudy {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

