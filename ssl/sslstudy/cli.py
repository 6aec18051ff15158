"""`sslstudy`: the commands the Snakemake rules call (and users can call by hand)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import signal
import sys
from pathlib import Path

from . import names
from .errors import INTERRUPTED, UserError
from .names import parse_labels_tag


def cmd_validate(args) -> None:
    from . import config

    config.load(args.params)
    print(f"{args.params}: ok")


def cmd_preflight(args) -> None:
    from . import preflight

    preflight.main(args.configfile, args.out, workers=args.workers)


def cmd_synth(args) -> None:
    from . import config
    from .data.synth import generate

    synth = config.load(args.params)["data"]["synth"]
    generate(
        args.out,
        domains=synth["domains"],
        n_images=synth["n_images"],
        image_size=synth["image_size"],
        seed=synth["seed"],
    )


def cmd_ingest(args) -> None:
    from .data.ingest import ingest

    levels = [x.strip() for x in args.levels.split(",") if x.strip()] if args.levels else None
    result = ingest(
        args.source,
        args.path,
        args.out_root / args.name,
        size=args.size,
        levels=levels,
        hierarchy=args.hierarchy,
        train_split=args.train_split,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        max_per_class=args.max_per_class,
        max_failed=args.max_failed,
        workers=args.workers,
        force=args.force,
    )
    for note in result["notes"]:
        print(f"{args.path}: {note}")
    classes = ", ".join(f"{level} {n}" for level, n in result["levels"].items())
    out = result["out"]
    if result["skipped"]:
        print(f"{out}: up to date ({result['kept']} images listed, same files and options); --force re-ingests")
        return
    print(
        f"{out}: {result['images']} images of {args.size} px (classes: {classes}); {result['failed']} unreadable "
        f"(listed in {result['report']}); {result['per_second']:.0f} images/s on {result['workers']} worker(s), "
        f"{result['seconds']:.1f} s"
    )


def ingest_args(config: dict, name: str) -> list[str]:
    """The `sslstudy ingest` arguments of the data.ingest entry ``name`` (the ingest rule's command)."""
    entry = config["data"]["ingest"][name]
    args = [
        entry["source"],
        entry["path"],
        "--name",
        name,
        "--out-root",
        names.INGEST_ROOT,
        "--size",
        str(entry["size"]),
        "--val-fraction",
        str(entry["val_fraction"]),
        "--test-fraction",
        str(entry["test_fraction"]),
        "--seed",
        str(entry["seed"]),
        "--max-failed",
        str(entry["max_failed"]),
    ]
    for key in ("hierarchy", "train_split", "max_per_class"):
        if entry[key] is not None:
            args += [f"--{key.replace('_', '-')}", str(entry[key])]
    if entry["levels"]:
        args += ["--levels", ",".join(entry["levels"])]
    return args


def cmd_subset(args) -> None:
    from .data.packed import load_dataset
    from .data.subsets import fractions_to_sizes, nested_subsets, save_indices

    kind, value = names.parse_subset_tag(args.subset)
    ds = load_dataset(args.dataset)
    size = fractions_to_sizes(len(ds.split_indices("train")), [value])[0] if kind == "frac" else value
    idx = nested_subsets(ds.labels, [size], seed=args.seed, stratify=ds.levels[-1], dataset=str(args.dataset))[size]
    save_indices(args.out, idx)


def _log_stderr() -> None:
    """Messages (a launcher's submitted / re-attached / requeued, what precision a fine-tuning ran in)
    go to stderr = the rule's log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its "Loading faiss" lines


def cmd_pretrain(args) -> None:
    from .config import validate_launch
    from .launch import launch_pretrain

    _log_stderr()
    spec = json.loads(args.spec)
    launch_pretrain(spec, args.run_dir, validate_launch(json.loads(args.launch)))


def cmd_remote(args) -> None:
    """Run this same command (without --launch) as a submitit job on launch.executor, and wait for it."""
    from .config import validate_launch
    from .launch import run_job

    _log_stderr()
    run_job(
        functools.partial(run_command, args.argv),
        args.job_dir,
        validate_launch(json.loads(args.launch)),
        args.threads,
        what=f"{args.cmd} {args.out}",
    )


def cmd_evaluate(args) -> None:
    """Every frozen and dense evaluation of one model into its folder, each checkpoint loaded once."""
    import pandas as pd
    import torch

    from .atomic import atomic_dir
    from .checkpoint import load_backbone
    from .eval.features import eval_device
    from .provenance import of_config
    from .report.dag import split_named

    checkpoints, datasets = dict(split_named(args.checkpoint)), dict(split_named(args.dataset))
    frozen, dense = [names.parse_evaluation(e) for e in args.frozen], [names.parse_evaluation(e) for e in args.dense]
    embed = list(dict.fromkeys(frozen + [names.parse_evaluation(e) for e in args.embed]))
    if not embed + dense + args.cluster:
        raise UserError(
            "evaluate: nothing to do; name evaluations (<weights>_on_<domain>) with --frozen, --dense or --embed, "
            "or domains with --cluster"
        )
    if args.cluster and args.run_dir is None:
        raise UserError("evaluate --cluster needs --run-dir (the pretraining run whose checkpoints are clustered)")
    for on in args.cluster:
        if on not in datasets:
            raise UserError(f"evaluate: --cluster {on} needs --dataset {on}=DIR")
    for w, on in embed + dense:
        if w not in checkpoints:
            raise UserError(f"evaluate: {names.evaluation(w, on)} needs --checkpoint {w}=PATH")
        if on not in datasets:
            raise UserError(f"evaluate: {names.evaluation(w, on)} needs --dataset {on}=DIR")
    if dense and not json.loads(args.dense_eval):
        raise UserError("evaluate --dense needs --dense-eval (JSON: the config's dense block)")
    torch.set_num_threads(args.threads)
    device = eval_device(args.device)
    tables, embedded, model_configs = dict(frozen=[], dense=[], clusters=[]), {}, {}
    with atomic_dir(args.out) as out:
        for weights in dict.fromkeys(w for w, _ in embed + dense):
            domains = {
                kind: [on for w, on in pairs if w == weights]
                for kind, pairs in dict(embed=embed, frozen=frozen, dense=dense).items()
            }
            model_configs[weights] = _evaluate_checkpoint(
                args, weights, checkpoints[weights], datasets, domains, device, out, tables, embedded
            )
        if args.cluster:
            from .data.packed import load_dataset
            from .eval.checkpoint_clustering import cluster_checkpoints

            df = cluster_checkpoints(
                args.run_dir,
                {on: load_dataset(datasets[on]) for on in args.cluster},
                json.loads(args.eval),
                args.size,
                device,
                embedded,
            )
            # the run's model config: its final weights' (those of every checkpoint of one run)
            final = model_configs.get("pretrained") or of_config(load_backbone(args.run_dir / names.FINAL)[1])
            tables["clusters"].append(_with_ids(df, dict(run=args.run, **json.loads(args.ids), model_config=final)))
        for kind, file in (
            ("frozen", names.FROZEN_FILE),
            ("dense", names.DENSE_FILE),
            ("clusters", names.CLUSTERS_FILE),
        ):
            if tables[kind]:
                _write_csv(out / file, pd.concat(tables[kind], ignore_index=True))


def _evaluate_checkpoint(
    args, weights: str, checkpoint: Path, datasets: dict, domains: dict, device, out: Path, tables: dict, embedded: dict
) -> str:
    """One checkpoint on its domains (``domains``: embed, frozen, dense lists): dense evaluations on
    the CPU, then embeddings on device, saved into ``out``, with the frozen scores of the frozen
    domains; ``tables`` gathers the rows, ``embedded`` the embeddings by (checkpoint folder, epoch)
    for the periodic clustering. Returns the checkpoint's model config hash (on every row and cache)."""
    from .checkpoint import load_backbone
    from .data.packed import load_dataset
    from .eval.features import embed_dataset
    from .eval.frozen import evaluate
    from .provenance import of_config

    backbone, run_cfg = load_backbone(checkpoint)
    epoch = names.checkpoint_epoch(checkpoint.name)
    ids = dict(
        run=args.run, **json.loads(args.ids), weights=weights, epoch=run_cfg["epochs"] if epoch is None else epoch
    )
    ids["model_config"] = of_config(run_cfg)
    # final.pt (beside checkpoints/) holds the weights of the last epoch's checkpoint
    folder = ((checkpoint.parent / names.CHECKPOINTS if epoch is None else checkpoint.parent).resolve(), ids["epoch"])
    if domains["dense"]:
        from .eval.dense import evaluate_dense

        for on in domains["dense"]:
            ds = load_dataset(datasets[on])
            df = evaluate_dense(backbone, ds, json.loads(args.dense_eval), args.size, json.loads(args.views))
            tables["dense"].append(_with_ids(df, dict(ids, eval_domain=ds.name)))
    backbone.to(device)
    cfg = json.loads(args.eval)
    for on in domains["embed"]:
        ds = load_dataset(datasets[on])
        feats = embed_dataset(backbone, ds, args.size, cfg["batch_size"])
        feats.model_config = ids["model_config"]
        feats.save(out / names.EMBEDDINGS_FILE.format(weights=weights, on=on))
        embedded.setdefault(folder, {})[on] = feats
        if on in domains["frozen"]:
            tables["frozen"].append(_with_ids(evaluate(feats, ds, cfg, device), dict(ids, eval_domain=ds.meta["name"])))
    return ids["model_config"]


def cmd_report(args) -> None:
    from .report.dag import split_named
    from .report.html import build_report

    build_report(
        {k: [Path(p) for p in getattr(args, k)] for k in TABLES},
        json.loads(args.config),
        Path(args.out),
        Path(args.captions),
        curves=dict(split_named(args.curves)),
        benchmarks=split_named(args.benchmarks),
        datasets=dict(split_named(args.datasets)),
        data_dvc=args.data_dvc,
        verify_models=args.verify_models,
        preflight=args.preflight,
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


def cmd_corrupt(args) -> None:
    from .data.corrupt import corrupt_dataset

    corrupt_dataset(args.dataset, args.out, args.quality, args.seed)


def cmd_pool(args) -> None:
    from .data.pool import pool_dataset

    pool_dataset(args.datasets, args.out, args.seed)


def _count(subset_file: str) -> int:
    from .data.subsets import load_indices

    return len(load_indices(subset_file))


def cmd_lowshot(args) -> None:
    """Frozen linear (from the run's embedding cache) or fine-tuning of one SSL run with n labelled
    images per class, for every n of --labels (the checkpoint or cache read once)."""
    import copy

    import pandas as pd
    import torch

    from .checkpoint import load_backbone, load_checkpoint
    from .data.packed import load_dataset
    from .eval import lowshot
    from .eval.features import Features, eval_device
    from .provenance import of_config

    _log_stderr()
    torch.set_num_threads(args.threads)
    device = eval_device(args.device)
    ds = load_dataset(args.dataset)
    cfg = json.loads(args.eval)
    labelled = {tag: lowshot.labelled_indices(ds, parse_labels_tag(tag), cfg) for tag in dict.fromkeys(args.labels)}
    if args.mode == "linear":
        if args.embeddings is None:
            raise UserError("lowshot --mode linear needs --embeddings (the run's evaluate cache)")
        run_cfg = load_checkpoint(args.checkpoint)["config"]
        feats = Features.load(args.embeddings)
        model_config = feats.model_config  # the scores are of the cached embeddings' model
        scores = {tag: lowshot.frozen_linear(feats, ds, train, cfg, device) for tag, train in labelled.items()}
    else:
        backbone, run_cfg = load_backbone(args.checkpoint)  # on the CPU: each count copies it to the device
        model_config, scores = of_config(run_cfg), {}
        for tag, train in labelled.items():  # each count fine-tunes its own copy of the loaded weights
            model = lowshot.train_classifier(
                copy.deepcopy(backbone), ds, train, json.loads(args.finetune), args.size, run_cfg["seed"], device
            )
            scores[tag] = lowshot.trained_rows(model, ds, args.size, "finetune")
    pretrain_images = _count(run_cfg["data"]["subset"])
    _write_csv(
        args.out,
        pd.concat(
            [
                _with_ids(
                    df,
                    dict(
                        run=args.run,
                        **json.loads(args.ids),
                        mode=args.mode,
                        labels=tag,
                        labelled_images=len(labelled[tag]),
                        pretrain_images=pretrain_images,
                        eval_domain=ds.name,
                        model_config=model_config,
                    ),
                )
                for tag, df in scores.items()
            ],
            ignore_index=True,
        ),
    )


def cmd_supervised(args) -> None:
    """The backbone trained from scratch on n labelled images per class: scores and a checkpoint."""
    import torch

    from .checkpoint import BACKBONE, atomic_torch_save
    from .data.packed import load_dataset
    from .eval import lowshot
    from .eval.features import eval_device
    from .models import build_backbone

    _log_stderr()
    torch.set_num_threads(args.threads)
    device = eval_device(args.device)
    ds = load_dataset(args.dataset)
    finetune, backbone = json.loads(args.finetune), json.loads(args.backbone)
    train = lowshot.labelled_indices(ds, parse_labels_tag(args.labels), json.loads(args.eval))
    torch.manual_seed(args.seed)  # the weights are initialised on the CPU: the same on every device
    model = lowshot.train_classifier(build_backbone(**backbone), ds, train, finetune, args.size, args.seed, device)
    df = lowshot.trained_rows(model, ds, args.size, "supervised")
    ids = dict(
        run=args.run,
        **json.loads(args.ids),
        mode="supervised",
        labels=args.labels,
        labelled_images=len(train),
        pretrain_images=0,
        eval_domain=ds.name,
        model_config=args.model_config,
    )
    # the checkpoint format of pretraining runs, so load_backbone (evaluate, fusion) reads it; the
    # epochs trained, not 0 (the random weights' epoch)
    state = {BACKBONE + k: v.cpu() for k, v in model.backbone.state_dict().items()}
    state.update({"head." + k: v.cpu() for k, v in model.head.state_dict().items()})
    atomic_torch_save(
        dict(
            epoch=model.epochs,
            model=state,
            config=dict(
                run=args.run,
                seed=args.seed,
                backbone=backbone,
                views=[dict(size=args.size)],
                epochs=model.epochs,
                finetune=finetune,
                data=dict(dataset=str(args.dataset)),
                model_config=args.model_config,  # provenance.of_config reads it
            ),
        ),
        args.checkpoint,
    )
    _write_csv(args.out, _with_ids(df, ids))


def cmd_fusion(args) -> None:
    import torch

    from .data.packed import load_dataset
    from .eval.features import Features, eval_device
    from .eval.fusion import fusion_scores

    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    features_a, features_b = Features.load(args.embeddings_a), Features.load(args.embeddings_b)
    df = fusion_scores(features_a, features_b, ds, json.loads(args.eval), eval_device(args.device))
    model_names = {"a": args.name_a, "b": args.name_b, "a+b": f"{args.name_a} + {args.name_b}"}
    df.insert(0, "model", df["member"].map(model_names))
    ids = dict(pair=f"{args.name_a} + {args.name_b}", seed=args.seed, eval_domain=ds.name)
    model_config = f"{features_a.model_config}+{features_b.model_config}"  # the members' (provenance)
    _write_csv(args.out, _with_ids(df, dict(ids, model_config=model_config)))


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
    s.add_argument(
        "--model-config", default="", help="the hash of its settings (sslstudy.provenance), on its rows and checkpoint"
    )
    s.set_defaults(fn=cmd_supervised)

    s = sub.add_parser("fusion", help="linear accuracy of two models' concatenated frozen features")
    _eval_options(s, checkpoint=False)
    s.add_argument(
        "--embeddings-a", type=Path, required=True, help="embedding cache of model a on --dataset (names.EMBEDDINGS)"
    )
    s.add_argument("--embeddings-b", type=Path, required=True, help="embedding cache of model b on --dataset")
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


def cmd_densecl_matches(args) -> None:
    from .report.matches import write_matches_figure

    ckpt = args.run_dir / (
        names.FINAL if args.epoch is None else f"{names.CHECKPOINTS}/{names.epoch_checkpoint(args.epoch)}"
    )
    if not ckpt.is_file():
        raise UserError(f"{ckpt}: no such checkpoint; train the run first or pick an existing --epoch")
    acc = write_matches_figure(ckpt, args.out, args.images, args.seed)
    print(f"{args.out}: {100 * acc:.1f}% of matches within one cell of the true location")


def cmd_export(args) -> None:
    from .export import export

    out = export(args.run_dir, args.out, args.epoch, args.data_dvc)
    print(f"{out}: backbone.safetensors and config.json")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="sslstudy", description=__doc__)
    sub = top.add_subparsers(dest="cmd", required=True)

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
    s.add_argument(
        "--verify-models",
        action="store_true",
        help="refuse results whose model_config is not the one --config gives their model, and models without "
        "final.pt (sslstudy.provenance; what the workflow runs)",
    )
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

    return top


def run_command(argv: list[str]) -> None:
    """Run one subcommand; errors raise (for executor jobs, whose log keeps the trace)."""
    args = parser().parse_args(argv)
    args.fn(args)


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
    """The `sslstudy` command: 0, 2 with one line on a UserError, 130 with one line on Ctrl-C (SIGINT)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        cmd = " ".join(["sslstudy", *(sys.argv[1:] if argv is None else argv)[:1]])
        print(f"{cmd}: {INTERRUPTED}", file=sys.stderr)
        return 128 + signal.SIGINT


def _main(argv: list[str] | None) -> int:
    if argv is None:  # the console command: in the study's fork server if one answers (sslstudy.forkserver)
        from .forkserver import run

        code = run(sys.argv[1:])
        if code is not None:
            return code
    args = parser().parse_args(argv)
    if args.cmd != "pretrain" and getattr(args, "launch", None):
        if args.job_dir is None:
            parser().error(f"{args.cmd}: --launch needs --job-dir")
        args.argv, args.fn = _strip_launch(sys.argv[1:] if argv is None else argv), cmd_remote
    try:
        args.fn(args)
    except UserError as e:
        print(f"sslstudy {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
