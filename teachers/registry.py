"""Registry of `tiny` teachers: small randomly initialised replicas of real hub repos.

A tiny teacher is built once, saved like a hub checkpoint (config.json +
model.safetensors + processor files) and then loaded back through the very same
`from_pretrained` path as a real one, so tests and offline smoke runs exercise the
real loading, preprocessing and generation code. Each family's builder lives in
teachers/replicas/<family>.py and names the real repo it replicates (same model, tokenizer
and processor classes, the repo's files, image size, special tokens and vocabulary size;
only widths and depths shrink: docs/teachers.md); importing the `teachers` package
registers them all.
"""
from __future__ import annotations

from typing import Callable

KINDS = ("captioner", "tagger")
_TINY: dict[str, dict[str, Callable[[str], None]]] = {kind: {} for kind in KINDS}
_REPOS: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}  # family -> the real repo it replicates
DEFAULT_TINY = {"captioner": "blip", "tagger": "siglip"}
# The image size of the shapes teachers.replicas.common.vision()/square() give; the replicas of
# real repos keep their repo's own image size instead.
TINY_IMAGE_SIZE = 32
# Part of the cache path of built tiny teachers: bump it whenever a builder changes,
# so no machine keeps loading a stale build. 2: replicas of the real repos' files.
TINY_VERSION = 2


def register_tiny(kind: str, family: str, repo: str):
    """Register `build(out_dir)` as the tiny `family` of `kind` (reference `tiny:<family>`), a
    replica of the hub repo `repo` (same classes and files, only smaller)."""
    if kind not in KINDS:
        raise ValueError(f"unknown teacher kind {kind!r}; expected one of {KINDS}")

    def deco(fn: Callable[[str], None]) -> Callable[[str], None]:
        _TINY[kind][family] = fn
        _REPOS[kind][family] = repo
        return fn

    return deco


def replicated_repo(kind: str, family: str) -> str:
    """The real hub repo the tiny `family` replicates."""
    return _REPOS[kind][family]


def tiny_families(kind: str) -> list[str]:
    return sorted(_TINY[kind])


def tiny_family(kind: str, ref: str) -> str | None:
    """'tiny' -> the default family, 'tiny:git' -> 'git', anything else -> None.

    `tiny` / `tiny:<name>` is the one spelling of a small random model across teachers,
    TEE and student; the older `tiny-git` keeps working.
    """
    if ref == "tiny":
        return DEFAULT_TINY[kind]
    if ref.startswith(("tiny:", "tiny-")):
        family = ref[len("tiny:"):]
        if family not in _TINY[kind]:
            raise ValueError(
                f"unknown tiny {kind} {ref!r}; registered: "
                + ", ".join(f"tiny:{f}" for f in tiny_families(kind))
            )
        return family
    return None


def build_tiny(kind: str, family: str, out_dir: str) -> None:
    from transformers.utils import logging as hf_logging

    # save_pretrained's "Writing model shards" bar would otherwise land in the middle of a
    # launcher's output (e.g. above the one line of a refused --resume).
    hf_logging.disable_progress_bar()
    _TINY[kind][family](out_dir)
