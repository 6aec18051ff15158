"""Helpers the tests share: paths, a subprocess runner, the tiny run specs, study params and
subsets, metrics.jsonl files, gloo process groups, waiting, small hand-built models, fake CUDA.
Fixtures live in tests/conftest.py; everything else a test file needs from another is here."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils._pytree as pytree
import yaml
from sslstudy import axes, config, names
from sslstudy import distributed as dist
from sslstudy.augment import ViewSpec
from sslstudy.methods.base import Batch
from sslstudy.methods.swav import SwAV
from sslstudy.models import build_backbone
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def natural_subset(tiny_data: Path, path: Path, n: int) -> Path:
    """A nested subset of n images of tiny_data's natural domain (seed 0), saved at path."""
    from sslstudy.data.packed import load_dataset
    from sslstudy.data.subsets import nested_subsets, save_indices

    save_indices(path, nested_subsets(load_dataset(tiny_data / "natural").labels, [n], seed=0)[n])
    return path


def tiny_spec(dataset: Path, subset: Path, **over) -> dict:
    """A tiny SimCLR run on the CPU (device cpu, as every run spec of the suite: see method_spec)."""
    spec = dict(
        run="simclr/natural_frac1_clean/seed0",
        seed=0,
        epochs=3,
        batch_size=32,
        checkpoint_every=1,
        threads=1,
        device="cpu",
        backbone=dict(arch="cnn4", width=4, small_stem=True),
        optim=dict(name="lars", lr=1.0, final_lr=0.0, momentum=0.9, weight_decay=1e-6, eta=1e-3, warmup_epochs=1),
        views=[dict(size=32, scale=[0.2, 1.0])] * 2,
        method=dict(name="simclr", params=dict(temperature=0.2, proj_hidden=16, proj_dim=8, proj_layers=2)),
        data=dict(dataset=str(dataset), subset=str(subset)),
    )
    spec.update(over)
    return spec


#: The h2 titles of a report of every axis but the dense one.
REPORT_SECTIONS = (
    "Results",
    "Quantity",
    "Domain",
    "Quality",
    "Granularity",
    "Fusion",
    "Periodic clustering",
    "Pretraining",
    "Data",
    "Config",
    "Versions",
)

#: The evaluation settings of a quick probe (one k, one learning rate, 3 epochs).
TINY_EVAL = dict(
    batch_size=256,
    linear_epochs=3,
    cluster_seed=0,
    knn_k=[5],
    knn_temperature=0.07,
    linear_lr=[0.5],
    linear_wd=[5e-4],
    val_fraction=0.1,
)

#: The resources of each job of a tiny study on a 2-core node: 1 CPU and 1.5 GB, no GPU.
TINY_JOB = dict(gpus=0, cpus=1, mem_gb=1.5, time_min=30)


def tiny_params(
    data: dict,
    domains: list[str],
    *,
    shipped: bool = True,
    every_axis: bool = False,
    jobs: dict | None = None,
    **pretrain,
) -> dict:
    """The params of a study of seconds on `domains`: SimCLR alone, seed 0, a 4-wide CNN4 pretrained
    for 2 epochs, a 5-epoch linear probe. data: merged into params' data (root, datasets, ingest).

    shipped: params/study.yaml so changed, for a --configfile (Snakemake merges it over
      params/study.yaml, so every axis is switched off explicitly); else the changes alone, for a
      params/study.yaml of their own (the schema's defaults: every axis off), with a small SimCLR
      head, one 128-image subset and pretraining on the local executor.
    every_axis: every axis of the shipped study kept, shrunk to a few steps, instead of switched off.
    jobs: the resources of every job (launch.pretrain and launch.evaluation).
    pretrain: changes to pretrain, over the tiny ones."""
    if shipped:
        params = yaml.safe_load((ROOT / "params/study.yaml").read_text())
        for axis in ("quantity", "domain", "quality", "granularity", "fusion", "clustering", "dense"):
            params[axis]["seeds"] = None  # seeds of their own in params/study.yaml: study.seeds
        (_axes_shrunk if every_axis else _axes_off)(params)
        params["pretrain"]["batch_size"] = 32
    elif every_axis:
        raise ValueError("every_axis=True keeps the axes of params/study.yaml: it needs shipped=True")
    else:
        params = dict(
            seed=0,
            data={},
            study=dict(subsets=[128]),
            pretrain=dict(
                batch_size=64,
                threads=1,
                optim=dict(name="lars", lr=1.0),
                views=dict(size=32, scale=[0.4, 1.0]),
            ),
            methods=dict(simclr=dict(temperature=0.2, proj_hidden=16, proj_dim=8, proj_layers=2)),
            eval={},
            launch=dict(executor="local"),
        )
    params["data"].update(data)
    params["study"].update(methods=["simclr"], domains=list(domains), seeds=[0])
    params["pretrain"].update(epochs=2, checkpoint_every=1, backbone=dict(arch="cnn4", width=4))
    params["pretrain"]["optim"]["warmup_epochs"] = 1
    params["pretrain"].update(pretrain)
    params["eval"]["linear_epochs"] = 5
    if jobs is not None:
        params["launch"].update(pretrain=jobs, evaluation=jobs)
    return params


def _axes_shrunk(params: dict) -> None:
    """The shipped study's axes at a few steps each, on SimCLR alone."""
    params["fusion"].update(methods=None, pairs=[])  # the shipped pair needs Barlow Twins
    params["dense"].update(methods=None)  # the shipped list needs MoCo v2 and DenseCL
    params["finetune"].update(epochs=1, min_steps=3, batch_size=16)
    params["quantity"].update(subsets=[0.5], labels=[1, "all"])
    # two corruptions (every kind is checked in test_axes.py); lowres takes its own path (smaller views)
    params["quality"].update(subset=0.5, downup=[2], jpeg=[], saltpepper=[], blur=[], lowres=[16])
    params["domain"]["evaluate_on"] = None  # the pretraining domains


def _axes_off(params: dict) -> None:
    """Every axis of the shipped study switched off: the study's runs, their evaluations, the report."""
    params["quantity"].update(subsets=[], labels=[], supervised=False)
    params["domain"].update(domains=[], pools=[], evaluate_on=[])
    params["quality"].update(domains=[])
    params["granularity"].update(supervised=False)
    params["fusion"].update(kinds=[], pairs=[])
    params["clustering"].update(enabled=False)
    params["dense"].update(enabled=False)


AXES_OFF = dict(  # every axis of params/study.yaml switched off: the method comparison alone
    quantity=dict(labels=[]),
    domain=dict(domains=[], pools=[]),
    quality=dict(downup=[], jpeg=[], saltpepper=[], lowres=[]),
    granularity=dict(supervised=False, seeds=None),
    fusion=dict(kinds=[], pairs=[]),
    dense=dict(enabled=False),
    clustering=dict(enabled=False),
)


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
    """The run spec the workflow would build for `method` (its schema defaults), on a tiny backbone, on the
    CPU: the suite's runs mean CPU semantics (exact bits on resume, gloo ranks, CPU bf16), so on a GPU
    machine too they train on the CPU; a test that means CUDA says device cuda and skips without it."""
    p = dict(
        epochs=3,
        batch_size=32,
        checkpoint_every=1,
        threads=1,
        device="cpu",
        backbone=dict(arch="cnn4", width=4),
        optim=dict(warmup_epochs=1),
    )
    p.update(pretrain)
    cfg = config.validate(dict(study=dict(methods=[method], domains=["natural"]), pretrain=p))
    run = axes.ssl_runs(cfg)[0]
    spec = axes.pretrain_spec(cfg, run)
    spec["data"] = dict(dataset=str(dataset), subset=str(subset))
    return spec


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of run_dir's metrics.jsonl (one an epoch: epoch, loss, lr, health), in file order."""
    return [json.loads(ln) for ln in (run_dir / names.METRICS).read_text().splitlines()]


def write_metrics(path: Path, records: list[dict]) -> Path:
    """records as a metrics.jsonl file at path (its folder made), for the report's tests."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def final_weights(run_dir):
    """The trained Method's state_dict in run_dir/final.pt."""
    return torch.load(run_dir / "final.pt", weights_only=False)["model"]


def free_port() -> int:
    """A TCP port free now on every interface of this machine (a gloo rendezvous, the test SLURM's daemons)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def run_ranks(script: str, args_of_rank, world: int = 2, timeout: float = 600) -> list[str]:
    """`python -c script *args_of_rank(rank)` in `world` processes that form one gloo group (a free
    localhost port, one thread each); asserts that every one exits 0 and returns their outputs
    (stdout and stderr together), in rank order."""
    port, procs = free_port(), []
    for rank in range(world):
        env = dict(
            os.environ,
            WORLD_SIZE=str(world),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script, *args_of_rank(rank)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return outs


def sigint_as_a_terminal_sends_it() -> None:
    """Popen's preexec_fn for a child a test Ctrl-Cs: SIGINT handled by default, as under a terminal,
    even when the tests run in the background (a shell's `cmd &` starts them with SIGINT ignored,
    and a child inherits that: it would train on through the test's SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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


# ----------------------------------------------------------------------------- SwAV, by hand
def swav_model(queue_length=0, queue_start_epoch=0, freeze=1, n_train=64, global_batch=8, views=2):
    """A small SwAV (6 prototypes, 16 px views, `views - 2` small 8 px crops) on a 4-wide CNN4, seeded."""
    torch.manual_seed(0)
    cfg = dict(
        temperature=0.1,
        epsilon=0.05,
        sinkhorn_iterations=3,
        proj_hidden=16,
        proj_dim=8,
        prototypes=6,
        freeze_prototypes_epochs=freeze,
        queue_length=queue_length,
        queue_start_epoch=queue_start_epoch,
    )
    specs = [ViewSpec(size=16)] * 2 + [ViewSpec(size=8)] * (views - 2)
    return SwAV(build_backbone("cnn4", 4), cfg, specs, n_train, global_batch)


def swav_batch(model, epoch, seed=0, n=8):
    """A batch of n random images in every view of the model, drawn from seed."""
    g = torch.Generator().manual_seed(seed)
    views = [torch.rand(n, 3, s.size, s.size, generator=g) for s in model.view_specs]
    return Batch(views, torch.arange(n), 0, 10, epoch, g)


def swav_local_steps():
    """Three SwAV steps (eval-mode BN, so ranks see the same statistics) on this rank's share of a
    global batch of 8, with a queue of 16 that is full at the third step -> (losses, queue keys).
    Alone in a process, the rank's share is the whole batch."""
    m = swav_model(queue_length=16).eval()
    losses = []
    for seed in (1, 2, 3):
        b, rows = swav_batch(m, epoch=0, seed=seed), dist.local_slice(8)
        m.before_step(0, 1)
        losses.append(m(Batch([v[rows] for v in b.views], b.index[rows], 0, 10, 0, b.gen))[0].item())
    return np.array(losses), m.queues[0].keys.numpy()


@contextlib.contextmanager
def fake_cuda():
    """A FakeCuda mode, with CUDA's bf16 autocast on (autocast turns itself off where torch sees no CUDA)."""
    import torch.cuda.amp.common as amp

    saved = amp.amp_definitely_not_available, torch.cuda.is_bf16_supported
    amp.amp_definitely_not_available, torch.cuda.is_bf16_supported = (lambda: False), (lambda *a, **k: True)
    try:
        with FakeCuda() as mode:
            yield mode
    finally:
        amp.amp_definitely_not_available, torch.cuda.is_bf16_supported = saved


class FakeCuda(FakeTensorMode):
    """CUDA without a GPU, for the device checks of tests/test_fake_cuda.py: every op that touches a CUDA
    tensor, or makes one (``device="cuda"``, ``with torch.device("cuda"):``, ``.to("cuda")``), runs on
    fake tensors, which carry shapes, dtypes and devices but no data; every other op runs for real on
    the CPU. So, as on a GPU, a CPU tensor (other than a 0-dim one) mixed into a CUDA op raises
    "Expected all tensors to be on the same device", and reading a CUDA tensor's values on the host
    (``.item()``, ``int(t)``, ``if t.any():``, ``.tolist()``, ``.cpu().numpy()``) raises
    DataDependentOutputException: a host sync. Forward passes only: backward needs a real GPU."""

    def __init__(self):
        super().__init__(allow_non_fake_inputs=True)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._pin_memory.default:  # page-locking needs the driver: a copy stands in
            return args[0].clone()
        if func is torch.ops.aten.is_pinned.default:
            return False
        flat = pytree.tree_leaves((args, kwargs))
        if any(isinstance(a, FakeTensor) for a in flat) or any(
            isinstance(a, torch.device) and a.type == "cuda" for a in flat
        ):
            return super().__torch_dispatch__(func, types, args, kwargs)
        return func(*args, **kwargs)


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
