"""One SwAV (or any method's) pretraining run with the study's defaults, and its health per epoch.

    PYTHONPATH=ssl nice -n 19 python benchmarks/swav_health.py --dataset data/digits --out /tmp/swav \
        [--method swav] [--subset all|N] [--epochs 12] [--seed 0] [--set queue_length=512 ...] \
        [--pretrain lr=... ] [--batch-size 128]

The run spec is built as the workflow builds it (sslstudy.config.validate on params/study.yaml,
then config.pretrain_spec), so the method's hyper-parameters are the schema's defaults unless
--set overrides them (YAML values: --set prototypes=30 --set 'optim={lr: 0.6}'). Checkpoints are
kept every epoch. For each checkpoint (ep000 = the random weights): the effective rank (RankMe)
and normalised std of the backbone features of a fixed batch (the first 512 test images, eval
view) and of the head's L2-normalised embeddings (SwAV: the projector's output), the entropy of
SwAV's mean prototype assignment (softmax(scores / T) averaged over the batch, vs ln K), and the
kNN accuracy (the study's settings, k 20, T 0.07) of the backbone features at every level. The
loss per epoch comes from metrics.jsonl beside its trivial value (sslstudy.health.trivial) and
health.collapse_check's verdict. Writes <out>/health.json and prints a table.
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


def spec_for(a) -> dict:
    from sslstudy import axes, config
    from sslstudy.data.packed import load_dataset
    from sslstudy.data.subsets import nested_subsets, save_indices

    params = yaml.safe_load((ROOT / "params" / "study.yaml").read_text())
    name = Path(a.dataset).name
    params["data"]["datasets"] = {name: str(a.dataset)}
    params["study"].update(methods=[a.method], domains=[name])
    over = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        over[k] = yaml.safe_load(v)
    params["methods"][a.method] = dict(params["methods"].get(a.method) or {}, **over)
    params["pretrain"].update(epochs=a.epochs, checkpoint_every=1, threads=1)
    if a.batch_size:
        params["pretrain"]["batch_size"] = a.batch_size
    for kv in a.pretrain:
        k, v = kv.split("=", 1)
        params["pretrain"]["optim"][k] = yaml.safe_load(v)
    cfg = config.validate(params, "benchmarks/swav_health.py")
    ds = load_dataset(a.dataset)
    n = len(ds.split_indices("train")) if a.subset == "all" else int(a.subset)
    subset = Path(a.out) / f"subset_n{n}.npy"
    subset.parent.mkdir(parents=True, exist_ok=True)
    save_indices(subset, nested_subsets(ds.labels, [n], seed=a.seed, stratify=ds.levels[-1], dataset=a.dataset)[n])
    run = dict(
        id=f"{a.method}/{name}_n{n}_clean/seed{a.seed}",
        method=a.method,
        domain=name,
        subset=f"n{n}",
        seed=a.seed,
        quality="clean",
    )
    spec = axes.pretrain_spec(cfg, run)
    spec["data"] = dict(dataset=str(a.dataset), subset=str(subset))
    return spec, cfg


@torch.no_grad()
def health_of(ckpt: Path, ds, test_idx, batch_idx, tr_idx, eval_cfg: dict) -> dict:
    from sslstudy.checkpoint import load_checkpoint
    from sslstudy.eval.features import embed
    from sslstudy.eval.probes import knn_accuracy
    from sslstudy.health import effective_rank, normalized_std
    from sslstudy.train import build_model

    state = load_checkpoint(ckpt)
    cfg = state["config"]
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    size = cfg["views"][0]["size"]
    x = embed(model.backbone, ds.images, batch_idx, size).numpy()
    rec = dict(
        epoch=int(state["epoch"]),
        backbone_rank=effective_rank(torch.from_numpy(x)),
        backbone_std=normalized_std(torch.from_numpy(x)),
        backbone_dim=int(x.shape[1]),
    )
    head = getattr(model, "projector", None)
    if head is not None:
        z = torch.nn.functional.normalize(head(torch.from_numpy(x)), dim=1)
        rec.update(head_rank=effective_rank(z), head_std=normalized_std(z), head_dim=int(z.shape[1]))
        protos = getattr(model, "prototypes", None)
        if protos is not None:
            w = torch.nn.functional.normalize(protos.weight, dim=1)
            p = torch.softmax(z @ w.T / cfg["method"]["params"]["temperature"], dim=1)
            mean = p.mean(0)
            rec.update(
                assign_entropy=float(-(mean * mean.clamp_min(1e-12).log()).sum()),
                sample_entropy=float(-(p * p.clamp_min(1e-12).log()).sum(1).mean()),
                protos_used=int(torch.unique(p.argmax(1)).numel()),
            )
    x_tr, x_te = (embed(model.backbone, ds.images, rows, size).numpy() for rows in (tr_idx, test_idx))
    for level in ds.levels:
        rec[f"knn_{level}"] = knn_accuracy(
            x_tr,
            ds.label_array(level, tr_idx),
            x_te,
            ds.label_array(level, test_idx),
            k=eval_cfg["knn_k"][0],
            temperature=eval_cfg["knn_temperature"],
        )
    return rec


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--method", default="swav")
    p.add_argument("--subset", default="all", help="'all' (the train split) or a number of train images")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--set", action="append", default=[], help="method hyper-parameter key=YAML value")
    p.add_argument("--pretrain", action="append", default=[], help="pretrain.optim key=YAML value")
    p.add_argument("--every", type=int, default=1, help="measure every n-th checkpoint (and the last)")
    p.add_argument(
        "--max-steps", type=int, help="train at most this many steps in this call, then exit 3 (rerun to resume)"
    )
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from sslstudy.data.packed import load_dataset
    from sslstudy.health import collapse_check, trivial
    from sslstudy.train import Stopped, train

    spec, cfg = spec_for(a)
    out = Path(a.out)
    t0 = time.time()
    try:
        train(spec, out / "run", stop_after=a.max_steps)
    except Stopped as e:
        print(f"{e}; rerun the same command to resume")
        sys.exit(3)
    del t0
    ds = load_dataset(a.dataset)
    test_idx = ds.split_indices("test")
    tr_idx = ds.split_indices("train")
    batch_idx = test_idx[:512]
    ckpts = sorted((out / "run" / "checkpoints").glob("ep*.pt"))
    ckpts = [c for i, c in enumerate(ckpts) if i % a.every == 0 or i == len(ckpts) - 1]
    recs = {r["epoch"]: r for r in (health_of(c, ds, test_idx, batch_idx, tr_idx, cfg["eval"]) for c in ckpts)}
    metrics = [json.loads(ln) for ln in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    t_train = sum(m["seconds"] for m in metrics)  # summed over resumed calls
    mp = spec["method"]["params"]
    info = dict(
        prototypes=mp.get("prototypes", 0),
        k=mp.get("k", 0),
        batch=spec["batch_size"],
        queue=mp.get("queue", 0),
        proj_dim=mp.get("proj_dim", 0),
    )
    t = trivial(a.method, **info)
    rows = []
    for m in metrics:
        r = dict(m, **recs.get(m["epoch"], {}))
        rows.append(r)
    check_rows = [
        dict(
            epoch=r["epoch"],
            loss=r["loss"],
            **(
                {"effective_rank": r["backbone_rank"], "normalized_std": r["backbone_std"], "dim": r["backbone_dim"]}
                if "backbone_rank" in r
                else {}
            ),
        )
        for r in rows
    ]
    collapsed, reason = collapse_check(check_rows, a.method, spec["run"], **info)
    doc = dict(
        spec=spec,
        trivial=t,
        collapsed=collapsed,
        reason=reason,
        random=recs.get(0),
        epochs=rows,
        train_seconds=round(t_train, 1),
        argv=sys.argv[1:],
    )
    (out / "health.json").write_text(json.dumps(doc, indent=1, default=str))
    lvls = ds.levels
    print(f"{spec['run']}  params={json.dumps(mp, default=str)}  optim={spec['optim']}  train {t_train:.0f}s")
    if t:
        print(f"trivial loss {t[1]} = {t[0]:.4f}")
    hdr = (
        f"{'ep':>3} {'loss':>8} {'-triv':>7} {'bb_rank':>7} {'bb_std':>6} {'hd_rank':>7} {'H(p̄)':>6} "
        f"{'H(p)':>6} {'used':>4} " + " ".join(f"{'knn_' + lv:>10}" for lv in lvls)
    )
    print(hdr)
    r0 = recs.get(0)
    for r in ([dict(r0, loss=float("nan"))] if r0 else []) + rows:

        def f(k, w=7, d=2, r=r):
            v = r.get(k)
            return f"{v:>{w}.{d}f}" if isinstance(v, (int, float)) else " " * (w - 1) + "-"

        diff = r["loss"] - t[0] if t and r["loss"] == r["loss"] else float("nan")
        print(
            f"{r['epoch']:>3} {r['loss']:>8.4f} {diff:>7.4f} {f('backbone_rank')} {f('backbone_std', 6, 3)} "
            f"{f('head_rank')} "
            f"{f('assign_entropy', 6)} {f('sample_entropy', 6)} {f('protos_used', 4, 0)} "
            + " ".join(f(f"knn_{lv}", 10, 3) for lv in lvls)
        )
    print(reason)


if __name__ == "__main__":
    main()
