"""A run's checkpoints on disk: saving them (atomically), listing and loading them, the backbone in
them, and what a resumed run reads back (checkpoints/last.pt; it restores metrics.jsonl from it:
sslstudy.run_record, and removes the temp files a trainer killed mid-write left).

A full checkpoint (last.pt, final.pt) holds the whole Method's state_dict, the optimiser's, the run
config and where training is; an epoch checkpoint (epNNN.pt) holds only the backbone's weights (keys
under BACKBONE), the config and the epoch: what `load_backbone` reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import distributed, names, provenance, run_record
from .atomic import atomic_torch_save, remove_killed_writes
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
    its checkpoints and metrics dropped). Every rank reads it; only the lead changes files, once all have read:
    it also removes what a trainer of this run killed mid-write left (_remove_killed_writes)."""
    ckpts = run_dir / names.CHECKPOINTS
    path = ckpts / names.LAST
    state = load_checkpoint(path) if path.is_file() else None
    distributed.barrier()
    stale = []
    old = _same_run(state.get("config") or {}) if state is not None else None
    if state is not None and old != _same_run(cfg) and not resumes_with_lower_lr(run_dir, old, _same_run(cfg)):
        log.info("checkpoints in %s were made with another config; starting over", run_dir)
        state, stale = None, list(ckpts.glob("*.pt"))
    if distributed.rank() == 0:
        for p in stale:
            p.unlink()
        _remove_killed_writes(run_dir)
        run_record.restore(run_dir / names.METRICS, state)  # metrics.jsonl as the checkpoint left it
    return dict(state, path=path) if state else None


def _remove_killed_writes(run_dir: Path) -> None:
    """The temp files of the run's checkpoints, metrics.jsonl and final.pt that a trainer killed while writing
    one left (SIGKILL: a lost node, or `scontrol requeue` once SLURM's grace after its SIGTERM is over, which
    submitit ignores). Only this run's trainer writes them, and it is starting: none of them is being written."""
    left = remove_killed_writes(run_dir / names.CHECKPOINTS)
    for name in (names.METRICS, names.FINAL):
        left += remove_killed_writes(run_dir, name)
    if left:
        log.info(
            "removed %s, left half-written by a killed trainer", ", ".join(str(p.relative_to(run_dir)) for p in left)
        )


def _same_run(cfg: dict) -> dict:
    """What must match to resume: what changes the weights (provenance.identity)."""
    return provenance.identity(cfg)
