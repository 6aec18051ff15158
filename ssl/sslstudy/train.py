"""The one trainer every method shares: data, views, optimiser, schedules, checkpoints, logs."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .atomic import atomic_path
from .augment import make_views
from .data.packed import load_dataset
from .data.subsets import load_indices
from .errors import UserError
from .methods import build_method
from .models import build_backbone

log = logging.getLogger("sslstudy.train")


class Diverged(UserError):
    """The loss stopped being finite."""


# ----------------------------------------------------------------------------- optimisation
class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-layer step is scaled by the trust ratio
    eta * ||w|| / ||g + wd * w|| (You et al. 2017; SimCLR/BYOL defaults eta=1e-3).
    Groups with `lars=False` (biases, BN) get plain momentum SGD without weight decay."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if g["lars"]:
                    d = d.add(p, alpha=g["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm, torch.ones_like(w_norm))
                    d = d.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.clone(d)
                else:
                    buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay (and LARS-adapt) only weight matrices/kernels; biases and norm parameters are exempt."""
    decay, exempt = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else exempt).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=exempt, weight_decay=0.0, lars=False)]


def build_optimizer(model: torch.nn.Module, cfg: dict, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg["weight_decay"])
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


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("ep[0-9][0-9][0-9].pt"))


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to restart from the previous one") from None


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


# ----------------------------------------------------------------------------- training
def build_model(cfg: dict) -> torch.nn.Module:
    torch.manual_seed(cfg["seed"])
    backbone = build_backbone(**cfg["backbone"])
    return build_method(cfg["method"]["name"], backbone, cfg["method"]["params"], cfg["views"])


def train(cfg: dict, run_dir: str | Path) -> Path:
    """Pretrain one run; resumes from the newest checkpoint in run_dir. Returns final.pt."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _log_to(run_dir / "train.log")
    torch.set_num_threads(cfg["threads"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    ds = load_dataset(cfg["data"]["dataset"])
    idx = np.sort(load_indices(cfg["data"]["subset"]))
    bs = cfg["batch_size"]
    if len(idx) < bs:
        raise UserError(f"{cfg['data']['subset']}: {len(idx)} images, fewer than one batch of {bs}; lower pretrain.batch_size")
    steps_per_epoch = len(idx) // bs  # drop_last: every step sees a full batch
    epochs = cfg["epochs"]
    total = steps_per_epoch * epochs
    ocfg = cfg["optim"]
    lr = ocfg["lr"] * bs / 256
    lr_sched = cosine_schedule(lr, ocfg["final_lr"] * bs / 256, total, ocfg["warmup_epochs"] * steps_per_epoch)

    model = build_model(cfg).to(device, memory_format=torch.channels_last)
    opt = build_optimizer(model, ocfg, lr)
    if not (run_dir / "checkpoints" / "ep000.pt").is_file():
        _save(run_dir, 0, model, opt, cfg)  # epoch 0 = the random-weights baseline of this seed
    start = 0
    ckpts = list_checkpoints(run_dir)
    if len(ckpts) > 1:
        state = load_checkpoint(ckpts[-1])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["epoch"]
        log.info("resumed from %s (epoch %d of %d)", ckpts[-1].name, start, epochs)
    else:
        log.info("starting %s: %d images, %d steps/epoch, %d epochs", run_dir, len(idx), steps_per_epoch, epochs)

    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    metrics = (run_dir / "metrics.jsonl").open("a")
    bar = tqdm(range(start, epochs), initial=start, total=epochs, desc=run_dir.name, disable=None, mininterval=5)
    for epoch in bar:
        gen = torch.Generator().manual_seed(epoch_seed(cfg["seed"], epoch))
        order = idx[torch.randperm(len(idx), generator=gen).numpy()]
        model.train()
        model.before_epoch(epoch, None)
        t0, losses = time.time(), []
        for it in range(steps_per_epoch):
            step = epoch * steps_per_epoch + it
            for g in opt.param_groups:
                g["lr"] = lr_sched[step]
            batch = torch.from_numpy(np.asarray(ds.images[np.sort(order[it * bs:(it + 1) * bs])])).to(device)
            views = [make_views(batch, spec, gen).contiguous(memory_format=torch.channels_last) for spec in model.view_specs]
            with torch.autocast(**amp):
                loss, _ = model.loss(views)
            if not torch.isfinite(loss):
                raise Diverged(f"{run_dir}: loss is {loss.item()} at epoch {epoch + 1} step {it}; "
                               f"lower pretrain.optim.lr (now {ocfg['lr']}) in params")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.after_step(step, total)
            losses.append(loss.item())
        dt = time.time() - t0
        rec = dict(epoch=epoch + 1, step=(epoch + 1) * steps_per_epoch, loss=float(np.mean(losses)),
                   lr=float(lr_sched[step]), seconds=round(dt, 3),
                   views_per_s=round(len(model.view_specs) * bs * steps_per_epoch / dt, 1))
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        bar.set_postfix(loss=f"{rec['loss']:.3f}")
        log.info("epoch %d/%d loss %.4f lr %.4g %.1fs", epoch + 1, epochs, rec["loss"], rec["lr"], dt)
        if (epoch + 1) % cfg["checkpoint_every"] == 0 or epoch + 1 == epochs:
            _save(run_dir, epoch + 1, model, opt, cfg)
    metrics.close()
    final = run_dir / "final.pt"
    with atomic_path(final) as tmp:
        shutil.copyfile(list_checkpoints(run_dir)[-1], tmp)  # the last epoch is always checkpointed
    log.info("done: %s", final)
    return final


def _save(run_dir: Path, epoch: int, model, opt, cfg: dict) -> None:
    state = dict(epoch=epoch, model=model.state_dict(), optimizer=opt.state_dict(), config=cfg)
    atomic_torch_save(state, run_dir / "checkpoints" / f"ep{epoch:03d}.pt")


def _log_to(path: Path) -> None:
    root = logging.getLogger("sslstudy")
    if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in root.handlers):
        h = logging.FileHandler(path)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(h)
    root.setLevel(logging.INFO)


def load_backbone(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """The backbone of a saved checkpoint (eval mode) and the run config it was trained with."""
    state = load_checkpoint(Path(path))
    cfg = state["config"]
    backbone = build_backbone(**cfg["backbone"])
    prefix = "backbone."
    backbone.load_state_dict({k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)})
    return backbone.eval(), cfg
