"""The feature extraction pipeline: its configuration, its row maker, and `build`.

Flow: the labeling job's front and back (pipelines/beam/imagejob.py) with the TEE between:
input -> ImageRefs -> first new row per image_id -> read + decode -> RunInference(TEE)
-> features row or failures row -> committed Parquet parts (OUTPUT/features/, failures/).
Kept apart from the command line (extract_features.py) so workers import it by name.
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from pipelines.beam.handlers import TEEHandler, Work
from pipelines.beam.imagejob import (
    FAILED,
    ImageJob,
    JobKind,
    commit_outputs,
    dead_letters_to_failures,
    failed,
    read_images,
)
from schemas import FEATURES, features_row

KIND = JobKind(name="extract_features", table="features", schema=FEATURES, done="extracted")
NAMESPACE = KIND.name
TABLES = KIND.tables


@dataclass(frozen=True)
class TEESpec:
    reference: str  # as the user gave it: tiny, a directory, gs://..., s3://...
    provenance: str  # tiny-random/<config name>, or the directory
    extractor_id: str  # hash of config + weights, computed on the launcher
    config: dict  # TEEConfig.to_dict()


@dataclass(frozen=True, kw_only=True)
class FeatureJob(ImageJob):
    tee: TEESpec


class MakeFeatureRow(beam.DoFn):
    """A Work item the TEE is done with -> one features row or one failures row."""

    def __init__(self, tee: TEESpec):
        self.extractor, self.source = tee.extractor_id, tee.provenance

    def process(self, work: Work):
        yield self._row(work)

    def _row(self, work: Work):
        ref, regions = work.ref, work.regions
        if work.failure is not None:
            return failed(ref, *work.failure)
        if regions is None or len(regions.scores) == 0:
            return failed(ref, "extract", "EmptyOutput", "the TEE found no region in this image")
        try:
            return features_row(
                image_id=ref.image_id, source_uri=ref.uri, sha256=work.sha256, width=work.width,
                height=work.height, boxes=regions.boxes, scores=regions.scores, labels=regions.labels,
                names=regions.names, features=regions.features, extractor=self.extractor,
                extractor_source=self.source, attributes=regions.attributes,
                attribute_scores=regions.attribute_scores)
        except (ValueError, TypeError) as e:
            return failed(ref, "extract", type(e).__name__, str(e))


def build(p: beam.Pipeline, job: FeatureJob):
    """Attach the feature extraction job to `p`; returns the (features, failures) PCollections."""
    work, decode_failures = read_images(p, job, KIND)
    handler = TEEHandler(job.tee.reference, job.tee.extractor_id, job.handler)
    work, dlq = work | "Extract" >> RunInference(handler).with_exception_handling()
    lost = dlq.failed_inferences | "ExtractDeadLetters" >> beam.FlatMap(dead_letters_to_failures("extract"))
    rows = work | "MakeRow" >> beam.ParDo(MakeFeatureRow(job.tee)).with_outputs(FAILED, main="features")
    return commit_outputs(job, KIND, rows.features, [decode_failures, lost, rows[FAILED]])
