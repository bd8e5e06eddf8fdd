"""Fine-tune a pre-trained MiniVLM student for visual question answering (OSCAR style).

    python -m pipelines.finetune_vqa --init CKPT --train v2_OpenEnded_mscoco_train2014_questions.json \\
        --train-annotations v2_mscoco_train2014_annotations.json --features FEATS \\
        [--val Q.json --val-annotations A.json --val-features FEATS_VAL] --output CKPT2 --max-steps 20000
    python -m pipelines.finetune_vqa --init CKPT --train train.jsonl --features FEATS --output CKPT2 ...

--init is a pipelines.train_student output (CKPT or CKPT/model). --train is VQA v2 (the
questions JSON with --train-annotations) or JSON Lines with the answers inline
(pipelines/data/vqa.py); --features is the extract_features output for its images (or a
corpus), made by the student's TEE. The answer vocabulary is, as in VQA v2 practice
(bottom-up-attention-vqa, OSCAR, VinVL), every normalised answer that is the
multiple_choice_answer of at least --min-answer-count (9) questions, counted over --train
and --val when given (3,129 answers on VQA v2 train2014 + val2014); answers only some
annotators gave are not counted. Human answers outside it are scored 0; a question with
none inside it is skipped. The vocabulary is stored in the checkpoint (config.json
`answers`, task `vqa`), its size and rule in train_config.json (`data`). Input: [CLS]
question [SEP] TEE tags [SEP] regions; a classifier on [CLS] learns each answer's soft
score (its VQA accuracy) with binary cross-entropy. CKPT2/model is the checkpoint for
pipelines.evaluate_vqa; CKPT2/metrics.jsonl has step, loss, vqa_loss, vqa_score (the VQA
accuracy of the top answer), lr and validation rows.
"""
from __future__ import annotations

import logging
import os
import sys

from pipelines.cli import EXIT_OK, CommandParser, UsageError, usage_error
from pipelines.train.flags import preflight, print_notes
from pipelines.train.pair_finetune import add_task_flags

PROG = "finetune_vqa"


def parse_args(argv):
    ap = CommandParser(prog="python -m pipelines.finetune_vqa", description=__doc__.splitlines()[0])
    d = ap.add_argument_group("data")
    d.add_argument("--train", required=True, help="VQA v2 questions JSON (with --train-annotations) or JSON Lines")
    d.add_argument("--train-annotations", help="VQA v2 annotations JSON of --train")
    d.add_argument("--val", help="validation questions, like --train")
    d.add_argument("--val-annotations", help="VQA v2 annotations JSON of --val")
    d.add_argument("--min-answer-count", type=int, default=9,
                   help="the vocabulary keeps the normalised answers that are the multiple_choice_answer of at least "
                        "this many questions, counted over --train and --val when given, as VQA v2 practice does "
                        "(3,129 answers on VQA v2 train2014+val2014); answers only some annotators gave do not "
                        "count")
    d.add_argument("--shuffle-buffer", type=int, default=1000, help="samples in the streaming shuffle buffer")
    add_task_flags(ap, d, lr=5e-5, batch_size=32, warmup_steps=500, weight_decay=0.01)
    return ap.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        cfg, notes = preflight(args, PROG)
    except UsageError as e:
        return usage_error(PROG, e)
    from pipelines.data.vqa import answer_vocabulary
    from pipelines.train.featurestore import feature_files, image_ids
    from pipelines.train.loop import Trainer, fit_and_report, init_distributed, validate
    from pipelines.train.pair_finetune import freeze_unused, pretrained_student
    from pipelines.train.pretrain_data import check_extractors
    from pipelines.train.vqa_data import VQACollate, VQAStream, by_image, read_questions

    try:
        if args.min_answer_count < 1:
            raise ValueError(f"--min-answer-count must be >= 1, not {args.min_answer_count}")
        train_q, train_stats = read_questions(args.train, args.train_annotations, "--train", need_answers=True)
        train_files = feature_files(args.features, "--features")
        val_q, val_files = [], []
        if args.val:
            val_q, _ = read_questions(args.val, args.val_annotations, "--val", need_answers=True)
            val_files = feature_files(args.val_features or args.features, "--val-features")
        counted_over = "--train and --val" if args.val else "--train"
        answers = answer_vocabulary(train_q + val_q, args.min_answer_count)
        if not answers:
            raise ValueError(f"no answer is the multiple_choice_answer of {args.min_answer_count}+ questions "
                             f"over {counted_over}: lower --min-answer-count")
        model, tokenizer = pretrained_student(args, cfg.seed, lambda m, tag_min: m.start_vqa(answers, tag_min))
        seen = check_extractors(train_files, model.config.extractor_id,
                                allow_mismatch=args.allow_extractor_mismatch, tee=f"--init {args.init}")
        have = image_ids(train_files)
        without = sum(1 for q in train_q if q.image_id not in have)
        if without == len(train_q):
            raise ValueError(f"none of the {len(train_q)} --train questions is about an image in --features")
    except Exception as e:  # noqa: BLE001 (one line for anything wrong with flags, data or models)
        return usage_error(PROG, e if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
    print_notes(PROG, notes)
    if args.check_only:
        return EXIT_OK
    data = {**train_stats.to_dict(), "answers": len(answers), "questions_without_features": without,
            "min_answer_count": args.min_answer_count, "answers_counted_over": counted_over}
    if os.environ.get("RANK", "0") == "0":
        print(f"{PROG}: {len(train_q)} training questions ({without} about images without features, "
              f"{train_stats.malformed} malformed records skipped), {len(answers)} answers in the vocabulary "
              f"(the multiple_choice_answer of {args.min_answer_count}+ questions over {counted_over})",
              file=sys.stderr)
    freeze_unused(model)
    dist = init_distributed(cfg.device if cfg.device != "auto" else "cpu")
    c = model.config

    def stream(files, questions, seed, shuffle_buffer, rank=0, world=1):
        return VQAStream(files, questions=by_image(questions), answers=list(c.answers),
                         feature_dim=c.region_feature_dim, max_regions=c.max_regions, tag_min_score=c.tag_min_score,
                         shuffle_buffer=shuffle_buffer, seed=seed, batch_size=cfg.batch_size, rank=rank, world=world)

    collate = VQACollate(tokenizer, c)

    def evaluate(m):
        return validate(m, stream(val_files, val_q, cfg.seed, 1), collate, max_batches=args.val_batches,
                        seed=cfg.seed)

    signature = {"model": {k: v for k, v in c.to_dict().items() if k != "init"}, "batch_size": cfg.batch_size,
                 "grad_accum": cfg.grad_accum, "seed": cfg.seed, "min_answer_count": args.min_answer_count}
    trainer = Trainer(model, cfg, stream(train_files, train_q, cfg.seed, args.shuffle_buffer, dist.rank, dist.world),
                      collate, lambda net, batch: net(batch), save_model=lambda m, d: m.save_pretrained(d, tokenizer),
                      evaluate=evaluate if val_files else None, signature=signature,
                      run_info={"job": PROG, "init": args.init, "train": args.train, "features": args.features,
                                "val": args.val, "model": c.to_dict(), "data": data, "extractors": dict(seen)})
    return fit_and_report(trainer, PROG)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
