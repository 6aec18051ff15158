"""The one trainer every method shares: `train(cfg, run_dir)` pretrains one run.

The run's data, schedule, model and optimiser are fixed in `_Trainer.__init__`; `_Trainer.run` resumes
(or starts), then trains epoch by epoch, step by step, and ends each epoch with the health check,
checkpoints and log. Around it: data/prefetch.py reads the batches (and makes their views) one step
ahead, optim.py the optimiser and schedule, checkpoint.py the files, device.py the device and
precision, signals.py the preemption signal, eval/features.py the embedding of the health check.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint, curves, distributed, names, run_record
from .augment import ViewSpec
from .data.packed import load_dataset
from .data.prefetch import Prefetcher, views_ahead
from .data.subsets import load_indices
from .device import choose_device, choose_precision
from .divergence import clear_divergence, nonfinite_checkpoint, record_divergence
from .errors import UserError
from .eval.features import embed
from .health import collapse_check, embedding_health, trivial_info, trivial_loss
from .hostsync import LossWatch, accumulate, host_sums
from .methods import build_method
from .methods.base import Batch, Method
from .models import build_backbone
from .optim import build_optimizer, cosine_schedule
from .signals import DeferredSignal

log = logging.getLogger("sslstudy.train")


class Diverged(UserError):
    """The loss, the embeddings or a tensor about to be checkpointed stopped being finite (sslstudy.divergence)."""


class Collapsed(UserError):
    """health.collapse_check found the run collapsed and pretrain.on_collapse is stop; the message is
    its reason line."""


class Stopped(Exception):
    """Training stopped at a step boundary on request (tests, preemption); checkpoints/last.pt holds it."""


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


class Context:
    """What `Method.before_epoch` may use: the training subset and a way to embed all of it."""

    def __init__(self, ds, idx: np.ndarray, device: torch.device, cfg: dict):
        self.dataset, self.idx, self.device, self.cfg = ds, idx, device, cfg
        self.seed = cfg["seed"]

    def features(self, encoder: torch.nn.Module, batch_size: int = 256) -> torch.Tensor:
        """encoder (in eval mode) on the centre view of every training image -> (n_train, D) float32
        on the device, in subset order; with several ranks each embeds a shard and all gather."""
        n, w = len(self.idx), distributed.world()
        per = -(-n // w)
        mine = self.idx[np.minimum(np.arange(distributed.rank() * per, (distributed.rank() + 1) * per), n - 1)]
        return distributed.gather(
            embed(encoder, self.dataset.images, mine, self.cfg["views"][0]["size"], self.device, batch_size)
        )[:n]


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
    epoch's checkpoints are saved. Non-finite embeddings raise Diverged, as a non-finite loss does (decided
    by all ranks together, at most hostsync.CHECK_EVERY steps later and before anything is saved), and so
    does a non-finite value in the state about to be checkpointed (sslstudy.divergence): a rerun with a
    lower lr resumes from the last finite checkpoint.

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
    """One call of `train`: what is fixed for the run (data, schedule, model, optimiser, batches) and `pos`."""

    def __init__(self, cfg: dict, run_dir: Path):
        # ---- device, precision, threads
        self.device = choose_device(cfg)
        distributed.init_from_env(cuda=self.device.type == "cuda")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
        self.cfg, self.run_dir, self.lead = cfg, run_dir, distributed.rank() == 0
        if self.lead:
            run_dir.mkdir(parents=True, exist_ok=True)
            _log_to(run_dir / names.TRAIN_LOG)
        torch.set_num_threads(cfg["threads"])
        self.dtype, precision = choose_precision(cfg, self.device)
        self.compile = cfg.get("compile", False)
        ahead = views_ahead(self.device, cfg["threads"])
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
                "data read and views made" if ahead else "data read (pinned, non_blocking copy)",
            )

        # ---- data and schedule
        self.ds = load_dataset(cfg["data"]["dataset"])
        self.idx = np.sort(load_indices(cfg["data"]["subset"]))
        bs, world = self.bs, self.world = cfg["batch_size"], distributed.world()
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

        # ---- model, optimiser, batches, health check
        self.model = build_model(cfg, len(self.idx)).to(self.device, memory_format=torch.channels_last)
        self.model = distributed.sync_batchnorm(
            self.model, cfg["method"]["params"].get("sync_batchnorm", False), self.device, cfg["run"]
        )
        self.opt = build_optimizer(self.model, ocfg, lr)
        if self.compile:
            self.model.backbone.compile()  # in place: the state_dict keeps its keys
        self.batches = Prefetcher(
            self.ds.images, self.idx, bs, self.steps_per_epoch, self.model.view_specs, self.device, ahead
        )
        self.ctx = Context(self.ds, self.idx, self.device, cfg)
        pick = np.random.default_rng(0).choice(len(self.idx), min(HEALTH_IMAGES, len(self.idx)), replace=False)
        self.health_rows = self.idx[np.sort(pick)]  # the same images for every seed of a subset
        self.trivial_info = trivial_info(cfg)
        self.on_collapse = cfg.get("on_collapse", "warn")  # specs made by hand (tests) may leave it out

    def run(self, stop_after: int | None) -> Path:
        # ---- resume: last.pt's weights, optimiser and position (mid-epoch included), else a fresh start
        self._start_or_resume()
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, broadcast_buffers=False)
        self._open_logs()
        self.stop_after, self.done_here = stop_after, 0  # done_here: steps done in this call
        self.watch = LossWatch()
        try:
            with DeferredSignal() as self.preempt, self.batches:
                while self.pos.epoch < self.epochs:
                    # ---- one epoch: its generator and image order (or last.pt's, mid-epoch), then its steps
                    gen = self._start_epoch()
                    t0 = time.time()
                    self.batches.start_epoch(self.pos.order, gen, self.pos.it)
                    while self.pos.it < self.steps_per_epoch:
                        # ---- step: stop at this boundary if asked (stop_after, SIGUSR2), else train on a batch
                        if self._stop_requested():
                            self._stop(self.batches.generator_state())
                        self._step(gen)
                        self.pos.it += 1
                        self.done_here += 1
                    # ---- end of epoch: health, checkpoint, log
                    self._end_epoch(time.time() - t0)
        finally:
            self._close_logs()
        # ---- done: final.pt
        return self._finish()

    def _start_or_resume(self) -> None:
        state = checkpoint.resume_state(self.run_dir, self.cfg)
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

    def _open_logs(self) -> None:
        """The record so far (metrics.jsonl as checkpoint.resume_state left it; last.pt keeps it), the records
        collapse_check reads, the progress bar: the lead's."""
        self.records = run_record.read(self.run_dir / names.METRICS, self.pos.epoch) if self.lead else []
        self.history = list(self.records)
        self.bar = tqdm(
            total=self.epochs,
            initial=self.pos.epoch,
            desc=self.cfg["run"],
            disable=None if self.lead else True,
            mininterval=5,
        )

    def _close_logs(self) -> None:
        self.bar.close()

    def _start_epoch(self) -> torch.Generator:
        """Epoch pos.epoch's generator (the source of every random number of its steps): at the epoch's
        start seeded, then the method's before_epoch and the image order drawn from it; mid-epoch as
        last.pt left it."""
        pos = self.pos
        self.model.train()
        gen = torch.Generator()
        if pos.gen is None:
            gen.manual_seed(epoch_seed(self.cfg["seed"], pos.epoch))
            self.model.before_epoch(pos.epoch, self.ctx)
            pos.order = self.model.epoch_order(pos.epoch, gen)
        else:
            gen.set_state(pos.gen)
        return gen

    def _step(self, gen: torch.Generator) -> None:
        """One optimiser step on batch pos.it of the epoch's order; adds its logs to pos.sums."""
        pos, model = self.pos, self.model
        step = pos.epoch * self.steps_per_epoch + pos.it
        rows, views = self.batches.next()
        for g in self.opt.param_groups:
            g["lr"] = self.lr_sched[step]
        batch = Batch(views, rows, step, self.total, pos.epoch, gen, self.batches.rows_on_host)
        model.before_step(step, self.total)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype is not None):
            loss, logs = self.net(batch)
        self.batches.after_forward()  # the forward has drawn its random numbers: the next batch's views may be
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
                record_divergence(self.run_dir, self.cfg, f"loss is {value} at epoch {epoch + 1} step {it}{where}")
            )

    def _stop_requested(self) -> bool:
        return (self.stop_after is not None and self.done_here >= self.stop_after) or self.preempt.requested()

    def _stop(self, gen_state: torch.Tensor) -> None:
        pos = self.pos
        self._check_loss()
        if line := nonfinite_checkpoint(self.model, self.opt, self.run_dir, self.cfg, f"at epoch {pos.epoch + 1}"):
            raise Diverged(line)
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
            distributed.all_reduce_sum(torch.tensor(health, device=self.device))
        )  # every rank acts on the lead's verdict
        if health == _NOT_FINITE:
            raise Diverged(
                record_divergence(
                    self.run_dir,
                    self.cfg,
                    f"the backbone's embeddings of fixed training images are not finite after epoch {epoch}",
                )
            )
        if line := nonfinite_checkpoint(self.model, self.opt, self.run_dir, self.cfg, f"after epoch {epoch}"):
            raise Diverged(line)
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
        self.records.append(rec)
        run_record.write(self.run_dir / names.METRICS, self.records)  # the whole file, whatever happened to it
        curves.log_epoch(self.run_dir, rec)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{rec['loss']:.3f}")
        log.info("epoch %d/%d loss %.4f lr %.4g %.1fs", rec["epoch"], self.epochs, rec["loss"], rec["lr"], seconds)

    def _save_last(self, gen_state: torch.Tensor | None) -> None:
        """checkpoints/last.pt: the full state at pos (gen_state: the generator's when stopped mid-epoch, else None)."""
        pos = self.pos
        if self.lead:
            checkpoint.save_full(
                self.run_dir / names.CHECKPOINTS / names.LAST,
                self.model,
                self.opt,
                self.cfg,
                epoch=pos.epoch,
                it=pos.it,
                gen=gen_state,
                order=pos.order,
                sums=host_sums(pos.sums),
                records=self.records,  # metrics.jsonl's, restored from here on resume (sslstudy.run_record)
            )

    def _save_backbone(self, epoch: int) -> None:
        """checkpoints/epNNN.pt: what checkpoint.load_backbone reads."""
        if self.lead:
            path = self.run_dir / names.CHECKPOINTS / names.epoch_checkpoint(epoch)
            checkpoint.save_backbone(path, self.model, self.cfg, epoch)

    def _finish(self) -> Path:
        final = self.run_dir / names.FINAL
        if self.lead:
            checkpoint.save_full(final, self.model, self.opt, self.cfg, epoch=self.epochs)
            log.info("done: %s", final)
        clear_divergence(self.run_dir)
        return final


def _batch_key(cfg: dict) -> str:
    """Where a run's global batch is set in params."""
    return f"methods.{cfg['method']['name']}.batch_size, else pretrain.batch_size"


def _log_to(path: Path) -> None:
    root = logging.getLogger("sslstudy")
    if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in root.handlers):
        h = logging.FileHandler(path)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(h)
    root.setLevel(logging.INFO)
