"""COCO-style caption evaluation of a fine-tuned student, and its agreement with the teacher.

    python -m pipelines.evaluate_captions --checkpoint CKPT2 --references captions_val.json \\
        --images IMAGE_ROOT [--teacher-labels OUT/labels] [--output EVAL_DIR]

The student captions every image of the references file (IMAGE_ROOT/<file_name>) from its
pixels (TEE -> fusion -> beam search); BLEU-1..4, METEOR, ROUGE-L and CIDEr-D
(pycocoevalcap, PTB tokenizer; pipelines.eval.captions) are computed against the
references. With --teacher-labels (a labeling job's labels table for the same images),
two more rows: the student against the teacher's pseudo captions (how much of the
teacher the student kept) and the teacher's best caption against the references.
A table goes to stdout; EVAL_DIR gets caption_eval.json and predictions.jsonl.
Images that cannot be read are listed on stderr and left out of the scores (exit 1).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from pipelines.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipelines.data import storage


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m pipelines.evaluate_captions", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a pipelines.finetune_caption output")
    ap.add_argument("--references", required=True, help="COCO captions JSON (images + annotations)")
    ap.add_argument("--images", required=True, help="folder holding the references' file_name paths (local, gs://)")
    ap.add_argument("--teacher-labels", help="labels table of the same images: adds student-vs-teacher rows")
    ap.add_argument("--output", help="write caption_eval.json and predictions.jsonl here")
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--max-length", type=int, default=20)
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N images (by id)")
    ap.add_argument("--no-meteor", action="store_true", help="skip METEOR (its Java process is the slow part)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    for name in ("beam_size", "max_length", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be >= 1")
    return args


def caption_files(captioner, paths: dict[str, str], *, beam_size: int, max_length: int, greedy: bool,
                  batch_size: int) -> tuple[dict[str, dict], dict[str, str]]:
    """{image id: path} -> ({id: {caption, score, tags}}, {id: why it failed})."""
    from pipelines.infer.captions import caption_paths

    out, failed = {}, {}
    found = caption_paths(captioner, paths.values(), beam_size=beam_size, max_length=max_length, greedy=greedy,
                          batch_size=batch_size)
    for image_id, (_, c, problem) in zip(paths, found):
        if problem is not None:
            failed[image_id] = problem
        else:
            out[image_id] = {"caption": c.text, "score": c.score, "tags": list(c.tags)}
    return out, failed


def evaluate(captioner, references: str, images: str, *, teacher_labels: str | None = None, beam_size: int = 5,
             max_length: int = 20, greedy: bool = False, batch_size: int = 16, limit: int | None = None,
             meteor: bool = True) -> dict:
    """The whole evaluation as data: {"results": {row name: metrics}, "predictions", "failed", ...}."""
    from pipelines.data.coco import read_coco_references
    from pipelines.eval.captions import score_captions, teacher_references

    files, refs = read_coco_references(references)
    ids = sorted(refs)[:limit] if limit else sorted(refs)
    paths = {i: storage.join(images, files[i]) for i in ids}
    preds, failed = caption_files(captioner, paths, beam_size=beam_size, max_length=max_length, greedy=greedy,
                                  batch_size=batch_size)
    if not preds:
        raise ValueError(f"no image of {references} could be captioned (first problems: "
                         f"{list(failed.items())[:3]})")
    results = {"student vs references": score_captions({i: refs[i] for i in preds},
                                                        {i: p["caption"] for i, p in preds.items()},
                                                        meteor=meteor)["metrics"]}
    teacher_count = 0
    if teacher_labels:
        # a labels row's image_id is the file stem for file inputs, or the manifest's id
        keys = {i: (i, os.path.splitext(os.path.basename(files[i]))[0]) for i in preds}
        found = teacher_references(teacher_labels, {k for pair in keys.values() for k in pair})
        teacher = {i: found.get(a) or found.get(b) for i, (a, b) in keys.items()}
        teacher = {i: t for i, t in teacher.items() if t}
        teacher_count = len(teacher)
        if teacher:
            results["student vs teacher"] = score_captions(
                teacher, {i: preds[i]["caption"] for i in teacher}, meteor=meteor)["metrics"]
            results["teacher vs references"] = score_captions(
                {i: refs[i] for i in teacher}, {i: t[0] for i, t in teacher.items()}, meteor=meteor)["metrics"]
    return {"results": results, "images": len(ids), "captioned": len(preds), "failed": failed,
            "teacher_images": teacher_count, "predictions": preds,
            "decoding": {"beam_size": 1 if greedy else beam_size, "greedy": greedy, "max_length": max_length}}


def run(argv: list[str] | None = None) -> int:
    from models.captioning import load_student_captioner
    from pipelines.eval.captions import format_table

    args = parse_args(argv)
    try:
        captioner = load_student_captioner(args.checkpoint, device=args.device)
        if captioner.model.tee is None:
            raise ValueError(f"{args.checkpoint} has no TEE: it cannot caption images")
        report = evaluate(captioner, args.references, args.images, teacher_labels=args.teacher_labels,
                          beam_size=args.beam_size, max_length=args.max_length, greedy=args.greedy,
                          batch_size=args.batch_size, limit=args.limit, meteor=not args.no_meteor)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # RuntimeError: Java missing or METEOR failed
        print(f"evaluate_captions: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    for i, problem in report["failed"].items():
        print(f"evaluate_captions: image {i}: {problem}", file=sys.stderr)
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


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
