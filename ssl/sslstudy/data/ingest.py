"""Ingest a real image collection (a source in sslstudy.data.sources) into a packed dataset folder.

The same for every source: decode in parallel over the cores (a process pool, PIL), resize the
shorter side to ``size`` and crop the centre square, list unreadable images in a report file
beside the output (and stop when more than ``max_failed`` of them fail; an image whose mask cannot
be read counts as unreadable), draw class-balanced
seeded train/val/test splits where the source has none, and write through packed.write_dataset
(atomic). The labels table gets a ``file`` column: where each image came from. Segmentation
sources (``voc``) bring a mask per image: resized and cropped like the image but nearest-neighbour
(class ids stay ids), written as masks.npy.

Re-running is cheap: meta.json carries a fingerprint of the listing (every file's path and size,
the classes, splits and options), and an output with the same fingerprint is left alone. Decoded
images are kept in chunks in a hidden folder beside the output until the dataset is written, so
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from ..atomic import atomic_path, require_space, write_bytes
from ..errors import UserError
from ..names import IGNORE, META_FILE, ingest_report
from .levels import refuse_one_class
from .packed import load_dataset, write_dataset
from .sources import SOURCES, scanner
from .sources.hierarchy import build_tables
from .sources.listing import Listing

FORMAT = 1  # bump when the decoded pixels of the same listing would change
CHUNK = 4096  # images per resumable chunk on disk
BATCH = 64  # images per task sent to a worker
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
RESIZE = "shorter side to size, centre crop, bicubic (PIL, JPEG draft decoding)"


# --------------------------------------------------------------------------- decoding (workers)


def _centre_square(im: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """The centre square of ``im`` (shorter side) scaled to ``size``; unchanged when already that size."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return im.resize((size, size), resample, box=(left, top, left + side, top + side))


def square(im: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the centre square of ``im`` scaled to ``size`` (shorter side + crop)."""
    with im:
        im.draft("RGB", (size, size))  # JPEG: decode at the smallest DCT scale still >= size
        rgb = im.convert("RGB")  # reads the pixels: a truncated or broken file fails here
    return np.asarray(_centre_square(rgb, size, Image.Resampling.BICUBIC), dtype=np.uint8)


def square_mask(im: Image.Image, size: int) -> np.ndarray:
    """(size, size) uint8: the centre square of a label map scaled to ``size``, nearest-neighbour
    (the same box as `square` takes of its image)."""
    with im:
        ids = im.copy()
    return np.asarray(_centre_square(ids, size, Image.Resampling.NEAREST), dtype=np.uint8)


def _decode(job: tuple) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    reader, root, refs, size, mask_reader, mask_refs = job
    images = np.zeros((len(refs), size, size, 3), dtype=np.uint8)
    masks = np.zeros((len(refs), size, size, 1), dtype=np.uint8) if mask_reader else None
    errors = []
    for i, ref in enumerate(refs):
        try:
            images[i] = square(reader(root, ref), size)
            if mask_reader:
                masks[i, ..., 0] = square_mask(mask_reader(root, mask_refs[i]), size)
            errors.append("")
        except Exception as e:  # any unreadable image is reported, never fatal
            errors.append(f"{e.__class__.__name__}: {e}".replace("\n", " ")[:300] or e.__class__.__name__)
    return images, masks, errors


# --------------------------------------------------------------------------- planning


def balanced_split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Per class: a seeded shuffle, the first round(n * test) to test, the next round(n * val) to
    val, the rest (at least one image) to train."""
    y = np.asarray(y, dtype=np.int64)
    out = np.full(y.size, "train", dtype=object)
    if not y.size:
        return out
    rng = np.random.default_rng([seed, 2])
    order = np.lexsort((rng.random(y.size), y))
    counts = np.bincount(y)
    rank = np.empty(y.size, dtype=np.int64)
    rank[order] = np.arange(y.size) - np.repeat(np.cumsum(counts) - counts, counts)
    spare = np.maximum(counts - 1, 0)  # every class keeps a train image
    n_test = np.minimum(np.floor(counts * test_fraction + 0.5).astype(np.int64), spare)
    n_val = np.minimum(np.floor(counts * val_fraction + 0.5).astype(np.int64), spare - n_test)
    out[rank < n_test[y] + n_val[y]] = "val"
    out[rank < n_test[y]] = "test"
    return out


def _cap(y: np.ndarray, groups: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices (ascending) keeping at most ``n`` seeded-random rows of every (class, group)."""
    _, g = np.unique(groups, return_inverse=True)
    key = y * (int(g.max()) + 1) + g
    rng = np.random.default_rng([seed, 1])
    order = np.lexsort((rng.random(y.size), key))
    counts = np.unique(key, return_counts=True)[1]
    rank = np.empty(y.size, dtype=np.int64)
    rank[order] = np.arange(y.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.flatnonzero(rank < n)


def plan(
    listing: Listing,
    levels: Sequence[str] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    max_per_class: int | None,
) -> dict[str, Any]:
    """What will be written: kept images (indices into the listing), their labels per level, their
    splits, and the class tables."""
    all_levels = list(listing.levels)
    if levels:
        unknown = [lv for lv in levels if lv not in all_levels]
        if unknown:
            raise UserError(
                f"{listing.root}: unknown level(s) {', '.join(unknown)}; this source has {', '.join(all_levels)}"
            )
        depth = sorted(all_levels.index(lv) for lv in dict.fromkeys(levels))
    else:
        depth = list(range(len(all_levels)))
    fine = np.asarray(listing.fine, dtype=np.int64)
    if not fine.size:
        raise UserError(f"{listing.root}: no images found; check the path and the source type")
    source_split = np.array([s or "" for s in listing.splits], dtype=object)
    keep = np.arange(fine.size)
    if max_per_class:
        keep = _cap(fine, source_split, int(max_per_class), seed)
    used = np.unique(fine[keep])
    notes = list(listing.notes)
    if used.size < len(listing.classes):
        notes.append(f"{len(listing.classes) - used.size} class(es) without images left out")
    sel_levels = [all_levels[d] for d in depth]
    paths = [tuple(listing.classes[k][d] for d in depth) for k in used]
    classes, parents, index = build_tables(sel_levels, paths)
    remap = np.full(len(listing.classes), -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    labels = index[:, remap[fine[keep]]]
    split = source_split[keep].copy()
    todo = split == ""
    split[todo] = balanced_split(labels[-1][todo], val_fraction, test_fraction, seed)
    return dict(
        keep=keep,
        levels=sel_levels,
        classes=classes,
        parents=parents,
        labels=labels,
        split=split,
        notes=notes,
        drawn=bool(todo.any()),
    )


def source_options(source: str, name: str, **given: Any) -> dict[str, Any]:
    """The scan options given (those not None) for the data.ingest entry ``name`` of ``source``; a
    UserError names the first one its source does not take, by its option and its params key."""
    takes = SOURCES[source][1]
    for key, value in given.items():
        if value is not None and key not in takes:
            others = ", ".join(s for s, (_, options) in SOURCES.items() if key in options)
            raise UserError(
                f"source {source} takes no --{key.replace('_', '-')} (data.ingest.{name}.{key} in params); "
                f"remove it, or use a source that takes it: {others}"
            )
    return {k: v for k, v in given.items() if v is not None}


def listed_plan(
    source: str,
    root: str | os.PathLike,
    name: str,
    hierarchy: str | os.PathLike | None,
    train_split: str | None,
    levels: Sequence[str] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    max_per_class: int | None,
) -> tuple[Listing, dict[str, Any]]:
    """The listing of the collection at ``root`` and its plan (what an ingest into the dataset
    ``name`` writes), no image decoded; `hierarchy` or `train_split` given to a source that takes
    none is refused (source_options)."""
    options = source_options(source, name, hierarchy=hierarchy, train_split=train_split)
    listing = scanner(source)(Path(root), **options)
    return listing, plan(listing, levels, val_fraction, test_fraction, seed, max_per_class)


def fingerprint(listing: Listing, p: dict, options: dict) -> str:
    """sha256 of everything the output depends on: options, classes, each kept image's reference,
    labels and split, and the size of every listed file (-1: missing)."""
    h = hashlib.sha256()
    head = dict(format=FORMAT, options=options, levels=p["levels"], classes=p["classes"], parents=p["parents"])
    h.update(json.dumps(head, sort_keys=True).encode())
    for row, i in enumerate(p["keep"]):
        h.update(json.dumps([listing.refs[i], p["labels"][:, row].tolist(), p["split"][row]]).encode())
    for f in listing.files:
        try:
            size = os.stat(listing.root / f).st_size
        except OSError:
            size = -1
        h.update(f"{f}\0{size}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- running


def _check(name: str, size: int, val_fraction: float, test_fraction: float, max_failed: float) -> None:
    if not NAME.match(name):
        raise UserError(
            f"dataset name {name!r}: use letters, digits, '.' and '-' (it becomes a folder and a domain name)"
        )
    if not isinstance(size, int) or size < 8:
        raise UserError(f"--size {size}: use a whole number of pixels >= 8 (e.g. 64)")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(
            f"--val-fraction {val_fraction} and --test-fraction {test_fraction}: each in [0, 1), together below 1"
        )
    if not 0 <= max_failed <= 1:
        raise UserError(f"--max-failed {max_failed}: a share of the images between 0 and 1 (e.g. 0.01)")


def _finished(out: Path, fp: str) -> dict | None:
    """The output's meta.source if it was ingested from the same listing with the same options."""
    if not (out / META_FILE).is_file():
        return None
    try:
        source = load_dataset(out).meta["source"]
    except UserError:
        return None
    return source if isinstance(source, dict) and source.get("fingerprint") == fp else None


def _check_failed(out: Path, n_failed: int, n: int, max_failed: float) -> None:
    if n_failed > max_failed * n or n_failed == n:
        raise UserError(
            f"{ingest_report(out)}: {n_failed} of {n} images ({n_failed / n:.1%}) could not be read, more "
            f"than --max-failed {max_failed:g}; fix or remove them (the report lists each), or raise "
            f"--max-failed"
        )


def _context():
    # fork: workers start at once and need no importable __main__; they only run PIL and numpy
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)


def _decode_chunks(
    listing: Listing, p: dict, size: int, work: Path, workers: int, progress: str | None
) -> tuple[list[Path], int]:
    """Decode every kept image into chunk files under ``work``, reusing finished ones; returns the
    chunk files and how many images were decoded now."""
    refs = [listing.refs[i] for i in p["keep"]]
    mask_refs = [listing.mask_refs[i] for i in p["keep"]] if listing.mask_reader else None
    n = len(refs)
    files, pool, decoded = [], None, 0
    try:
        with tqdm(total=n, unit="img", desc=progress, disable=not progress, mininterval=1.0, smoothing=0.1) as bar:
            for k, lo in enumerate(range(0, n, CHUNK)):
                hi = min(lo + CHUNK, n)
                f = work / f"chunk-{k:06d}.npz"
                files.append(f)
                if f.is_file():
                    bar.update(hi - lo)
                    continue
                jobs = [
                    (
                        listing.reader,
                        listing.root,
                        refs[a : min(a + BATCH, hi)],
                        size,
                        listing.mask_reader,
                        mask_refs[a : min(a + BATCH, hi)] if mask_refs else None,
                    )
                    for a in range(lo, hi, BATCH)
                ]
                if workers > 1 and pool is None:
                    pool = ProcessPoolExecutor(workers, mp_context=_context())
                results = pool.map(_decode, jobs) if pool else map(_decode, jobs)
                images, masks, errors = [], [], []
                for im, ms, err in results:
                    images.append(im)
                    masks.append(ms)
                    errors += err
                    bar.update(len(err))
                decoded += hi - lo
                extra = dict(masks=np.concatenate(masks)) if mask_refs else {}
                with (
                    atomic_path(f, sum(a.nbytes for a in images + masks if a is not None)) as tmp,
                    open(tmp, "wb") as fh,
                ):
                    np.savez(fh, images=np.concatenate(images), errors=np.array(errors, dtype=str), **extra)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return files, decoded


def _npz(path: Path, key: str) -> np.ndarray:
    with np.load(path) as z:
        return z[key]


def _write_report(path: str, rows: list[tuple[str, str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "error"])
    w.writerows(rows)
    write_bytes(path, buf.getvalue().encode("utf-8"))


def ingest(
    source: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int = 64,
    levels: Sequence[str] | None = None,
    hierarchy: str | os.PathLike | None = None,
    train_split: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_per_class: int | None = None,
    max_failed: float = 0.01,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out`` (a packed dataset folder named like the dataset) from the collection at
    ``root``; returns a summary (``skipped`` when ``out`` was already up to date)."""
    out = Path(out)
    _check(out.name, size, val_fraction, test_fraction, max_failed)
    if source not in SOURCES:
        raise UserError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    t0 = time.perf_counter()
    listing, p = listed_plan(
        source, root, out.name, hierarchy, train_split, levels, val_fraction, test_fraction, seed, max_per_class
    )
    refuse_one_class(
        f"dataset {out.name} ({root})",
        p["levels"],
        p["classes"],
        drop=f"leave it out: --levels {{others}} (data.ingest.{out.name}.levels in params)",
        more="ingest a collection with images of two or more classes",
    )
    options = dict(
        source=source,
        size=size,
        levels=p["levels"],
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_per_class=max_per_class,
    )
    fp = fingerprint(listing, p, options)
    summary = dict(
        out=str(out),
        listed=len(listing.refs),
        kept=len(p["keep"]),
        notes=p["notes"],
        report=ingest_report(out),
        levels={lv: len(p["classes"][lv]) for lv in p["levels"]},
    )
    done = None if force else _finished(out, fp)
    if done:
        _check_failed(out, done["n_failed"], done["n_tried"], max_failed)
        return dict(summary, skipped=True, failed=done["n_failed"])

    work = out.parent / f".{out.name}.ingest-{fp[:16]}-{CHUNK}"
    for stale in out.parent.glob(f".{out.name}.ingest-*"):
        if stale != work:
            shutil.rmtree(stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers or len(os.sched_getaffinity(0)))
    t1 = time.perf_counter()
    chunks, decoded = _decode_chunks(listing, p, size, work, workers, f"ingest {out.name}" if progress else None)
    t_decode = time.perf_counter() - t1

    errors = np.concatenate([_npz(f, "errors") for f in chunks])
    ok = errors == ""
    names = [listing.names[i] for i in p["keep"]]
    _write_report(ingest_report(out), [(names[i], str(errors[i])) for i in np.flatnonzero(~ok)])
    n, n_failed = len(ok), int((~ok).sum())
    _check_failed(out, n_failed, n, max_failed)

    shape = (int(ok.sum()), size, size, 3)
    # the work copy (a memory map: a full disk would be a SIGBUS there) and the packed folder beside it
    need = 2 * int(np.prod(shape)) + (int(np.prod(shape[:3])) if listing.mask_reader else 0)
    require_space(out.parent, need, out)
    images = np.lib.format.open_memmap(work / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
    masks = np.empty((int(ok.sum()), size, size, 1), dtype=np.uint8) if listing.mask_reader else None
    at = 0
    for f, lo in zip(chunks, range(0, n, CHUNK)):
        block = _npz(f, "images")[ok[lo : lo + CHUNK]]
        images[at : at + len(block)] = block
        if masks is not None:
            masks[at : at + len(block)] = _npz(f, "masks")[ok[lo : lo + CHUNK]]
        at += len(block)
    labels = pd.DataFrame(
        {"index": np.arange(at, dtype=np.int64), "split": p["split"][ok].astype(str), "domain": out.name}
    )
    for d, lv in enumerate(p["levels"]):
        labels[lv] = p["labels"][d][ok]
    labels["file"] = np.asarray(names, dtype=object)[ok]
    meta = dict(
        name=out.name,
        levels=p["levels"],
        classes=p["classes"],
        parents=p["parents"],
        image_size=size,
        n_images=at,
        source=dict(
            options,
            ingest=source,
            source_dir=Path(listing.root).name,
            fingerprint=fp,
            resize=RESIZE,
            n_tried=n,
            n_failed=n_failed,
            splits="drawn (class-balanced, seeded)" if p["drawn"] else "the source's",
        ),
    )
    if masks is not None:
        meta["masks"] = dict(
            levels=listing.mask_levels,
            classes=listing.mask_classes,
            size=size,
            ignore=IGNORE,
            resize="as the images, nearest-neighbour",
        )
    write_dataset(out, images, labels, meta, masks)
    del images
    shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    return dict(
        summary,
        skipped=False,
        failed=n_failed,
        images=at,
        workers=workers,
        seconds=elapsed,
        decode_seconds=t_decode,
        decoded=decoded,
        per_second=decoded / t_decode if decoded else float("nan"),
    )
