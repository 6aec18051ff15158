"""SSL methods by name. Each module holds its loss as a pure function and a small nn.Module
(heads, queues, targets) that the shared trainer drives through `Method`'s interface."""

from __future__ import annotations

from ..errors import UserError
from .barlow import BarlowTwins
from .base import Method
from .byol import BYOL
from .deepcluster import DeepCluster
from .densecl import DenseCL
from .moco import MoCo
from .pcl import PCL
from .simclr import SimCLR
from .swav import SwAV

REGISTRY: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "moco": MoCo,
    "byol": BYOL,
    "swav": SwAV,
    "barlow": BarlowTwins,
    "densecl": DenseCL,
    "deepcluster": DeepCluster,
    "pcl": PCL,
}


def build_method(name: str, backbone, cfg: dict, views: list, n_train: int, global_batch: int) -> Method:
    if name not in REGISTRY:
        raise UserError(
            f"unknown method {name!r}; choose one of {', '.join(sorted(REGISTRY))} (study.methods in params)"
        )
    return REGISTRY[name](backbone, cfg, views, n_train, global_batch)
