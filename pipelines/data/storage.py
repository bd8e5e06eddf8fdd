"""Storage through fsspec: local paths, gs://, s3://, http(s)://, with bounded retries.

One place decides what is transient (worth retrying) and what is permanent (a failures
row at once), so every job treats a flaky bucket the same way. One retry policy per
store: gcsfs and s3fs (with botocore) retry transient errors themselves, with backoff,
so on gs:// and s3:// we add none on top (stacked, 3 of ours x 6 of gcsfs's would be 24
attempts and minutes of waiting per bad object); HTTP(S) and other stores get ours.
"""
from __future__ import annotations

import logging
import time

import fsspec

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("gs", "gcs", "s3", "http", "https", "az", "abfs")
SELF_RETRYING = ("gs", "gcs", "s3", "s3a")  # their fsspec filesystems retry transient errors


class PermanentReadError(OSError):
    """Reading failed in a way a retry cannot fix (missing, forbidden)."""


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def is_remote(url: str) -> bool:
    return scheme(url) in REMOTE_SCHEMES


def join(root: str, relative: str) -> str:
    return root.rstrip("/") + "/" + relative.lstrip("/")


def _is_permanent(err: BaseException) -> bool:
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return True
    # Only a parsed status counts: an error text that merely mentions "404" proves nothing.
    status = getattr(err, "status", None) or getattr(err, "code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)


def read_bytes(url: str, *, retries: int = 3, backoff_s: float = 0.5) -> bytes:
    """Read a whole object. Transient errors are retried `retries` times with backoff, except
    on stores whose filesystem retries by itself (SELF_RETRYING): there its policy is the one."""
    if scheme(url) in SELF_RETRYING:
        retries = 0
    attempt = 0
    while True:
        try:
            # cat_file is one GET: fsspec's open() on HTTP first asks HEAD for the size and
            # reports any HEAD failure (a passing 503 too) as FileNotFoundError.
            fs, path = fsspec.core.url_to_fs(url)
            return fs.cat_file(path)
        except Exception as e:
            if _is_permanent(e):
                raise PermanentReadError(f"{type(e).__name__}: {e}") from e
            if attempt >= retries:
                raise
            delay = backoff_s * (2**attempt)
            log.warning("transient error reading %s (%s), retry %d/%d in %.1fs", url, e, attempt + 1, retries, delay)
            time.sleep(delay)
            attempt += 1


def exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def remove(url: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def write_text(url: str, text: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(text)


def read_text(url: str) -> str:
    with fsspec.open(url, "r", encoding="utf-8") as f:
        return f.read()
