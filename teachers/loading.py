"""One loader for every teacher reference.

A reference is one of
  tiny | tiny:<family>     a small random replica of a real hub repo (see registry.py)
  /a/local/dir             a directory written by `save_pretrained`
  gs://bucket/dir, s3://…  copied once into the local cache, then loaded as a directory
  owner/name[@revision]    a Hugging Face hub id, pinned to a commit at launch
Everything ends in `from_pretrained(<local dir>, use_safetensors=True)`. Before any work,
`describe` (on the launching machine) refuses in one line a teacher that cannot load there:
a family transformers cannot load in that role, only pickled weights, model code the user did
not allow, or a missing Python package (`check_loadable`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from teachers import registry

REMOTE_DIR_SCHEMES = ("gs://", "gcs://", "s3://")
# What is fetched from the hub: weights only as safetensors, so pickled *.bin are never downloaded.
HUB_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.py"]
HUB_PATTERNS = [*HUB_FILES, "*.safetensors"]
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# The transformers auto class each kind loads with (teachers/captioner.py, teachers/tagger.py).
AUTO_CLASSES = {"captioner": "AutoModelForImageTextToText", "tagger": "AutoModel"}
ROLES = {"captioner": "an image-to-text model", "tagger": "an image-text model"}
# Import (or transformers backend) names whose pip package is named otherwise.
PIP_NAMES = {"google": "protobuf", "pil": "pillow", "pytorch": "torch", "sklearn": "scikit-learn",
             "cv2": "opencv-python"}
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


def describe(ref: TeacherRef, *, trust_remote_code: bool | None = None) -> str:
    """Provenance of a reference, resolved on the launching machine without loading weights.

    Hub ids are pinned to a commit (from the hub, else from the local cache); a hub id
    that is neither reachable nor cached raises TeacherUnavailable. Hub ids and local
    directories are then checked (`check_loadable`): one that cannot load here raises
    TeacherUnavailable, so the job stops before any work. Remote directories are not
    touched here: building a Dataflow job must not read buckets. `trust_remote_code`
    None means the caller did not say: a repo that needs its own code is left to the
    workers, which know.
    """
    if ref.tiny:
        return f"tiny-random/{ref.tiny}"
    if ref.is_remote_dir:
        return ref.spec
    if ref.is_local_dir:
        path = _local_dir(ref)
        check_loadable(ref, path, _listing(path), trust_remote_code=trust_remote_code)
        return path
    revision, files = _pin_hub_revision(ref)
    # The config and processor files, not the weights: enough to check the teacher.
    path = _hub_snapshot(ref, revision, patterns=HUB_FILES, online=files is not None)
    check_loadable(ref, path, files if files is not None else _listing(path), trust_remote_code=trust_remote_code)
    return f"{ref.hub[0]}@{revision}"


def _pin_hub_revision(ref: TeacherRef) -> tuple[str, list[str] | None]:
    """(commit, the repo's file names) from the hub, or (commit, None) from the local cache."""
    from huggingface_hub import HfApi, snapshot_download

    repo, revision = ref.hub
    try:
        info = HfApi().model_info(repo, revision=revision, timeout=15)
        return info.sha, [s.rfilename for s in info.siblings or []]
    except Exception as online_error:
        try:
            path = snapshot_download(repo, revision=revision, local_files_only=True)
        except Exception as e:
            raise TeacherUnavailable(
                f"{ref.kind} {ref.spec!r} cannot be reached on the model hub and is not in the local "
                f"cache ({type(online_error).__name__}); {_offline_hint(ref.kind)}"
            ) from e
        return os.path.basename(path.rstrip("/")), None


def _listing(path: str) -> list[str]:
    """Every file under a model directory, relative to it."""
    return [os.path.relpath(os.path.join(root, name), path) for root, _, names in os.walk(path) for name in names]


def check_loadable(ref: TeacherRef, path: str, files: list[str], *, trust_remote_code: bool | None = None) -> None:
    """Raise TeacherUnavailable, in one line, if the teacher in `path` cannot load here; loads no weights.

    `files`: the teacher's file names (the hub's list, or the directory's). In order: the model
    family (transformers must load its model type with the kind's auto class, or the repo ships
    its own code and `trust_remote_code` allows it), the weights (safetensors; pickles are
    refused), then the Python packages its model code, tokenizer and image processor import
    (the processor is loaded, the model class imported). `trust_remote_code` None: unknown, so a
    repo that needs its own code is not judged (and its packages not checked) here.
    """
    built_in = _check_family(ref, _read_config(ref, path), _auto_class(ref.kind), trust_remote_code)
    _check_weights(ref, files)
    if built_in:
        _check_packages(ref, path)


def _auto_class(kind: str):
    import transformers

    return getattr(transformers, AUTO_CLASSES[kind])


def _read_config(ref: TeacherRef, path: str) -> dict:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise TeacherUnavailable(f"cannot read the config.json of {ref.kind} {ref.spec!r}: {_one_line(e)}") from e


def _check_family(ref: TeacherRef, config: dict, auto_model, trust_remote_code: bool | None) -> bool:
    """True if transformers' own code loads this model with `auto_model`; False if the repo's code
    may be what loads it (allowed, or `trust_remote_code` unknown); otherwise TeacherUnavailable."""
    from transformers import __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    # auto_model._model_mapping is the table from_pretrained looks the config class up in.
    native = model_type in CONFIG_MAPPING and CONFIG_MAPPING[model_type] in auto_model._model_mapping
    ships_code = bool(config.get("auto_map"))
    if ships_code and trust_remote_code is not False:
        return False  # allowed, transformers runs the repo's code instead of its own; unknown: not judged here
    if native:
        return True
    if ships_code:
        raise TeacherUnavailable(
            f"{ref.kind} {ref.spec!r} is a {model_type!r} model that only its own code (shipped in the repo) "
            f"can load as {ROLES[ref.kind]}, not transformers {__version__}; pass --trust-remote-code to run "
            "that code, if you trust its authors")
    if model_type not in CONFIG_MAPPING:
        raise TeacherUnavailable(
            f"{ref.kind} {ref.spec!r} is a {model_type!r} model, a family transformers {__version__} does not "
            "know; supported families: docs/teachers.md")
    raise TeacherUnavailable(
        f"{ref.kind} {ref.spec!r} is a {model_type!r} model, which transformers cannot load as "
        f"{ROLES[ref.kind]} ({auto_model.__name__}); supported families: docs/teachers.md")


def _check_weights(ref: TeacherRef, files: list[str]) -> None:
    names = sorted({os.path.basename(f) for f in files})
    if any(n.endswith(".safetensors") for n in names):
        return
    pickled = [n for n in names if n.endswith(PICKLED)]
    if pickled:
        raise TeacherUnavailable(
            f"{ref.kind} {ref.spec!r} has only pickled weights ({', '.join(pickled)}), no safetensors: refused, "
            "since unpickling can run any code; use a copy saved as safetensors")
    raise TeacherUnavailable(f"{ref.kind} {ref.spec!r} has no weights here (no *.safetensors file); "
                             f"{_offline_hint(ref.kind)}")


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' own warnings off while the launcher only checks a teacher (e.g. a real
    SigLIP config's bos/eos ids outside its vocabulary): a refusal must stay one line, and the
    workers that load the model still show them."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _check_packages(ref: TeacherRef, path: str) -> None:
    from transformers import AutoConfig, AutoProcessor

    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(path)
            model_class = _auto_class(ref.kind)._model_mapping[type(config)]  # imports the model's code, packages
            AutoProcessor.from_pretrained(path)  # tokenizer + image processor: small files, no weights
    except ImportError as e:
        raise TeacherUnavailable(_missing_package_message(ref, e)) from e
    except (OSError, ValueError) as e:
        raise TeacherUnavailable(f"cannot load the config or processor of {ref.kind} {ref.spec!r}: "
                                 f"{_one_line(e)}") from e
    _check_role(ref, config.model_type, model_class, getattr(config, "architectures", None) or [])


def _scores_image_text(model_class) -> bool:
    return all(hasattr(model_class, m) for m in ("get_image_features", "get_text_features"))


def _check_role(ref: TeacherRef, model_type: str, model_class, architectures: list[str]) -> None:
    """A tagger scores images against texts: AutoModel loads any model type, but only image-text
    models (SigLIP, CLIP, ...) have the two towers the tagger calls. And the checkpoint must be
    one of such a model: a BLIP captioner's folder loads as BlipModel too, its image-text
    projections then random (transformers only warns), so its tags would be noise."""
    if ref.kind != "tagger":
        return
    if not _scores_image_text(model_class):
        raise TeacherUnavailable(
            f"tagger {ref.spec!r} is a {model_type!r} model ({model_class.__name__}), not an image-text model with "
            "image and text features to score tags with; supported families: docs/teachers.md")
    import transformers

    saved = [getattr(transformers, name, None) for name in architectures]
    other = [c.__name__ for c in saved if c is not None and not _scores_image_text(c)]
    if other and len(other) == len(architectures):
        raise TeacherUnavailable(
            f"tagger {ref.spec!r} is a {model_type!r} checkpoint of {', '.join(other)}, not an image-text model with "
            f"image and text features to score tags with (as {model_class.__name__} its image-text projections "
            "would start random); supported families: docs/teachers.md")


def _missing_packages(err: ImportError) -> list[str]:
    """The pip names of the packages an ImportError says are missing (a plain import, or
    transformers' "X requires the Y library" / remote code's "packages that were not found")."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        names = [err.name.split(".")[0]]
    else:
        text = str(err)
        names = re.findall(r"requires the (?:\S+ )?(\w[\w.-]*) library", text)
        listed = re.search(r"not found in your environment: ([^.]+)\.", text)
        names += [n.strip() for n in listed.group(1).split(",")] if listed else []
    return list(dict.fromkeys(PIP_NAMES.get(n.lower(), n.lower()) for n in names if n))


def _missing_package_message(ref: TeacherRef, err: ImportError) -> str:
    packages = _missing_packages(err)
    if not packages:
        return f"{ref.kind} {ref.spec!r} cannot be loaded here: {_one_line(err)}"
    noun = "package" if len(packages) == 1 else "packages"
    return (f"{ref.kind} {ref.spec!r} needs the Python {noun} {', '.join(map(repr, packages))} "
            f"(pip install {' '.join(packages)})")


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message squeezed onto one line (transformers' span several)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def resolve(ref: TeacherRef, cache_dir: str | None = None) -> str:
    """Return a local directory holding the teacher, fetching or building it if needed."""
    cache_dir = cache_dir or default_cache_dir()
    if ref.tiny:
        try:
            return _cached_build(os.path.join(cache_dir, f"tiny-v{registry.TINY_VERSION}", f"{ref.kind}-{ref.tiny}"),
                                 lambda out: registry.build_tiny(ref.kind, ref.tiny, out))
        except ImportError as e:  # a replica is built with its family's tokenizer libraries
            raise TeacherUnavailable(_missing_package_message(ref, e)) from e
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
    files = [p for p in fs.find(root) if not p.endswith(PICKLED)]
    if not any(p.endswith("config.json") for p in files):
        raise TeacherUnavailable(f"{url} holds no config.json: not a saved model directory")
    for path in files:
        rel = os.path.relpath(path, root)
        os.makedirs(os.path.dirname(os.path.join(out, rel)) or out, exist_ok=True)
        fs.get(path, os.path.join(out, rel))


def _hub_snapshot(ref: TeacherRef, revision: str | None = None, *, patterns: list[str] = HUB_PATTERNS,
                  online: bool = True) -> str:
    """The local snapshot of a hub id: downloaded (`patterns` only), else from the cache."""
    from huggingface_hub import snapshot_download

    repo, requested = ref.hub
    revision = revision or requested
    online_error: Exception | None = None
    if online:
        try:
            return snapshot_download(repo, revision=revision, allow_patterns=patterns)
        except Exception as e:
            online_error = e
    try:
        return snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True)
    except Exception as e:
        why = f"cannot be downloaded ({type(online_error).__name__}: {_one_line(online_error)})" if online_error \
            else "is not reachable"
        raise TeacherUnavailable(f"{ref.kind} {ref.spec!r} {why} and is not cached; {_offline_hint(ref.kind)}") from e


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
    # The launcher checked this already (describe); a worker may see another directory or flag.
    _check_family(ref, _read_config(ref, path), auto_model, trust_remote_code)
    _check_weights(ref, _listing(path))
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = auto_model.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code,
                                           dtype=dtype)
    except ImportError as e:
        raise TeacherUnavailable(_missing_package_message(ref, e)) from e
    except (OSError, ValueError) as e:
        raise TeacherUnavailable(f"cannot load {ref.kind} {ref.spec!r} from {path}: {_one_line(e)}") from e
    _check_role(ref, model.config.model_type, type(model), getattr(model.config, "architectures", None) or [])
    return model.to(device).eval(), processor
