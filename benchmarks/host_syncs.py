"""Host syncs per training step, per method, counted on the CPU.

    PYTHONPATH=ssl python benchmarks/host_syncs.py [--methods simclr moco ...] [--steps 6] [--json out.json]

On a GPU a step must not read values the device computes: each read (``.item()``, ``float(t)``,
``bool(t)``, ``int(t)``, ``.tolist()``, ``.cpu()``/``.numpy()``, and ops whose output size depends on
the data: ``nonzero``, ``bincount``, ``unique``, ``masked_select``) waits for every kernel queued before
it. Without a GPU this counts them: every tensor that would live on the GPU is tagged (the model's
parameters and buffers, each batch's views and index as the forward receives them, and everything
computed from a tagged tensor, through a TorchDispatchMode, backward and optimiser included), and a
read of a tagged tensor is one sync, recorded with the line of the project's code that made it.
Reads of host tensors (view parameters drawn on the CPU, the step count) are no syncs and are not
counted. Each method trains a tiny run (cnn4 width 4, 32 px, batch 32, one process, its schema
defaults, SwAV with its queue on) for --steps steps; the counts are those of the steps after the
first (which creates the optimiser's state). Data-dependent work on the host between epochs
(k-means, health) is outside the step and not counted.

Also counts the ops on tagged tensors per step, about the kernels a GPU step launches (the optimiser's
and the EMA's multi-tensor ops count once each). Prints one line per method (syncs per step, ops per
step, and where the syncs are) and, with --json, the rows.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))

import sslstudy.train as T  # noqa: E402
from sslstudy import axes, config  # noqa: E402
from sslstudy.data.packed import load_dataset  # noqa: E402
from sslstudy.data.subsets import nested_subsets, save_indices  # noqa: E402
from sslstudy.data.synth import generate  # noqa: E402
from sslstudy.methods import REGISTRY  # noqa: E402

READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")  # Tensor methods
SIZED_BY_DATA = {"nonzero", "bincount", "unique", "_unique", "_unique2", "unique_dim", "masked_select"}
PACKAGE = str(ROOT / "ssl" / "sslstudy")


def _site() -> str:
    """The innermost frame of the project's code that made the read: file:line (function)."""
    for f in reversed(traceback.extract_stack()[:-2]):
        if f.filename.startswith(PACKAGE) and not f.filename.endswith("benchmarks/host_syncs.py"):
            return f"{Path(f.filename).relative_to(ROOT / 'ssl')}:{f.lineno} ({f.name})"
    return "outside sslstudy"


class SyncCounter(TorchDispatchMode):
    """Tags what is computed from tagged tensors; counts reads of tagged tensors while `counting`."""

    def __init__(self):
        super().__init__()
        self.tagged = WeakTensorKeyDictionary()
        self.counting = False
        self.inside = False  # in a counted read (whatever it calls is not counted again)
        self.last_copy = None
        self.syncs: collections.Counter = collections.Counter()
        self.ops = 0  # ops on tagged tensors: about the kernels the step launches on a GPU

    def tag(self, *trees) -> None:
        for t in pytree.tree_leaves(trees):
            if isinstance(t, torch.Tensor):
                self.tagged[t] = True

    def on_device(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t in self.tagged

    def read(self, what: str, t: torch.Tensor | None = None) -> None:
        """One sync at the calling line; ``.cpu().numpy()`` on one line is one (the copy is the sync)."""
        if not self.counting:
            return
        site = _site()
        if what == "numpy()" and self.last_copy == (id(t), site):
            return
        self.last_copy = (id(t), site) if what == "cpu()" else None
        self.syncs[f"{site} {what}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = any(self.on_device(t) for t in pytree.tree_leaves((args, kwargs)))
        if device and self.counting:
            self.ops += 1
        if device and func.overloadpacket.__name__ in SIZED_BY_DATA:
            self.read(func.overloadpacket.__name__)
        out = func(*args, **kwargs)
        if device:
            self.tag(out)
        return out


def _wrap_reads(counter: SyncCounter) -> None:
    """Count every Python-level read of a tagged tensor (once per call, however it is made)."""
    for name in READS:
        original = getattr(torch.Tensor, name)

        def read(self, *a, _original=original, _name=name, **kw):
            if counter.on_device(self) and not counter.inside:
                counter.read(_name.strip("_") + "()", self)
                counter.inside = True
                try:
                    return _original(self, *a, **kw)
                finally:
                    counter.inside = False
            return _original(self, *a, **kw)

        setattr(torch.Tensor, name, read)


def _hook_trainer(counter: SyncCounter, per_step: list) -> None:
    """Count inside every `_Trainer._step`; tag the model and its batches as the forward receives them."""
    step = T._Trainer._step

    def counted(self, *a, **kw):
        if not getattr(self, "_tagging", False):
            self._tagging = True
            counter.tag(list(self.model.parameters()), list(self.model.buffers()))
            self.model.register_forward_pre_hook(lambda m, args: counter.tag([args[0].views, args[0].index]))
        counter.tag(a, kw)  # the batch's images and views, where the step is given them
        counter.syncs.clear()
        counter.ops, counter.counting = 0, True
        try:
            with counter:
                return step(self, *a, **kw)
        finally:
            counter.counting = False
            per_step.append((collections.Counter(counter.syncs), counter.ops))

    T._Trainer._step = counted


def _spec(method: str, dataset: Path, subset: Path) -> dict:
    p = dict(epochs=1, batch_size=32, checkpoint_every=1, threads=1, device="cpu", precision="fp32")
    p.update(backbone=dict(arch="cnn4", width=4), optim=dict(warmup_epochs=0))
    small = dict(  # at most as many clusters as the few training images; SwAV with its queue on
        swav=dict(queue_length=64, queue_start_epoch=0),
        deepcluster=dict(k=8, pca_dim=16),
        pcl=dict(num_clusters=[8, 16], proto_negatives=4),
    )
    methods = {method: small[method]} if method in small else {}
    cfg = config.validate(dict(study=dict(methods=[method], domains=["natural"]), pretrain=p, methods=methods))
    spec = axes.pretrain_spec(cfg, axes.ssl_runs(cfg)[0])
    spec["data"] = dict(dataset=str(dataset), subset=str(subset))
    if method == "pcl":  # its prototypes from the first epoch (k-means before step 1), as DeepCluster's labels
        spec["method"]["params"]["proto_warmup_epochs"] = 0
    return spec


def count(methods: list[str], steps: int) -> list[dict]:
    counter = SyncCounter()
    _wrap_reads(counter)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "data", domains=("natural",), n_images=512, image_size=32, seed=0)
        subset = tmp / "subset.npy"
        save_indices(
            subset, nested_subsets(load_dataset(tmp / "data" / "natural").labels, [32 * steps], seed=0)[32 * steps]
        )
        for method in methods:
            per_step: list = []
            step = T._Trainer._step
            _hook_trainer(counter, per_step)
            try:
                T.train(_spec(method, tmp / "data" / "natural", subset), tmp / method)
            finally:
                T._Trainer._step = step
            later = per_step[1:]
            sites = collections.Counter()
            for c, _ in later:
                sites.update(c)
            rows.append(
                dict(
                    method=method,
                    steps=len(later),
                    syncs_per_step=sum(sites.values()) / max(len(later), 1),
                    device_ops_per_step=sum(n for _, n in later) / max(len(later), 1),
                    sites={k: v / len(later) for k, v in sorted(sites.items())},
                )
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=sorted(REGISTRY))
    ap.add_argument("--steps", type=int, default=6, help="steps per method (one epoch of that many batches)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = count(a.methods, a.steps)
    for r in rows:
        where = "; ".join(f"{k} x{v:g}" for k, v in r["sites"].items()) or "-"
        print(
            f"{r['method']:<12} host syncs per step: {r['syncs_per_step']:g}  device ops per step: "
            f"{r['device_ops_per_step']:g}  {where}"
        )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
