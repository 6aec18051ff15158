"""What rule report (workflow/rules/report.smk) passes to `sslstudy report`, read off the Snakemake
workflow; here because Snakemake's linter wants functions out of rule files."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..errors import UserError


def benchmarks(workflow, targets: list[str]) -> dict[str, str]:
    """{benchmark file: rule} of every job that targets are made from: each rule's own inputs are
    followed up from targets (Snakemake's Rule API), and the paths are the rules' benchmark: patterns."""
    out, seen, todo = {}, set(), list(targets)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        rule = next((r for r in workflow.rules if r.is_producer(f)), None)
        if rule is None:  # source data
            continue
        wildcards = rule.get_wildcards(f)
        if rule.benchmark:
            out[str(rule.expand_benchmark(wildcards))] = rule.name
        todo += map(str, rule.expand_input(wildcards)[0])
    return dict(sorted(out.items()))


def named(pairs) -> str:
    """NAME=PATH arguments for the shell (read back by split_named)."""
    return " ".join(shlex.quote(f"{name}={path}") for name, path in pairs)


def split_named(items: list[str]) -> list[tuple[str, Path]]:
    out = []
    for it in items:
        name, sep, path = it.partition("=")
        if not (sep and name and path):
            raise UserError(f"{it!r}: expected NAME=PATH")
        out.append((name, Path(path)))
    return out
