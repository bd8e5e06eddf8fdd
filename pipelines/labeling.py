"""The labeling pipeline: its configuration, its DoFns, and `build`.

Kept apart from the command line (pseudo_label.py) so that every class a worker
unpickles lives in an importable module, never in `__main__`.

Flow: input -> ImageRefs -> first row per image_id -> read + decode (failures split off)
-> RunInference(captioner), RunInference(tagger) -> join by image_id -> labels row or
failures row -> Parquet. Every distinct input image ends as exactly one row of
OUTPUT/labels or OUTPUT/failures; OUTPUT/run.json records what ran and the counts.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from pipelines import images, progress, sinks, sources, storage
from pipelines.handlers import HandlerOptions, TeacherHandler, TeacherResult
from schemas import FAILURES, LABELS, failure_row, labels_row

NAMESPACE = "pseudo_label"  # Beam metrics namespace of the job's counters
FAILED = "failed"  # tag of the failures output of ReadAndDecode and MakeRow


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
    num_shards: int
    compression: str
    row_group_mb: int
    vocab: tuple | None  # parsed on the launcher when the file is local

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


class FirstRowWins(beam.DoFn):
    """(image_id, [refs]) -> the ref of the earliest input row; later ones are counted."""

    def __init__(self):
        self.distinct = beam.metrics.Metrics.counter(NAMESPACE, "distinct_images")
        self.duplicates = beam.metrics.Metrics.counter(NAMESPACE, "duplicates")

    def process(self, keyed):
        _, refs = keyed
        refs = list(refs)
        self.distinct.inc()
        if len(refs) > 1:
            self.duplicates.inc(len(refs) - 1)
        yield min(refs, key=lambda r: r.row)


@dataclass
class Decoded:
    ref: sources.ImageRef
    sha256: str
    width: int
    height: int


class ReadAndDecode(beam.DoFn):
    """ImageRef -> (Decoded meta, (image_id, pixels)) or a failures row on tag 'failed'."""

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
        return Decoded(ref, img.sha256, img.width, img.height), (ref.image_id, img.pixels)



def dead_letters_to_results(stage: str):
    """RunInference's dead-letter output (batch, exception) -> one TeacherResult per image."""

    def convert(failed):
        batch, err = failed
        for image_id, _ in batch:
            yield TeacherResult(image_id, stage, error_type=type(err).__name__, message=str(err) or repr(err))

    return convert


class MakeRow(beam.DoFn):
    """Joined (image_id, {meta, caption, tag}) -> one labels row or one failures row."""

    def __init__(self, job: LabelJob):
        self.captioner = job.captioner.provenance if job.captioner else None
        self.tagger = job.tagger.provenance if job.tagger else None
        self.params = job.teacher_params()

    def process(self, joined):
        image_id, parts = joined
        metas = list(parts["meta"])
        if metas:  # an image never decoded already has its failures row from ReadAndDecode
            yield self._row(image_id, metas[0], parts)

    def _row(self, image_id: str, meta: "Decoded", parts: dict):
        ref = meta.ref
        results: dict[str, TeacherResult | None] = {}
        for stage, enabled in (("caption", self.captioner), ("tag", self.tagger)):
            if enabled:
                got = list(parts.get(stage, []))
                results[stage] = got[0] if got else TeacherResult(
                    image_id, stage, error_type="MissingOutput", message=f"the {stage} teacher produced no result")
        for stage, res in results.items():
            if not res.ok:
                return _failed(ref, stage, res.error_type, res.message)
        captions = results["caption"].value if "caption" in results else []
        tags = results["tag"].value if "tag" in results else []
        if "caption" in results and not captions:
            return _failed(ref, "caption", "EmptyOutput", "the captioner returned no caption for this image")
        if not captions and not tags:
            return _failed(ref, "tag", "EmptyOutput", "the tagger returned no tag above the threshold")
        try:
            row = LABELS.validate_row(labels_row(
                image_id=image_id, source_uri=ref.uri, sha256=meta.sha256, width=meta.width, height=meta.height,
                license=ref.license, author=ref.author, original_url=ref.original_url, captions=captions,
                tags=tags, captioner=self.captioner, tagger=self.tagger, teacher_params=self.params))
        except (ValueError, KeyError, TypeError) as e:
            return _failed(ref, "label", type(e).__name__, str(e))
        return row



def build(p: beam.Pipeline, job: LabelJob):
    """Attach the labeling job to `p`; returns the (labels, failures) PCollections."""
    refs = (
        p
        | "Input" >> beam.Create([job.source])
        | "ExpandInput" >> beam.ParDo(ExpandInput())
        | "KeyById" >> beam.Map(lambda r: (r.image_id, r))
        # GroupByKey both dedupes and spreads the images over workers (a reshuffle).
        | "GroupById" >> beam.GroupByKey()
        | "FirstRowWins" >> beam.ParDo(FirstRowWins())
    )
    decoded = refs | "ReadAndDecode" >> beam.ParDo(
        ReadAndDecode(job.decode_size, job.max_pixels, job.read_retries)
    ).with_outputs(FAILED, main="ok")
    meta = decoded.ok | "Meta" >> beam.Map(lambda d: (d[0].ref.image_id, d[0]))
    pixels = decoded.ok | "Pixels" >> beam.Map(lambda d: d[1])

    branches = {"meta": meta}
    for teacher in (job.captioner, job.tagger):
        if teacher is None:
            continue
        handler = TeacherHandler(teacher.stage, teacher.spec, teacher.params, job.handler,
                                 vocab=job.vocab if teacher.stage == "tag" else None)
        name = teacher.stage.title()
        main, dlq = pixels | f"{name}" >> RunInference(handler).with_exception_handling()
        lost = dlq.failed_inferences | f"{name}DeadLetters" >> beam.FlatMap(dead_letters_to_results(teacher.stage))
        branches[teacher.stage] = (
            (main, lost)
            | f"{name}Results" >> beam.Flatten()
            | f"Key{name}" >> beam.Map(lambda r: (r.image_id, r))
        )

    rows = (
        branches
        | "JoinById" >> beam.CoGroupByKey()
        | "MakeRow" >> beam.ParDo(MakeRow(job)).with_outputs(FAILED, main="labels")
    )
    labels = rows.labels | "CountLabeled" >> beam.ParDo(progress.CountProgress("labeled"))
    failures = (
        (decoded[FAILED], rows[FAILED])
        | "AllFailures" >> beam.Flatten()
        | "CountFailed" >> beam.ParDo(progress.CountProgress("failed"))
    )
    sinks.write_table(labels, job.output, "labels", LABELS, num_shards=job.num_shards,
                      codec=job.compression, row_group_mb=job.row_group_mb)
    sinks.write_table(failures, job.output, "failures", FAILURES, num_shards=job.num_shards,
                      codec=job.compression, row_group_mb=job.row_group_mb)
    return labels, failures
