"""The batches of a pretraining epoch, read one batch ahead in a thread.

`Prefetcher.next()` hands out the epoch's batches in turn: this rank's rows of the global batch (their
positions in the training subset) and their views. While a step runs, one reader thread reads the
next batch's images (uint8, on the CPU; pinned for the copy to a GPU). On the CPU with a core to
spare (`views_ahead`) the thread also makes the next batch's views: once the step's forward has drawn
its random numbers from the epoch's generator, `after_forward()` draws the next batch's view
parameters (the same numbers, in the same order, as drawing them at its own step) and the thread makes
the views while the backward runs. Otherwise the views are made when `next()` hands the batch out (on
a GPU: kernels queued on the main thread). The weights are the same, bit for bit, either way.

Exact resume: `generator_state()` is the epoch generator's state at the next step boundary (what
last.pt saves), from before any views drawn ahead for that step; a run resumed there draws them again.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .. import augment, distributed
from ..augment import ViewSpec, batch_params, views_from
from ..hostsync import to_device


def views_ahead(device: torch.device, threads: int) -> bool:
    """Whether the reader thread also makes the views: on the CPU, when a core is left beside the
    training's `threads` (on a GPU the views are kernels queued on the main thread)."""
    return device.type == "cpu" and threads < len(os.sched_getaffinity(0))


class Prefetcher:
    """The epochs' batches of `images[subset]`, `batch_size` images a step (the global batch; this rank
    reads its own rows), `steps` steps an epoch. A context manager: the reader thread lives inside it."""

    def __init__(
        self,
        images,
        subset: np.ndarray,
        batch_size: int,
        steps: int,
        view_specs: list[ViewSpec],
        device: torch.device,
        views_ahead: bool,
    ):
        self.images, self.subset, self.bs, self.steps = images, subset, batch_size, steps
        self.view_specs, self.device, self.views_ahead = view_specs, device, views_ahead
        self._reader: ThreadPoolExecutor | None = None
        self._order: np.ndarray | None = None  # the epoch's image order, its generator, the next batch
        self._gen: torch.Generator | None = None
        self._it = 0
        self._ahead: Future | None = None  # the next batch: its images and, made ahead, its views
        self._state_before_ahead: torch.Tensor | None = None  # gen's state before the views drawn ahead
        self.rows_on_host: np.ndarray | None = None  # the rows `next` handed out last, on the host

    def __enter__(self) -> Prefetcher:
        self._reader = ThreadPoolExecutor(
            1, thread_name_prefix="sslstudy-read", initializer=augment.set_calling_thread_torch_threads
        )
        return self

    def __exit__(self, *exc) -> bool:
        self._reader.shutdown(wait=True)
        self._reader = None
        return False

    def start_epoch(self, order: np.ndarray, gen: torch.Generator, it: int = 0) -> None:
        """Hand out batches it, it+1, ... of `order` (the epoch's image order: positions in the subset),
        drawing their views' random parameters from `gen`; the reading of batch `it` starts now."""
        self._order, self._gen, self._it = order, gen, it
        self._ahead, self._state_before_ahead = self._reader.submit(self._read, it), None

    def next(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The next batch: this rank's rows (their positions in the subset, int64 on the device, copied
        without the host waiting; `rows_on_host` keeps them on the host) and its views (one channels_last
        float tensor per view spec)."""
        it = self._it
        images, views = self._ahead.result()
        self._state_before_ahead = None
        if it + 1 < self.steps and not self.views_ahead:  # read the next batch while this step runs
            self._ahead = self._reader.submit(self._read, it + 1)
        images = images.to(self.device, non_blocking=True)
        if views is None:
            views = self._views(images, self._draw())
        self._it = it + 1
        self.rows_on_host = self._picked(it)[distributed.local_slice(self.bs)]
        return to_device(torch.from_numpy(self.rows_on_host), self.device), views

    def after_forward(self) -> None:
        """Call once the step's forward has drawn its random numbers. With views made ahead: draw the next
        batch's view parameters now and let the thread read its images and make its views while the
        backward runs."""
        if not self.views_ahead or self._it >= self.steps:
            return
        self._state_before_ahead = self._gen.get_state()  # what a stop before that step saves
        self._ahead = self._reader.submit(self._read, self._it, self._draw())

    def generator_state(self) -> torch.Tensor:
        """The epoch generator's state to resume at the next batch (its views not yet drawn)."""
        return self._gen.get_state() if self._state_before_ahead is None else self._state_before_ahead

    def _picked(self, it: int) -> np.ndarray:
        """The subset positions of batch `it` of the epoch's order (the global batch, sorted)."""
        return np.sort(self._order[it * self.bs : (it + 1) * self.bs])

    def _read(self, it: int, params: list | None = None) -> tuple[torch.Tensor, list | None]:
        """This rank's images of batch `it` (uint8, on the CPU; pinned for the copy to a GPU) and, given
        their view parameters, its views. Runs in the reader thread; draws no random numbers."""
        rows = self.subset[self._picked(it)[distributed.local_slice(self.bs)]]
        images = torch.from_numpy(np.asarray(self.images[rows]))
        if params is not None:
            return images, self._views(images, params)
        return (images.pin_memory() if self.device.type == "cuda" else images), None

    def _draw(self) -> list[dict]:
        """The random parameters of every view of one batch (this rank's rows of the global batch)."""
        h, w = self.images.shape[1:3]
        return [batch_params(s, h, w, self._gen, self.bs, distributed.local_slice(self.bs)) for s in self.view_specs]

    def _views(self, images: torch.Tensor, params: list[dict]) -> list[torch.Tensor]:
        return [
            views_from(images, p, s).contiguous(memory_format=torch.channels_last)
            for p, s in zip(params, self.view_specs)
        ]
