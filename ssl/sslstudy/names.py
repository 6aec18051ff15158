"""How the study names things, as plain strings (no torch import, so Snakemake parses fast):
corruptions (``jpeg10``), pools (``natural+aerial``) and labelled counts (``l10``, ``lall``)."""
from __future__ import annotations

import re

from .errors import UserError

KINDS = ("downup", "jpeg", "saltpepper", "blur", "lowres")  # the corruptions of sslstudy.data.corrupt
_TAG = re.compile(rf"^({'|'.join(KINDS)})([0-9]+(?:\.[0-9]+)?)$")
POOL_SEP = "+"
ALL = "all"


def quality_tag(kind: str, strength: float) -> str:
    return f"{kind}{float(strength):g}"


def parse_quality(tag: str) -> tuple[str, float]:
    """``"jpeg10"`` -> ``("jpeg", 10.0)``; raises UserError for an unknown tag."""
    m = _TAG.match(tag)
    if not m:
        raise UserError(f"unknown corruption {tag!r}; use one of {', '.join(k + '<strength>' for k in KINDS)} (quality: in params)")
    return m.group(1), float(m.group(2))


def image_size_after(tag: str, size: int) -> int:
    """Side of the corrupted images (only lowres changes it)."""
    if tag == "clean":
        return size
    kind, s = parse_quality(tag)
    return int(s) if kind == "lowres" else size


def pool_name(domains: list[str]) -> str:
    return POOL_SEP.join(domains)


def pool_members(name: str) -> list[str]:
    return name.split(POOL_SEP)


def labels_tag(per_class: int | str) -> str:
    """Labelled images per class as a path component: 10 -> l10, "all" -> lall."""
    return f"l{per_class}"


def parse_labels_tag(tag: str) -> int | str:
    body = tag.removeprefix("l")
    if body == ALL:
        return ALL
    if not body.isdigit() or int(body) < 1:
        raise UserError(f"labelled count {tag!r}: expected l<images per class> or lall")
    return int(body)
