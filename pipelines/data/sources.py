"""Inputs of the labeling job: what images exist, where they are, and their metadata.

Three forms of `--input`, all read through fsspec and streamed (never loaded whole):
  openimages  an Open Images image-list CSV (ImageID, ..., Rotation) + an image root;
  table       a CSV or Parquet table with columns image_id, uri (+ license, author,
              original_url, rotation when present);
  files       a glob or URL pattern of image files, or a directory (image_id = stem).
A malformed manifest row is not dropped: it becomes an ImageRef carrying `error`, so it
ends as a failures row like any other bad input.
"""
from __future__ import annotations

import csv
import os
import string
from dataclasses import dataclass
from typing import Iterator

import fsspec

from pipelines.data import images, storage
from schemas.io import file_schema, iter_file_batches

OPENIMAGES_COLUMNS = (
    "ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,"
    "OriginalSize,OriginalMD5,Thumbnail300KURL,Rotation"
).split(",")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
KINDS = ("auto", "openimages", "table", "files")
DEFAULT_TEMPLATE = "{ImageID}.jpg"


class SourceError(ValueError):
    """The input as a whole is unusable (missing manifest, wrong columns, bad flags)."""


@dataclass(frozen=True)
class ImageRef:
    image_id: str
    uri: str | None
    row: int  # position in the input, 1-based; the first row of a duplicate id wins
    rotation: int | None = None
    license: str | None = None
    author: str | None = None
    original_url: str | None = None
    error: str | None = None  # set for a malformed manifest row


@dataclass(frozen=True)
class SourceSpec:
    input: str
    kind: str = "auto"
    image_root: str | None = None
    path_template: str = DEFAULT_TEMPLATE
    limit: int | None = None

    def resolved_kind(self) -> str:
        """The kind decidable from the name alone; CSVs stay 'csv' until their header is read."""
        if self.kind != "auto":
            return self.kind
        lower = self.input.lower().split("?", 1)[0]
        if lower.endswith(".parquet"):
            return "table"
        if lower.endswith((".csv", ".tsv", ".csv.gz")):
            return "csv"
        if _has_glob(self.input) or lower.endswith(IMAGE_EXTENSIONS):
            return "files"
        if not storage.is_remote(self.input) and os.path.isdir(self.input):
            return "files"
        raise SourceError(
            f"cannot tell what --input {self.input!r} is: give an Open Images CSV, a CSV/Parquet "
            "table with image_id,uri, a glob of image files, or set --input-format"
        )

    def default_image_root(self) -> str:
        """Open Images CSVs without --image-root: the `images` folder beside the manifest."""
        return storage.join(self.input.rsplit("/", 1)[0] if "/" in self.input else ".", "images")


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as e:
        raise SourceError(f"--image-path-template {template!r} is not a valid format string: {e}") from e


def _csv_kind(header: list[str], where: str) -> str:
    if "ImageID" in header:
        return "openimages"
    if "image_id" in header and "uri" in header:
        return "table"
    raise SourceError(
        f"{where}: header {','.join(header)[:200]!r} is neither an Open Images image list "
        "(needs ImageID) nor a table with image_id,uri"
    )


def check(spec: SourceSpec) -> str:
    """Validate a spec on the launching machine, before any work starts.

    Local manifests are opened and their header checked; remote ones are left for the
    job (reading them here would make building a Dataflow job touch the bucket).
    Returns the kind as far as it can be known here.
    """
    if spec.kind not in KINDS:
        raise SourceError(f"--input-format must be one of {', '.join(KINDS)}, not {spec.kind!r}")
    if spec.limit is not None and spec.limit < 1:
        raise SourceError(f"--limit must be a positive number of images, not {spec.limit}")
    fields = _template_fields(spec.path_template)
    kind = spec.resolved_kind()
    if storage.is_remote(spec.input):
        return kind
    if kind == "files":
        if not _local_files(spec.input, limit=1):
            raise SourceError(f"--input {spec.input!r} matches no image files")
        return kind
    if not os.path.isfile(spec.input):
        raise SourceError(f"--input manifest {spec.input!r} does not exist")
    if kind == "table" and spec.input.lower().endswith(".parquet"):
        try:
            names = file_schema(spec.input).names
        except Exception as e:
            raise SourceError(f"--input {spec.input!r} is not a readable Parquet file: {e}") from e
        missing = {"image_id", "uri"} - set(names)
        if missing:
            raise SourceError(f"--input {spec.input!r} lacks columns: {', '.join(sorted(missing))}")
        return kind
    try:
        with fsspec.open(spec.input, "r", encoding="utf-8-sig", newline="", compression="infer") as f:
            header = next(csv.reader(f), None)
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        raise SourceError(f"--input {spec.input!r} is not a readable CSV: {e}") from e
    if not header:
        raise SourceError(f"--input {spec.input!r} is empty (no header row)")
    csv_kind = _csv_kind(header, spec.input)
    if kind not in ("csv", csv_kind):
        raise SourceError(f"--input-format {kind} does not match {spec.input!r}, which looks like {csv_kind}")
    if csv_kind == "openimages":
        unknown = fields - set(header)
        if unknown:
            raise SourceError(
                f"--image-path-template {spec.path_template!r} uses {', '.join(sorted(unknown))}, "
                f"not columns of {spec.input!r}"
            )
    return csv_kind


def iter_refs(spec: SourceSpec) -> Iterator[ImageRef]:
    """Stream the input as ImageRefs, in input order, at most `spec.limit` of them."""
    kind = spec.resolved_kind()
    if kind == "files":
        it = _iter_files(spec.input)
    elif spec.input.lower().endswith(".parquet"):
        it = _iter_parquet(spec.input)
    else:
        it = _iter_csv(spec)
    for n, ref in enumerate(it, start=1):
        if spec.limit is not None and n > spec.limit:
            return
        yield ref


def _local_files(pattern: str, limit: int | None = None) -> list[str]:
    fs, root = fsspec.core.url_to_fs(pattern)
    if not _has_glob(root) and fs.isdir(root):
        root = root.rstrip("/") + "/**"
    found = sorted(p for p in fs.glob(root) if p.lower().endswith(IMAGE_EXTENSIONS))
    return found[:limit] if limit else found


def _iter_files(pattern: str) -> Iterator[ImageRef]:
    fs, _ = fsspec.core.url_to_fs(pattern)
    for row, path in enumerate(_local_files(pattern), start=1):
        uri = fs.unstrip_protocol(path) if storage.is_remote(pattern) else path
        stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        yield ImageRef(image_id=stem, uri=uri, row=row)


def _clean(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


MAX_FIELD_CHARS = 1 << 20  # csv's default limit (128 Ki) is below some real Title fields


def _rows(reader) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(data row number, values or None, error or None): one broken row does not end the file."""
    n = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            n += 1
            yield n, None, f"manifest row {n} cannot be parsed: {e}"
            continue
        n += 1
        yield n, values, None


def _iter_csv(spec: SourceSpec) -> Iterator[ImageRef]:
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS))
    # errors="replace": a stray invalid byte spoils its own row's text, not the whole manifest.
    with fsspec.open(spec.input, "r", encoding="utf-8-sig", errors="replace", newline="",
                     compression="infer") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise SourceError(f"manifest {spec.input!r} is empty (no header row)")
        kind = _csv_kind(header, spec.input)
        if kind == "openimages":
            root = spec.image_root or spec.default_image_root()
            make = lambda rec, n: _openimages_ref(rec, n, root, spec.path_template)  # noqa: E731
        else:
            make = _table_ref
        for n, values, error in _rows(reader):
            if error is not None:
                yield ImageRef(image_id=f"row:{n}", uri=None, row=n, error=error)
                continue
            if not any(v.strip() for v in values):
                continue  # blank line: nothing to account for
            if len(values) != len(header):
                rec = dict(zip(header, values))
                ident = _clean(rec.get("ImageID") or rec.get("image_id")) or f"row:{n}"
                yield ImageRef(
                    image_id=ident, uri=None, row=n,
                    error=f"manifest row {n} has {len(values)} fields, the header has {len(header)}",
                )
                continue
            yield make(dict(zip(header, values)), n)


def _openimages_ref(rec: dict, n: int, root: str, template: str) -> ImageRef:
    image_id = _clean(rec.get("ImageID"))
    meta = dict(license=_clean(rec.get("License")), author=_clean(rec.get("Author")),
                original_url=_clean(rec.get("OriginalURL")))
    if not image_id:
        return ImageRef(image_id=f"row:{n}", uri=None, row=n, error=f"manifest row {n} has no ImageID", **meta)
    try:
        rotation = images.parse_rotation(rec.get("Rotation"))
    except ValueError as e:
        return ImageRef(image_id=image_id, uri=None, row=n, error=f"manifest row {n}: {e}", **meta)
    try:
        uri = storage.join(root, template.format(**rec))
    except (KeyError, IndexError, ValueError) as e:
        return ImageRef(image_id=image_id, uri=None, row=n, error=f"manifest row {n}: path template: {e}", **meta)
    return ImageRef(image_id=image_id, uri=uri, row=n, rotation=rotation, **meta)


def _table_ref(rec: dict, n: int) -> ImageRef:
    image_id, uri = _clean(rec.get("image_id")), _clean(rec.get("uri"))
    meta = dict(license=_clean(rec.get("license")), author=_clean(rec.get("author")),
                original_url=_clean(rec.get("original_url")))
    if not image_id:
        return ImageRef(image_id=f"row:{n}", uri=uri, row=n, error=f"manifest row {n} has no image_id", **meta)
    if not uri:
        return ImageRef(image_id=image_id, uri=None, row=n, error=f"manifest row {n} has no uri", **meta)
    try:
        rotation = images.parse_rotation(rec.get("rotation"))
    except ValueError as e:
        return ImageRef(image_id=image_id, uri=uri, row=n, error=f"manifest row {n}: {e}", **meta)
    return ImageRef(image_id=image_id, uri=uri, row=n, rotation=rotation, **meta)


def _iter_parquet(path: str) -> Iterator[ImageRef]:
    names = file_schema(path).names
    wanted = [c for c in ("image_id", "uri", "license", "author", "original_url", "rotation") if c in names]
    if not {"image_id", "uri"} <= set(wanted):
        raise SourceError(f"table {path!r} needs columns image_id and uri, has {names}")
    n = 0
    for batch in iter_file_batches(path, columns=wanted):
        for rec in batch.to_pylist():
            n += 1
            yield _table_ref(rec, n)


__all__ = ["ImageRef", "SourceError", "SourceSpec", "check", "iter_refs"]
