"""The labeling pipeline: its configuration, its DoFns, and `build`.

Kept apart from the command line (pseudo_label.py) so that every class a worker
unpickles lives in an importable module, never in `__main__`.

Flow: input -> ImageRefs -> first new row per image_id (GroupByKey with the ids that
earlier runs committed, for --resume) -> read + decode -> RunInference(captioner) ->
RunInference(tagger) -> labels row or failures row -> committed Parquet parts.

The teachers are chained, not joined: each image travels as one Work item from decode
to its output row with no shuffle in between, so rows are committed while the job runs
(a killed job loses at most one uncommitted part) and every image leaves exactly once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from pipelines import images, progress, sinks, sources, storage
from pipelines.handlers import HandlerOptions, TeacherHandler, Work
from schemas import FAILURES, LABELS, failure_row, labels_row

NAMESPACE = "pseudo_label"  # Beam metrics namespace of the job's counters
FAILED = "failed"  # tag of the failures output of ReadAndDecode and MakeRow
TABLES = {"labels": LABELS, "failures": FAILURES}  # the job's output tables, by folder name


@dataclass(frozen=True)
class Teacher:
    stage: str  # caption | tag
    spec: str  # what workers load (hub ids pinned to a commit)
    reference: str  # as the user gave it
    provenance: str  # model id + revision, a path, or tiny-random/<family>
    params: object  # CaptionParams | TagParams


@dataclass(frozen=True)
class LabelJob:
    source: sources.SourceSpec
    output: str
    captioner: Teacher | None
    tagger: Teacher | None
    handler: HandlerOptions
    decode_size: int
    max_pixels: int
    read_retries: int
    rows_per_part: int
    compression: str
    vocab: tuple | None  # parsed on the launcher when the file is local
    done_parts: tuple[tuple[str, str], ...] = ()  # (table, part) committed by earlier runs (--resume)

    def teacher_params(self) -> dict:
        out = {}
        for t in (self.captioner, self.tagger):
            if t is not None:
                out[t.stage] = {"model": t.provenance, **t.params.to_dict()}
        if self.tagger is not None and self.vocab is not None:
            out["tag"]["vocab_size"] = len(self.vocab)
            out["tag"]["vocab_sha256"] = hashlib.sha256(json.dumps(self.vocab).encode()).hexdigest()
        return out


class ExpandInput(beam.DoFn):
    """SourceSpec -> ImageRefs, streamed from the manifest or file listing."""

    def __init__(self):
        self.rows = beam.metrics.Metrics.counter(NAMESPACE, "input_rows")

    def process(self, spec: sources.SourceSpec):
        for ref in sources.iter_refs(spec):
            self.rows.inc()
            yield ref


def _failed(ref: sources.ImageRef, stage: str, error_type: str, message: str) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput(FAILED, failure_row(
        image_id=ref.image_id, source_uri=ref.uri, stage=stage, error_type=error_type, message=message))


def read_done_ids(table_and_part: tuple[str, str]):
    """(table, committed part file of an earlier run) -> its image ids."""
    from schemas import read_table

    table, part = table_and_part
    yield from read_table(part, TABLES[table], columns=["image_id"]).column("image_id").to_pylist()


class FirstNewRow(beam.DoFn):
    """(image_id, {refs, done}) -> the earliest input row, unless an earlier run committed it."""

    def __init__(self):
        self.distinct = beam.metrics.Metrics.counter(NAMESPACE, "distinct_images")
        self.duplicates = beam.metrics.Metrics.counter(NAMESPACE, "duplicates")
        self.already_done = beam.metrics.Metrics.counter(NAMESPACE, "already_done")
        self.done_not_in_input = beam.metrics.Metrics.counter(NAMESPACE, "done_not_in_input")

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

    def __init__(self, decode_size: int, max_pixels: int, retries: int):
        self.decode_size, self.max_pixels, self.retries = decode_size, max_pixels, retries

    def process(self, ref: sources.ImageRef):
        progress.bump("read")
        yield self._read_decode(ref)

    def _read_decode(self, ref: sources.ImageRef):
        if ref.error:
            return _failed(ref, "manifest", "MalformedRow", ref.error)
        try:
            data = storage.read_bytes(ref.uri, retries=self.retries)
        except Exception as e:
            cause = e.__cause__ if isinstance(e, storage.PermanentReadError) and e.__cause__ else e
            return _failed(ref, "read", type(cause).__name__, str(cause) or repr(cause))
        try:
            img = images.decode_image(data, rotation=ref.rotation, max_pixels=self.max_pixels,
                                      target_size=self.decode_size)
        except images.ImageError as e:
            return _failed(ref, "decode", e.reason, str(e))
        except Exception as e:  # a decoder bug must cost one image, not the job
            return _failed(ref, "decode", type(e).__name__, str(e))
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
            if work.failure is not None:  # failed before this teacher: keep that reason
                yield failure_row(image_id=work.image_id, source_uri=work.ref.uri, stage=work.failure[0],
                                  error_type=work.failure[1], message=work.failure[2])
            else:
                yield failure_row(image_id=work.image_id, source_uri=work.ref.uri, stage=stage,
                                  error_type=error_type, message=message)

    return convert


class MakeRow(beam.DoFn):
    """A Work item the teachers are done with -> one labels row or one failures row."""

    def __init__(self, job: LabelJob):
        self.captioner = job.captioner.provenance if job.captioner else None
        self.tagger = job.tagger.provenance if job.tagger else None
        self.params = job.teacher_params()

    def process(self, work: Work):
        yield self._row(work)

    def _row(self, work: Work):
        ref = work.ref
        if work.failure is not None:
            return _failed(ref, *work.failure)
        if self.captioner and not work.captions:
            return _failed(ref, "caption", "EmptyOutput", "the captioner returned no caption for this image")
        if not work.captions and not work.tags:
            return _failed(ref, "tag", "EmptyOutput", "the tagger returned no tag above the threshold")
        try:
            return LABELS.validate_row(labels_row(
                image_id=ref.image_id, source_uri=ref.uri, sha256=work.sha256, width=work.width,
                height=work.height, license=ref.license, author=ref.author, original_url=ref.original_url,
                captions=work.captions or [], tags=work.tags or [], captioner=self.captioner, tagger=self.tagger,
                teacher_params=self.params))
        except (ValueError, KeyError, TypeError) as e:
            return _failed(ref, "label", type(e).__name__, str(e))


def build(p: beam.Pipeline, job: LabelJob):
    """Attach the labeling job to `p`; returns the (labels, failures) PCollections."""
    refs = (
        p
        | "Input" >> beam.Create([job.source])
        | "ExpandInput" >> beam.ParDo(ExpandInput())
        | "KeyById" >> beam.Map(lambda r: (r.image_id, r))
    )
    done = (
        p
        | "DoneParts" >> beam.Create(list(job.done_parts))
        | "ReadDoneIds" >> beam.FlatMap(read_done_ids)
        | "KeyDone" >> beam.Map(lambda image_id: (image_id, True))
    )
    todo = (
        # Grouping dedupes, skips committed ids and spreads the images over workers.
        {"refs": refs, "done": done}
        | "GroupById" >> beam.CoGroupByKey()
        | "FirstNewRow" >> beam.ParDo(FirstNewRow())
    )
    decoded = todo | "ReadAndDecode" >> beam.ParDo(
        ReadAndDecode(job.decode_size, job.max_pixels, job.read_retries)
    ).with_outputs(FAILED, main="ok")

    work = decoded.ok
    lost = []
    for teacher in (job.captioner, job.tagger):
        if teacher is None:
            continue
        handler = TeacherHandler(teacher.stage, teacher.spec, teacher.params, job.handler,
                                 vocab=job.vocab if teacher.stage == "tag" else None)
        name = teacher.stage.title()
        work, dlq = work | name >> RunInference(handler).with_exception_handling()
        lost.append(dlq.failed_inferences
                    | f"{name}DeadLetters" >> beam.FlatMap(dead_letters_to_failures(teacher.stage)))

    rows = work | "MakeRow" >> beam.ParDo(MakeRow(job)).with_outputs(FAILED, main="labels")
    labels = rows.labels | "CountLabeled" >> beam.ParDo(progress.CountProgress("labeled"))
    failures = (
        (decoded[FAILED], rows[FAILED], *lost)
        | "AllFailures" >> beam.Flatten()
        | "CountFailed" >> beam.ParDo(progress.CountProgress("failed"))
    )
    for name, pcoll in (("labels", labels), ("failures", failures)):
        pcoll | f"Commit{name.title()}" >> beam.ParDo(sinks.CommitParts(
            job.output, name, TABLES[name], rows_per_part=job.rows_per_part, codec=job.compression))
    return labels, failures
