"""Image-text retrieval over a pool with a fine-tuned student: R@1/5/10 both ways, full and re-ranked.

    python -m pipelines.evaluate_retrieval --checkpoint CKPT --data dataset_coco.json --split test \\
        --features FEATS --output EVAL [--pool 1000] [--rerank-k 20] [--no-full]

--checkpoint is a pipelines.finetune_retrieval output (CKPT or CKPT/model); --data a
Karpathy-split JSON (or JSON Lines of its records) whose image ids (file stems) are in
--features, the extract_features output by the checkpoint's TEE. The pool is the first
--pool images of --split that have features (images without are counted), with all their
captions, or with --distinct-captions one caption each, no two images sharing one.

Full scoring runs the matching head on every (image, caption) pair (I x T fusion passes);
re-ranking ranks by the first-stage embeddings and re-scores each query's top --rerank-k
(pipelines/eval/matching.py). EVAL/retrieval_eval.json has R@1/5/10 and the median rank
of image->text (i2t) and text->image (t2i) for the first stage, the re-ranked and the full
ranking; milliseconds per query for the re-ranked ranking each way (the query's embedding
plus its top k pairs), and the full ranking's time once (`full_ranking`: seconds, pairs
scored, milliseconds per pair), since its one I x T matrix serves both directions.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from pipelines.cli import EXIT_OK, CommandParser, UsageError, check_device, usage_error
from pipelines.data import storage

PROG = "evaluate_retrieval"


def parser() -> CommandParser:
    ap = CommandParser(prog="python -m pipelines.evaluate_retrieval", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a retrieval student: pipelines.finetune_retrieval's output")
    ap.add_argument("--data", required=True, help="Karpathy-split JSON (or JSON Lines of its image records)")
    ap.add_argument("--split", default="test", help="the split(s) of --data to evaluate on")
    ap.add_argument("--features", required=True, help="extract_features output (or a corpus) for the images")
    ap.add_argument("--output", required=True, help="folder for retrieval_eval.json")
    ap.add_argument("--pool", type=int, default=1000, help="images in the pool (0: every image of --split)")
    ap.add_argument("--distinct-captions", action="store_true",
                    help="one caption per image, no two images of the pool sharing one")
    ap.add_argument("--rerank-k", type=int, default=20, help="candidates per query the matching head re-scores")
    ap.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                    help="also score every pair of the pool (quadratic)")
    ap.add_argument("--batch-size", type=int, default=128, help="pairs (or images, captions) per fusion batch")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--allow-extractor-mismatch", action="store_true",
                    help="evaluate even if the features came from another TEE than the student's")
    return ap


def run(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        for name in ("batch_size", "rerank_k"):
            if getattr(args, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, not {getattr(args, name)}")
        if args.pool < 0:
            raise UsageError(f"--pool must be >= 0, not {args.pool}")
        check_device(args.device)
    except (UsageError, ValueError) as e:
        return usage_error(PROG, e)
    from pipelines.data.retrieval import parse_splits, read_karpathy
    from pipelines.eval.tasks import load_task_checkpoint

    try:
        images, stats = read_karpathy(args.data, parse_splits(args.split))
        if not images:
            raise ValueError(f"--data {args.data} has no image with a caption in split(s) {args.split}")
        model, tokenizer, files = load_task_checkpoint(args, "retrieval",
                                                       "a retrieval one (pipelines.finetune_retrieval's output)")
    except Exception as e:  # noqa: BLE001 (one line for anything wrong with flags, data or models)
        return usage_error(PROG, e if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
    from pipelines.eval.tasks import retrieval_pool

    pool, counts = retrieval_pool(model, tokenizer, files, images, size=args.pool, distinct=args.distinct_captions)
    if pool is None:
        return usage_error(PROG, f"no image of --data {args.data} split {args.split} has usable features in "
                                 f"--features {args.features}")
    from pipelines.eval.matching import evaluate_pool

    batch, caption_image = pool
    out = {"checkpoint": args.checkpoint, "data": args.data, "split": args.split, **counts,
           "reader": stats.to_dict(),
           **evaluate_pool(model, batch, caption_image, rerank_k=args.rerank_k, full=args.full,
                           batch_size=args.batch_size)}
    storage.write_text(storage.join(args.output, "retrieval_eval.json"), json.dumps(out, indent=2))
    print(f"| {out['images']} images, {out['captions']} captions | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 "
          "| ms/query i2t | t2i |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ms = out["ms_per_query"]
    for name in ("first_stage", "reranked", "full"):
        if name in out:
            r = out[name]
            print(f"| {name} | " + " | ".join(f"{r[d][k]:.3f}" for d in ("i2t", "t2i") for k in ("R@1", "R@5", "R@10"))
                  + f" | {ms.get(f'{name}_i2t', '-')} | {ms.get(f'{name}_t2i', '-')} |")
    if "full_ranking" in out:
        f = out["full_ranking"]
        print(f"full ranking: one {out['images']} x {out['captions']} matrix for both directions, {f['pairs']} "
              f"pairs in {f['seconds']:.3f} s ({f['ms_per_pair']:.4f} ms per pair)")
    print(f"{PROG}: {out['images']} images ({out['images_without_features']} of the split without features) "
          f"-> {args.output}", file=sys.stderr)
    return EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
