"""What the trainer needs from a method, and the small pieces several methods share."""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist
from ..augment import ViewSpec
from ..hostsync import to_device


@dataclass
class Batch:
    """One step's input on this rank."""

    views: list[torch.Tensor]  # one (n, 3, s, s) tensor per view spec, in spec order
    index: torch.Tensor  # (n,) positions of the images in the training subset (0..n_train-1)
    step: int  # global step, 0-based
    total_steps: int
    epoch: int  # 0-based
    gen: torch.Generator  # CPU generator: the only source of randomness a method may use
    rows: np.ndarray | None = None  # index on the host (None: read it from the device, a host sync)

    def index_on_host(self) -> np.ndarray:
        return self.rows if self.rows is not None else self.index.cpu().numpy()


class Method(nn.Module):
    """A backbone plus the method's heads and state. State that must survive a resume (queues,
    targets, prototypes, cluster assignments) lives in parameters or buffers, so it is saved
    with the checkpoint.

    The trainer calls, per epoch: `before_epoch` (which may embed the training set through
    `ctx.features`), then `epoch_order`; per step: `before_step`, `forward(batch)` (through DDP
    when several processes train), backward, `before_optimizer_step`, the optimiser, `after_step`.
    """

    def __init__(self, backbone: nn.Module, cfg: dict, views: list[ViewSpec], n_train: int, global_batch: int):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.view_specs = views
        self.n_train = n_train  # images in the training subset (0 when only the backbone is needed)
        self.global_batch = global_batch

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        """-> (scalar loss, dict of floats to log)."""
        raise NotImplementedError

    def before_epoch(self, epoch: int, ctx) -> None:
        pass

    def epoch_order(self, epoch: int, gen: torch.Generator) -> np.ndarray:
        """The order in which the epoch visits the training subset (positions 0..n_train-1)."""
        return torch.randperm(self.n_train, generator=gen).numpy()

    def before_step(self, step: int, total_steps: int) -> None:
        pass

    def before_optimizer_step(self, step: int) -> None:
        pass

    def after_step(self, step: int, total_steps: int) -> None:
        pass

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """Decay (and LARS-adapt) only weight matrices/kernels; biases and norm parameters are exempt."""
        decay, exempt = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else exempt).append(p)
        return [dict(params=decay, weight_decay=weight_decay), dict(params=exempt, weight_decay=0.0, lars=False)]


# ----------------------------------------------------------------------------- shared pieces
def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy (the key / target network): trained only through `ema_update`."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target = momentum * target + (1 - momentum) * online over parameters; BN running stats stay the
    target's own. Two multi-tensor ops (torch._foreach_*), not two small kernels per parameter."""
    targets = list(target.parameters())
    torch._foreach_mul_(targets, momentum)
    torch._foreach_add_(targets, [o.detach() for o in online.parameters()], alpha=1 - momentum)


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule: 1 - (1 - base) * (cos(pi * step / total) + 1) / 2, from base up to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


class Queue(nn.Module):
    """A ring buffer of L2-normalised keys (dim x length, as MoCo), saved with the checkpoint.
    It takes the keys of all ranks, so its length must be a multiple of the global batch."""

    def __init__(self, dim: int, length: int, global_batch: int, what: str):
        super().__init__()
        if length % global_batch:
            from ..errors import UserError

            raise UserError(
                f"{what}: queue length {length} is not a multiple of the global batch {global_batch}; "
                f"set it to {max(global_batch, length // global_batch * global_batch)} in params"
            )
        self.register_buffer("keys", nn.functional.normalize(torch.randn(dim, length), dim=0))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        # ptr as a Python int: it advances by the global batch each push, so the step never reads the
        # buffer back from the device (a host sync); the buffer is what the checkpoint saves
        self.at = 0
        self.register_load_state_dict_post_hook(Queue._read_ptr)

    @staticmethod
    def _read_ptr(queue: "Queue", incompatible) -> None:
        queue.at = int(queue.ptr)  # once, on loading a checkpoint

    @torch.no_grad()
    def push(self, k: torch.Tensor) -> None:
        """k: (n, dim) keys of this rank's batch."""
        k = dist.gather(k.float())
        p = self.at
        self.keys[:, p : p + k.shape[0]] = k.T
        self.at = (p + k.shape[0]) % self.keys.shape[1]
        self.ptr.fill_(self.at)


def shuffled_forward(encoder, x: torch.Tensor, groups: int, gen: torch.Generator):
    """encoder(x) with batch-norm statistics taken over random subsets of the global batch
    (MoCo's shuffle-BN): the key of an image never shares BN statistics with exactly the same
    images as its query, so BN cannot leak which images are positives. Gathers x over ranks,
    permutes it, and forwards this rank's slice in `groups` chunks; groups=1 on one process is
    a plain forward. The encoder may return a tensor or a tuple of tensors (batch first); each
    comes back contiguous, whatever the encoder's memory format."""
    xg = dist.gather(x)
    perm = to_device(torch.randperm(xg.shape[0], generator=gen), x.device)
    mine = perm[dist.local_slice(xg.shape[0])]
    outs = [encoder(c) for c in xg[mine].chunk(groups)]
    single = isinstance(outs[0], torch.Tensor)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    back = tuple(
        dist.gather(torch.cat(parts))[inverse][dist.local_slice(xg.shape[0])].contiguous()
        for parts in zip(*([(o,) for o in outs] if single else outs))
    )
    return back[0] if single else back


def float32_without_autocast(fn):
    """The autocast policy of the methods' losses (SimCLR, MoCo, DenseCL, PCL, BYOL, Barlow Twins,
    SwAV's Sinkhorn): these similarity and loss functions carry this decorator and run in float32 with
    autocast off, their
    float16/bfloat16 tensor arguments cast up (float64 ones stay), whatever precision the encoders
    ran in; the vectors they compare are normalised in float32 (`unit`, or inside the function)."""
    up = lambda a: a.float() if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16) else a  # noqa: E731

    @functools.wraps(fn)
    def run(*args, **kwargs):
        device = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)).device
        with torch.autocast(device.type, enabled=False):
            return fn(*map(up, args), **{k: up(v) for k, v in kwargs.items()})

    return run


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows (dim 1) L2-normalised, in float32."""
    return F.normalize(x.float(), dim=1)


class MomentumMethod(Method):
    """A method with momentum copies of its online networks (MoCo's key encoder, BYOL's target).

    `build_heads` makes the heads; the backbone and the heads named in `copied` get frozen copies
    named `<prefix>_<name>` (key_backbone, key_head, ...), moved towards the online networks by
    `ema_update` with cfg["momentum"]: constant, or with schedule = "cosine" BYOL's rise to 1. The
    update runs in before_step (MoCo: the key encoder moves before this step's keys are computed)
    or, with ema_at = "after_step", after the optimiser step (BYOL). `queues` maps attribute names
    to the params key a bad length is reported under: each a Queue of cfg["proj_dim"] x cfg["queue"].
    """

    copied: tuple[str, ...] = ("head",)
    prefix = "key"
    schedule = "constant"
    ema_at = "before_step"
    queues: dict[str, str] = {}

    def __init__(self, *args):
        super().__init__(*args)
        assert self.schedule in ("constant", "cosine") and self.ema_at in ("before_step", "after_step")
        self.build_heads()
        self.pairs = tuple((name, f"{self.prefix}_{name}") for name in ("backbone", *self.copied))
        for online, target in self.pairs:
            setattr(self, target, momentum_copy(getattr(self, online)))
        for name, what in self.queues.items():
            setattr(self, name, Queue(self.cfg["proj_dim"], self.cfg["queue"], self.global_batch, what))

    def build_heads(self) -> None:
        raise NotImplementedError

    def encode(self, x: torch.Tensor, backbone: nn.Module, head: nn.Module):
        """One encoder (the online networks or their copies, in `pairs` order) on x; the head on the
        backbone by default."""
        return head(backbone(x))

    def online(self, x: torch.Tensor):
        return self.encode(x, *(getattr(self, online) for online, _ in self.pairs))

    @torch.no_grad()
    def momentum_forward(self, x: torch.Tensor, gen: torch.Generator | None = None):
        """The copies' encoder on x; given gen, through shuffle-BN over cfg["shuffle_groups"] groups."""
        nets = [getattr(self, target) for _, target in self.pairs]
        enc = lambda t: self.encode(t, *nets)  # noqa: E731
        return enc(x) if gen is None else shuffled_forward(enc, x, self.cfg["shuffle_groups"], gen)

    def momentum(self, step: int, total_steps: int) -> float:
        m = self.cfg["momentum"]
        return cosine_momentum(m, step, total_steps) if self.schedule == "cosine" else m

    def update_copies(self, step: int, total_steps: int) -> None:
        m = self.momentum(step, total_steps)
        for online, target in self.pairs:
            ema_update(getattr(self, target), getattr(self, online), m)

    def before_step(self, step, total_steps):
        if self.ema_at == "before_step":
            self.update_copies(step, total_steps)

    def after_step(self, step, total_steps):
        if self.ema_at == "after_step":
            self.update_copies(step, total_steps)
