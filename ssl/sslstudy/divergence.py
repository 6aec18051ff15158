"""The NaN guard of pretraining: no checkpoint holds a non-finite value, and a run that diverged
resumes from its last finite checkpoint once its lr is lowered.

A loss can stay finite for an epoch after a buffer went bad (batch norm's running variance at inf
leaves the training-mode forward untouched), so the state is checked where it is written: before
each checkpoint, every floating tensor of the model's state (parameters and buffers) and of the
optimiser's state, in one host sync. A run that diverges leaves checkpoints/diverged.json; while it
is there, a rerun whose config differs from last.pt's only by a lower lr resumes from last.pt
instead of starting over. The file goes when the run finishes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from . import distributed, names
from .atomic import write_bytes

DIVERGED_FILE = "diverged.json"  # in the run's checkpoints folder
log = logging.getLogger("sslstudy.divergence")


def _tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every floating tensor a checkpoint of model and optimizer holds."""
    found = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    param_name = {id(p): n for n, p in model.named_parameters()}
    for p, state in optimizer.state.items():
        for key, v in state.items():
            if torch.is_tensor(v) and v.is_floating_point():
                found.append((f"the optimiser's {key} of {param_name.get(id(p), 'a parameter')}", v))
    return found


def first_nonfinite(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """The name of the first tensor of model's or optimizer's state holding a NaN or an inf, else None."""
    return _first_bad(_tensors(model, optimizer))[1]


def _first_bad(named: list[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, str | None]:
    """(whether any is bad, as a float tensor for the ranks to sum; the first bad name or None): one sync."""
    if not named:
        return torch.zeros(()), None
    finite = torch.stack([torch.isfinite(v).all() for _, v in named])
    bad = (~finite.all()).float()
    return bad, (named[int(torch.argmin(finite.int()))][0] if bad.item() else None)


def lr_advice(cfg: dict) -> str:
    return (
        f"lower pretrain.optim.lr (or methods.{cfg['method']['name']}.optim.lr where set; now "
        f"{cfg['optim']['lr']}) in params"
    )


def record_divergence(run_dir: Path, cfg: dict, what: str) -> str:
    """The one line of a run that diverged (`what` happened); the lead rank leaves diverged.json, which
    lets the rerun with a lower lr resume from last.pt."""
    last = run_dir / names.CHECKPOINTS / names.LAST
    if distributed.rank() == 0:
        record = dict(what=what, lr=cfg["optim"]["lr"])
        write_bytes(run_dir / names.CHECKPOINTS / DIVERGED_FILE, (json.dumps(record) + "\n").encode())
    then = "it resumes from checkpoints/last.pt, the last finite state" if last.is_file() else "it starts over"
    return f"{run_dir}: {what}; {lr_advice(cfg)} and rerun: {then}"


def nonfinite_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, run_dir: Path, cfg: dict, when: str):
    """Before writing a checkpoint: None when the lead rank's model and optimiser state are finite, else
    (on every rank) the line to raise Diverged with, naming the first bad tensor and `when`."""
    bad, name = _first_bad(_tensors(model, optimizer)) if distributed.rank() == 0 else (torch.zeros(()), None)
    if distributed.world() > 1:
        bad = distributed.all_reduce_sum(bad.cpu(), distributed.host_group())  # a host flag: gloo even under NCCL
    if not bad.item():
        return None
    return record_divergence(
        run_dir, cfg, f"{name or 'a tensor of the lead rank'} is not finite {when}, not checkpointed"
    )


def resumes_with_lower_lr(run_dir: Path, old: dict, new: dict) -> bool:
    """Whether a run that diverged resumes with config `new` from a checkpoint made with `old`: both the
    same but for a lower optim.lr (logged when so)."""
    if not (run_dir / names.CHECKPOINTS / DIVERGED_FILE).is_file():
        return False
    lr_old, lr_new = old.get("optim", {}).get("lr"), new.get("optim", {}).get("lr")

    def without_lr(cfg: dict) -> dict:
        return dict(cfg, optim={k: v for k, v in cfg.get("optim", {}).items() if k != "lr"})

    if lr_old is None or lr_new is None or not lr_new < lr_old or without_lr(old) != without_lr(new):
        return False
    log.info("the run diverged with lr %g; resuming from its last finite checkpoint with lr %g", lr_old, lr_new)
    return True


def clear_divergence(run_dir: Path) -> None:
    """The run finished: a later lr change starts it over, as any config change does."""
    if distributed.rank() == 0:
        (run_dir / names.CHECKPOINTS / DIVERGED_FILE).unlink(missing_ok=True)
