"""Helpers the tests share: paths, a subprocess runner, the tiny run specs and subsets, waiting, fake CUDA.
Fixtures live in tests/conftest.py; everything else a test file needs from another is here."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from sslstudy import axes, config
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


def final_weights(run_dir):
    """The trained Method's state_dict in run_dir/final.pt."""
    return torch.load(run_dir / "final.pt", weights_only=False)["model"]


def free_port() -> int:
    """A TCP port free on localhost now (for a gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
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
