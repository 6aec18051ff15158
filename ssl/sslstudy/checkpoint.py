"""A run's checkpoints on disk: saving them (atomically), listing and loading them, the backbone in
them, and what a resumed run reads back (checkpoints/last.pt and the records of metrics.jsonl).

A full checkpoint (last.pt, final.pt) holds the whole Method's state_dict, the optimiser's, the run
config and where training is; an epoch checkpoint (epNNN.pt) holds only the backbone's weights (keys
under BACKBONE), the config and the epoch: what `load_backbone` reads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from . import distributed, names
from .atomic import atomic_path, atomic_torch_save
from .divergence import resumes_with_lower_lr
from .errors import UserError
from .models import build_backbone

log = logging.getLogger("sslstudy.checkpoint")

BACKBONE = "backbone."  # the backbone's prefix in a Method's state_dict


def save_full(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: dict, **extra) -> None:
    """extra + the whole model, optimiser and config: what resuming needs."""
    atomic_torch_save(dict(extra, model=model.state_dict(), optimizer=optimizer.state_dict(), config=cfg), path)


def save_backbone(path: Path, model: torch.nn.Module, cfg: dict, epoch: int) -> None:
    """An epoch checkpoint: the backbone's weights (no heads, no optimiser), the config and the epoch."""
    weights = {k: v for k, v in model.state_dict().items() if k.startswith(BACKBONE)}
    atomic_torch_save(dict(epoch=epoch, model=weights, config=cfg), path)


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / names.CHECKPOINTS).glob(names.EPOCH_GLOB))


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise UserError(
            f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to restart from the previous one"
        ) from None


def load_backbone(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The backbone of a saved checkpoint (eval mode, on ``device``) and the run config it was trained with."""
    state = load_checkpoint(Path(path))
    cfg = state["config"]
    backbone = build_backbone(**cfg["backbone"])
    backbone.load_state_dict({k.removeprefix(BACKBONE): v for k, v in state["model"].items() if k.startswith(BACKBONE)})
    return backbone.to(device).eval(), cfg


# ----------------------------------------------------------------------------- resuming
def resume_state(run_dir: Path, cfg: dict) -> dict | None:
    """The state to resume from: last.pt if it was written for this config (else the run starts over,
    its checkpoints and metrics dropped). Every rank reads it; only the lead changes files, once all have read."""
    ckpts = run_dir / names.CHECKPOINTS
    path = ckpts / names.LAST
    state = load_checkpoint(path) if path.is_file() else None
    distributed.barrier()
    stale = []
    old = _same_run(state.get("config") or {}) if state is not None else None
    if state is not None and old != _same_run(cfg) and not resumes_with_lower_lr(run_dir, old, _same_run(cfg)):
        log.info("checkpoints in %s were made with another config; starting over", run_dir)
        state, stale = None, list(ckpts.glob("*.pt"))
    metrics = run_dir / names.METRICS
    if distributed.rank() == 0:
        for p in stale:
            p.unlink()
        if metrics.is_file():  # drop the lines of epochs that will be redone
            done = state["epoch"] if state else 0
            kept = [ln for ln in metrics.read_text().splitlines(keepends=True) if _epoch_of(ln) <= done]
            with atomic_path(metrics) as tmp:
                tmp.write_text("".join(kept))
    return dict(state, path=path) if state else None


def read_metrics(run_dir: Path, epochs: int) -> list[dict]:
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
