"""What every image job shares on the Beam side: its configuration, its DoFns, the
front (input -> decoded images) and the back (rows -> committed Parquet parts).

    input -> ImageRefs -> first new row per image_id (CoGroupByKey with the ids earlier
    runs committed, for --resume) -> read + decode -> [the job's models] -> rows
    -> one job row or one failures row per image -> committed Parquet parts

The labeling job (labeling.py) and the feature extraction job (extraction.py) put
their models between `read_images` and `commit_outputs`. Counters live in the job's
namespace (its name), which its launcher (jobrun.py) reads back after the run.
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam

from pipelines.beam import progress, sinks
from pipelines.beam.handlers import HandlerOptions, Work
from pipelines.data import images, sources, storage
from schemas import FAILURES, VersionedSchema, failure_row

FAILED = "failed"  # tag of the failures outputs of ReadAndDecode and the row makers
DEFAULT_NAMESPACE = "minivlm"  # counters of DoFns built outside a job (tests)


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
    """(table, committed part file of an earlier run) -> its image ids."""

    def __init__(self, tables: dict[str, VersionedSchema]):
        self.tables = tables

    def process(self, table_and_part: tuple[str, str]):
        from schemas import read_table

        table, part = table_and_part
        yield from read_table(part, self.tables[table], columns=["image_id"]).column("image_id").to_pylist()


class FirstNewRow(beam.DoFn):
    """(image_id, {refs, done}) -> the earliest input row, unless an earlier run committed it."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE):
        self.distinct = beam.metrics.Metrics.counter(namespace, "distinct_images")
        self.duplicates = beam.metrics.Metrics.counter(namespace, "duplicates")
        self.already_done = beam.metrics.Metrics.counter(namespace, "already_done")
        self.done_not_in_input = beam.metrics.Metrics.counter(namespace, "done_not_in_input")

    def process(self, keyed):
        _, parts = keyed
        refs, done = list(parts["refs"]), list(parts["done"])
        if not refs:
            self.done_not_in_input.inc()  # committed by an earlier run, absent from this input
            return
        self.distinct.inc()
        if len(refs) > 1:
            self.duplicates.inc(len(refs) - 1)
        if done:
            self.already_done.inc()
            return
        yield min(refs, key=lambda r: r.row)


class ReadAndDecode(beam.DoFn):
    """ImageRef -> Work (decoded pixels + facts), or a failures row on tag 'failed'."""

    def __init__(self, decode_size: int, max_pixels: int, retries: int, namespace: str = DEFAULT_NAMESPACE):
        self.decode_size, self.max_pixels, self.retries = decode_size, max_pixels, retries
        self.namespace = namespace

    def process(self, ref: sources.ImageRef):
        progress.bump("read", self.namespace)
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


def read_images(p: beam.Pipeline, job: ImageJob, kind: JobKind):
    """The front of an image job: input -> new distinct images -> (decoded Work items, failures rows)."""
    namespace = kind.name
    refs = (
        p
        | "Input" >> beam.Create([job.source])
        | "ExpandInput" >> beam.ParDo(ExpandInput(namespace))
        | "KeyById" >> beam.Map(lambda r: (r.image_id, r))
    )
    done = (
        p
        | "DoneParts" >> beam.Create(list(job.done_parts))
        | "ReadDoneIds" >> beam.ParDo(ReadDoneIds(kind.tables))
        | "KeyDone" >> beam.Map(lambda image_id: (image_id, True))
    )
    todo = (
        # Grouping dedupes, skips committed ids and spreads the images over workers.
        {"refs": refs, "done": done}
        | "GroupById" >> beam.CoGroupByKey()
        | "FirstNewRow" >> beam.ParDo(FirstNewRow(namespace))
    )
    decoded = todo | "ReadAndDecode" >> beam.ParDo(
        ReadAndDecode(job.decode_size, job.max_pixels, job.read_retries, namespace)
    ).with_outputs(FAILED, main="ok")
    return decoded.ok, decoded[FAILED]


def commit_outputs(job: ImageJob, kind: JobKind, rows, failures: list):
    """The back of an image job: its rows and every failures PCollection -> committed parts.

    Returns the (rows, failures) PCollections.
    """
    rows = rows | f"Count{kind.done.title()}" >> beam.ParDo(progress.CountProgress(kind.done, kind.name))
    failures = (
        tuple(failures)
        | "AllFailures" >> beam.Flatten()
        | "CountFailed" >> beam.ParDo(progress.CountProgress("failed", kind.name))
    )
    for name, pcoll in ((kind.table, rows), ("failures", failures)):
        pcoll | f"Commit{name.title()}" >> beam.ParDo(sinks.CommitParts(
            job.output, name, kind.tables[name], rows_per_part=job.rows_per_part, codec=job.compression))
    return rows, failures
