"""The one trainer every method shares: data, views, optimiser, schedules, checkpoints, logs."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import distributed as D
from . import names
from .atomic import atomic_path
from .augment import ViewSpec, batch_params, eval_view, set_thread_threads, views_from
from .data.packed import load_dataset
from .data.subsets import load_indices
from .errors import UserError
from .health import collapse_check, embedding_health, trivial_info, trivial_loss
from .hostsync import LossWatch, accumulate, host_sums, to_device
from .lean_optim import skip_dynamo_import
from .methods import build_method
from .methods.base import Batch, Method
from .models import build_backbone

log = logging.getLogger("sslstudy.train")


class Diverged(UserError):
    """The loss stopped being finite."""


class Collapsed(UserError):
    """health.collapse_check found the run collapsed and pretrain.on_collapse is stop; the message is
    its reason line."""


# ----------------------------------------------------------------------------- optimisation
class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-layer step is scaled by the trust ratio
    eta * ||w|| / ||g + wd * w|| (You et al. 2017; SimCLR/BYOL defaults eta=1e-3).
    Every group decays by its own weight_decay; `lars=False` groups skip only the trust ratio
    (as the official LARS of Barlow Twins / VICReg filters decay and adaptation separately)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self):
        """Each group in a few multi-tensor (torch._foreach_*) ops, not a Python loop of small kernels per
        parameter; element for element the same arithmetic, so the same numbers on the CPU."""
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            d = [p.grad for p in params]
            if g["weight_decay"]:
                d = torch._foreach_add(d, params, alpha=g["weight_decay"])
            if g["lars"]:
                w_norm, d_norm = torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(d))
                trust = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm, torch.ones_like(w_norm))
                d = torch._foreach_mul(d, list(trust.unbind()))
            fresh = {i for i, p in enumerate(params) if "momentum_buffer" not in self.state[p]}
            for i in fresh:
                self.state[params[i]]["momentum_buffer"] = torch.clone(d[i])
            old = [i for i in range(len(params)) if i not in fresh]
            if old:
                bufs = [self.state[params[i]]["momentum_buffer"] for i in old]
                torch._foreach_mul_(bufs, g["momentum"])
                torch._foreach_add_(bufs, [d[i] for i in old])
            torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params], alpha=-g["lr"])


def build_optimizer(model, cfg: dict, lr: float) -> torch.optim.Optimizer:
    skip_dynamo_import()
    groups = model.optim_groups(cfg["weight_decay"])
    if cfg["name"] == "lars":
        return LARS(groups, lr=lr, momentum=cfg["momentum"], eta=cfg["eta"])
    if cfg["name"] == "sgd":
        for g in groups:
            g.pop("lars", None)
        return torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"])
    raise UserError(f"unknown optimizer {cfg['name']!r}; use lars or sgd (pretrain.optim.name in params)")


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0) -> np.ndarray:
    """Per-step values: linear warm-up from 0 to base, then cosine decay to final."""
    warmup = np.linspace(0.0, base, warmup_steps, endpoint=False)
    t = np.arange(total_steps - warmup_steps) / max(1, total_steps - warmup_steps)
    sched = np.concatenate([warmup, final + 0.5 * (base - final) * (1 + np.cos(np.pi * t))])
    assert len(sched) == total_steps
    return sched


# ----------------------------------------------------------------------------- checkpoints
def atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


BACKBONE = "backbone."  # the backbone's prefix in a Method's state_dict


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / names.CHECKPOINTS).glob(names.EPOCH_GLOB))


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise UserError(
            f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to restart from the previous one"
        ) from None


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


# ----------------------------------------------------------------------------- training
class Stopped(Exception):
    """Training stopped at a step boundary on request (tests, preemption); checkpoints/last.pt holds it."""


class Context:
    """What `Method.before_epoch` may use: the training subset and a way to embed all of it."""

    def __init__(self, ds, idx: np.ndarray, device: torch.device, cfg: dict):
        self.dataset, self.idx, self.device, self.cfg = ds, idx, device, cfg
        self.seed = cfg["seed"]

    def features(self, encoder: torch.nn.Module, batch_size: int = 256) -> torch.Tensor:
        """encoder (in eval mode) on the centre view of every training image -> (n_train, D) float32
        on the device, in subset order; with several ranks each embeds a shard and all gather."""
        n, w = len(self.idx), D.world()
        per = -(-n // w)
        mine = self.idx[np.minimum(np.arange(D.rank() * per, (D.rank() + 1) * per), n - 1)]
        return D.gather(
            embed(encoder, self.dataset.images, mine, self.cfg["views"][0]["size"], self.device, batch_size)
        )[:n]


@torch.no_grad()
def embed(
    encoder: torch.nn.Module,
    images,
    rows: np.ndarray,
    size: int,
    device: torch.device | None = None,
    batch_size: int = 256,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one embedding of the project: encoder in eval mode (its mode restored after) on the eval view
    of images[rows] -> (len(rows), D), on the encoder's device (or ``device``), batch by batch; no
    collective, no random numbers. Inputs channels_last; on CUDA in bf16 autocast, on the CPU in
    float32. Without ``out`` the result is float32 on the device; with ``out`` (any device and dtype,
    e.g. the evaluation cache's float16 host array) each batch is copied into it and ``out`` is
    returned, so nothing larger than the features is held."""
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    chunks = []
    for i in range(0, len(rows), batch_size):
        x = eval_view(torch.from_numpy(np.asarray(images[rows[i : i + batch_size]])).to(device), size)
        x = x.contiguous(memory_format=torch.channels_last)  # on the CPU the same numbers as contiguous inputs
        with torch.autocast(**_amp(device)):
            z = encoder(x).float()
        if out is None:
            chunks.append(z)
        else:
            out[i : i + len(z)].copy_(z)
    encoder.train(was_training)
    return out if out is not None else torch.cat(chunks)


def _amp(device: torch.device) -> dict:
    return dict(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


# ----------------------------------------------------------------------------- device and precision
def choose_device(cfg: dict) -> torch.device:
    """pretrain.device (auto: the GPU when torch sees CUDA). A job given GPUs (cfg gpus, from
    launch.pretrain.gpus on SLURM) or device cuda on a machine without CUDA: one UserError line."""
    want = cfg.get("device", "auto")
    if want == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if want == "cuda" or cfg.get("gpus"):
        asked = (
            "pretrain.device is cuda" if want == "cuda" else f"the job has {cfg['gpus']} GPU(s) (launch.pretrain.gpus)"
        )
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise UserError(
            f"{cfg['run']}: {asked} but torch sees no CUDA device on {socket.gethostname()} "
            f"(torch {torch.__version__}, {build}); run it on a GPU node with the CUDA build (make study GPU=1), "
            f"or set launch.pretrain.gpus: 0 or pretrain.device: cpu in params"
        )
    return torch.device("cpu")


def cpu_bf16() -> str | None:
    """The CPU's native bf16 instructions (AMX or AVX512-BF16, from /proc/cpuinfo's flags), or None."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), [])
    except OSError:
        return None
    found = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return "+".join(found) or None


def choose_precision(cfg: dict, device: torch.device) -> tuple[torch.dtype | None, str]:
    """pretrain.precision (or finetune.precision) -> (the autocast dtype or None for fp32, what ran in words)."""
    want = cfg.get("precision", "auto")
    if want == "fp32":
        return None, "fp32 (precision: fp32)"
    if device.type == "cuda":
        return torch.bfloat16, "bf16 autocast on CUDA"
    native = cpu_bf16()
    if native:
        return torch.bfloat16, f"bf16 autocast on the CPU ({native})"
    if want == "auto":
        return None, "fp32 (precision auto: this CPU has no native bf16, no AMX or AVX512-BF16)"
    why = (
        f"{cfg['run']}: pretrain.precision is bf16 but this CPU has no native bf16 "
        "(no AMX or AVX512-BF16 in /proc/cpuinfo)"
    )
    if not cfg.get("precision_fallback", False):
        raise UserError(
            f"{why}; set pretrain.precision: auto or fp32, or pretrain.precision_fallback: true to train in fp32"
        )
    log.warning("%s; training in fp32 (pretrain.precision_fallback: true)", why)
    return None, "fp32 (bf16 asked, no native bf16 on this CPU; precision_fallback)"


def build_model(cfg: dict, n_train: int = 0) -> Method:
    torch.manual_seed(cfg["seed"])
    backbone = build_backbone(**cfg["backbone"])
    views = [ViewSpec(**v) for v in cfg["views"]]
    return build_method(cfg["method"]["name"], backbone, cfg["method"]["params"], views, n_train, cfg["batch_size"])


HEALTH_IMAGES = 512  # the fixed training images each epoch's embedding health is measured on
_HEALTHY, _COLLAPSED, _NOT_FINITE = 0, 1, 2  # what _Trainer._health finds


def train(cfg: dict, run_dir: str | Path, stop_after: int | None = None) -> Path:
    """Pretrain one run; resumes from checkpoints/last.pt (mid-epoch included). Returns final.pt.

    After every epoch the lead rank adds the backbone's embedding health on HEALTH_IMAGES fixed
    training images (health.embedding_health) and the method's trivial loss to metrics.jsonl;
    when health.collapse_check says collapsed, the record gets collapsed/collapse_reason, train.log
    the reason (once per collapse) and, with cfg on_collapse "stop", Collapsed is raised once the
    epoch's checkpoints are saved. Non-finite embeddings raise Diverged, as a non-finite loss does (decided by
    all ranks together, at most hostsync.CHECK_EVERY steps later and before anything is saved).

    stop_after: stop (raising Stopped) once this many steps are done in this call, as a
    preemption would; SIGUSR2 (SLURM's preemption/timeout warning) does the same at the next step
    boundary and is then passed on to the previous handler (submitit's, which requeues the job).
    """
    return _Trainer(cfg, Path(run_dir)).run(stop_after)


@dataclass
class _Position:
    """Where training is; last.pt saves it, so a resumed run continues at the same step."""

    epoch: int = 0
    it: int = 0  # steps done in this epoch
    gen: torch.Tensor | None = None  # generator state to resume the epoch from; None at an epoch start
    order: np.ndarray | None = None  # this epoch's image order (positions in the subset)
    sums: dict = field(default_factory=dict)  # this epoch's summed step logs (float64, on the device in a step)


class _Trainer:
    """One call of `train`: what is fixed for the run (data, schedule, model, optimiser) and `pos`."""

    def __init__(self, cfg: dict, run_dir: Path):
        self.device = choose_device(cfg)
        D.init_from_env(cuda=self.device.type == "cuda")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
        self.cfg, self.run_dir, self.lead = cfg, run_dir, D.rank() == 0
        if self.lead:
            run_dir.mkdir(parents=True, exist_ok=True)
            _log_to(run_dir / names.TRAIN_LOG)
        torch.set_num_threads(cfg["threads"])
        self.dtype, precision = choose_precision(cfg, self.device)
        self.compile = cfg.get("compile", False)
        # with a core to spare, the CPU's reader thread also makes the next batch's views (one thread, while
        # the backward runs); on a GPU the views are kernels queued on the main thread, the batch pinned
        self.views_ahead = self.device.type == "cpu" and cfg["threads"] < len(os.sched_getaffinity(0))
        if self.lead:
            where = (
                torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"{cfg['threads']} thread(s)"
            )
            log.info(
                "device %s (%s), precision %s, compile %s, %s one batch ahead in a thread",
                self.device,
                where,
                precision,
                "on" if self.compile else "off",
                "data read and views made" if self.views_ahead else "data read (pinned, non_blocking copy)",
            )

        self.ds = load_dataset(cfg["data"]["dataset"])
        self.idx = np.sort(load_indices(cfg["data"]["subset"]))
        bs, world = self.bs, self.world = cfg["batch_size"], D.world()
        if bs % world:
            raise UserError(
                f"{cfg['run']}: the global batch {bs} ({_batch_key(cfg)}) is not divisible by {world} "
                "processes; change it in params"
            )
        if len(self.idx) < bs:
            raise UserError(
                f"{cfg['data']['subset']}: {len(self.idx)} images, fewer than one batch of {bs}; lower "
                f"{_batch_key(cfg)}"
            )
        self.steps_per_epoch = len(self.idx) // bs  # drop_last: every step sees a full batch
        self.epochs = cfg["epochs"]
        self.total = self.steps_per_epoch * self.epochs
        ocfg = cfg["optim"]
        lr = ocfg["lr"] * bs / 256  # bs is the global batch: the rate does not change with the GPU count
        self.lr_sched = cosine_schedule(
            lr, ocfg["final_lr"] * bs / 256, self.total, ocfg["warmup_epochs"] * self.steps_per_epoch
        )

        self.model = build_model(cfg, len(self.idx)).to(self.device, memory_format=torch.channels_last)
        self.model = D.sync_batchnorm(
            self.model, cfg["method"]["params"].get("sync_batchnorm", False), self.device, cfg["run"]
        )
        self.opt = build_optimizer(self.model, ocfg, lr)
        if self.compile:
            self.model.backbone.compile()  # in place: the state_dict keeps its keys
        self.ctx = Context(self.ds, self.idx, self.device, cfg)
        pick = np.random.default_rng(0).choice(len(self.idx), min(HEALTH_IMAGES, len(self.idx)), replace=False)
        self.health_rows = self.idx[np.sort(pick)]  # the same images for every seed of a subset
        self.trivial_info = trivial_info(cfg)
        self.on_collapse = cfg.get("on_collapse", "warn")  # specs made by hand (tests) may leave it out

    def run(self, stop_after: int | None) -> Path:
        self._start_or_resume()
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, broadcast_buffers=False)
        self.history = _read_metrics(self.run_dir, self.pos.epoch) if self.lead else []  # what collapse_check reads
        self.metrics = (self.run_dir / names.METRICS).open("a") if self.lead else None
        self.bar = tqdm(
            total=self.epochs,
            initial=self.pos.epoch,
            desc=self.cfg["run"],
            disable=None if self.lead else True,
            mininterval=5,
        )
        self.stop_after, self.done_here = stop_after, 0  # done_here: steps done in this call
        self.watch = LossWatch()
        try:
            with (
                _DeferredSignal() as self.preempt,
                ThreadPoolExecutor(
                    1, thread_name_prefix="sslstudy-read", initializer=set_thread_threads
                ) as self.reader,
            ):
                while self.pos.epoch < self.epochs:
                    self._run_epoch()
        finally:
            self.bar.close()
            if self.metrics:
                self.metrics.close()
        return self._finish()

    def _start_or_resume(self) -> None:
        state = _resume_state(self.run_dir, self.cfg)
        if state is None:
            self._save_backbone(0)  # the random-weights baseline
            self.pos = _Position()
            log.info(
                "starting %s: %d images, %d steps/epoch, %d epochs, %d process(es)",
                self.run_dir,
                len(self.idx),
                self.steps_per_epoch,
                self.epochs,
                self.world,
            )
        else:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.pos = _Position(state["epoch"], state["it"], state["gen"], state["order"], state["sums"])
            log.info(
                "resumed from %s (epoch %d of %d, step %d of %d)",
                state["path"].name,
                self.pos.epoch,
                self.epochs,
                self.pos.it,
                self.steps_per_epoch,
            )

    def _run_epoch(self) -> None:
        """The rest of epoch pos.epoch (all of it unless resumed mid-epoch), then its log and checkpoints."""
        pos = self.pos
        self.model.train()
        gen = torch.Generator()
        if pos.gen is None:
            gen.manual_seed(epoch_seed(self.cfg["seed"], pos.epoch))
            self.model.before_epoch(pos.epoch, self.ctx)
            pos.order = self.model.epoch_order(pos.epoch, gen)
        else:
            gen.set_state(pos.gen)
        t0 = time.time()
        self.ahead, self.ahead_gen = self.reader.submit(self._prepare, pos.it), None
        while pos.it < self.steps_per_epoch:
            if self._stop_requested():
                self._stop(gen.get_state() if self.ahead_gen is None else self.ahead_gen)
            images, views = self.ahead.result()
            self.ahead_gen = None
            if pos.it + 1 < self.steps_per_epoch and not self.views_ahead:  # read while this step runs
                self.ahead = self.reader.submit(self._prepare, pos.it + 1)
            self._step(gen, images.to(self.device, non_blocking=True), views)
            pos.it += 1
            self.done_here += 1
        self._end_epoch(time.time() - t0)

    def _picked(self, it: int) -> np.ndarray:
        """The subset positions of batch `it` of this epoch's order (the global batch, sorted)."""
        return np.sort(self.pos.order[it * self.bs : (it + 1) * self.bs])

    def _prepare(self, it: int, params: list | None = None) -> tuple[torch.Tensor, list | None]:
        """This rank's images of batch `it` (uint8, on the CPU; pinned for the copy to a GPU) and, given
        their view parameters, its views. Runs in the reader thread, one batch ahead of the steps; draws
        no random numbers."""
        images = torch.from_numpy(np.asarray(self.ds.images[self.idx[self._picked(it)[D.local_slice(self.bs)]]]))
        if params is not None:
            return images, self._views(images, params)
        return (images.pin_memory() if self.device.type == "cuda" else images), None

    def _draw(self, gen: torch.Generator) -> list[dict]:
        """The random parameters of every view of one batch (this rank's rows of the global batch)."""
        h, w = self.ds.images.shape[1:3]
        return [batch_params(s, h, w, gen, self.bs, D.local_slice(self.bs)) for s in self.model.view_specs]

    def _views(self, images: torch.Tensor, params: list[dict]) -> list[torch.Tensor]:
        return [
            views_from(images, p, s).contiguous(memory_format=torch.channels_last)
            for p, s in zip(params, self.model.view_specs)
        ]

    def _draw_next(self, gen: torch.Generator) -> None:
        """On the CPU, once this step's forward has drawn its random numbers: draw the next batch's view
        parameters (the same numbers, in the same order, as drawing them at its step) and let the reader
        thread read its images and make its views while this step's backward runs."""
        it = self.pos.it + 1
        if not self.views_ahead or it >= self.steps_per_epoch:
            return
        self.ahead_gen = gen.get_state()  # what a stop before that step saves
        self.ahead = self.reader.submit(self._prepare, it, self._draw(gen))

    def _step(self, gen: torch.Generator, images: torch.Tensor, views: list | None) -> None:
        """One optimiser step on batch pos.it of the epoch's order (images: its rows of this rank, on
        the device; views: made ahead, or None to make them here); adds its logs to pos.sums."""
        pos, bs, model = self.pos, self.bs, self.model
        step = pos.epoch * self.steps_per_epoch + pos.it
        for g in self.opt.param_groups:
            g["lr"] = self.lr_sched[step]
        picked, rows = self._picked(pos.it), D.local_slice(bs)
        if views is None:
            views = self._views(images, self._draw(gen))
        mine = picked[rows]
        batch = Batch(views, to_device(torch.from_numpy(mine), self.device), step, self.total, pos.epoch, gen, mine)
        model.before_step(step, self.total)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype is not None):
            loss, logs = self.net(batch)
        self._draw_next(gen)
        self.watch.add(loss, step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        model.before_optimizer_step(step)
        self.opt.step()
        model.after_step(step, self.total)
        for k, v in dict(loss=loss, **logs).items():
            pos.sums[k] = accumulate(pos.sums.get(k, 0.0), v)  # on the device: read at the epoch's end
        if self.watch.due(step):
            self._check_loss()

    def _check_loss(self) -> None:
        """Diverged on every rank at once if any rank's loss was not finite (hostsync.LossWatch): every
        CHECK_EVERY steps and before anything is saved."""
        bad = self.watch.check(self.device)
        if bad is not None:
            step, value, ranks = bad
            epoch, it = divmod(step, self.steps_per_epoch)
            where = f" on rank {', '.join(map(str, ranks))} of {self.world}" if self.world > 1 else ""
            raise Diverged(
                f"{self.run_dir}: loss is {value} at epoch {epoch + 1} step {it}{where}; "
                f"lower pretrain.optim.lr (now {self.cfg['optim']['lr']}) in params"
            )

    def _stop_requested(self) -> bool:
        return (self.stop_after is not None and self.done_here >= self.stop_after) or self.preempt.requested()

    def _stop(self, gen_state: torch.Tensor) -> None:
        pos = self.pos
        self._check_loss()
        self._save_last(gen_state)
        log.info("stopped at epoch %d step %d; state in checkpoints/last.pt", pos.epoch, pos.it)
        self.preempt.pass_on()
        raise Stopped(f"{self.run_dir}: stopped at epoch {pos.epoch} step {pos.it}")

    def _end_epoch(self, seconds: float) -> None:
        """Log the finished epoch, move pos to the next one and save the checkpoints."""
        self._check_loss()
        spe, epoch = self.steps_per_epoch, self.pos.epoch + 1
        rec = dict(
            epoch=epoch,
            step=epoch * spe,
            **{k: v / spe for k, v in host_sums(self.pos.sums).items()},
            lr=float(self.lr_sched[epoch * spe - 1]),
            seconds=round(seconds, 3),
            views_per_s=round(len(self.model.view_specs) * self.bs * spe / max(seconds, 1e-9), 1),
        )
        self.pos = _Position(epoch)
        health = self._health(rec) if self.lead else _HEALTHY
        health = int(
            D.all_reduce_sum(torch.tensor(health, device=self.device))
        )  # every rank acts on the lead's verdict
        if health == _NOT_FINITE:
            raise Diverged(
                f"{self.run_dir}: the backbone's embeddings of fixed training images are not finite after epoch "
                f"{epoch}; lower pretrain.optim.lr (now {self.cfg['optim']['lr']}) in params"
            )
        if self.lead:
            self._log_epoch(rec, seconds)
        if epoch % self.cfg["checkpoint_every"] == 0 or epoch == self.epochs:
            self._save_backbone(epoch)
        self._save_last(None)
        if health == _COLLAPSED and self.on_collapse == "stop":
            raise Collapsed(
                rec.get("collapse_reason", f"{self.cfg['run']}: collapsed at epoch {epoch} (see train.log)")
            )

    def _health(self, rec: dict) -> int:
        """Add the fixed images' embedding health and the trivial loss to rec; mark it when collapse_check
        says collapsed, logging the reason if the epoch before was not -> _HEALTHY, _COLLAPSED or _NOT_FINITE."""
        z = embed(self.model.backbone, self.ds.images, self.health_rows, self.cfg["views"][0]["size"], self.device)
        if not torch.isfinite(z).all():
            return _NOT_FINITE
        rec.update(embedding_health(z))
        method = self.cfg["method"]["name"]
        t = trivial_loss(method, **self.trivial_info)
        if t is not None:
            rec["trivial_loss"] = t
        before = self.history[-1] if self.history else {}
        self.history.append(rec)
        collapsed, why = collapse_check(self.history, method, self.cfg["run"], **self.trivial_info)
        if not collapsed:
            return _HEALTHY
        rec.update(collapsed=True, collapse_reason=why)
        if not before.get("collapsed"):
            log.warning("%s", why)
        return _COLLAPSED

    def _log_epoch(self, rec: dict, seconds: float) -> None:
        self.metrics.write(json.dumps(rec) + "\n")
        self.metrics.flush()
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{rec['loss']:.3f}")
        log.info("epoch %d/%d loss %.4f lr %.4g %.1fs", rec["epoch"], self.epochs, rec["loss"], rec["lr"], seconds)

    def _save_last(self, gen_state: torch.Tensor | None) -> None:
        """checkpoints/last.pt: the full state at pos (gen_state: the generator's when stopped mid-epoch, else None)."""
        pos = self.pos
        self._save(
            self.run_dir / names.CHECKPOINTS / names.LAST,
            dict(epoch=pos.epoch, it=pos.it, gen=gen_state, order=pos.order, sums=host_sums(pos.sums)),
        )

    def _save_backbone(self, epoch: int) -> None:
        """checkpoints/epNNN.pt: what load_backbone reads (the backbone's weights, config, epoch), no optimiser."""
        if self.lead:
            weights = {k: v for k, v in self.model.state_dict().items() if k.startswith(BACKBONE)}
            atomic_torch_save(
                dict(epoch=epoch, model=weights, config=self.cfg),
                self.run_dir / names.CHECKPOINTS / names.epoch_checkpoint(epoch),
            )

    def _save(self, path: Path, extra: dict) -> None:
        """extra + the whole model, optimiser and config: what resuming needs (on the lead rank only)."""
        if self.lead:
            atomic_torch_save(
                dict(extra, model=self.model.state_dict(), optimizer=self.opt.state_dict(), config=self.cfg), path
            )

    def _finish(self) -> Path:
        final = self.run_dir / names.FINAL
        self._save(final, dict(epoch=self.epochs))
        if self.lead:
            log.info("done: %s", final)
        return final


def _batch_key(cfg: dict) -> str:
    """Where a run's global batch is set in params."""
    return f"methods.{cfg['method']['name']}.batch_size, else pretrain.batch_size"


def _resume_state(run_dir: Path, cfg: dict) -> dict | None:
    """The state to resume from: last.pt if it was written for this config (else the run starts over,
    its checkpoints and metrics dropped). Every rank reads it; only the lead changes files, once all have read."""
    ckpts = run_dir / names.CHECKPOINTS
    path = ckpts / names.LAST
    state = load_checkpoint(path) if path.is_file() else None
    D.barrier()
    stale = []
    if state is not None and _same_run(state.get("config") or {}) != _same_run(cfg):
        log.info("checkpoints in %s were made with another config; starting over", run_dir)
        state, stale = None, list(ckpts.glob("*.pt"))
    metrics = run_dir / names.METRICS
    if D.rank() == 0:
        for p in stale:
            p.unlink()
        if metrics.is_file():  # drop the lines of epochs that will be redone
            done = state["epoch"] if state else 0
            kept = [ln for ln in metrics.read_text().splitlines(keepends=True) if _epoch_of(ln) <= done]
            with atomic_path(metrics) as tmp:
                tmp.write_text("".join(kept))
    return dict(state, path=path) if state else None


def _read_metrics(run_dir: Path, epochs: int) -> list[dict]:
    """The metrics.jsonl records of epochs 1..epochs (those a resumed run continues from)."""
    path = run_dir / names.METRICS
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(ln) for ln in lines if _epoch_of(ln) <= epochs]


def _epoch_of(line: str) -> float:
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError):
        return float("inf")  # a line cut short by a kill


def _same_run(cfg: dict) -> dict:
    """What must match to resume: everything but the thread and GPU counts (a run may move to a SLURM
    node), what to do on collapse and whether bf16 may fall back (none changes the weights)."""
    return {k: v for k, v in cfg.items() if k not in ("threads", "gpus", "on_collapse", "precision_fallback")}


class _DeferredSignal:
    """Holds SIGUSR2 until the trainer reaches a step boundary (so the state it saves is
    consistent), then hands it to the handler that was installed before (submitit's)."""

    def __init__(self):
        self._flag = False
        self._previous = None
        self._pending = None  # (work, tensor): the ranks' flags being summed

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR2, self._hold)
        return self

    def _hold(self, signum, frame):
        self._flag = True

    def requested(self) -> bool:
        """Whether to stop before this step. One process: once the signal came. Several: every rank
        stops at the same step; each call starts summing the ranks' flags (asynchronously, on the host:
        D.host_group, so reading the sum never waits for the GPU) and reads the sum the call before
        started, so no step waits for the others' flags and a signal stops the ranks a step later."""
        if D.world() == 1:
            return self._flag
        stop = False
        if self._pending is not None:
            work, flags = self._pending
            work.wait()
            stop = bool(flags.item() > 0)
        flags = torch.tensor(float(self._flag))
        self._pending = (D.all_reduce_sum_async(flags, D.host_group()), flags)
        return stop

    def pass_on(self) -> None:
        if self._previous is not None and self._flag:
            prev, self._previous = self._previous, None
            signal.signal(signal.SIGUSR2, prev)
            if callable(prev):
                prev(signal.SIGUSR2, None)

    def __exit__(self, exc_type, *exc):
        if self._pending is not None and exc_type is None:
            self._pending[0].wait()  # every rank started it; leave no collective behind
        if self._previous is not None:
            signal.signal(signal.SIGUSR2, self._previous)
        return False


def _log_to(path: Path) -> None:
    root = logging.getLogger("sslstudy")
    if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in root.handlers):
        h = logging.FileHandler(path)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(h)
    root.setLevel(logging.INFO)


def load_backbone(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The backbone of a saved checkpoint (eval mode, on ``device``) and the run config it was trained with."""
    state = load_checkpoint(Path(path))
    cfg = state["config"]
    backbone = build_backbone(**cfg["backbone"])
    backbone.load_state_dict({k.removeprefix(BACKBONE): v for k, v in state["model"].items() if k.startswith(BACKBONE)})
    return backbone.to(device).eval(), cfg
