"""The trainer's batches (sslstudy.data.prefetch): views made ahead in the reader thread are the views
made at their own step, bit for bit, and a stop at a step boundary resumes to the same batches."""

import threading

import numpy as np
import pytest
import torch
from sslstudy.augment import ViewSpec
from sslstudy.data.prefetch import Prefetcher

STEPS, BATCH = 4, 8
IMAGES = np.random.default_rng(0).integers(0, 256, (40, 12, 12, 3), dtype=np.uint8)
SUBSET = np.arange(3, 3 + STEPS * BATCH + 2)  # a subset that leaves the first images out; 2 spare images
ORDER = np.random.default_rng(1).permutation(len(SUBSET))


def epoch(ahead: bool, start: int = 0, state: torch.Tensor | None = None, stop: int | None = None):
    """The batches a trainer would see from batch `start` (its generator seeded, or at `state`), each step's
    forward drawing a number from the same generator; stopping before batch `stop`: the batches so far and
    the generator state to resume from."""
    gen = torch.Generator()
    gen.manual_seed(0) if state is None else gen.set_state(state)
    seen, readers = [], set()
    specs = [ViewSpec(size=8), ViewSpec(size=6, scale=(0.5, 1.0))]
    with Prefetcher(IMAGES, SUBSET, BATCH, STEPS, specs, torch.device("cpu"), ahead) as batches:
        read = batches._read

        def spy(it, params=None):
            readers.add((threading.current_thread() is threading.main_thread(), params is not None))
            return read(it, params)

        batches._read = spy
        batches.start_epoch(ORDER, gen, start)
        for it in range(start, STEPS):
            if it == stop:
                return seen, batches.generator_state(), readers
            rows, views = batches.next()
            forward = torch.rand(3, generator=gen)  # what a method's forward draws (MoCo's shuffle)
            batches.after_forward()
            seen.append((rows, views, forward))
    return seen, None, readers


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(ra, rb) and torch.equal(fa, fb) and all(torch.equal(x, y) for x, y in zip(va, vb))
        for (ra, va, fa), (rb, vb, fb) in zip(a, b)
    )


def test_views_made_ahead_equal_views_made_at_their_step():
    ahead, _, readers_ahead = epoch(ahead=True)
    inline, _, readers_inline = epoch(ahead=False)
    assert same(ahead, inline) and len(ahead) == STEPS
    assert readers_ahead == {(False, False), (False, True)}  # the reader thread; views made there after batch 0
    assert readers_inline == {(False, False)}  # the reader thread reads, the views are made at the step
    rows = torch.cat([r for r, _, _ in ahead]).numpy()
    assert sorted(rows) == sorted(ORDER[: STEPS * BATCH])  # each image of the epoch's order once, in batches
    assert [v.shape for v in ahead[0][1]] == [(BATCH, 3, 8, 8), (BATCH, 3, 6, 6)]


@pytest.mark.parametrize("ahead", [True, False])
def test_a_stop_at_a_step_boundary_resumes_to_the_same_batches(ahead):
    full, _, _ = epoch(ahead)
    before, state, _ = epoch(ahead, stop=2)
    after, _, _ = epoch(not ahead, start=2, state=state)  # a resumed run may make its views elsewhere
    assert len(before) == 2 and same(before + after, full)
