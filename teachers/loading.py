"""One loader for every teacher reference.

A reference is one of
  tiny | tiny:<family>     a small random model of a real class (see registry.py)
  /a/local/dir             a directory written by `save_pretrained`
  gs://bucket/dir, s3://…  copied once into the local cache, then loaded as a directory
  owner/name[@revision]    a Hugging Face hub id, pinned to a commit at launch
Everything ends in `from_pretrained(<local dir>, use_safetensors=True)`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

from teachers import registry

REMOTE_DIR_SCHEMES = ("gs://", "gcs://", "s3://")
log = logging.getLogger(__name__)


class TeacherUnavailable(RuntimeError):
    """A teacher reference that cannot be loaded here; the message names the fix."""


@dataclass(frozen=True)
class TeacherRef:
    kind: str  # captioner | tagger
    spec: str  # as the user gave it

    @property
    def tiny(self) -> str | None:
        return registry.tiny_family(self.kind, self.spec)

    @property
    def is_remote_dir(self) -> bool:
        return self.spec.startswith(REMOTE_DIR_SCHEMES)

    @property
    def is_local_dir(self) -> bool:
        return self.spec.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(self.spec))

    @property
    def hub(self) -> tuple[str, str | None]:
        repo, _, rev = self.spec.partition("@")
        return repo, rev or None


def default_cache_dir() -> str:
    return os.environ.get("MINIVLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minivlm")


def _offline_hint(kind: str) -> str:
    return (f"use --{kind} tiny for an offline smoke run, or pass a local directory "
            f"(or gs:// / s3:// directory) holding the model")


def describe(ref: TeacherRef) -> str:
    """Provenance of a reference, resolved on the launching machine without loading weights.

    Hub ids are pinned to a commit (from the hub, else from the local cache); a hub id
    that is neither reachable nor cached raises TeacherUnavailable. Remote directories
    are not touched here: building a Dataflow job must not read buckets.
    """
    if ref.tiny:
        return f"tiny-random/{ref.tiny}"
    if ref.is_remote_dir:
        return ref.spec
    if ref.is_local_dir:
        return _local_dir(ref)
    return f"{ref.hub[0]}@{_pin_hub_revision(ref)}"


def _pin_hub_revision(ref: TeacherRef) -> str:
    from huggingface_hub import HfApi, snapshot_download

    repo, revision = ref.hub
    try:
        return HfApi().model_info(repo, revision=revision, timeout=15).sha
    except Exception as online_error:
        try:
            path = snapshot_download(repo, revision=revision, local_files_only=True)
        except Exception as e:
            raise TeacherUnavailable(
                f"{ref.kind} {ref.spec!r} cannot be reached on the model hub and is not in the local "
                f"cache ({type(online_error).__name__}); {_offline_hint(ref.kind)}"
            ) from e
        return os.path.basename(path.rstrip("/"))


def resolve(ref: TeacherRef, cache_dir: str | None = None) -> str:
    """Return a local directory holding the teacher, fetching or building it if needed."""
    cache_dir = cache_dir or default_cache_dir()
    if ref.tiny:
        return _cached_build(os.path.join(cache_dir, f"tiny-v{registry.TINY_VERSION}", f"{ref.kind}-{ref.tiny}"),
                             lambda out: registry.build_tiny(ref.kind, ref.tiny, out))
    if ref.is_remote_dir:
        key = hashlib.sha256(ref.spec.encode()).hexdigest()[:16]
        return _cached_build(os.path.join(cache_dir, "remote", key), lambda out: _copy_remote_dir(ref.spec, out))
    if ref.is_local_dir:
        return _local_dir(ref)
    return _hub_snapshot(ref)


def _local_dir(ref: TeacherRef) -> str:
    path = os.path.abspath(os.path.expanduser(ref.spec))
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise TeacherUnavailable(f"{ref.kind} directory {path} has no config.json; {_offline_hint(ref.kind)}")
    return path


def _cached_build(final: str, build) -> str:
    """Build into a temp dir and rename: concurrent workers never see half a model."""
    if os.path.isfile(os.path.join(final, "config.json")):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(final) + ".", dir=os.path.dirname(final))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race; its copy is as good as ours
            if not os.path.isfile(os.path.join(final, "config.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _copy_remote_dir(url: str, out: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    files = [p for p in fs.find(root) if not p.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    if not any(p.endswith("config.json") for p in files):
        raise TeacherUnavailable(f"{url} holds no config.json: not a saved model directory")
    for path in files:
        rel = os.path.relpath(path, root)
        os.makedirs(os.path.dirname(os.path.join(out, rel)) or out, exist_ok=True)
        fs.get(path, os.path.join(out, rel))


def _hub_snapshot(ref: TeacherRef) -> str:
    from huggingface_hub import snapshot_download

    repo, revision = ref.hub
    # Safetensors only: pickled weights (*.bin) are never downloaded, so never loaded.
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.py"]
    try:
        return snapshot_download(repo, revision=revision, allow_patterns=patterns)
    except Exception as online_error:
        try:
            return snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True)
        except Exception as e:
            raise TeacherUnavailable(
                f"{ref.kind} {ref.spec!r} cannot be downloaded ({type(online_error).__name__}: {online_error}) "
                f"and is not cached; {_offline_hint(ref.kind)}"
            ) from e


def model_config(ref: TeacherRef, cache_dir: str | None = None) -> dict:
    """A teacher's config.json without its weights (the launcher's look at what workers will load).

    Unlike `describe`, this reads a remote directory's config.json: only the features
    that need the model family (caption reranking) call it.
    """
    import fsspec

    if ref.tiny:
        path = os.path.join(resolve(ref, cache_dir), "config.json")
    elif ref.is_remote_dir:
        path = ref.spec.rstrip("/") + "/config.json"
    elif ref.is_local_dir:
        path = os.path.join(_local_dir(ref), "config.json")
    else:
        path = _hub_config(ref)
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise TeacherUnavailable(f"cannot read the config.json of {ref.kind} {ref.spec!r} ({path}): {e}") from e


def _hub_config(ref: TeacherRef) -> str:
    from huggingface_hub import hf_hub_download

    repo, revision = ref.hub
    try:
        return hf_hub_download(repo, "config.json", revision=revision)
    except Exception as online_error:
        try:
            return hf_hub_download(repo, "config.json", revision=revision, local_files_only=True)
        except Exception as e:
            raise TeacherUnavailable(
                f"the config.json of {ref.kind} {ref.spec!r} cannot be downloaded ({type(online_error).__name__}) "
                f"and is not cached; {_offline_hint(ref.kind)}"
            ) from e


def load_pretrained(ref: TeacherRef, auto_model, *, cache_dir: str | None = None,
                    trust_remote_code: bool = False, device: str = "cpu", dtype=None):
    """(model, processor) for `ref`, in eval mode on `device`."""
    from transformers import AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if trust_remote_code:
        log.warning("trust_remote_code is on for %s %r: Python code shipped with the model will run "
                    "on this machine", ref.kind, ref.spec)
    path = resolve(ref, cache_dir)
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = auto_model.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code,
                                           dtype=dtype)
    except (OSError, ValueError) as e:
        raise TeacherUnavailable(f"cannot load {ref.kind} {ref.spec!r} from {path}: {e}") from e
    return model.to(device).eval(), processor
