"""The labeling job's command line: teachers caption and tag images into Parquet.

    python -m pipelines.pseudo_label --runner DirectRunner --captioner tiny --tagger tiny --output OUT

The flags are pipelines.beam.flags.labeling_parser's; every other flag must be a Beam
pipeline option (checked, so a typo is an error, not a silently dropped flag), so the same
command runs on the DirectRunner and on Dataflow. The pipeline itself is built by
pipelines.beam.labeling.build; what every image job's launcher does (output preparation,
run.json, counts) is pipelines.beam.jobrun.

Beam, torch and transformers are imported inside the functions that use them, so that
`--help` and a mistyped flag answer at once.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from pipelines.beam import flags
from pipelines.cli import EXIT_USAGE, UsageError, check_device, usage_error  # noqa: F401  (part of this CLI's API)

if TYPE_CHECKING:
    from pipelines.beam.labeling import LabelJob, Teacher

PROG = "pseudo_label"  # = labeling.KIND.name, the prefix of every line it prints


def parse_args(argv: list[str] | None, recorded: dict | None = None) -> tuple[argparse.Namespace, list[str]]:
    """(our flags, Beam pipeline flags); UsageError for anything else.

    `recorded`: options to start from instead of the defaults (a run's, for
    --retry-failures): only the flags on the command line replace them.
    """
    args, beam_args = flags.labeling_parser(recorded).parse_with_beam(argv)
    check_device(args.device, local=False)  # its spelling now; this machine's devices once the runner is known
    if args.min_caption_similarity is not None:
        args.rerank = True  # run.json's options then say what ran
    return args, beam_args


def _teacher(stage: str, spec: str, params, args: argparse.Namespace) -> Teacher | None:
    """The teacher `spec` for `stage`, checked on this machine before any work: its
    reference, its family's prompt (captioner) and --dtype on the device it will get."""
    from pipelines.beam.labeling import Teacher
    from teachers import TeacherRef, caption_params_for, check_remote_code, describe
    from teachers.common import check_teacher_dtype

    if spec.lower() == "none":
        return None
    kind = "captioner" if stage == "caption" else "tagger"
    ref = TeacherRef(kind, spec)
    if kind == "captioner":  # a remote-code repo with a native port: named before it is looked up
        check_remote_code(spec, args.trust_remote_code)
    provenance = describe(ref, trust_remote_code=args.trust_remote_code)
    pinned = provenance if "@" in provenance and not ref.is_local_dir else spec
    if kind == "captioner":
        params = caption_params_for(pinned, params, cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code)
    check_teacher_dtype(TeacherRef(kind, pinned), _launch_device(args.device), args.dtype, cache_dir=args.cache_dir)
    return Teacher(stage=stage, spec=pinned, reference=spec, provenance=provenance, params=params, dtype=args.dtype)


def _launch_device(device: str) -> str:
    """The device `--device` gives on this machine, as it would on a worker like it: a
    launcher without a GPU checks --device auto as a CPU (GPU workers: --device cuda)."""
    from teachers.common import pick_device

    try:
        return pick_device(device)
    except RuntimeError:  # --device cuda on a launcher without a GPU: its workers have one
        return device


def make_job(args: argparse.Namespace) -> LabelJob:
    """Validate flags and inputs into a LabelJob; raises UsageError with one clear line."""
    from pipelines.beam import jobrun
    from pipelines.beam.labeling import LabelJob
    from pipelines.data import storage
    from teachers import CaptionParams, TagParams, TeacherUnavailable, load_vocab

    common = jobrun.common_job_fields(args)
    try:
        caption_params = CaptionParams(num_captions=args.num_captions, num_beams=args.num_beams,
                                       max_new_tokens=args.max_new_tokens, prompt=args.caption_prompt)
        tag_params = TagParams(threshold=args.tag_threshold, max_tags=args.max_tags, prompt=args.tag_prompt,
                               vocab=args.tag_vocab)
        captioner = _teacher("caption", args.captioner, caption_params, args)
        tagger = _teacher("tag", args.tagger, tag_params, args)
        if captioner is None and tagger is None:
            raise UsageError("--captioner none and --tagger none leave nothing to label")
        vocab = None
        if tagger is not None and not storage.is_remote(args.tag_vocab):
            vocab = tuple(load_vocab(args.tag_vocab))
        rerank = _rerank(args, captioner, tagger)
        return LabelJob(**common, captioner=captioner, tagger=tagger, vocab=vocab, rerank=rerank)
    except UsageError:
        raise
    except (ValueError, TeacherUnavailable, FileNotFoundError) as e:
        raise UsageError(str(e)) from e


def _rerank(args: argparse.Namespace, captioner: Teacher | None, tagger: Teacher | None):
    """--rerank / --min-caption-similarity -> RerankParams, or None when off."""
    from teachers import RerankParams, similarity_measure

    if not args.rerank:
        return None
    missing = [f"--{kind} none" for kind, t in (("captioner", captioner), ("tagger", tagger)) if t is None]
    if missing:
        flag = "--min-caption-similarity" if args.min_caption_similarity is not None else "--rerank"
        raise UsageError(f"{flag} scores the captioner's captions with the tagger's image-text model: "
                         f"it needs both teachers, not {' and '.join(missing)}")
    # The measure (and so the bound's range) depends on the tagger's model family.
    measure = similarity_measure(tagger.spec, cache_dir=args.cache_dir)
    return RerankParams(measure=measure, min_similarity=args.min_caption_similarity)


def describe(job: LabelJob) -> dict:
    """The teachers (and caption reranking), for run.json. What each worker ran them on
    (device, dtype, attention) depends on its hardware: every row records it."""
    vocab_sha256 = job.teacher_params().get("tag", {}).get("vocab_sha256")  # None: a remote vocabulary
    teachers = {
        kind: (None if t is None else {"reference": t.reference, "model": t.provenance, "params": t.params.to_dict(),
                                       "requested": t.requested()})
        for kind, t in (("captioner", job.captioner), ("tagger", job.tagger))
    }
    if teachers["tagger"] is not None and vocab_sha256 is not None:
        teachers["tagger"]["vocab_sha256"] = vocab_sha256  # the content, whatever the path: --resume compares it
    return {"teachers": teachers, "rerank": job.rerank.to_dict() if job.rerank is not None else {"enabled": False}}


def models_of(record: dict) -> dict:
    """What made a run's rows, as --resume compares it (a run record or describe()'s dict):
    each teacher as it resolved (a hub id pinned to its commit; `tiny` and `tiny:blip` alike)
    and the tag vocabulary's content. The flags themselves are compared by jobrun."""
    teachers = record.get("teachers")
    if not isinstance(teachers, dict):
        return {}  # a record of another release: nothing to compare
    found = {f"the {kind}": (teachers.get(kind) or {}).get("model", "none") for kind in ("captioner", "tagger")}
    tagger = teachers.get("tagger") or {}
    if "vocab" in tagger.get("params", {}):  # the file as given; the bundled one by name, not by its path here
        found["the tag vocabulary"] = tagger["params"]["vocab"]
    if "vocab_sha256" in tagger:  # its content: not recorded by older runs, nor for a remote file
        found["the tag vocabulary's sha256"] = tagger["vocab_sha256"]
    return found


def count_outputs(output: str) -> dict:
    """Counts read back from the written labels and failures."""
    from pipelines.beam import jobrun
    from pipelines.beam.labeling import KIND

    return jobrun.count_outputs(output, KIND)


def run(argv: list[str] | None = None) -> int:
    try:
        args, beam_args = parse_args(argv)
    except UsageError as e:  # before anything heavy is imported, before --output is looked at
        return usage_error(PROG, e)
    if args.trust_remote_code:
        print(f"{PROG}: warning: --trust-remote-code lets model repositories run their own Python code "
              "on every worker; use it only for models you trust", file=sys.stderr)
    from pipelines.beam import jobrun
    from pipelines.beam.labeling import KIND, build

    return jobrun.run_job(KIND, args, beam_args, make_job=make_job, build=build, describe=describe,
                          models_of=models_of, reparse=lambda recorded: parse_args(argv, recorded))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
