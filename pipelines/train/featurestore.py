"""Region features by image id, on disk: the random access that pair tasks need.

VQA and caption fine-tuning stream the features table and join each row with what is
asked about it. Retrieval and NLVR2 cannot: a retrieval sample pairs an image with a
caption of another image, an NLVR2 statement is about two images that lie anywhere in the
table, and retrieval evaluation scores every image of a pool against every caption. So the
rows they need are copied once (one pass over the feature files, only the wanted ids) into
SQLite in a private temporary directory, and read back by id: memory stays at the page
cache whatever the number of images (NLVR2 train: ~100k images, ~5 GB of float16 features).

Rows come back as pretrain_data.iter_rows gives them (flat features and boxes, names,
scores, attributes), so region_problem and tags_from_regions apply unchanged. The store
is built in the process that creates it; DataLoader workers (forked) and the parent each
open their own read-only connection on first use.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import weakref
from typing import Iterable

import numpy as np

from pipelines.data.idset import insert_batched, open_db
from pipelines.train.pretrain_data import iter_rows, shard_files

META = ("num_regions", "feature_dim", "names", "scores", "attributes", "region_names", "region_scores",
        "region_attributes")
COLUMNS = ["image_id", "boxes", "features", *META]  # a features table's or a corpus's (absent ones skipped)


def feature_files(path: str, flag: str) -> list[str]:
    """The Parquet files of an extract_features run or a corpus (or a folder of them); ValueError if none."""
    from pipelines.data import storage

    for inner in ("features", "shards"):  # an extract_features run, a corpus
        if storage.exists(storage.join(path, inner)):
            path = storage.join(path, inner)
            break
    files = shard_files(path)
    if not files:
        raise ValueError(f"{flag} {path} holds no features Parquet: run pipelines.extract_features on the images")
    return files


def image_ids(files: list[str]) -> set[str]:
    """Every image id in the feature files (one column read): which images have features, before
    anything heavier is read."""
    from schemas.io import iter_file_batches

    return {str(i) for f in files for b in iter_file_batches(f, columns=["image_id"])
            for i in b.column("image_id").to_pylist()}


def _remove(directory: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked worker's copy of the store must not delete the parent's files
        shutil.rmtree(directory, ignore_errors=True)


class FeatureStore:
    """`store[image_id]` -> the image's feature row (dict), `image_id in store`, `len(store)`."""

    def __init__(self, files: list[str], wanted: Iterable[str] | None = None, directory: str | None = None):
        self.directory = tempfile.mkdtemp(prefix="minivlm-features-", dir=directory)
        self._finalizer = weakref.finalize(self, _remove, self.directory, os.getpid())
        self.path = os.path.join(self.directory, "ids.sqlite")
        wanted = None if wanted is None else set(map(str, wanted))
        db = open_db(self.directory)
        db.execute("CREATE TABLE rows (id TEXT PRIMARY KEY, meta TEXT, features BLOB, boxes BLOB) WITHOUT ROWID")

        def rows():
            for row in iter_rows(sorted(files), columns=COLUMNS):
                image_id = str(row["image_id"])
                if wanted is not None and image_id not in wanted:
                    continue
                meta = {k: row.get(k) for k in META if k in row}
                yield (image_id, json.dumps(meta), np.asarray(row["features"], np.float16).tobytes(),
                       np.asarray(row["boxes"], np.float32).tobytes())

        # an image twice in the tables (a glob over two runs): its first row is kept
        insert_batched(db, "INSERT OR IGNORE INTO rows VALUES (?, ?, ?, ?)", rows())
        db.execute("COMMIT")  # readers in other connections (and processes) see the rows from here on
        self.size = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        db.close()
        self._reader: tuple[int, sqlite3.Connection] | None = None

    def _db(self) -> sqlite3.Connection:
        if self._reader is None or self._reader[0] != os.getpid():
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._reader = (os.getpid(), db)
        return self._reader[1]

    def get(self, image_id: str) -> dict | None:
        found = self._db().execute("SELECT meta, features, boxes FROM rows WHERE id = ?", (str(image_id),)).fetchone()
        if found is None:
            return None
        meta, features, boxes = found
        return {"image_id": str(image_id), **json.loads(meta), "features": np.frombuffer(features, np.float16),
                "boxes": np.frombuffer(boxes, np.float32)}

    def __getitem__(self, image_id: str) -> dict:
        row = self.get(image_id)
        if row is None:
            raise KeyError(image_id)
        return row

    def __contains__(self, image_id: str) -> bool:
        return self._db().execute("SELECT 1 FROM rows WHERE id = ?", (str(image_id),)).fetchone() is not None

    def __len__(self) -> int:
        return self.size

    def __getstate__(self):
        # pickled into spawned DataLoader workers: the path travels, the connection does not
        state = dict(self.__dict__)
        state["_reader"] = None
        state["_finalizer"] = None
        return state

    def close(self) -> None:
        if self._reader is not None and self._reader[0] == os.getpid():
            self._reader[1].close()
        self._reader = None
        if self._finalizer is not None:
            self._finalizer()
