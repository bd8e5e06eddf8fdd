"""One spelling for the small random models every registry here builds.

`tiny` names a registry's default small model, `tiny:<registered name>` any registered
one: a seeded random model of that config, built locally (provenance `tiny-random/...`).
"""
from __future__ import annotations

from typing import Collection, Mapping


def tiny_name(ref: str, registered: Collection[str], what: str, aliases: Mapping[str, str]) -> str | None:
    """The registered name `ref` asks for (`aliases` maps `tiny` and older spellings), else None (not a tiny ref)."""
    if ref in aliases:
        return aliases[ref]
    if not ref.startswith("tiny:"):
        return None
    name = ref[len("tiny:"):]
    if name not in registered:
        raise ValueError(f"unknown {what} {ref!r}; registered: {', '.join('tiny:' + n for n in sorted(registered))}")
    return name
