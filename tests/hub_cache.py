"""A Hugging Face hub cache that holds the tiny replicas under the real repo ids.

It is laid out as huggingface_hub lays out a user's cache after a download
(https://huggingface.co/docs/hub/local-cache), so `HF_HOME=<home> HF_HUB_OFFLINE=1` makes
`google/siglip-so400m-patch14-384` resolve to the replica exactly as it would to the real
files:

    <home>/hub/models--<owner>--<name>/
        blobs/<sha256 of a file>               the file's bytes, stored once
        refs/main                              the commit `main` points at
        snapshots/<commit>/<file>  ->  ../../blobs/<sha256>
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from teachers import TeacherRef, registry, resolve


def repo_folder(hub: Path, repo: str) -> Path:
    return hub / ("models--" + repo.replace("/", "--"))


def add_repo(hub: Path, repo: str, files_dir: str) -> str:
    """Cache every file of files_dir as `repo` at one commit, which `main` points at; returns the commit."""
    folder = repo_folder(hub, repo)
    names = sorted(os.listdir(files_dir))
    digests = {name: hashlib.sha256(Path(files_dir, name).read_bytes()).hexdigest() for name in names}
    # A 40-hex commit id that changes when any file does, as a git commit would.
    commit = hashlib.sha1("".join(f"{n}\0{d}\n" for n, d in digests.items()).encode()).hexdigest()
    snapshot = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, digest in digests.items():
        blob = folder / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(Path(files_dir, name), blob)
        link = snapshot / name
        if not link.exists():
            link.symlink_to(Path("..", "..", "blobs", digest))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return commit


def build(home: Path, families: list[tuple[str, str]] | None = None, cache_dir: str | None = None) -> dict[str, str]:
    """Cache the replicas of (kind, family) pairs (default: all registered) under HF_HOME=home.

    Returns {repo id: commit}. The replicas are built (or reused) in the tiny-teacher cache
    `cache_dir` (default $MINIVLM_CACHE).
    """
    families = families or [(kind, family) for kind in registry.KINDS for family in registry.tiny_families(kind)]
    commits = {}
    for kind, family in families:
        repo = registry.replicated_repo(kind, family)
        commits[repo] = add_repo(home / "hub", repo, resolve(TeacherRef(kind, f"tiny:{family}"), cache_dir=cache_dir))
    return commits


def env(home: Path) -> dict[str, str]:
    """The environment of a user whose cache is `home`, with no network to the hub."""
    # HF_HUB_CACHE outranks HF_HOME: set both, so a developer's own HF_HUB_CACHE cannot leak in.
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"}
