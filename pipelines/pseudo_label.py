"""The labeling job's command line: teachers caption and tag images into Parquet.

    python -m pipelines.pseudo_label --runner DirectRunner --captioner tiny --tagger tiny --output OUT

App flags (with dashes) are parsed here; every other flag is a Beam pipeline option,
so the same command runs on the DirectRunner and on Dataflow. The pipeline itself is
built by pipelines.beam.labeling.build; what every image job's launcher does (output
preparation, run.json, counts) is pipelines.beam.jobrun.
"""
from __future__ import annotations

import argparse
import logging
import sys

from pipelines.beam import jobrun
from pipelines.beam.labeling import KIND, LabelJob, Teacher, build
from pipelines.cli import EXIT_USAGE, UsageError  # noqa: F401  (part of this CLI's API)
from pipelines.data import storage


def parse_args(argv: list[str] | None, recorded: dict | None = None) -> tuple[argparse.Namespace, list[str]]:
    """App flags (dashes) are ours; everything else is a Beam pipeline option.

    `recorded`: options to start from instead of the defaults (a run's, for
    --retry-failures): only the flags on the command line replace them.
    """
    from teachers import DEFAULT_CAPTIONER, DEFAULT_TAGGER, DEFAULT_VOCAB
    from teachers.common import DTYPES

    ap = argparse.ArgumentParser(
        prog="python -m pipelines.pseudo_label",
        description="Label images with teacher captioner and tagger models into Parquet (Apache Beam).",
        epilog="Unknown flags are Beam pipeline options, e.g. --runner DataflowRunner --project P "
               "--region R --temp_location gs://B/tmp --setup_file ./setup.py.",
    )
    jobrun.add_io_args(ap, verb="label")

    te = ap.add_argument_group("teachers")
    te.add_argument("--captioner", default=DEFAULT_CAPTIONER,
                    help="hub id[@revision], local dir, gs:// or s3:// dir, 'tiny' / 'tiny:git', or 'none'")
    te.add_argument("--tagger", default=DEFAULT_TAGGER,
                    help="hub id[@revision], local dir, gs:// or s3:// dir, 'tiny' / 'tiny:clip', or 'none'")
    te.add_argument("--num-captions", type=int, default=3)
    te.add_argument("--num-beams", type=int, default=5)
    te.add_argument("--max-new-tokens", type=int, default=30)
    te.add_argument("--caption-prompt", "--prompt", dest="caption_prompt", default=None,
                    help="the captioner's prompt: text a captioner continues (BLIP, BLIP-2, GIT; not part of the "
                         "caption), a Florence-2 task token (default <CAPTION>; <DETAILED_CAPTION>, "
                         "<MORE_DETAILED_CAPTION>), or the instruction a chat VLM (SmolVLM, Qwen2-VL) needs, e.g. "
                         "'Describe this image in one sentence.'")
    te.add_argument("--tag-vocab", default=DEFAULT_VOCAB,
                    help="LabelName,DisplayName CSV (Open Images class descriptions format)")
    te.add_argument("--tag-threshold", type=float, default=0.1)
    te.add_argument("--max-tags", type=int, default=10)
    te.add_argument("--tag-prompt", default="a photo of a {}.")
    te.add_argument("--rerank", action="store_true",
                    help="score every caption against its image with the tagger's image-text model, store it as "
                         "the caption's similarity and put the best first (SigLIP: its calibrated sigmoid "
                         "probability in [0, 1]; CLIP: the cosine similarity in [-1, 1]). Needs both teachers")
    te.add_argument("--min-caption-similarity", type=float, default=None, metavar="X",
                    help="implies --rerank: drop captions whose similarity is below X; an image left with no "
                         "caption is not labeled but written to failures/ (stage 'rerank', error_type "
                         "'LowCaptionSimilarity', the message names its best similarity and X)")
    te.add_argument("--dtype", default="auto", choices=DTYPES,
                    help="the teachers' precision. auto: bfloat16 on GPUs that run it natively (A100, L4, H100), "
                         "float16 on older GPUs (T4, V100), float32 on CPUs. bfloat16/float16 on a CPU only for the "
                         "families verified there. Attention is PyTorch's SDPA where the model supports it, else "
                         "eager; rows record what ran (teacher_params.<stage>.runtime)")
    te.add_argument("--trust-remote-code", action="store_true",
                    help="allow model code from the hub (off by default: it runs arbitrary code)")
    te.add_argument("--cache-dir", default=None, help="teacher cache (default $MINIVLM_CACHE or ~/.cache/minivlm)")

    jobrun.add_inference_args(ap, models="teachers")
    args, beam_args = ap.parse_known_args(argv, namespace=argparse.Namespace(**(recorded or {})))
    if args.min_caption_similarity is not None:
        args.rerank = True  # run.json's options then say what ran
    return args, beam_args


def _teacher(stage: str, spec: str, params, args: argparse.Namespace) -> Teacher | None:
    """The teacher `spec` for `stage`, checked on this machine before any work: its
    reference, its family's prompt (captioner) and --dtype on the device it will get."""
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
    return {"teachers": {
        kind: (None if t is None else {"reference": t.reference, "model": t.provenance, "params": t.params.to_dict(),
                                       "requested": t.requested()})
        for kind, t in (("captioner", job.captioner), ("tagger", job.tagger))
    }, "rerank": job.rerank.to_dict() if job.rerank is not None else {"enabled": False}}


def count_outputs(output: str) -> dict:
    """Counts read back from the written labels and failures."""
    return jobrun.count_outputs(output, KIND)


def run(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(argv)
    if args.trust_remote_code:
        print("pseudo_label: warning: --trust-remote-code lets model repositories run their own Python code "
              "on every worker; use it only for models you trust", file=sys.stderr)
    return jobrun.run_job(KIND, args, beam_args, make_job=make_job, build=build, describe=describe,
                          reparse=lambda recorded: parse_args(argv, recorded))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
