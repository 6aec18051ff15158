"""The pretraining optimisers (LARS, SGD) and the learning-rate schedule, built without importing torch._dynamo.

An optimizer's add_param_group, zero_grad, state_dict and load_state_dict import torch._dynamo on
their first call (torch._disable_dynamo), only to keep torch.compile from tracing into them; the
import costs a short pretraining job a noticeable share of its CPU time. sslstudy compiles
backbones, never a function that calls an optimizer, so `skip_dynamo_import` marks those methods as
already excluded and skips the import. torch.optim's own step functions (SGD, Adam) import it
regardless; LARS does not.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from .errors import UserError


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
    """pretrain.optim's optimiser (lars or sgd) over model.optim_groups(weight_decay)."""
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


_DYNAMO_GUARDED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def skip_dynamo_import() -> None:
    """Before building optimizers: let their methods run without importing torch._dynamo (a no-op
    once torch._dynamo is loaded, or where torch's methods are not wrapped this way)."""
    if "torch._dynamo" in sys.modules:
        return
    for name in _DYNAMO_GUARDED:
        fn = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if fn is not None and getattr(fn, "__dynamo_disable", None) is None:
            fn.__dynamo_disable = fn  # what torch._disable_dynamo caches after its import: call fn as is
