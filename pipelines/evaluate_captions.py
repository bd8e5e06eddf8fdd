"""COCO-style caption metrics of a fine-tuned student, or of a labeling run's pseudo captions alone.

    python -m pipelines.evaluate_captions --checkpoint CKPT2 --references captions_val.json \\
        --images IMAGE_ROOT [--teacher-labels OUT/labels] [--output EVAL_DIR]
    python -m pipelines.evaluate_captions --teacher-labels OUT/labels \\
        --references open_images_validation_localized_narratives.jsonl [--output EVAL_DIR]

With --checkpoint, the student captions every image of a COCO references file
(IMAGE_ROOT/<file_name>) from its pixels (TEE -> fusion -> beam search); BLEU-1..4,
METEOR, ROUGE-L and CIDEr-D (pycocoevalcap, PTB tokenizer; pipelines.eval.captions) are
computed against the references. With --teacher-labels too (a labeling job's labels
table for the same images), two more rows: the student against the teacher's pseudo
captions (how much of the teacher the student kept) and the teacher's best caption
against the references. A table goes to stdout; EVAL_DIR gets caption_eval.json and
predictions.jsonl. Images that cannot be read are listed on stderr and left out of the
scores (exit 1).

With --teacher-labels and no --checkpoint, no student is involved: the teacher's best
caption of every labeled image that has references is scored against them, and the
words per caption of both sides are summarised. The references are a COCO captions JSON
or Localized Narratives JSON Lines (a file or a glob of shards, streamed: only the
labeled images' narratives are kept; malformed lines are counted and skipped). EVAL_DIR
gets caption_eval.json and teacher_captions.jsonl (per-image scores).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

# Only light imports up here: --help and flag errors must not wait for torch or pycocoevalcap.
from pipelines.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandParser,
    UsageError,
    add_decoding_flags,
    check_device,
    usage_error,
)
from pipelines.data import storage

PROG = "evaluate_captions"
# The student's decoding (and its images): flags that mean something only with --checkpoint.
STUDENT_FLAGS = ("images", "num_beams", "max_new_tokens", "greedy", "batch_size", "threads", "device")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parser() -> CommandParser:
    ap = CommandParser(prog="python -m pipelines.evaluate_captions", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a pipelines.finetune_caption output: scores the student (needs --images)")
    ap.add_argument("--references", required=True,
                    help="COCO captions JSON (images + annotations), or Localized Narratives JSON Lines "
                         "(a file or a glob of shards; teacher-only scoring)")
    ap.add_argument("--references-format", choices=("auto", "coco", "narratives"), default="auto",
                    help="auto: .jsonl is narratives, .json COCO, else by the first line")
    ap.add_argument("--images", help="folder holding the references' file_name paths (local, gs://); with --checkpoint")
    ap.add_argument("--teacher-labels", help="labels table of the same images: with --checkpoint adds "
                                             "student-vs-teacher rows; alone scores the teacher's captions")
    ap.add_argument("--output", help="write caption_eval.json and predictions.jsonl (or teacher_captions.jsonl) here")
    add_decoding_flags(ap)
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N images (by id)")
    ap.add_argument("--no-meteor", action="store_true", help="skip METEOR (its Java process is the slow part)")
    ap.add_argument("--quiet", action="store_true", help="no progress line on stderr while the student captions")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA if present)")
    return ap


def parse_args(argv) -> argparse.Namespace:
    ap = parser()
    # argparse fills in a default only for what the namespace lacks: starting the student's flags
    # at None tells "given" from "left at its default", so one given without --checkpoint (where
    # nothing decodes) is refused rather than ignored, while --help still shows the defaults.
    args = ap.parse_args(argv, argparse.Namespace(**dict.fromkeys(STUDENT_FLAGS)))
    check_flags(args)
    for name in STUDENT_FLAGS:
        if getattr(args, name) is None:
            setattr(args, name, ap.get_default(name))
    if args.checkpoint is not None:
        check_device(args.device)
    return args


def check_flags(args) -> None:
    """Refuse flag combinations that make no sense, one line each (UsageError), before any work."""
    if args.checkpoint is None and args.teacher_labels is None:
        raise UsageError("nothing to score: give --checkpoint and --images (the student), "
                         "or --teacher-labels alone (the teacher's captions)")
    if args.checkpoint is not None and args.images is None:
        raise UsageError("--checkpoint needs --images, the folder of the references' file_name paths")
    if args.checkpoint is None:
        given = [_flag(n) for n in STUDENT_FLAGS if getattr(args, n) is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(f"{', '.join(given)} only {verb} with --checkpoint (the student's images and decoding); "
                             "--teacher-labels alone scores the teacher's captions")
    for name in ("num_beams", "max_new_tokens", "batch_size", "threads", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"{_flag(name)} must be >= 1, not {value}")


def check_inputs(args) -> None:
    """A checkpoint or labels table of the wrong kind (a TEE, a labeling run folder), named."""
    from pipelines.eval.inputs import labels_table_problem
    from pipelines.infer.captions import checkpoint_problem

    problem = ((args.checkpoint and checkpoint_problem("--checkpoint", args.checkpoint))
               or (args.teacher_labels and labels_table_problem("--teacher-labels", args.teacher_labels)))
    if problem:
        raise UsageError(problem)


def references_format(args) -> str:
    """The references' format, by the flag or detected; refuses narratives for the student."""
    from pipelines.data.narratives import detect_format, narrative_files

    found = detect_format(args.references) if args.references_format == "auto" else args.references_format
    if found == "narratives" and args.checkpoint is not None:
        # Narratives name no image files for the student to read: they score labeling runs.
        raise UsageError(f"--references {args.references} is Localized Narratives: scoring the student needs COCO "
                         "references (images + file names); narratives score --teacher-labels alone")
    if found == "narratives":
        narrative_files(args.references)  # missing: one line now, not after the labels table was read
    return found


def caption_files(captioner, paths: dict[str, str], *, beam_size: int, max_length: int, greedy: bool,
                  batch_size: int, quiet: bool = True) -> tuple[dict[str, dict], dict[str, str]]:
    """{image id: path} -> ({id: {caption, score, tags}}, {id: why it failed}); a progress line unless quiet."""
    from pipelines.cli.progress import Progress
    from pipelines.infer.captions import caption_paths

    out, failed = {}, {}
    found = caption_paths(captioner, paths.values(), beam_size=beam_size, max_length=max_length, greedy=greedy,
                          batch_size=batch_size)
    progress = Progress(PROG, total=len(paths), quiet=quiet)
    for image_id, (_, c, problem) in zip(paths, found):
        progress.add()
        if problem is not None:
            failed[image_id] = problem
        else:
            out[image_id] = {"caption": c.text, "score": c.score, "tags": list(c.tags)}
    progress.close()
    return out, failed


def evaluate(captioner, references: str, images: str, *, teacher_labels: str | None = None, beam_size: int = 5,
             max_length: int = 20, greedy: bool = False, batch_size: int = 8, limit: int | None = None,
             meteor: bool = True, quiet: bool = True) -> dict:
    """The whole evaluation as data: {"results": {row name: metrics}, "predictions", "failed", ...}."""
    from pipelines.data.coco import read_coco_references
    from pipelines.eval.captions import score_captions

    files, refs = read_coco_references(references)
    ids = sorted(refs)[:limit] if limit else sorted(refs)
    paths = {i: storage.join(images, files[i]) for i in ids}
    preds, failed = caption_files(captioner, paths, beam_size=beam_size, max_length=max_length, greedy=greedy,
                                  batch_size=batch_size, quiet=quiet)
    if not preds:
        raise ValueError(f"no image of {references} could be captioned (first problems: "
                         f"{list(failed.items())[:3]})")
    results = {"student vs references": score_captions({i: refs[i] for i in preds},
                                                        {i: p["caption"] for i, p in preds.items()},
                                                        meteor=meteor)["metrics"]}
    teacher_count = 0
    if teacher_labels:
        teacher = coco_teacher_captions(teacher_labels, files, preds)
        teacher_count = len(teacher)
        if teacher:
            results["student vs teacher"] = score_captions(
                teacher, {i: preds[i]["caption"] for i in teacher}, meteor=meteor)["metrics"]
            results["teacher vs references"] = score_captions(
                {i: refs[i] for i in teacher}, {i: t[0] for i, t in teacher.items()}, meteor=meteor)["metrics"]
    return {"mode": "student", "results": results, "images": len(ids), "captioned": len(preds), "failed": failed,
            "teacher_images": teacher_count, "predictions": preds,
            "decoding": {"beam_size": 1 if greedy else beam_size, "greedy": greedy, "max_length": max_length}}


def coco_teacher_captions(teacher_labels: str, files: dict[str, str], ids) -> dict[str, list[str]]:
    """The teacher's captions (best first) of the given COCO image ids, for those the labels table has."""
    from pipelines.eval.captions import teacher_references

    # a labels row's image_id is the file stem for file inputs, or the manifest's id
    keys = {i: (i, os.path.splitext(os.path.basename(files[i]))[0]) for i in ids}
    found = teacher_references(teacher_labels, {k for pair in keys.values() for k in pair})
    teacher = {i: found.get(a) or found.get(b) for i, (a, b) in keys.items()}
    return {i: t for i, t in teacher.items() if t}


def _teacher_and_references(references: str, references_format: str, teacher_labels: str):
    """({image id: teacher's best caption}, {image id: references}, how the references read)."""
    if references_format == "coco":
        from pipelines.data.coco import read_coco_references

        files, refs = read_coco_references(references)
        teacher = coco_teacher_captions(teacher_labels, files, refs)
        return {i: t[0] for i, t in teacher.items()}, refs, None
    from pipelines.data.narratives import read_narratives
    from pipelines.eval.captions import teacher_references

    # The labeled images first: the narratives file is far larger than one labeling run,
    # and only the labeled images' narratives are worth keeping from it.
    teacher = {i: t[0] for i, t in teacher_references(teacher_labels, None, top=1).items()}
    read = read_narratives(references, set(teacher))
    counts = {"lines": read.lines, "narratives": read.kept, "malformed": read.malformed,
              "malformed_examples": read.examples}
    return teacher, read.captions, counts


def _few(ids, k: int = 3) -> str:
    return ", ".join(repr(i) for i in sorted(ids)[:k])


def evaluate_teacher(references: str, teacher_labels: str, *, references_format: str = "coco",
                     limit: int | None = None, meteor: bool = True) -> dict:
    """The teacher's best caption per labeled image against that image's references, no student.

    {"results": {"teacher vs references": metrics}, "lengths": {"teacher", "references":
    length_stats}, "per_image": {id: {caption, references, scores}}, counts...}. Images
    with a teacher caption but no reference (or the reverse) are counted, not scored.
    """
    from pipelines.eval.captions import length_stats, score_captions

    teacher, refs, read = _teacher_and_references(references, references_format, teacher_labels)
    both = sorted(set(teacher) & set(refs))
    if not both:
        where = f"{read['lines']} lines read" if read else f"reference ids such as {_few(refs)}"
        raise ValueError(f"no image has both a teacher caption in {teacher_labels} (ids such as {_few(teacher)}) "
                         f"and a reference in {references} ({where}): are they the same images, with the same ids?")
    counts = {"teacher_images": len(teacher), "reference_images": len(refs),
              "without_references": len(teacher) - len(both), "without_teacher": len(refs) - len(both)}
    ids = both[:limit] if limit else both
    refs = {i: refs[i] for i in ids}
    preds = {i: teacher[i] for i in ids}
    scored = score_captions(refs, preds, meteor=meteor)
    per_image = {i: {"caption": preds[i], "references": len(refs[i]), "scores": scored["per_image"][i]} for i in ids}
    return {"mode": "teacher", "results": {"teacher vs references": scored["metrics"]},
            "lengths": {"teacher": length_stats(preds.values()),
                        "references": length_stats(r for i in ids for r in refs[i])},
            "images": len(ids), **counts, "references_format": references_format, "references_read": read,
            "per_image": per_image}


def run(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        check_inputs(args)
        fmt = references_format(args)
    except (UsageError, OSError) as e:  # OSError: references that cannot be opened to detect their format
        return usage_error(PROG, e)
    if args.checkpoint is None:
        return run_teacher(args, fmt)
    return run_student(args)


def run_student(args) -> int:
    from models.captioning import load_student_captioner
    from models.threads import use_threads
    from pipelines.eval.captions import format_table

    if args.threads:
        use_threads(args.threads)
    try:
        captioner = load_student_captioner(args.checkpoint, device=args.device)
        if captioner.model.tee is None:
            raise ValueError(f"{args.checkpoint} has no TEE: it cannot caption images")
        report = evaluate(captioner, args.references, args.images, teacher_labels=args.teacher_labels,
                          beam_size=args.num_beams, max_length=args.max_new_tokens, greedy=args.greedy,
                          batch_size=args.batch_size, limit=args.limit, meteor=not args.no_meteor,
                          quiet=args.quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # RuntimeError: Java missing or METEOR failed
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    for i, problem in report["failed"].items():
        print(f"{PROG}: image {i}: {problem}", file=sys.stderr)
    print(format_table(report["results"]))
    print(f"\n{report['captioned']} of {report['images']} images captioned"
          + (f", {report['teacher_images']} with teacher captions" if args.teacher_labels else "")
          + f"; checkpoint {args.checkpoint}")
    if args.output:
        summary = {k: v for k, v in report.items() if k != "predictions"}
        summary.update(checkpoint=args.checkpoint, references=args.references, images_root=args.images,
                       teacher_labels=args.teacher_labels,
                       student_init="tiny-random" if captioner.config.init == "tiny" else captioner.config.init)
        storage.write_text(storage.join(args.output, "caption_eval.json"), json.dumps(summary, indent=2))
        storage.write_text(storage.join(args.output, "predictions.jsonl"), "".join(
            json.dumps({"image_id": i, **p}) + "\n" for i, p in report["predictions"].items()))
    return EXIT_FAILED if report["failed"] else EXIT_OK


def _teacher_summary(report: dict) -> str:
    parts = [f"{report['images']} images scored ({report['references_format']} references)"]
    if report["without_references"]:
        parts.append(f"{report['without_references']} of {report['teacher_images']} images with a teacher caption "
                     "have no reference")
    if report["without_teacher"]:
        parts.append(f"{report['without_teacher']} of {report['reference_images']} reference images have no "
                     "teacher caption")
    read = report["references_read"]
    if read and read["malformed"]:
        parts.append(f"{read['malformed']} malformed of {read['lines']} reference lines skipped")
    return "; ".join(parts)


def run_teacher(args, fmt: str) -> int:
    from pipelines.eval.captions import format_lengths, format_table

    try:
        report = evaluate_teacher(args.references, args.teacher_labels, references_format=fmt, limit=args.limit,
                                  meteor=not args.no_meteor)
    except (ValueError, OSError, RuntimeError) as e:  # RuntimeError: Java missing or METEOR failed
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(format_table(report["results"]))
    print()
    print(format_lengths(report["lengths"]))
    print(f"\n{_teacher_summary(report)}; teacher labels {args.teacher_labels}")
    if args.output:
        summary = {k: v for k, v in report.items() if k != "per_image"}
        summary.update(references=args.references, teacher_labels=args.teacher_labels, limit=args.limit)
        storage.write_text(storage.join(args.output, "caption_eval.json"), json.dumps(summary, indent=2))
        storage.write_text(storage.join(args.output, "teacher_captions.jsonl"), "".join(
            json.dumps({"image_id": i, **p}) + "\n" for i, p in report["per_image"].items()))
    return EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
