"""`sslstudy`: the commands the Snakemake rules call (and users can call by hand)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path

from . import names
from .errors import UserError
from .names import parse_labels_tag


def cmd_validate(a) -> None:
    from . import config

    config.load(a.params)
    print(f"{a.params}: ok")


def cmd_preflight(a) -> None:
    from . import preflight

    preflight.main(a.configfile, a.out, workers=a.workers)


def cmd_synth(a) -> None:
    from . import config
    from .data.synth import generate

    s = config.load(a.params)["data"]["synth"]
    generate(a.out, domains=s["domains"], n_images=s["n_images"], image_size=s["image_size"], seed=s["seed"])


def cmd_ingest(a) -> None:
    from .data.ingest import ingest

    levels = [x.strip() for x in a.levels.split(",") if x.strip()] if a.levels else None
    r = ingest(
        a.source,
        a.path,
        a.out_root / a.name,
        size=a.size,
        levels=levels,
        hierarchy=a.hierarchy,
        train_split=a.train_split,
        val_fraction=a.val_fraction,
        test_fraction=a.test_fraction,
        seed=a.seed,
        max_per_class=a.max_per_class,
        max_failed=a.max_failed,
        workers=a.workers,
        force=a.force,
    )
    for note in r["notes"]:
        print(f"{a.path}: {note}")
    classes = ", ".join(f"{lv} {n}" for lv, n in r["levels"].items())
    if r["skipped"]:
        print(f"{r['out']}: up to date ({r['kept']} images listed, same files and options); --force re-ingests")
        return
    print(
        f"{r['out']}: {r['images']} images of {a.size} px (classes: {classes}); {r['failed']} unreadable "
        f"(listed in {r['report']}); {r['per_second']:.0f} images/s on {r['workers']} worker(s), {r['seconds']:.1f} s"
    )


def ingest_args(config: dict, name: str) -> list[str]:
    """The `sslstudy ingest` arguments of the data.ingest entry ``name`` (the ingest rule's command)."""
    s = config["data"]["ingest"][name]
    args = [
        s["source"],
        s["path"],
        "--name",
        name,
        "--out-root",
        names.INGEST_ROOT,
        "--size",
        str(s["size"]),
        "--val-fraction",
        str(s["val_fraction"]),
        "--test-fraction",
        str(s["test_fraction"]),
        "--seed",
        str(s["seed"]),
        "--max-failed",
        str(s["max_failed"]),
    ]
    for key in ("hierarchy", "train_split", "max_per_class"):
        if s[key] is not None:
            args += [f"--{key.replace('_', '-')}", str(s[key])]
    if s["levels"]:
        args += ["--levels", ",".join(s["levels"])]
    return args


def cmd_subset(a) -> None:
    from .data.packed import load_dataset
    from .data.subsets import fractions_to_sizes, nested_subsets, save_indices

    kind, value = names.parse_subset_tag(a.subset)
    ds = load_dataset(a.dataset)
    size = fractions_to_sizes(len(ds.split_indices("train")), [value])[0] if kind == "frac" else value
    idx = nested_subsets(ds.labels, [size], seed=a.seed, stratify=ds.levels[-1], dataset=str(a.dataset))[size]
    save_indices(a.out, idx)


def _log_stderr() -> None:
    """Messages (a launcher's submitted / re-attached / requeued, what precision a fine-tuning ran in)
    go to stderr = the rule's log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its "Loading faiss" lines


def cmd_pretrain(a) -> None:
    from .config import validate_launch
    from .launch import launch_pretrain

    _log_stderr()
    spec = json.loads(a.spec)
    launch_pretrain(spec, a.run_dir, validate_launch(json.loads(a.launch)))


def cmd_remote(a) -> None:
    """Run this same command (without --launch) as a submitit job on launch.executor, and wait for it."""
    from .config import validate_launch
    from .launch import run_job

    _log_stderr()
    run_job(
        functools.partial(run_command, a.argv),
        a.job_dir,
        validate_launch(json.loads(a.launch)),
        a.threads,
        what=f"{a.cmd} {a.out}",
    )


def cmd_evaluate(a) -> None:
    """Every frozen and dense evaluation of one model into its folder, each checkpoint loaded once."""
    import pandas as pd
    import torch

    from .atomic import atomic_dir
    from .eval.features import eval_device
    from .report.dag import split_named

    checkpoints, datasets = dict(split_named(a.checkpoint)), dict(split_named(a.dataset))
    frozen, dense = [names.parse_evaluation(e) for e in a.frozen], [names.parse_evaluation(e) for e in a.dense]
    embed = list(dict.fromkeys(frozen + [names.parse_evaluation(e) for e in a.embed]))
    if not embed + dense + a.cluster:
        raise UserError(
            "evaluate: nothing to do; name evaluations (<weights>_on_<domain>) with --frozen, --dense or --embed, "
            "or domains with --cluster"
        )
    if a.cluster and a.run_dir is None:
        raise UserError("evaluate --cluster needs --run-dir (the pretraining run whose checkpoints are clustered)")
    for on in a.cluster:
        if on not in datasets:
            raise UserError(f"evaluate: --cluster {on} needs --dataset {on}=DIR")
    for w, on in embed + dense:
        if w not in checkpoints:
            raise UserError(f"evaluate: {names.evaluation(w, on)} needs --checkpoint {w}=PATH")
        if on not in datasets:
            raise UserError(f"evaluate: {names.evaluation(w, on)} needs --dataset {on}=DIR")
    if dense and not json.loads(a.dense_eval):
        raise UserError("evaluate --dense needs --dense-eval (JSON: the config's dense block)")
    torch.set_num_threads(a.threads)
    device = eval_device(a.device)
    tables, embedded = dict(frozen=[], dense=[], clusters=[]), {}
    with atomic_dir(a.out) as out:
        for weights in dict.fromkeys(w for w, _ in embed + dense):
            domains = {
                kind: [on for w, on in pairs if w == weights]
                for kind, pairs in dict(embed=embed, frozen=frozen, dense=dense).items()
            }
            _evaluate_checkpoint(a, weights, checkpoints[weights], datasets, domains, device, out, tables, embedded)
        if a.cluster:
            from .data.packed import load_dataset
            from .eval.checkpoint_clustering import cluster_checkpoints

            df = cluster_checkpoints(
                a.run_dir,
                {on: load_dataset(datasets[on]) for on in a.cluster},
                json.loads(a.eval),
                a.size,
                device,
                embedded,
            )
            tables["clusters"].append(_with_ids(df, dict(run=a.run, **json.loads(a.ids))))
        for kind, file in (
            ("frozen", names.FROZEN_FILE),
            ("dense", names.DENSE_FILE),
            ("clusters", names.CLUSTERS_FILE),
        ):
            if tables[kind]:
                _write_csv(out / file, pd.concat(tables[kind], ignore_index=True))


def _evaluate_checkpoint(
    a, weights: str, checkpoint: Path, datasets: dict, domains: dict, device, out: Path, tables: dict, embedded: dict
) -> None:
    """One checkpoint on its domains (``domains``: embed, frozen, dense lists): dense evaluations on
    the CPU, then embeddings on device, saved into ``out``, with the frozen scores of the frozen
    domains; ``tables`` gathers the rows, ``embedded`` the embeddings by (checkpoint folder, epoch)
    for the periodic clustering."""
    from .data.packed import load_dataset
    from .eval.features import embed_dataset
    from .eval.frozen import evaluate
    from .train import load_backbone

    backbone, run_cfg = load_backbone(checkpoint)
    epoch = names.checkpoint_epoch(checkpoint.name)
    ids = dict(run=a.run, **json.loads(a.ids), weights=weights, epoch=run_cfg["epochs"] if epoch is None else epoch)
    # final.pt (beside checkpoints/) holds the weights of the last epoch's checkpoint
    folder = ((checkpoint.parent / names.CHECKPOINTS if epoch is None else checkpoint.parent).resolve(), ids["epoch"])
    if domains["dense"]:
        from .eval.dense import evaluate_dense

        for on in domains["dense"]:
            ds = load_dataset(datasets[on])
            df = evaluate_dense(backbone, ds, json.loads(a.dense_eval), a.size, json.loads(a.views))
            tables["dense"].append(_with_ids(df, dict(ids, eval_domain=ds.name)))
    backbone.to(device)
    cfg = json.loads(a.eval)
    for on in domains["embed"]:
        ds = load_dataset(datasets[on])
        feats = embed_dataset(backbone, ds, a.size, cfg["batch_size"])
        feats.save(out / names.EMBEDDINGS_FILE.format(weights=weights, on=on))
        embedded.setdefault(folder, {})[on] = feats
        if on in domains["frozen"]:
            tables["frozen"].append(_with_ids(evaluate(feats, ds, cfg, device), dict(ids, eval_domain=ds.meta["name"])))


def cmd_report(a) -> None:
    from .report.dag import split_named
    from .report.html import build_report

    build_report(
        {k: [Path(p) for p in getattr(a, k)] for k in TABLES},
        json.loads(a.config),
        Path(a.out),
        Path(a.captions),
        curves=dict(split_named(a.curves)),
        benchmarks=split_named(a.benchmarks),
        datasets=dict(split_named(a.datasets)),
        data_dvc=a.data_dvc,
        preflight=a.preflight,
    )


# ---------------------------------------------------------------------------- the study's axes
TABLES = ("frozen", "lowshot", "supervised", "fusion", "clusters", "dense")


def _with_ids(df, ids: dict):
    for col, val in reversed(list(ids.items())):
        df.insert(0, col, val)
    return df


def _write_csv(path: Path, df) -> None:
    from .atomic import write_bytes

    write_bytes(path, df.to_csv(index=False).encode())


def cmd_corrupt(a) -> None:
    from .data.corrupt import corrupt_dataset

    corrupt_dataset(a.dataset, a.out, a.quality, a.seed)


def cmd_pool(a) -> None:
    from .data.pool import pool_dataset

    pool_dataset(a.datasets, a.out, a.seed)


def _count(subset_file: str) -> int:
    from .data.subsets import load_indices

    return len(load_indices(subset_file))


def cmd_lowshot(a) -> None:
    """Frozen linear (from the run's embedding cache) or fine-tuning of one SSL run with n labelled
    images per class, for every n of --labels (the checkpoint or cache read once)."""
    import copy

    import pandas as pd
    import torch

    from .data.packed import load_dataset
    from .eval import lowshot
    from .eval.features import Features, eval_device
    from .train import load_backbone, load_checkpoint

    _log_stderr()
    torch.set_num_threads(a.threads)
    device = eval_device(a.device)
    ds = load_dataset(a.dataset)
    cfg = json.loads(a.eval)
    labelled = {tag: lowshot.labelled_indices(ds, parse_labels_tag(tag), cfg) for tag in dict.fromkeys(a.labels)}
    if a.mode == "linear":
        if a.embeddings is None:
            raise UserError("lowshot --mode linear needs --embeddings (the run's evaluate cache)")
        run_cfg = load_checkpoint(a.checkpoint)["config"]
        feats = Features.load(a.embeddings)
        scores = {tag: lowshot.frozen_linear(feats, ds, train, cfg, device) for tag, train in labelled.items()}
    else:
        backbone, run_cfg = load_backbone(a.checkpoint)
        scores = {}
        for tag, train in labelled.items():  # each count fine-tunes its own copy of the loaded weights
            model = lowshot.train_classifier(
                copy.deepcopy(backbone), ds, train, json.loads(a.finetune), a.size, run_cfg["seed"]
            )
            scores[tag] = lowshot.trained_rows(model, ds, a.size, "finetune")
    pretrain_images = _count(run_cfg["data"]["subset"])
    _write_csv(
        a.out,
        pd.concat(
            [
                _with_ids(
                    df,
                    dict(
                        run=a.run,
                        **json.loads(a.ids),
                        mode=a.mode,
                        labels=tag,
                        labelled_images=len(labelled[tag]),
                        pretrain_images=pretrain_images,
                        eval_domain=ds.name,
                    ),
                )
                for tag, df in scores.items()
            ],
            ignore_index=True,
        ),
    )


def cmd_supervised(a) -> None:
    """The backbone trained from scratch on n labelled images per class: scores and a checkpoint."""
    import torch

    from .data.packed import load_dataset
    from .eval import lowshot
    from .models import build_backbone
    from .train import BACKBONE, atomic_torch_save

    _log_stderr()
    torch.set_num_threads(a.threads)
    ds = load_dataset(a.dataset)
    ft, arch = json.loads(a.finetune), json.loads(a.backbone)
    train = lowshot.labelled_indices(ds, parse_labels_tag(a.labels), json.loads(a.eval))
    torch.manual_seed(a.seed)
    model = lowshot.train_classifier(build_backbone(**arch), ds, train, ft, a.size, a.seed)
    df = lowshot.trained_rows(model, ds, a.size, "supervised")
    ids = dict(
        run=a.run,
        **json.loads(a.ids),
        mode="supervised",
        labels=a.labels,
        labelled_images=len(train),
        pretrain_images=0,
        eval_domain=ds.name,
    )
    # the checkpoint format of pretraining runs, so load_backbone (evaluate, fusion) reads it; the
    # epochs trained, not 0 (the random weights' epoch)
    state = {BACKBONE + k: v for k, v in model.backbone.state_dict().items()}
    state.update({"head." + k: v for k, v in model.head.state_dict().items()})
    atomic_torch_save(
        dict(
            epoch=model.epochs,
            model=state,
            config=dict(
                run=a.run,
                seed=a.seed,
                backbone=arch,
                views=[dict(size=a.size)],
                epochs=model.epochs,
                finetune=ft,
                data=dict(dataset=str(a.dataset)),
            ),
        ),
        a.checkpoint,
    )
    _write_csv(a.out, _with_ids(df, ids))


def cmd_fusion(a) -> None:
    import torch

    from .data.packed import load_dataset
    from .eval.features import Features, eval_device
    from .eval.fusion import fusion_scores

    torch.set_num_threads(a.threads)
    ds = load_dataset(a.dataset)
    df = fusion_scores(Features.load(a.a), Features.load(a.b), ds, json.loads(a.eval), eval_device(a.device))
    names = {"a": a.name_a, "b": a.name_b, "a+b": f"{a.name_a} + {a.name_b}"}
    df.insert(0, "model", df["member"].map(names))
    _write_csv(a.out, _with_ids(df, dict(pair=f"{a.name_a} + {a.name_b}", seed=a.seed, eval_domain=ds.name)))


def _axis_parsers(sub) -> None:
    s = sub.add_parser("corrupt", help="write a corrupted copy of a packed domain (quality axis)")
    s.add_argument("--dataset", type=Path, required=True)
    s.add_argument("--quality", required=True, help="e.g. downup2, jpeg10, saltpepper0.01, blur1, lowres16")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(fn=cmd_corrupt)

    s = sub.add_parser("pool", help="write an equal-size pool of packed domains (domain axis)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("datasets", nargs="+", type=Path)
    s.set_defaults(fn=cmd_pool)

    s = sub.add_parser("lowshot", help="linear (frozen) or fine-tuning accuracy with n labelled images per class")
    _eval_options(s)
    s.add_argument("--mode", choices=("linear", "finetune"), required=True)
    s.add_argument("--embeddings", type=Path, help="linear mode: the run's embedding cache (names.EMBEDDINGS)")
    s.add_argument("--labels", nargs="+", required=True, help="l<images per class> or lall, one or more (one table)")
    s.add_argument("--finetune", default="{}", help="JSON: fine-tuning settings")
    s.set_defaults(fn=cmd_lowshot)

    s = sub.add_parser("supervised", help="train the backbone from scratch on n labelled images per class")
    _eval_options(s, checkpoint=False)
    s.add_argument("--labels", required=True, help="l<images per class> or lall")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--backbone", required=True, help="JSON: pretrain.backbone")
    s.add_argument("--finetune", required=True, help="JSON: training settings")
    s.add_argument("--checkpoint", type=Path, required=True, help="where to save the trained network")
    s.set_defaults(fn=cmd_supervised)

    s = sub.add_parser("fusion", help="linear accuracy of two models' concatenated frozen features")
    _eval_options(s, checkpoint=False)
    s.add_argument("--a", type=Path, required=True, help="embedding cache of model a on --dataset (names.EMBEDDINGS)")
    s.add_argument("--b", type=Path, required=True, help="embedding cache of model b on --dataset")
    s.add_argument("--name-a", required=True)
    s.add_argument("--name-b", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_fusion)


def _eval_options(s, checkpoint: bool = True, dataset: bool = True, out: str = "the table to write (CSV)") -> None:
    """The options every evaluation-type command shares."""
    if checkpoint:
        s.add_argument("--checkpoint", type=Path, required=True)
    if dataset:
        s.add_argument("--dataset", type=Path, required=True)
    s.add_argument("--eval", default="{}", help="JSON: eval settings")
    s.add_argument("--size", type=int, required=True, help="evaluation image side (clean resolution)")
    s.add_argument("--run", default="")
    s.add_argument("--ids", default="{}", help="JSON: columns identifying the run (method, domain, ...)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--device", default="auto", help="auto (CUDA when torch sees it, else CPU), cuda or cpu")
    s.add_argument("--out", type=Path, required=True, help=out)
    s.add_argument("--launch", help="JSON: launch settings; run this command as a submitit job on launch.executor")
    s.add_argument("--job-dir", type=Path, help="with --launch: the job's folder (job.json, submitit logs)")


def cmd_densecl_matches(a) -> None:
    from .report.matches import write_matches_figure

    ckpt = a.run_dir / (names.FINAL if a.epoch is None else f"{names.CHECKPOINTS}/{names.epoch_checkpoint(a.epoch)}")
    if not ckpt.is_file():
        raise UserError(f"{ckpt}: no such checkpoint; train the run first or pick an existing --epoch")
    acc = write_matches_figure(ckpt, a.out, a.images, a.seed)
    print(f"{a.out}: {100 * acc:.1f}% of matches within one cell of the true location")


def cmd_export(a) -> None:
    from .export import export

    out = export(a.run_dir, a.out, a.epoch, a.data_dvc)
    print(f"{out}: backbone.safetensors and config.json")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslstudy", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("validate", help="check a params file against the schema")
    s.add_argument("params", type=Path)
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser(
        "preflight",
        help="check, size and price every job of the grid Snakemake would run, on the CPU (see docs/preflight.md)",
    )
    s.add_argument(
        "--configfile",
        nargs="*",
        default=[],
        help="the config files of the snakemake command, merged over params/study.yaml in this order",
    )
    s.add_argument("--out", type=Path, default=Path(names.PREFLIGHT), help=f"the cost table (CSV; {names.PREFLIGHT})")
    s.add_argument("--workers", type=int, default=2, help="processes sizing the jobs under fake tensors (2)")
    s.set_defaults(fn=cmd_preflight)

    s = sub.add_parser("synth", help="generate the built-in synthetic domains")
    s.add_argument("--params", type=Path, default=Path("params/study.yaml"))
    s.add_argument("--out", type=Path, default=Path(names.SYNTH_ROOT))
    s.set_defaults(fn=cmd_synth)

    from .data.sources import SOURCES

    s = sub.add_parser("ingest", help="pack a real image collection from disk into data/<name> (see docs/datasets.md)")
    s.add_argument("source", choices=sorted(SOURCES), help="the collection's on-disk layout")
    s.add_argument("path", type=Path, help="the collection's folder")
    s.add_argument("--name", required=True, help="dataset (and study domain) name: letters, digits, '.', '-'")
    s.add_argument("--size", type=int, default=64, help="stored resolution: shorter side resized, centre crop (64)")
    s.add_argument(
        "--out-root", type=Path, default=Path(names.INGEST_ROOT), help=f"writes <out-root>/<name> ({names.INGEST_ROOT})"
    )
    s.add_argument(
        "--hierarchy",
        type=Path,
        help="CSV: class,parent,grandparent,... with a header naming the levels (imagefolder, imagenet, places365)",
    )
    s.add_argument("--levels", help="comma-separated subset of the source's levels to keep (e.g. class,family,species)")
    s.add_argument("--train-split", choices=["train", "train_mini"], help="inat2021: which training set (train)")
    s.add_argument("--val-fraction", type=float, default=0.1, help="per class, when the source has no splits (0.1)")
    s.add_argument("--test-fraction", type=float, default=0.2, help="per class, when the source has no splits (0.2)")
    s.add_argument("--seed", type=int, default=0, help="seeds the drawn splits and --max-per-class (0)")
    s.add_argument("--max-per-class", type=int, help="keep at most this many images per class and split (seeded)")
    s.add_argument("--max-failed", type=float, default=0.01, help="stop if a larger share is unreadable (0.01)")
    s.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    s.add_argument("--force", action="store_true", help="re-ingest even if the output is up to date")
    s.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("subset", help="write a nested, class-balanced pretraining subset (index list)")
    s.add_argument("--dataset", type=Path, required=True)
    s.add_argument("--subset", required=True, help="frac<fraction of the train split> or n<number of images>")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(fn=cmd_subset)

    s = sub.add_parser("pretrain", help="pretrain one run through submitit")
    s.add_argument("--run-dir", type=Path, required=True)
    s.add_argument("--spec", required=True, help="JSON: the run's resolved config")
    s.add_argument("--launch", required=True, help="JSON: launch settings (executor, slurm resources)")
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser(
        "evaluate",
        help="one model's kNN, linear and k-means scores at every label level, dense probe and "
        "correspondence score, and embedding caches, into one folder",
    )
    _eval_options(
        s,
        checkpoint=False,
        dataset=False,
        out="the model's folder (names.EVAL_DIR): frozen.csv, dense.csv, clusters.csv, embeddings/; replaced when done",
    )
    s.add_argument(
        "--checkpoint",
        nargs="+",
        required=True,
        metavar="WEIGHTS=PT",
        help="the checkpoint of each weights label, e.g. pretrained=final.pt random=checkpoints/ep000.pt",
    )
    s.add_argument("--dataset", nargs="+", required=True, metavar="DOMAIN=DIR", help="the packed folder of each domain")
    s.add_argument(
        "--frozen",
        nargs="*",
        default=[],
        metavar="EVALUATION",
        help="<weights>_on_<domain>: embed and score (frozen table), e.g. pretrained_on_natural",
    )
    s.add_argument("--dense", nargs="*", default=[], metavar="EVALUATION", help="<weights>_on_<domain>: dense table")
    s.add_argument(
        "--embed", nargs="*", default=[], metavar="EVALUATION", help="<weights>_on_<domain>: embedding cache only"
    )
    s.add_argument(
        "--cluster",
        nargs="*",
        default=[],
        metavar="DOMAIN",
        help="periodic clustering: every checkpoints/epNNN.pt of --run-dir clustered on these domains (clusters.csv)",
    )
    s.add_argument("--run-dir", type=Path, help="the pretraining run whose checkpoints --cluster reads")
    s.add_argument("--dense-eval", default="{}", help="JSON: dense settings (the config's dense block)")
    s.add_argument("--views", default="{}", help="JSON: the view of the correspondence score (ViewSpec fields)")
    s.set_defaults(fn=cmd_evaluate)

    _axis_parsers(sub)

    s = sub.add_parser("report", help="tables, figures and results/report.html from the evaluation CSVs")
    s.add_argument("--config", required=True, help="JSON: the validated study config")
    s.add_argument("--out", required=True)
    s.add_argument("--captions", default="workflow/report", help="folder of one-sentence figure captions (*.rst)")
    for k in TABLES:
        s.add_argument(f"--{k}", nargs="*", default=[], help=f"{k} evaluation CSVs")
    s.add_argument("--curves", nargs="*", default=[], metavar="RUN=JSONL", help="each pretraining run's metrics.jsonl")
    s.add_argument(
        "--benchmarks", nargs="*", default=[], metavar="RULE=TSV", help="Snakemake benchmark file of each job"
    )
    s.add_argument(
        "--datasets",
        nargs="*",
        default=[],
        metavar="DOMAIN=DIR",
        help="packed folder of each evaluation domain (drawn as a contact sheet)",
    )
    s.add_argument("--data-dvc", type=Path, help="the data's DVC file (its md5 is shown)")
    s.add_argument("--preflight", type=Path, help="the cost table of `sslstudy preflight` (shown where it exists)")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("densecl-matches", help="draw DenseCL's matched locations between two views of test images")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--out", type=Path, required=True, help="PNG file")
    s.add_argument(
        "--epoch",
        type=int,
        default=None,
        help=f"use {names.CHECKPOINTS}/epNNN.pt (0: random weights) instead of {names.FINAL}",
    )
    s.add_argument("--images", type=int, default=6)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_densecl_matches)

    s = sub.add_parser(
        "export", help="a run's backbone as safetensors (torchvision key names for ResNets) + config.json"
    )
    s.add_argument("run_dir", type=Path, help="the run folder, e.g. results/runs/simclr/natural_frac1_clean/seed0")
    s.add_argument("--out", type=Path, required=True, help="folder to write backbone.safetensors and config.json to")
    s.add_argument(
        "--epoch",
        type=int,
        default=None,
        help=f"export {names.CHECKPOINTS}/epNNN.pt (0: random weights) instead of {names.FINAL}",
    )
    s.add_argument("--data-dvc", type=Path, default=Path("data.dvc"), help="its md5 goes into config.json (data.dvc)")
    s.set_defaults(fn=cmd_export)

    return p


def run_command(argv: list[str]) -> None:
    """Run one subcommand; errors raise (for executor jobs, whose log keeps the trace)."""
    a = parser().parse_args(argv)
    a.fn(a)


def _strip_launch(argv: list[str]) -> list[str]:
    """The same command without its --launch/--job-dir options (what the executor job runs)."""
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
    if argv is None:  # the console command: in the study's fork server if one answers (sslstudy.forkserver)
        from .forkserver import run

        code = run(sys.argv[1:])
        if code is not None:
            return code
    a = parser().parse_args(argv)
    if a.cmd != "pretrain" and getattr(a, "launch", None):
        if a.job_dir is None:
            parser().error(f"{a.cmd}: --launch needs --job-dir")
        a.argv, a.fn = _strip_launch(sys.argv[1:] if argv is None else argv), cmd_remote
    try:
        a.fn(a)
    except UserError as e:
        print(f"sslstudy {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
