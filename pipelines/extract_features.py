"""The feature extraction job's command line: the TEE's region features into Parquet.

    python -m pipelines.extract_features --runner DirectRunner --tee tiny --output OUT

Same inputs, decoding, failures, resuming and run.json as the labeling job
(pipelines.beam.jobrun); the flags are pipelines.beam.flags.features_parser's, the pipeline
is pipelines.beam.extraction.build. Every other flag must be a Beam pipeline option
(checked), so the same command runs on the DirectRunner and on Dataflow.

Beam and torch are imported inside the functions that use them, so that `--help` and a
mistyped flag answer at once.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from pipelines.beam import flags
from pipelines.cli import UsageError, check_device, usage_error

if TYPE_CHECKING:
    from pipelines.beam.extraction import FeatureJob, TEESpec

PROG = "extract_features"  # = extraction.KIND.name, the prefix of every line it prints
A_TEE = "a TEE (region feature extractor)"  # what pipelines.data.kinds calls a saved TEE
UNKNOWN_MODEL = "a model directory"  # ... and a config.json it cannot place (perhaps a broken TEE)


def parse_args(argv: list[str] | None, recorded: dict | None = None) -> tuple[argparse.Namespace, list[str]]:
    """(our flags, Beam pipeline flags); UsageError for anything else.

    `recorded`: options to start from instead of the defaults (a run's, for
    --retry-failures): only the flags on the command line replace them.
    """
    args, beam_args = flags.features_parser(recorded).parse_with_beam(argv)
    check_device(args.device, local=False)  # its spelling now; this machine's devices once the runner is known
    if args.tee is None and not args.retry_failures:
        raise UsageError("the following arguments are required: --tee")
    return args, beam_args


def load_spec(reference: str, cache_dir: str | None = None) -> TEESpec:
    """Load the TEE once on the launcher for its id and config; UsageError if it cannot be loaded."""
    check_is_a_tee(reference)
    from models.tee import load_tee
    from pipelines.beam.extraction import TEESpec

    try:
        model, provenance = load_tee(reference, cache_dir=cache_dir)
    except Exception as e:  # missing, not a saved TEE, unreadable bucket, bad config ...
        text = " ".join(str(e).split()) or type(e).__name__
        raise UsageError(f"--tee {reference}: cannot load a TEE ({text}); pass a directory written by "
                         "TEE.save_pretrained (local, gs://, s3://) or 'tiny'") from e
    return TEESpec(reference=reference, provenance=provenance, extractor_id=model.extractor_id(),
                   config=model.config.to_dict())


def check_is_a_tee(reference: str) -> None:
    """Refuse a --tee folder that is another of the project's kinds (a student, a training run,
    a labeling run), named as what it is: its small files tell, before torch loads anything."""
    from pipelines.data.kinds import what_is

    if reference == "tiny" or reference.startswith("tiny:"):  # built, not read: no folder to look at
        return
    kind = what_is(reference)
    if kind in (None, A_TEE, UNKNOWN_MODEL):
        return  # a TEE, or nothing kinds can name: loading it says what is wrong
    hint = f" (did you mean --tee {reference.rstrip('/')}/model?)" if A_TEE in kind else ""
    raise UsageError(f"--tee {reference} is {kind}, not a TEE{hint}")


def make_job(args: argparse.Namespace) -> FeatureJob:
    """Validate flags and inputs into a FeatureJob; raises UsageError with one clear line."""
    from pipelines.beam import jobrun
    from pipelines.beam.extraction import FeatureJob

    common = jobrun.common_job_fields(args)
    return FeatureJob(**common, tee=load_spec(args.tee, args.cache_dir))


def describe(job: FeatureJob) -> dict:
    """The TEE, for run.json."""
    t = job.tee
    return {"tee": {"reference": t.reference, "provenance": t.provenance, "extractor_id": t.extractor_id,
                    "config": t.config}}


def models_of(record: dict) -> dict:
    """What made a run's rows, as --resume compares it (a run record or describe()'s dict): the
    TEE by its extractor id (its weights and config), however --tee spells it. The flags that
    change rows (--decode-size, --max-pixels, ...) are compared by jobrun."""
    extractor = (record.get("tee") or {}).get("extractor_id")
    return {} if extractor is None else {"the TEE": extractor}


def count_outputs(output: str) -> dict:
    """Counts read back from the written features and failures."""
    from pipelines.beam import jobrun
    from pipelines.beam.extraction import KIND

    return jobrun.count_outputs(output, KIND)


def run(argv: list[str] | None = None) -> int:
    try:
        args, beam_args = parse_args(argv)
    except UsageError as e:  # before anything heavy is imported, before --output is looked at
        return usage_error(PROG, e)
    from pipelines.beam import jobrun
    from pipelines.beam.extraction import KIND, build

    return jobrun.run_job(KIND, args, beam_args, make_job=make_job, build=build, describe=describe,
                          models_of=models_of, reparse=lambda recorded: parse_args(argv, recorded))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
