"""The feature extraction job's command line: the TEE's region features into Parquet.

    python -m pipelines.extract_features --runner DirectRunner --tee tiny --output OUT

Same inputs, decoding, failures, resuming and run.json as the labeling job
(pipelines.beam.jobrun); the pipeline is pipelines.beam.extraction.build. Every other flag is a
Beam pipeline option, so the same command runs on the DirectRunner and on Dataflow.
"""
from __future__ import annotations

import argparse
import logging
import sys

from pipelines.beam import jobrun
from pipelines.beam.extraction import KIND, FeatureJob, TEESpec, build
from pipelines.cli import UsageError


def parse_args(argv: list[str] | None, recorded: dict | None = None) -> tuple[argparse.Namespace, list[str]]:
    """App flags (dashes) are ours; everything else is a Beam pipeline option.

    `recorded`: options to start from instead of the defaults (a run's, for
    --retry-failures): only the flags on the command line replace them.
    """
    ap = argparse.ArgumentParser(
        prog="python -m pipelines.extract_features",
        description="Extract TEE region features (boxes, scores, labels, float16 vectors) from images "
                    "into Parquet (Apache Beam).",
        epilog="Unknown flags are Beam pipeline options, e.g. --runner DataflowRunner --project P "
               "--region R --temp_location gs://B/tmp --setup_file ./setup.py.",
    )
    jobrun.add_io_args(ap, verb="extract")
    te = ap.add_argument_group("extractor")
    te.add_argument("--tee", default=None,
                    help="a TEE directory written by TEE.save_pretrained (local, gs://, s3://), "
                         "or 'tiny' (a seeded random tee-tiny, for tests and smoke runs); required, except "
                         "with --retry-failures, which reruns with the run's own")
    te.add_argument("--cache-dir", default=None,
                    help="where 'tiny' is built (default $MINIVLM_CACHE or ~/.cache/minivlm)")
    jobrun.add_inference_args(ap, models="TEE")
    args, beam_args = ap.parse_known_args(argv, namespace=argparse.Namespace(**(recorded or {})))
    if args.tee is None and not args.retry_failures:
        ap.error("the following arguments are required: --tee")
    return args, beam_args


def load_spec(reference: str, cache_dir: str | None = None) -> TEESpec:
    """Load the TEE once on the launcher for its id and config; UsageError if it cannot be loaded."""
    from models.tee import load_tee

    try:
        model, provenance = load_tee(reference, cache_dir=cache_dir)
    except Exception as e:  # missing, not a saved TEE, unreadable bucket, bad config ...
        text = " ".join(str(e).split()) or type(e).__name__
        raise UsageError(f"--tee {reference}: cannot load a TEE ({text}); pass a directory written by "
                         "TEE.save_pretrained (local, gs://, s3://) or 'tiny'") from e
    return TEESpec(reference=reference, provenance=provenance, extractor_id=model.extractor_id(),
                   config=model.config.to_dict())


def make_job(args: argparse.Namespace) -> FeatureJob:
    """Validate flags and inputs into a FeatureJob; raises UsageError with one clear line."""
    common = jobrun.common_job_fields(args)
    return FeatureJob(**common, tee=load_spec(args.tee, args.cache_dir))


def describe(job: FeatureJob) -> dict:
    """The TEE, for run.json."""
    t = job.tee
    return {"tee": {"reference": t.reference, "provenance": t.provenance, "extractor_id": t.extractor_id,
                    "config": t.config}}


def check_resume(job: FeatureJob, previous: dict) -> None:
    """One output, one extractor: --resume with a different TEE would mix features."""
    before = (previous.get("tee") or {}).get("extractor_id")
    if before not in (None, job.tee.extractor_id):
        raise UsageError(f"cannot resume: {job.output} holds features of {before}, --tee {job.tee.reference} is "
                         f"{job.tee.extractor_id}; resume with the same TEE, or use another --output")


def count_outputs(output: str) -> dict:
    """Counts read back from the written features and failures."""
    return jobrun.count_outputs(output, KIND)


def run(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(argv)
    return jobrun.run_job(KIND, args, beam_args, make_job=make_job, build=build, describe=describe,
                          check_resume=check_resume, reparse=lambda recorded: parse_args(argv, recorded))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
