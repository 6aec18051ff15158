"""One pretraining run with params/study.yaml's defaults (or overrides), scored by kNN against its
own random weights: the measurement behind docs/defaults.md.

    PYTHONPATH=ssl nice -n 5 python benchmarks/defaults_knn.py --method byol --out /tmp/byol \
        [--dataset data/synth/natural] [--study params/study.yaml] [--epochs N] [--seed 0] \
        [--set key=YAML ...] [--optim key=YAML ...] [--views key=YAML ...] [--pretrain key=YAML ...] [--score val|test]

The spec is built as the workflow builds it (sslstudy.config.validate, axes.pretrain_spec) on the
dataset's whole train split (drawn as the study draws subset 1.0); --set overrides a method
hyper-parameter, --optim a key of the method's optim, --views a key of pretrain.views. The backbone's
kNN accuracy (the study's k and
temperature) is measured at every level for the epoch-0 checkpoint (random weights) and the final
one: fitted on the study's probe split `fit` and scored on its `val` (default: a setting is chosen
on val, as the study's probes are) or, with --score test, on `test`. Prints one line and writes
<out>/result.json, with the run's
CPU seconds (time.process_time of the training) and whether any epoch was flagged collapsed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pairs(items: list[str]) -> dict:
    """key=YAML value strings -> dict."""
    return {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in items)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default=str(ROOT / "data" / "synth" / "natural"))
    p.add_argument("--study", default=str(ROOT / "params" / "study.yaml"))
    p.add_argument("--epochs", type=int, help="default: pretrain.epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="method hyper-parameter key=YAML value")
    p.add_argument("--optim", action="append", default=[], help="the method's optim key=YAML value")
    p.add_argument("--views", action="append", default=[], help="pretrain.views key=YAML value")
    p.add_argument("--pretrain", action="append", default=[], help="pretrain key=YAML value (batch_size, ...)")
    p.add_argument("--score", choices=("val", "test"), default="val", help="the split kNN is scored on")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from sslstudy import axes, config
    from sslstudy.atomic import atomic_path
    from sslstudy.checkpoint import list_checkpoints, load_backbone
    from sslstudy.data.packed import load_dataset
    from sslstudy.data.subsets import nested_subsets, save_indices
    from sslstudy.eval.features import embed, probe_splits
    from sslstudy.eval.probes import knn_accuracy
    from sslstudy.train import train

    params = yaml.safe_load(Path(a.study).read_text())
    name = Path(a.dataset).name
    params["data"]["datasets"] = {name: str(a.dataset)}
    params["study"].update(methods=[a.method], domains=[name], seeds=[a.seed])
    method = dict((params.get("methods") or {}).get(a.method) or {}, **_pairs(a.set))
    if a.optim:
        method["optim"] = dict(method.get("optim") or {}, **_pairs(a.optim))
    params.setdefault("methods", {})[a.method] = method
    params["pretrain"]["views"].update(_pairs(a.views))
    params["pretrain"].update(_pairs(a.pretrain))
    params["pretrain"]["epochs"] = a.epochs or params["pretrain"]["epochs"]
    params["pretrain"].update(checkpoint_every=params["pretrain"]["epochs"], threads=1)
    cfg = config.validate(params, "benchmarks/defaults_knn.py")
    ds = load_dataset(a.dataset)
    splits = probe_splits(ds, cfg["eval"])
    tr, te = splits["fit"], splits[a.score]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(ds.split_indices("train"))  # pretraining on the whole train split, as the study's subset 1.0 (seed 0)
    save_indices(
        out / "train.npy", nested_subsets(ds.labels, [n], seed=0, stratify=ds.levels[-1], dataset=a.dataset)[n]
    )
    run = dict(
        id=f"{a.method}/{name}_all_clean/seed{a.seed}",
        method=a.method,
        domain=name,
        subset="all",
        seed=a.seed,
        quality="clean",
    )
    spec = axes.pretrain_spec(cfg, run)
    spec["data"] = dict(dataset=str(a.dataset), subset=str(out / "train.npy"))
    c0 = time.process_time()
    train(spec, out / "run")
    cpu = time.process_time() - c0
    knn = []
    for ckpt in (list_checkpoints(out / "run")[0], out / "run" / "final.pt"):  # ep000 = the random weights
        backbone, _ = load_backbone(ckpt)
        with torch.no_grad():
            x_tr, x_te = (embed(backbone, ds.images, i, spec["views"][0]["size"]) for i in (tr, te))
            x_tr, x_te = x_tr.cpu().numpy(), x_te.cpu().numpy()
        knn.append(
            {
                lv: knn_accuracy(
                    x_tr,
                    ds.label_array(lv, tr),
                    x_te,
                    ds.label_array(lv, te),
                    k=sorted(cfg["eval"]["knn_k"])[len(cfg["eval"]["knn_k"]) // 2],
                    temperature=cfg["eval"]["knn_temperature"],
                )
                for lv in ds.levels
            }
        )
    metrics = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    doc = dict(
        method=a.method,
        seed=a.seed,
        score=a.score,
        argv=sys.argv[1:] if argv is None else argv,
        cpu_seconds=round(cpu, 1),
        random=knn[0],
        final=knn[1],
        collapsed=any(m.get("collapsed") for m in metrics),
        loss=metrics[-1]["loss"],
        views=spec["views"],
        params=spec["method"]["params"],
        optim=spec["optim"],
    )
    with atomic_path(out / "result.json") as tmp:
        Path(tmp).write_text(json.dumps(doc, default=str))
    print(
        f"{a.method} seed {a.seed} cpu {cpu:.0f}s "
        + " ".join(f"{lv} {knn[0][lv]:.3f}->{knn[1][lv]:.3f}" for lv in ds.levels)
        + (" COLLAPSED" if doc["collapsed"] else "")
        + f" loss {doc['loss']:.3f}"
    )


if __name__ == "__main__":
    main()
