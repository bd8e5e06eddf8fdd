"""Precision, recall and F1 of a labeling run's tags against Open Images human-verified image-level labels.

    python -m pipelines.evaluate_tags --labels OUT/labels \\
        --human-labels oidv7-train-annotations-human-imagelabels.csv \\
        --classes oidv7-class-descriptions.csv [--output DIR] [--tag-threshold T]

Only images in both the labels and the human labels count, and for each of them only
the classes a human verified for that image: a tag on a verified-positive class is a
true positive, on a verified-negative class a false positive; a verified-positive class
the teacher did not tag (at the threshold) is a false negative. Tags on classes nobody
verified for the image are counted (`unverified_tags`) but not scored: Open Images
verified only some classes per image, so an unverified tag is not known to be wrong.
Tags are matched by `label` (the MID), so the tagger's vocabulary must use Open Images
MIDs for anything to match.

The threshold defaults to the run's own (teacher_params tag.threshold). Tags below it
were never stored, so the precision-recall curve starts there, not at 0.

Memory grows with the labels (their tags and the human labels of their images), not
with the human-labels file, which is streamed (the full Open Images train file has
about 100M rows).
"""
from __future__ import annotations

import argparse
import json
import sys

# Only light imports up here: --help and flag errors need no pyarrow (pipelines.eval.tags is
# imported in run()).
from pipelines.cli import CommandParser, UsageError, usage_error
from pipelines.data import storage

PROG = "evaluate_tags"


def score_text(x: float | None) -> str:
    """A precision, recall or F1 for a table: "-" where it is undefined (no predictions or no positives)."""
    return "-" if x is None else f"{x:.4f}"


def format_table(result: dict, top: int = 10) -> str:
    o = result["overall"]
    lines = [(f"tags at threshold {result['threshold']:g} on {o['images']} images with human labels "
              f"(labeled images without any, not counted: {result['images_without_human_labels']})"),
             (f"precision {score_text(o['precision'])}  recall {score_text(o['recall'])}  F1 {score_text(o['f1'])}  "
              f"(TP {o['tp']}, FP {o['fp']}, FN {o['fn']}); macro-F1 {score_text(result['macro_f1'])}"),
             (f"tags on classes nobody verified for their image, not scored (neither right nor wrong): "
              f"{result['unverified_tags']}"), ""]
    ranked = sorted((r for r in result["per_class"] if r["tp"] + r["fn"] > 0),
                    key=lambda r: (-r["f1"], -(r["tp"] + r["fn"]), r["label"]))
    shown = ranked if len(ranked) <= 2 * top else [*ranked[:top], None, *ranked[-top:]]
    lines += ["| class | label | precision | recall | F1 | TP | FP | FN |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in shown:
        if r is None:
            lines.append(f"| ... {len(ranked) - 2 * top} more classes | | | | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['label']} | {score_text(r['precision'])} | {score_text(r['recall'])} | "
                     f"{score_text(r['f1'])} | {r['tp']} | {r['fp']} | {r['fn']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = CommandParser(prog="python -m pipelines.evaluate_tags", description=__doc__.splitlines()[0])
    ap.add_argument("--labels", required=True, help="the labeling job's labels table (OUT/labels; local, gs://, s3://)")
    ap.add_argument("--human-labels", required=True,
                    help="Open Images human-verified image labels CSV (ImageID,Source,LabelName,Confidence)")
    ap.add_argument("--classes", required=True, help="Open Images class descriptions CSV (LabelName,DisplayName)")
    ap.add_argument("--tag-threshold", "--threshold", dest="threshold", type=float, default=None,
                    help="score a tag at or above this (default: the run's own --tag-threshold, from its "
                         "teacher_params); the alias --threshold is kept for compatibility")
    ap.add_argument("--output", metavar="DIR", default=None, help="also write DIR/tag_eval.json")
    ap.add_argument("--quiet", action="store_true", help="no progress line on stderr while the labels are read")
    args = ap.parse_args(argv)
    check_labels(args.labels)
    return args


def check_labels(path: str) -> None:
    """A labeling run folder (or another kind) as --labels: named, with the table inside suggested."""
    from pipelines.eval.inputs import labels_table_problem

    problem = labels_table_problem("--labels", path)
    if problem:
        raise UsageError(problem)


def pick_threshold(asked: float | None, run_thresholds: set) -> tuple[float, float]:
    """(the threshold to score at, where the curve starts). Raises ValueError."""
    known = {t for t in run_thresholds if t is not None}
    if asked is not None and not 0.0 <= asked <= 1.0:
        raise ValueError(f"--tag-threshold must be within [0, 1], not {asked}")
    if not known:
        if asked is None:
            raise ValueError("the labels' teacher_params have no tag.threshold (no tagger ran?): pass --tag-threshold")
        return asked, asked
    # Rows of runs with different thresholds (--resume with other flags) are only
    # comparable at or above the highest one: below it, some rows never stored their tags.
    floor = max(known)
    if len(known) > 1:
        print(f"evaluate_tags: warning: the labels come from runs with tag thresholds {sorted(known)}; "
              f"below {floor:g} some images never stored their tags", file=sys.stderr)
    if asked is not None and asked < floor:
        print(f"evaluate_tags: warning: --threshold {asked:g} is below the run's {floor:g}: tags under {floor:g} "
              f"were never stored, so this scores as {floor:g} would", file=sys.stderr)
    return (floor if asked is None else asked), floor


def run(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as e:
        return usage_error(PROG, e)
    from pipelines.cli.progress import Progress
    from pipelines.eval.tags import evaluate, load_classes, read_human_labels, read_predictions
    from schemas import LABELS, count_rows

    try:
        progress = Progress(PROG, total=None if args.quiet else count_rows(args.labels, LABELS), unit="rows",
                            quiet=args.quiet)
        pred = read_predictions(args.labels, on_rows=progress.add)
        progress.close()
        threshold, curve_from = pick_threshold(args.threshold, pred.thresholds)
        classes = load_classes(args.classes)
        human, _ = read_human_labels(args.human_labels, pred.tags.keys())
        result = evaluate(pred, human, classes, threshold, curve_from)
    except (ValueError, FileNotFoundError) as e:
        return usage_error(PROG, e)
    if pred.duplicate_rows:
        print(f"evaluate_tags: warning: {pred.duplicate_rows} labels rows repeat an image id; "
              "each image was scored once (its first row)", file=sys.stderr)
    print(format_table(result))
    print(f"\nprecision-recall curve: {len(result['curve'])} thresholds from {curve_from:g} (the run's threshold: "
          "tags below it were never stored) to 1")
    if args.output:
        path = storage.join(args.output, "tag_eval.json")
        storage.write_text(path, json.dumps(result, indent=2))
        print(f"-> {path}")
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
