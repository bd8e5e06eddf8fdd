"""The labeling pipeline: its configuration, its row maker, and `build`.

Kept apart from the command line (pseudo_label.py) so that every class a worker
unpickles lives in an importable module, never in `__main__`.

Flow: input -> ImageRefs -> first new row per image_id (less the ids earlier runs
committed, plus the failures to retry; on disk or by a shuffle, see imagejob.py) ->
read + decode -> RunInference(captioner) -> RunInference(tagger; with --rerank it also
scores the captions) -> labels row or failures row -> committed Parquet parts.
Everything but the teachers and the labels row is shared with the feature extraction
job (pipelines/beam/imagejob.py).

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

from pipelines.beam.handlers import TeacherHandler, Work
from pipelines.beam.imagejob import (  # noqa: F401  (re-exported: the labeling job's stages)
    FAILED,
    ExpandInput,
    FirstNewRow,
    ImageJob,
    JobKind,
    ReadAndDecode,
    commit_outputs,
    dead_letters_to_failures,
    read_images,
)
from pipelines.beam.imagejob import failed as _failed
from schemas import LABELS, labels_row
from teachers.tagger import RerankParams

KIND = JobKind(name="pseudo_label", table="labels", schema=LABELS, done="labeled")
# Teachers run with PyTorch's scaled-dot-product attention where their model class
# supports it, else eager (teachers.common.use_sdpa).
REQUESTED_ATTENTION = "sdpa"
NAMESPACE = KIND.name  # Beam metrics namespace of the job's counters
TABLES = KIND.tables  # the job's output tables, by folder name


@dataclass(frozen=True)
class Teacher:
    stage: str  # caption | tag
    spec: str  # what workers load (hub ids pinned to a commit)
    reference: str  # as the user gave it
    provenance: str  # model id + revision, a path, or tiny-random/<family>
    params: object  # CaptionParams | TagParams
    dtype: str = "auto"  # --dtype: what each worker resolves it to is in the rows (runtime)

    def requested(self) -> dict:
        """How the teacher was asked to run; each row's `runtime` says how it did."""
        return {"dtype": self.dtype, "attn_implementation": REQUESTED_ATTENTION}


@dataclass(frozen=True, kw_only=True)
class LabelJob(ImageJob):
    captioner: Teacher | None
    tagger: Teacher | None
    vocab: tuple | None  # parsed on the launcher when the file is local
    rerank: RerankParams | None = None  # needs both teachers: the tagger scores the captions

    def teacher_params(self) -> dict:
        out = {}
        for t in (self.captioner, self.tagger):
            if t is not None:
                out[t.stage] = {"model": t.provenance, **t.params.to_dict(), "requested": t.requested()}
        if self.tagger is not None and self.vocab is not None:
            out["tag"]["vocab_size"] = len(self.vocab)
            out["tag"]["vocab_sha256"] = hashlib.sha256(json.dumps(self.vocab).encode()).hexdigest()
        if self.rerank is not None:
            out["rerank"] = self.rerank.to_dict()
        return out


class MakeRow(beam.DoFn):
    """A Work item the teachers are done with -> one labels row or one failures row."""

    def __init__(self, job: LabelJob):
        self.captioner = job.captioner.provenance if job.captioner else None
        self.tagger = job.tagger.provenance if job.tagger else None
        self.params = job.teacher_params()

    def process(self, work: Work):
        yield self._row(work)

    def _params(self, work: Work) -> dict:
        """The job's teacher_params with, per teacher, what it ran on for this image (device,
        dtype, attention): workers of one job may differ (a GPU fleet's bf16 and fp16 cards)."""
        if not work.runtime:
            return self.params
        return {stage: ({**p, "runtime": work.runtime[stage]} if stage in work.runtime else p)
                for stage, p in self.params.items()}

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
                teacher_params=self._params(work)))
        except (ValueError, KeyError, TypeError) as e:
            return _failed(ref, "label", type(e).__name__, str(e))


def build(p: beam.Pipeline, job: LabelJob):
    """Attach the labeling job to `p`; returns the (labels, failures) PCollections."""
    work, decode_failures = read_images(p, job, KIND)
    lost = [decode_failures]
    for teacher in (job.captioner, job.tagger):
        if teacher is None:
            continue
        tagger = teacher.stage == "tag"
        handler = TeacherHandler(teacher.stage, teacher.spec, teacher.params, job.handler,
                                 vocab=job.vocab if tagger else None, rerank=job.rerank if tagger else None,
                                 dtype=teacher.dtype)
        name = teacher.stage.title()
        work, dlq = work | name >> RunInference(handler).with_exception_handling()
        lost.append(dlq.failed_inferences
                    | f"{name}DeadLetters" >> beam.FlatMap(dead_letters_to_failures(teacher.stage)))

    rows = work | "MakeRow" >> beam.ParDo(MakeRow(job)).with_outputs(FAILED, main="labels")
    return commit_outputs(job, KIND, rows.labels, [*lost, rows[FAILED]])
