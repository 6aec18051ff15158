"""Helpers the tests share: paths, a subprocess runner, the tiny run specs and subsets, waiting.
Fixtures live in tests/conftest.py; everything else a test file needs from another is here."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from sslstudy import axes, config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def natural_subset(tiny_data: Path, path: Path, n: int) -> Path:
    """A nested subset of n images of tiny_data's natural domain (seed 0), saved at path."""
    from sslstudy.data.packed import load_dataset
    from sslstudy.data.subsets import nested_subsets, save_indices

    save_indices(path, nested_subsets(load_dataset(tiny_data / "natural").labels, [n], seed=0)[n])
    return path


def tiny_spec(dataset: Path, subset: Path, **over) -> dict:
    spec = dict(
        run="simclr/natural_frac1_clean/seed0",
        seed=0,
        epochs=3,
        batch_size=32,
        checkpoint_every=1,
        threads=1,
        backbone=dict(arch="cnn4", width=4, small_stem=True),
        optim=dict(name="lars", lr=1.0, final_lr=0.0, momentum=0.9, weight_decay=1e-6, eta=1e-3, warmup_epochs=1),
        views=[dict(size=32, scale=[0.2, 1.0])] * 2,
        method=dict(name="simclr", params=dict(temperature=0.2, proj_hidden=16, proj_dim=8, proj_layers=2)),
        data=dict(dataset=str(dataset), subset=str(subset)),
    )
    spec.update(over)
    return spec


AXES_OFF = dict(  # every axis of params/study.yaml switched off: the method comparison alone
    quantity=dict(labels=[]),
    domain=dict(domains=[], pools=[]),
    quality=dict(downup=[], jpeg=[], saltpepper=[], lowres=[]),
    granularity=dict(supervised=False, seeds=None),
    fusion=dict(kinds=[], pairs=[]),
    dense=dict(enabled=False),
    clustering=dict(enabled=False),
)


def follow_study_seeds(params: dict) -> None:
    """The axes to which the shipped params/study.yaml gives seeds of their own follow study.seeds
    instead (tests that shrink study.seeds)."""
    for axis in ("quality", "granularity", "dense"):
        params[axis]["seeds"] = None


def run(cmd, cwd, check=True, timeout=900, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def copy_workflow(dst: Path) -> Path:
    """The workflow's files (not data/results) in a fresh folder, so tests never touch the checkout."""
    for name in ("Snakefile", "workflow", "params"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    return dst


def method_spec(method: str, dataset, subset, **pretrain) -> dict:
    """The run spec the workflow would build for `method` (its schema defaults), on a tiny backbone."""
    p = dict(
        epochs=3,
        batch_size=32,
        checkpoint_every=1,
        threads=1,
        backbone=dict(arch="cnn4", width=4),
        optim=dict(warmup_epochs=1),
    )
    p.update(pretrain)
    cfg = config.validate(dict(study=dict(methods=[method], domains=["natural"]), pretrain=p))
    run = axes.ssl_runs(cfg)[0]
    spec = axes.pretrain_spec(cfg, run)
    spec["data"] = dict(dataset=str(dataset), subset=str(subset))
    return spec


def final_weights(run_dir):
    """The trained Method's state_dict in run_dir/final.pt."""
    return torch.load(run_dir / "final.pt", weights_only=False)["model"]


def free_port() -> int:
    """A TCP port free on localhost now (for a gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(ok, what: str, timeout: float = 240, every: float = 0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if ok():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class FakeCtx:
    """Context.features on fixed images: the encoder in eval mode on all of them."""

    seed = 0

    def __init__(self, x):
        self.x = x

    @torch.no_grad()
    def features(self, encoder):
        encoder.eval()
        out = encoder(self.x)
        encoder.train()
        return out


def sparse_dataset(folder: Path, splits: dict[str, int], classes: list[int], size: int = 256, small=None) -> Path:
    """A packed domain folder of the given split sizes that uses no disk for its pixels: images.npy is
    a header and a sparse file of zeros (load_dataset accepts it), labels.csv real. ``classes``: the
    classes per level, coarse to fine (each class's parent: proportional); images cycle over the
    finest classes. ``small`` = (class, images): that finest class keeps only that many train images."""
    import json

    import numpy as np
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    n = sum(splits.values())
    split = np.repeat(list(splits), list(splits.values()))
    fine = np.arange(n) % classes[-1]
    if small is not None:
        cls, keep = small
        train = np.flatnonzero((split == "train") & (fine == cls))
        fine[train[keep:]] = (cls + 1) % classes[-1]
    levels = [f"level{i}" for i in range(len(classes))]
    parents = {lv: [j * classes[i] // classes[i + 1] for j in range(classes[i + 1])] for i, lv in enumerate(levels[1:])}
    columns, y = {}, fine
    for i in range(len(levels) - 1, -1, -1):
        columns[levels[i]] = y
        if i:
            y = np.asarray(parents[levels[i]])[y]
    labels = pd.DataFrame(dict(index=np.arange(n), split=split, domain=folder.name, **dict(reversed(columns.items()))))
    labels.to_csv(folder / "labels.csv", index=False, lineterminator="\n")
    meta = dict(
        name=folder.name,
        levels=levels,
        classes={lv: [f"{lv}-{j}" for j in range(c)] for lv, c in zip(levels, classes)},
        parents=parents,
        image_size=size,
        n_images=n,
        source="sparse",
    )
    (folder / "meta.json").write_text(json.dumps(meta))
    with open(folder / "images.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, dict(descr="|u1", fortran_order=False, shape=(n, size, size, 3)))
        f.truncate(f.tell() + n * size * size * 3)
    return folder


# The paper grid's four domains at their released sizes (train, test; val held out of train by the
# evaluation) and label hierarchies, ingested at 256 px (params/paper.yaml); GLC20's split is a choice.
PAPER_DOMAINS = dict(
    imagenet=(dict(train=1_281_167, test=50_000), [1000]),
    inat21=(dict(train=2_686_843, test=100_000), [3, 13, 51, 273, 1103, 4884, 10000]),
    places365=(dict(train=1_803_460, test=36_500), [3, 16, 365]),
    glc20=(dict(train=1_000_000, test=100_000), [16]),
)


def paper_datasets(root: Path) -> Path:
    """The paper grid's domains under root (data.root of params/paper.yaml), sparse (no pixels)."""
    for name, (splits, classes) in PAPER_DOMAINS.items():
        sparse_dataset(root / name, splits, classes)
    return root
