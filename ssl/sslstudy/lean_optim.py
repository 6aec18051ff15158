"""Optimizers without importing torch._dynamo.

An optimizer's add_param_group, zero_grad, state_dict and load_state_dict import torch._dynamo on
their first call (torch._disable_dynamo), only to keep torch.compile from tracing into them; the
import costs a short pretraining job a noticeable share of its CPU time. sslstudy compiles
backbones, never a function that calls an optimizer, so it marks those methods as already excluded
and skips the import. torch.optim's own step functions (SGD, Adam) import it regardless; LARS does not.
"""

from __future__ import annotations

import sys

import torch

_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def skip_dynamo_import() -> None:
    """Before building optimizers: let their methods run without importing torch._dynamo (a no-op
    once torch._dynamo is loaded, or where torch's methods are not wrapped this way)."""
    if "torch._dynamo" in sys.modules:
        return
    for name in _METHODS:
        fn = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if fn is not None and getattr(fn, "__dynamo_disable", None) is None:
            fn.__dynamo_disable = fn  # what torch._disable_dynamo caches after its import: call fn as is
