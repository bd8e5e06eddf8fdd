"""Which input rows a run processes: the first row of each distinct image id, less the
images earlier runs committed (--resume), plus the failures it retries (--retry-failures).

One rule, `verdict`, in two places:
  - the pipeline's selection stage (imagejob): by a CoGroupByKey over image ids on
    runners with a shuffle service (Dataflow scales it), or by `Plan`, one streaming
    pass over the input against a table on disk, on one machine (the DirectRunner would
    hold the whole grouping in memory, ~1-2 KB per image);
  - the launcher (jobrun), which counts the input with `Plan` after the job, apart from
    the pipeline and its Beam counters, to check the files against it.
"""
from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from typing import Iterable, Iterator

from pipelines.beam import retry, sinks
from pipelines.data.idset import insert_batched, open_db
from pipelines.data.sources import ImageRef
from schemas import VersionedSchema

# What earlier runs committed for an image id. A labels/features row or a failure that is
# not retried is DONE; a failure to retry is RETRY; an id with both is DONE (Plan keeps
# the smaller string: "done" < "retry").
DONE, RETRY = "done", "retry"
PROCESS = ("new", "retried")  # the verdicts that send an image through the job

# Counts of the selection; the same names are the Beam counters of the selection stage.
COUNTS = ("input_rows", "duplicates", "distinct_images", "already_done", "retried", "skipped_new",
          "done_not_in_input")


def committed_marks(tables: dict[str, VersionedSchema], table: str, part: str,
                    retry_mode: str | None) -> Iterator[tuple[str, str]]:
    """(image_id, DONE | RETRY) for each row of a part an earlier run committed."""
    if retry_mode is None or table != "failures":
        for image_id in sinks.part_ids(part, tables[table]):
            yield image_id, DONE
        return
    for row in sinks.part_rows(part, tables[table], retry.FAILURE_COLUMNS):
        yield row["image_id"], RETRY if retry.retryable(row, retry_mode) else DONE


def merged_mark(marks: Iterable) -> str | None:
    """One id's committed marks -> None (never committed), RETRY (only failures to retry) or DONE.

    Anything but RETRY counts as DONE (a labels row wins over a failure to retry)."""
    marks = list(marks)
    if not marks:
        return None
    return RETRY if all(m == RETRY for m in marks) else DONE


def verdict(mark: str | None, only_retry: bool) -> str:
    """What this run does with a distinct input image, given what earlier runs committed.

    new: never committed, process it (unless the run only retries: skipped_new);
    retried: its failure is retried; already_done: its row stays.
    """
    if mark is None:
        return "skipped_new" if only_retry else "new"
    return "retried" if mark == RETRY else "already_done"


class Plan:
    """One streaming pass over the input rows against what earlier runs committed, on disk.

        with Plan(only_retry=False) as plan:
            plan.load(done_parts, tables, retry_mode)
            for ref in plan.select(refs): ...   # first row of each id to process, input order
            counts = plan.counts()

    Memory stays flat: the ids live in a SQLite table in a temporary directory.
    """

    def __init__(self, *, only_retry: bool = False, directory: str | None = None):
        self.only_retry = only_retry
        self.directory = tempfile.mkdtemp(prefix="minivlm-plan-", dir=directory)
        self.db = open_db(self.directory)
        # mark: what earlier runs committed (NULL: nothing); seen: listed by this input.
        self.db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, mark TEXT, seen INTEGER NOT NULL DEFAULT 0) "
                        "WITHOUT ROWID")
        self.tally: Counter = Counter()

    def commit(self, marks: Iterable[tuple[str, str]]) -> None:
        """Record (image_id, DONE | RETRY) pairs of earlier runs; DONE wins over RETRY."""
        insert_batched(self.db, "INSERT INTO ids (id, mark) VALUES (?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET mark = MIN(mark, excluded.mark)", marks)

    def load(self, done_parts: Iterable[tuple[str, str]], tables: dict[str, VersionedSchema],
             retry_mode: str | None) -> None:
        """Record every row of the parts earlier runs committed ((table, part URL) pairs)."""
        for table, part in done_parts:
            self.commit(committed_marks(tables, table, part, retry_mode))

    def select(self, refs: Iterable[ImageRef]) -> Iterator[ImageRef]:
        """The rows to process: the first row of each id whose verdict is new or retried."""
        # One statement per row: a first sighting inserts the id or flags a committed one
        # as seen and returns its mark; a repeated id matches the WHERE of neither, so
        # nothing comes back (a duplicate row).
        sql = ("INSERT INTO ids (id, seen) VALUES (?, 1) "
               "ON CONFLICT (id) DO UPDATE SET seen = 1 WHERE seen = 0 RETURNING mark")
        for ref in refs:
            self.tally["input_rows"] += 1
            found = self.db.execute(sql, (ref.image_id,)).fetchone()
            if found is None:
                self.tally["duplicates"] += 1
                continue
            self.tally["distinct_images"] += 1
            decision = verdict(found[0], self.only_retry)
            self.tally[decision] += 1
            if decision in PROCESS:
                yield ref

    def counts(self) -> dict[str, int]:
        """The selection's counts (COUNTS), once every row went through `select`."""
        unseen = self.db.execute("SELECT COUNT(*) FROM ids WHERE mark IS NOT NULL AND seen = 0").fetchone()[0]
        return {name: (unseen if name == "done_not_in_input" else self.tally[name]) for name in COUNTS}

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "Plan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
