"""A label level must tell images apart: on a level with a single class every frozen score (kNN,
linear, k-means NMI and ARI) is 1.0 for pretrained and random weights alike, so ingest and the
study's start refuse one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import UserError

WHY = "a level with one class is not a level: kNN, linear, NMI and ARI all score 1.0 on it, for any weights"


def refuse_one_class(
    dataset: str, levels: Sequence[str], classes: Mapping[str, Sequence[str]], drop: str, more: str
) -> None:
    """UserError naming `dataset` and its first level with fewer than two classes, and the fix: `drop`
    (formatted with {others}: the levels with two or more classes) where there are such levels, else `more`."""
    single = [lv for lv in levels if len(classes[lv]) < 2]
    if not single:
        return
    lv, others = single[0], [x for x in levels if x not in single]
    one = f"one class ({classes[lv][0]!r})" if classes[lv] else "no class"
    fix = drop.format(others=",".join(others)) if others else more
    raise UserError(f"{dataset}: level {lv!r} has {one}; {WHY}; {fix}")
