"""Sets and groups of image ids on disk, so that memory does not grow with the input.

SQLite in a private temporary directory, deleted on close. The image jobs keep up to one
id per image in such tables (plan.Plan's selection, reconciliation, a retry's
bookkeeping), where the DirectRunner's in-memory grouping cost 1-2 KB per image and a
Python set ~100 bytes: 9M Open Images ids are a few hundred MB of disk this way, and a
bounded page cache of memory. Each id in an IdSet carries a small integer mark (e.g.
where a retried image's new row went).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from typing import Iterable, Iterator

# Bounded page cache: the rest of the B-tree lives in the file (and the OS page cache,
# which is not this process's memory). No mmap: mapped pages would count as ours.
CACHE_KIB = 16 * 1024
BATCH = 10_000


def open_db(directory: str) -> sqlite3.Connection:
    """A throwaway database in `directory`: no journal, no fsync (it never outlives its job)."""
    db = sqlite3.connect(os.path.join(directory, "ids.sqlite"), isolation_level=None)
    for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{CACHE_KIB}", "temp_store=FILE",
                   "mmap_size=0"):
        db.execute(f"PRAGMA {pragma}")
    db.execute("BEGIN")  # one open transaction: nothing is ever committed to be read back later
    return db


def insert_batched(db: sqlite3.Connection, sql: str, rows: Iterable[tuple]) -> None:
    """executemany in batches of BATCH rows: a stream of any length, memory of one batch."""
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            db.executemany(sql, batch)
            batch = []
    if batch:
        db.executemany(sql, batch)


class OnDisk:
    """A private SQLite database in a temporary directory, deleted on close; a context manager."""

    def __init__(self, prefix: str, directory: str | None = None):
        self.directory = tempfile.mkdtemp(prefix=prefix, dir=directory)
        self.db = open_db(self.directory)

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class IdSet(OnDisk):
    """A set of strings on disk, each with an integer mark; `with IdSet() as ids: ...`."""

    def __init__(self, directory: str | None = None):
        super().__init__("minivlm-ids-", directory)
        self.db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, mark INTEGER NOT NULL) WITHOUT ROWID")

    def add(self, image_id: str, mark: int = 0) -> bool:
        """Add `image_id`; False if it was there already (its mark is then left as it was)."""
        return self.db.execute("INSERT OR IGNORE INTO ids VALUES (?, ?)", (image_id, mark)).rowcount == 1

    def add_all(self, image_ids: Iterable[str], mark: int = 0) -> None:
        insert_batched(self.db, "INSERT OR IGNORE INTO ids VALUES (?, ?)", ((i, mark) for i in image_ids))

    def mark(self, image_id: str) -> int | None:
        """The id's mark, or None if it is not in the set."""
        row = self.db.execute("SELECT mark FROM ids WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else row[0]

    def __contains__(self, image_id: str) -> bool:
        return self.mark(image_id) is not None

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM ids").fetchone()[0]


class KeyGroups(OnDisk):
    """(key, image id) pairs on disk, then the keys that several images share, exactly.

    The data card's exact duplicates (key: sha256), repeated captions (key: the caption)
    and repeated ids are found this way: the pairs go to SQLite as they stream past, one
    index is built at the end, and every query reads it in key order, so memory stays
    bounded by the page cache whatever the number of images.
    """

    def __init__(self, directory: str | None = None):
        super().__init__("minivlm-groups-", directory)
        self.db.execute("CREATE TABLE pairs (key TEXT NOT NULL, id TEXT NOT NULL)")
        self.indexed = False

    def add_all(self, pairs: Iterable[tuple[str, str]]) -> None:
        assert not self.indexed, "pairs added after the groups were read"
        insert_batched(self.db, "INSERT INTO pairs VALUES (?, ?)", pairs)

    def _index(self) -> None:
        # One sort at the end is much cheaper than keeping an index up to date per insert.
        if not self.indexed:
            self.db.execute("CREATE INDEX pairs_key ON pairs (key, id)")
            self.indexed = True

    def distinct(self) -> int:
        self._index()
        return self.db.execute("SELECT COUNT(DISTINCT key) FROM pairs").fetchone()[0]

    def shared(self, min_size: int = 2) -> tuple[int, int]:
        """(keys held by at least min_size ids, ids holding them)."""
        self._index()
        groups, ids = self.db.execute("SELECT COUNT(*), SUM(n) FROM (SELECT COUNT(*) AS n FROM pairs GROUP BY key "
                                      "HAVING n >= ?)", (min_size,)).fetchone()
        return groups, ids or 0

    def largest(self, n: int, min_size: int = 2) -> list[tuple[str, int, str]]:
        """The n largest groups as (key, size, smallest id); ties by key, so the order is stable."""
        self._index()
        return self.db.execute("SELECT key, COUNT(*) AS size, MIN(id) FROM pairs GROUP BY key HAVING size >= ? "
                               "ORDER BY size DESC, key LIMIT ?", (min_size, n)).fetchall()

    def members(self, min_size: int = 2) -> Iterator[tuple[str, str, int, str]]:
        """(key, id, group size, the group's smallest id) for every id of every group, in key order."""
        self._index()
        yield from self.db.execute(
            "SELECT p.key, p.id, g.size, g.first FROM (SELECT key, COUNT(*) AS size, MIN(id) AS first FROM pairs "
            "GROUP BY key HAVING size >= ?) AS g JOIN pairs AS p ON p.key = g.key ORDER BY p.key, p.id", (min_size,))
