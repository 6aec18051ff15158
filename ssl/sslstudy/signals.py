"""SLURM's preemption warning (SIGUSR2), held until training reaches a step boundary."""

from __future__ import annotations

import signal
import threading

import torch

from . import distributed


class DeferredSignal:
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
        distributed.host_group, so reading the sum never waits for the GPU) and reads the sum the call before
        started, so no step waits for the others' flags and a signal stops the ranks a step later."""
        if distributed.world() == 1:
            return self._flag
        stop = False
        if self._pending is not None:
            work, flags = self._pending
            work.wait()
            stop = bool(flags.item() > 0)
        flags = torch.tensor(float(self._flag))
        self._pending = (distributed.all_reduce_sum_async(flags, distributed.host_group()), flags)
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
