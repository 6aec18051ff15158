"""Label hierarchies: the user's CSV (class -> parent -> grandparent ...), and turning per-class
name paths into the packed format's ``classes`` / ``parents`` tables."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...errors import UserError

_CSV_FIX = "write one row per class: class,parent,grandparent,... under a header row naming the levels"


def read_hierarchy_csv(
    path: str | Path, normalize: Callable[[str], str] = str.strip
) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """``(levels coarse -> fine, {class: its names coarse -> fine})`` from a CSV whose header names
    the levels fine -> coarse (e.g. ``class,parent,grandparent``) and whose first column holds the
    class names the source uses (``normalize`` maps both to one spelling). Every name must have one
    parent: a tree, as the packed format stores it."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable hierarchy file ({e.__class__.__name__}); {_CSV_FIX}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise UserError(f"{path}: a hierarchy needs a header and at least one row of 2+ columns; {_CSV_FIX}")
    header = [c.strip() for c in rows[0]]
    body = rows[1:]
    flags = [c.strip() for r in body for c in r[1:]]
    if "1" in flags and all(c in ("0", "1", "") for c in flags):
        raise UserError(
            f"{path}: looks like a 0/1 membership sheet (e.g. the official Places365 scene hierarchy, "
            f"where a class may have several parents); {_CSV_FIX}, one parent each"
        )
    if len(set(header)) != len(header) or not all(header):
        raise UserError(f"{path}: header {header} must name each level once; {_CSV_FIX}")
    levels = header[::-1]
    paths: dict[str, tuple[str, ...]] = {}
    parent_of: dict[tuple[int, str], tuple[str, int]] = {}  # (depth, name) -> (parent name, line)
    for line, row in enumerate(body, start=2):
        cells = [c.strip() for c in row]
        if len(cells) != len(header) or not all(cells):
            raise UserError(f"{path}:{line}: expected {len(header)} non-empty cells, got {row}; {_CSV_FIX}")
        cells[0] = normalize(cells[0])
        names = tuple(cells[::-1])
        if cells[0] in paths and paths[cells[0]] != names:
            raise UserError(f"{path}:{line}: class {cells[0]!r} is listed twice with different parents; keep one row")
        paths[cells[0]] = names
        for depth in range(1, len(names)):
            key = (depth, names[depth])
            seen = parent_of.setdefault(key, (names[depth - 1], line))
            if seen[0] != names[depth - 1]:
                raise UserError(
                    f"{path}:{line}: {levels[depth]} {names[depth]!r} has parent {names[depth - 1]!r} here "
                    f"but {seen[0]!r} on line {seen[1]}; give every name one parent"
                )
    return levels, paths


def attach_hierarchy(
    classes: Sequence[str], hierarchy: str | Path | None, fine_level: str, normalize: Callable[[str], str] = str.strip
) -> tuple[list[str], list[tuple[str, ...]]]:
    """Levels and per-class name paths for a source's flat class names: one level without a
    hierarchy file, else the file's levels (every class must be in it)."""
    if hierarchy is None:
        return [fine_level], [(c,) for c in classes]
    levels, paths = read_hierarchy_csv(hierarchy, normalize)
    missing = [c for c in classes if normalize(c) not in paths]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(
            f"{hierarchy}: no row for class(es) {', '.join(map(repr, missing[:3]))}{more}; "
            f"add them (first column: the class name as the source spells it)"
        )
    return levels, [paths[normalize(c)] for c in classes]


def build_tables(levels: Sequence[str], paths: Sequence[tuple[str, ...]]) -> tuple[dict, dict, np.ndarray]:
    """The packed format's ``classes`` and ``parents`` tables for fine classes given as name
    paths (coarse -> fine), and ``index[level, k]``: fine class k's class index at each level.

    A class at a level is its whole path down to that level, so a name reused under two
    parents (a genus homonym) stays two classes; duplicate names are spelled out with their
    path. Classes are numbered by name (then path), so a one-level tree keeps the source's
    sorted-name order and CIFAR-100 keeps its official label numbers."""
    n_levels = len(levels)
    if any(len(p) != n_levels for p in paths):
        raise ValueError("every class path needs one name per level")
    classes, parents = {}, {}
    index = np.zeros((n_levels, len(paths)), dtype=np.int64)
    prev_pos: dict[tuple[str, ...], int] = {}
    for d, level in enumerate(levels):
        keys = sorted({p[: d + 1] for p in paths}, key=lambda k: (k[-1], k))
        pos = {k: i for i, k in enumerate(keys)}
        counts: dict[str, int] = {}
        for k in keys:
            counts[k[-1]] = counts.get(k[-1], 0) + 1
        classes[level] = [k[-1] if counts[k[-1]] == 1 else " / ".join(k) for k in keys]
        if d:
            parents[level] = [prev_pos[k[:-1]] for k in keys]
        index[d] = [pos[p[: d + 1]] for p in paths]
        prev_pos = pos
    return classes, parents, index
