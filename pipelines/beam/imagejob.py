"""What every image job shares on the Beam side: its configuration, its DoFns, the
front (input -> decoded images) and the back (rows -> committed Parquet parts).

    input -> ImageRefs -> the first row of each image_id, less the ids earlier runs
    committed (--resume), plus their failures to retry (--retry-failures) -> read + decode
    -> [the job's models] -> rows -> one job row or one failures row per image
    -> committed Parquet parts

The selection (pipelines/beam/plan.py) runs one of two ways, by runner (`dedupe_mode`):
"shuffle", a CoGroupByKey by image_id, where a shuffle service holds the grouping and
spreads the images over the workers (Dataflow); "disk", on one machine, one streaming
pass over the input against an on-disk table, whose selected rows are spilled to a few
local shard files and spread over the worker processes by their names: the DirectRunner
would hold a grouping over every image in memory.

The labeling job (labeling.py) and the feature extraction job (extraction.py) put
their models between `read_images` and `commit_outputs`. Counters live in the job's
namespace (its name), which its launcher (jobrun.py) reads back after the run.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions

from pipelines.beam import plan, progress, sinks
from pipelines.beam.handlers import HandlerOptions, Work
from pipelines.data import images, sources, storage
from schemas import FAILURES, VersionedSchema, failure_row

FAILED = "failed"  # tag of the failures outputs of ReadAndDecode and the row makers
DEFAULT_NAMESPACE = "minivlm"  # counters of DoFns built outside a job (tests)
DEDUPE_MODES = ("auto", "shuffle", "disk")
# Runners that run every worker on the launching machine (type(pipeline.runner).__name__):
# they can share spill files in a local directory, and hold a grouping in memory.
LOCAL_RUNNERS = frozenset({"DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner",
                           "PrismRunner"})
SHARDS_PER_WORKER = 4  # disk mode: spill shards per worker process, to even out their loads


@dataclass(frozen=True)
class JobKind:
    """Which job: its name and its own output table (every job also writes failures/)."""
    name: str  # run.json "job", the CLI's message prefix, the Beam counters' namespace
    table: str  # its output folder, e.g. "labels"
    schema: VersionedSchema
    done: str  # what an image that reached `table` is counted as, e.g. "labeled"

    @property
    def tables(self) -> dict[str, VersionedSchema]:
        """Output folder -> schema; the job's own table first (it wins in reconciliation)."""
        return {self.table: self.schema, "failures": FAILURES}


@dataclass(frozen=True, kw_only=True)
class ImageJob:
    """The options every image job has; LabelJob and FeatureJob add their models."""
    source: sources.SourceSpec
    output: str
    handler: HandlerOptions
    decode_size: int
    max_pixels: int
    read_retries: int
    rows_per_part: int
    compression: str
    done_parts: tuple[tuple[str, str], ...] = ()  # (table, part) committed by earlier runs (--resume)
    dedupe: str = "auto"  # how the rows to process are selected: auto | shuffle | disk (dedupe_mode)
    retry: str | None = None  # --retry-failures: reprocess "transient" failures, or "all"
    only_retry: bool = False  # a retry without --resume: images never committed are left alone
    scratch_dir: str | None = None  # disk mode: where spill files go (the launcher's temp dir)
    run_id: str = ""  # this run's start time: in its part names, so no other run's part is replaced
    quiet: bool = False  # --quiet: no progress lines


def dedupe_mode(requested: str, runner: str) -> str:
    """auto -> "disk" on runners whose workers share the launching machine, else "shuffle"."""
    if requested not in DEDUPE_MODES:
        raise ValueError(f"--dedupe must be one of {', '.join(DEDUPE_MODES)}, not {requested!r}")
    if requested != "auto":
        return requested
    return "disk" if runner in LOCAL_RUNNERS else "shuffle"


def failed(ref: sources.ImageRef, stage: str, error_type: str, message: str) -> beam.pvalue.TaggedOutput:
    """A failures row on the FAILED output."""
    return beam.pvalue.TaggedOutput(FAILED, failure_row(
        image_id=ref.image_id, source_uri=ref.uri, stage=stage, error_type=error_type, message=message))


class ExpandInput(beam.DoFn):
    """SourceSpec -> ImageRefs, streamed from the manifest or file listing."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE):
        self.rows = beam.metrics.Metrics.counter(namespace, "input_rows")

    def process(self, spec: sources.SourceSpec):
        for ref in sources.iter_refs(spec):
            self.rows.inc()
            yield ref


class ReadDoneIds(beam.DoFn):
    """(table, committed part file of an earlier run) -> (image_id, plan.DONE | plan.RETRY)."""

    def __init__(self, tables: dict[str, VersionedSchema], retry_mode: str | None = None):
        self.tables, self.retry_mode = tables, retry_mode

    def process(self, table_and_part: tuple[str, str]):
        table, part = table_and_part
        yield from plan.committed_marks(self.tables, table, part, self.retry_mode)


class FirstNewRow(beam.DoFn):
    """(image_id, {refs, done}) -> the earliest input row, if this run processes the image.

    `done` holds what earlier runs committed for the id (plan.RETRY for a failure to
    retry; any other value counts as done); the rule is plan.verdict's.
    """

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, only_retry: bool = False):
        self.only_retry = only_retry
        self.counters = {name: beam.metrics.Metrics.counter(namespace, name)
                         for name in plan.COUNTS if name != "input_rows"}

    def process(self, keyed):
        _, parts = keyed
        refs, marks = list(parts["refs"]), list(parts["done"])
        if not refs:
            self.counters["done_not_in_input"].inc()  # committed by an earlier run, absent from this input
            return
        self.counters["distinct_images"].inc()
        if len(refs) > 1:
            self.counters["duplicates"].inc(len(refs) - 1)
        decision = plan.verdict(plan.merged_mark(marks), self.only_retry)
        if decision in self.counters:
            self.counters[decision].inc()
        if decision in plan.PROCESS:
            yield min(refs, key=lambda r: r.row)


class SelectOnDisk(beam.DoFn):
    """SourceSpec -> the paths of spill shards holding the rows this run processes.

    plan.Plan's one streaming pass over the input (dedupe, --resume, --retry-failures)
    with the ids on disk; the selected ImageRefs are pickled round-robin into at most
    `shards` files in a new directory under `scratch_dir`, read back by ReadSpill.
    """

    def __init__(self, job: ImageJob, tables: dict[str, VersionedSchema], shards: int,
                 namespace: str = DEFAULT_NAMESPACE):
        self.done_parts, self.tables, self.shards = job.done_parts, tables, shards
        self.retry, self.only_retry, self.scratch_dir = job.retry, job.only_retry, job.scratch_dir
        self.counters = {name: beam.metrics.Metrics.counter(namespace, name) for name in plan.COUNTS}

    def process(self, spec: sources.SourceSpec):
        spill_dir = tempfile.mkdtemp(prefix="minivlm-todo-", dir=self.scratch_dir)
        paths: dict[int, str] = {}  # shard -> its file, created at its first row
        files: dict[int, object] = {}
        with contextlib.ExitStack() as open_files, plan.Plan(only_retry=self.only_retry,
                                                              directory=spill_dir) as selection:
            selection.load(self.done_parts, self.tables, self.retry)
            selected = 0
            for n, ref in enumerate(selection.select(sources.iter_refs(spec))):
                selected = n + 1
                shard = n % self.shards  # round-robin: the shards differ by one row at most
                if shard not in files:
                    paths[shard] = os.path.join(spill_dir, f"shard-{shard:05d}.pkl")
                    files[shard] = open_files.enter_context(open(paths[shard], "wb"))
                pickle.dump(ref, files[shard], protocol=pickle.HIGHEST_PROTOCOL)
            counts = selection.counts()
            progress.set_total(selected)  # this process's progress line gains done/total and an ETA
        for name, value in counts.items():
            self.counters[name].inc(value)
        if not paths:
            os.rmdir(spill_dir)
        yield from paths.values()


class ReadSpill(beam.DoFn):
    """A spill shard's path -> its ImageRefs; the shard is deleted once read, and its
    directory with the last one."""

    def process(self, path: str):
        with open(path, "rb") as f:
            while True:
                try:
                    ref = pickle.load(f)
                except EOFError:
                    break
                yield ref
        os.remove(path)
        with contextlib.suppress(OSError):  # not empty: other shards are still to be read
            os.rmdir(os.path.dirname(path))


class ReadAndDecode(beam.DoFn):
    """ImageRef -> Work (decoded pixels + facts), or a failures row on tag 'failed'."""

    def __init__(self, decode_size: int, max_pixels: int, retries: int, namespace: str = DEFAULT_NAMESPACE,
                 quiet: bool = False):
        self.decode_size, self.max_pixels, self.retries = decode_size, max_pixels, retries
        self.namespace, self.quiet = namespace, quiet

    def process(self, ref: sources.ImageRef):
        progress.bump("read", self.namespace, quiet=self.quiet)
        yield self._read_decode(ref)

    def _read_decode(self, ref: sources.ImageRef):
        if ref.error:
            return failed(ref, "manifest", "MalformedRow", ref.error)
        try:
            data = storage.read_bytes(ref.uri, retries=self.retries)
        except Exception as e:
            cause = e.__cause__ if isinstance(e, storage.PermanentReadError) and e.__cause__ else e
            return failed(ref, "read", type(cause).__name__, str(cause) or repr(cause))
        try:
            img = images.decode_image(data, rotation=ref.rotation, max_pixels=self.max_pixels,
                                      target_size=self.decode_size)
        except images.ImageError as e:
            return failed(ref, "decode", e.reason, str(e))
        except Exception as e:  # a decoder bug must cost one image, not the job
            return failed(ref, "decode", type(e).__name__, str(e))
        return Work(ref=ref, sha256=img.sha256, width=img.width, height=img.height, pixels=img.pixels)


def dead_letters_to_failures(stage: str):
    """RunInference's dead-letter output (batch, exception) -> one failures row per image."""

    def convert(failed):
        batch, err = failed
        if isinstance(err, tuple):  # Beam sends (exception type, repr, traceback lines)
            error_type, message = getattr(err[0], "__name__", str(err[0])), str(err[1])
        else:
            error_type, message = type(err).__name__, str(err) or repr(err)
        for work in batch:
            if work.failure is not None:  # failed before this model: keep that reason
                yield failure_row(image_id=work.image_id, source_uri=work.ref.uri, stage=work.failure[0],
                                  error_type=work.failure[1], message=work.failure[2])
            else:
                yield failure_row(image_id=work.image_id, source_uri=work.ref.uri, stage=stage,
                                  error_type=error_type, message=message)

    return convert


def select_by_shuffle(p: beam.Pipeline, job: ImageJob, kind: JobKind):
    """The rows to process, by a CoGroupByKey of the input with what earlier runs committed."""
    refs = (
        p
        | "Input" >> beam.Create([job.source])
        | "ExpandInput" >> beam.ParDo(ExpandInput(kind.name))
        | "KeyById" >> beam.Map(lambda r: (r.image_id, r))
    )
    done = (
        p
        | "DoneParts" >> beam.Create(list(job.done_parts))
        | "ReadDoneIds" >> beam.ParDo(ReadDoneIds(kind.tables, job.retry))
    )
    return (
        # Grouping dedupes, skips committed ids and spreads the images over workers.
        {"refs": refs, "done": done}
        | "GroupById" >> beam.CoGroupByKey()
        | "FirstNewRow" >> beam.ParDo(FirstNewRow(kind.name, job.only_retry))
    )


def local_workers(options) -> int:
    """How many worker processes (or threads) the local runner runs: --direct_num_workers, 0 = one per CPU."""
    workers = options.view_as(DirectOptions).direct_num_workers
    if workers == 0:
        return os.cpu_count() or 1
    return max(workers or 1, 1)


def select_on_disk(p: beam.Pipeline, job: ImageJob, kind: JobKind):
    """The rows to process, by one streaming pass on disk; spread over the workers as spill shards."""
    return (
        p
        | "Input" >> beam.Create([job.source])
        | "SelectOnDisk" >> beam.ParDo(SelectOnDisk(job, kind.tables, SHARDS_PER_WORKER * local_workers(p.options), kind.name))
        # A shuffle of a few file names: the worker processes share the shards out.
        | "SpreadShards" >> beam.Reshuffle()
        | "ReadSpill" >> beam.ParDo(ReadSpill())
    )


def read_images(p: beam.Pipeline, job: ImageJob, kind: JobKind):
    """The front of an image job: input -> new distinct images -> (decoded Work items, failures rows)."""
    if dedupe_mode(job.dedupe, type(p.runner).__name__) == "disk":
        todo = select_on_disk(p, job, kind)
    else:
        todo = select_by_shuffle(p, job, kind)
    decoded = todo | "ReadAndDecode" >> beam.ParDo(
        ReadAndDecode(job.decode_size, job.max_pixels, job.read_retries, kind.name, quiet=job.quiet)
    ).with_outputs(FAILED, main="ok")
    return decoded.ok, decoded[FAILED]


def commit_outputs(job: ImageJob, kind: JobKind, rows, failures: list):
    """The back of an image job: its rows and every failures PCollection -> committed parts.

    Returns the (rows, failures) PCollections.
    """
    rows = rows | f"Count{kind.done.title()}" >> beam.ParDo(progress.CountProgress(kind.done, kind.name, job.quiet))
    failures = (
        tuple(failures)
        | "AllFailures" >> beam.Flatten()
        | "CountFailed" >> beam.ParDo(progress.CountProgress("failed", kind.name, job.quiet))
    )
    for name, pcoll in ((kind.table, rows), ("failures", failures)):
        pcoll | f"Commit{name.title()}" >> beam.ParDo(sinks.CommitParts(
            job.output, name, kind.tables[name], rows_per_part=job.rows_per_part, codec=job.compression,
            run_id=job.run_id))
    return rows, failures
