"""The corpus join: labels + features -> shuffled training and validation shards (Beam).

    labels/*.parquet    -> one file per element, Reshuffle -> rows in batches -> (image_id, labels row)
    features/*.parquet  -> the same                                            -> (image_id, features row)
      -> CoGroupByKey(image_id) -> JoinRows: one corpus row per image, or a counter saying why not
      -> split: "val" when hash(seed, image_id) < --val-fraction, else "train"
      -> shuffle key: hash(seed, "shuffle", image_id); rows per split (a side input)
      -> shard = shuffle key % ceil(rows in split / --shard-rows)
      -> GroupByKey(split, shard) -> one Parquet file per shard, rows in shuffle-key order
         OUTPUT/shards/train-00000-of-00012.parquet, OUTPUT/val/val-00000-of-00001.parquet

Why a row is not joined, each a counter in run.json: labels_without_features,
features_without_labels, hash_mismatches (the two rows were computed from different
bytes), malformed_rows (an image_id missing on read, or rows that do not make a valid
corpus row, e.g. num_regions * feature_dim != len(features) or different sizes).
Several rows of one image_id on one side (say two labeling runs copied into one folder)
give one row, chosen deterministically: a row whose sha256 the other side also has, then
the smallest sha256, then a fingerprint of the row's content; the rest are counted as
duplicate_ids.

Shard sizes: rows are spread by a hash, so the shards of a split hold
Binomial(rows, 1/num_shards) rows each: on average rows / num_shards <= --shard-rows,
give or take a few sqrt(--shard-rows) (10000 -> typically within +-300, a little
above --shard-rows at worst). Exact sizes would need a global sort; run.json reports the
smallest and largest shard instead. Every shard is written by one worker that holds its
rows (memory ~ --shard-rows x row size: ~50 regions x feature_dim float16 + captions, so
about 10-30 KB a row, 100-300 MB for 10000 rows) and streams them to Parquet in row
groups of ROW_GROUP_ROWS. Shard files have fixed names, so a retried bundle rewrites
the same file with the same bytes; the output is the same, byte for byte, for the same
inputs and --seed.

Kept apart from the command line (build_corpus.py) so that workers import it by name.
"""
from __future__ import annotations

import hashlib
import logging
import math
import pickle
from collections import Counter
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.beam import sinks
from pipelines.data import storage
from schemas import CORPUS, FEATURES, LABELS, corpus_row
from schemas.corpus import FEATURES_COLUMNS, LABELS_COLUMNS, SPLITS
from schemas.io import iter_file_batches, parquet_files, read_file

log = logging.getLogger(__name__)

NAMESPACE = "build_corpus"  # run.json "job" and the Beam counters' namespace
SPLIT_DIRS = {"train": "shards", "val": "val"}  # output folder of each split
ROW_GROUP_ROWS = 1000  # rows per Parquet row group in a shard
READ_BATCH_ROWS = 512  # rows per batch read from an input file
MAX_LOGGED = 20  # malformed rows logged (with the reason) per worker; all are counted
INPUTS = {"labels": (LABELS, LABELS_COLUMNS), "features": (FEATURES, FEATURES_COLUMNS)}
COUNTERS = ("labels_rows", "features_rows", "image_ids", "joined", "train", "val", "labels_without_features",
            "features_without_labels", "hash_mismatches", "duplicate_ids", "malformed_labels",
            "malformed_features", "malformed_pairs")


@dataclass(frozen=True)
class CorpusJob:
    labels_files: tuple[str, ...]  # Parquet files of the labels table (checked on the launcher)
    features_files: tuple[str, ...]
    output: str
    shard_rows: int = 10000
    val_fraction: float = 0.01
    seed: int = 0
    compression: str = "zstd"
    read_batch_rows: int = READ_BATCH_ROWS
    row_group_rows: int = ROW_GROUP_ROWS


# ---- hashes: the split and the order, stable across runs and machines -------------------

def _unit(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def split_of(image_id: str, val_fraction: float, seed: int = 0) -> str:
    """'val' when sha256(f"{seed}:{image_id}") as a fraction of 2**64 is below val_fraction."""
    return "val" if _unit(f"{seed}:{image_id}") / 2**64 < val_fraction else "train"


def shuffle_key(image_id: str, seed: int = 0) -> int:
    """A row's place in the shuffled corpus: its shard (key % shards) and its order in it."""
    return _unit(f"{seed}:shuffle:{image_id}")


def num_shards(rows: int, shard_rows: int) -> int:
    return max(1, math.ceil(rows / shard_rows))


def shard_name(split: str, index: int, total: int) -> str:
    width = max(5, len(str(total)))
    return f"{split}-{index:0{width}d}-of-{total:0{width}d}.parquet"


def shard_url(output: str, split: str, index: int, total: int) -> str:
    return storage.join(output, f"{SPLIT_DIRS[split]}/{shard_name(split, index, total)}")


# ---- reading the inputs ---------------------------------------------------------------

def check_columns(schema: pa.Schema, columns, where: str, table=None) -> None:
    """Refuse a file lacking a column the join needs; nullable columns of `table` (a
    VersionedSchema) that an older version predates are read as nulls instead."""
    optional = {f.name for f in table.fields if f.nullable} if table is not None else set()
    missing = [c for c in columns if c not in schema.names and c not in optional]
    if missing:
        raise ValueError(f"{where} lacks the column(s) {', '.join(missing)}")


def batch_rows(batch: pa.RecordBatch) -> list[dict]:
    """A RecordBatch -> row dicts; a `features` column becomes float16 arrays (compact, exact)."""
    if "features" not in batch.schema.names:
        return batch.to_pylist()
    rest = [n for n in batch.schema.names if n != "features"]
    rows = batch.select(rest).to_pylist()
    col = batch.column("features")
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False).astype(np.float16, copy=False)
    nulls = col.is_null().to_numpy(zero_copy_only=False)
    for i, row in enumerate(rows):
        row["features"] = None if nulls[i] else values[offsets[i]:offsets[i + 1]].copy()
    return rows


class ReadRows(beam.DoFn):
    """A Parquet file of one input table -> (image_id, row), streamed in row batches.

    The file's schema version is checked here too (the launcher checked it before the
    job started; a file replaced since then must not be misread). A row without an
    image_id is counted as malformed and skipped.
    """

    def __init__(self, side: str, batch_rows: int = READ_BATCH_ROWS, namespace: str = NAMESPACE):
        self.side, self.batch_rows = side, batch_rows
        self.rows = beam.metrics.Metrics.counter(namespace, f"{side}_rows")
        self.malformed = beam.metrics.Metrics.counter(namespace, f"malformed_{side}")
        self.logged = 0

    def process(self, file: str):
        schema, columns = INPUTS[self.side]
        batches = iter_file_batches(file, schema, list(columns), self.batch_rows,
                                    check=lambda found: check_columns(found, columns, file, schema))
        for batch in batches:
            for row in batch_rows(batch):
                self.rows.inc()
                image_id = row.get("image_id")
                if not isinstance(image_id, str) or not image_id:
                    self.malformed.inc()
                    self._log(f"{self.side} row without image_id in {file}")
                    continue
                yield image_id, row

    def _log(self, message: str) -> None:
        if self.logged < MAX_LOGGED:
            self.logged += 1
            log.warning("skipped a malformed row: %s", message)


# ---- the join -------------------------------------------------------------------------

def fingerprint(row: dict) -> bytes:
    """A digest of a row's content, to order rows that share an image_id and sha256."""
    canon = [(k, v.tobytes() if isinstance(v, np.ndarray) else repr(v)) for k, v in sorted(row.items())]
    return hashlib.sha256(pickle.dumps(canon, protocol=4)).digest()


def pick(rows: list[dict], others: list[dict]) -> dict:
    """The one row of an image_id taken from one side: deterministic, whatever the arrival order."""
    if len(rows) == 1:
        return rows[0]
    theirs = {r.get("sha256") for r in others}
    return min(rows, key=lambda r: (r.get("sha256") not in theirs, r.get("sha256") or "", fingerprint(r)))


class JoinRows(beam.DoFn):
    """(image_id, {labels: rows, features: rows}) -> (split, shuffle key, corpus row), or a counter."""

    def __init__(self, val_fraction: float, seed: int, namespace: str = NAMESPACE):
        self.val_fraction, self.seed = val_fraction, seed
        c = {name: beam.metrics.Metrics.counter(namespace, name) for name in COUNTERS}
        self.c = c
        self.logged = 0

    def process(self, keyed):
        image_id, sides = keyed
        labels, features = list(sides["labels"]), list(sides["features"])
        self.c["image_ids"].inc()
        extra = max(len(labels) - 1, 0) + max(len(features) - 1, 0)
        if extra:
            self.c["duplicate_ids"].inc(extra)
        if not features:
            self.c["labels_without_features"].inc()
            return
        if not labels:
            self.c["features_without_labels"].inc()
            return
        lab, fea = pick(labels, features), pick(features, labels)
        if lab.get("sha256") and fea.get("sha256") and lab["sha256"] != fea["sha256"]:
            self.c["hash_mismatches"].inc()
            return
        split = split_of(image_id, self.val_fraction, self.seed)
        try:
            row = corpus_row(lab, fea, split)
        except (ValueError, TypeError, KeyError, OverflowError) as e:
            self.c["malformed_pairs"].inc()
            if self.logged < MAX_LOGGED:
                self.logged += 1
                log.warning("skipped a malformed row: %s", e)
            return
        self.c["joined"].inc()
        self.c[split].inc()
        yield split, shuffle_key(image_id, self.seed), row


def assign_shard(element, rows_per_split: dict, shard_rows: int):
    """(split, key, row) -> ((split, shard, shards in split), (key, row))."""
    split, key, row = element
    total = num_shards(rows_per_split[split], shard_rows)
    return (split, key % total, total), (key, row)


class WriteShard(beam.DoFn):
    """((split, shard, shards), [(key, row)]) -> one Parquet file, rows in key order; yields its row count."""

    def __init__(self, output: str, codec: str = "zstd", row_group_rows: int = ROW_GROUP_ROWS,
                 namespace: str = NAMESPACE):
        if codec not in sinks.CODECS:
            raise ValueError(f"--compression must be one of {', '.join(sinks.CODECS)}, not {codec!r}")
        self.output, self.codec, self.row_group_rows = output, codec, row_group_rows
        self.shards = beam.metrics.Metrics.counter(namespace, "shards_written")

    def process(self, keyed):
        (split, index, total), keyed_rows = keyed
        # Largest key first, so row groups are taken off the end (and freed) in key order.
        pending = sorted(keyed_rows, key=lambda kr: (kr[0], kr[1]["image_id"]), reverse=True)
        count = len(pending)
        url = shard_url(self.output, split, index, total)
        with sinks.publish(url) as f, pq.ParquetWriter(f, CORPUS.arrow, compression=self.codec) as writer:
            while pending:
                group = [row for _, row in reversed(pending[-self.row_group_rows:])]
                del pending[-self.row_group_rows:]
                writer.write_table(pa.Table.from_pylist(group, schema=CORPUS.arrow), row_group_size=len(group))
        self.shards.inc()
        yield split, count


def read_input(p: beam.Pipeline, side: str, files: tuple[str, ...], batch_rows: int):
    title = side.title()
    return (
        p
        | f"{title}Files" >> beam.Create(list(files))
        | f"Spread{title}Files" >> beam.Reshuffle()  # one file per element, spread over workers
        | f"Read{title}" >> beam.ParDo(ReadRows(side, batch_rows))
    )


def build(p: beam.Pipeline, job: CorpusJob):
    """Attach the corpus join to `p`; returns the PCollection of (split, rows) per written shard."""
    labels = read_input(p, "labels", job.labels_files, job.read_batch_rows)
    features = read_input(p, "features", job.features_files, job.read_batch_rows)
    joined = (
        {"labels": labels, "features": features}
        | "GroupById" >> beam.CoGroupByKey()
        | "Join" >> beam.ParDo(JoinRows(job.val_fraction, job.seed))
    )
    rows_per_split = (
        joined
        | "SplitOf" >> beam.Map(lambda e: e[0])
        | "RowsPerSplit" >> beam.combiners.Count.PerElement()
    )
    return (
        joined
        | "AssignShard" >> beam.Map(assign_shard, beam.pvalue.AsDict(rows_per_split), job.shard_rows)
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShard" >> beam.ParDo(WriteShard(job.output, job.compression, job.row_group_rows))
    )


# ---- after the run: what the files hold ------------------------------------------------

def _none_key(value) -> str:
    return "none" if value is None else str(value)


def read_back(output: str, rows_per_split: dict[str, int], shard_rows: int) -> tuple[dict, list[str]]:
    """Counts read back from the written shards, and every way they disagree with what the
    job counted (`rows_per_split`): a missing or extra shard file, a row in the wrong split,
    a different number of rows. Reads file footers and four small string columns."""
    counts: dict = {}
    problems: list[str] = []
    sizes: list[int] = []
    extractors: Counter = Counter()
    captioners: Counter = Counter()
    taggers: Counter = Counter()
    for split in SPLITS:
        files = parquet_files(storage.join(output, SPLIT_DIRS[split]))
        expected_rows = rows_per_split.get(split, 0)
        total = num_shards(expected_rows, shard_rows) if expected_rows else 0
        expected = {shard_url(output, split, i, total).rsplit("/", 1)[-1] for i in range(total)}
        names = {f.rsplit("/", 1)[-1] for f in files}
        if names != expected:
            problems.append(f"{SPLIT_DIRS[split]}/ holds {len(names)} shard files, expected {len(expected)} "
                            f"({split}-*-of-{total:05d})")
        rows = 0
        for file in files:
            t = read_file(file, CORPUS, ["split", "extractor", "captioner", "tagger"])
            if set(t.column("split").to_pylist()) - {split}:
                problems.append(f"{file} holds rows of another split than {split}")
            extractors.update(t.column("extractor").to_pylist())
            captioners.update(map(_none_key, t.column("captioner").to_pylist()))
            taggers.update(map(_none_key, t.column("tagger").to_pylist()))
            sizes.append(t.num_rows)
            rows += t.num_rows
        if rows != expected_rows:
            problems.append(f"{split} shards hold {rows} rows, the job joined {expected_rows}")
        counts[f"{split}_in_files"] = rows
        counts[f"shards_{split}"] = len(files)
    counts.update(shard_rows_min=min(sizes) if sizes else None, shard_rows_max=max(sizes) if sizes else None)
    return {"counts": counts, "extractors": dict(extractors), "captioners": dict(captioners),
            "taggers": dict(taggers)}, problems
