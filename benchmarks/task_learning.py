"""Does one small pre-trained student fine-tune for several tasks? Captioning, VQA, retrieval and NLVR2.

    python -m benchmarks.task_learning [--split test|validation] [--seed N] [--json PATH] [--work DIR]
        [--no-attributes] [--tasks caption vqa retrieval nlvr2]

Synthetic scenes (benchmarks.synthetic_scenes) carry their objects' colours and sizes as
Open Images relationships and VQA v2 questions about counts, colours, shapes and
positions, a Karpathy-split file of their captions and NLVR2 statements about pairs of them.
One TEE (with the attribute head unless --no-attributes) and one pre-training are shared by
every task; then each task fine-tunes from that pre-trained student through its real command
and is scored on held-out scenes of one split: validation, where the steps and losses were
chosen, or test (the default), which the tables report and no choice saw:

  train_tee --attributes -> extract_features (train, held-out) -> build_corpus -> train_student
  -> finetune_caption -> evaluate (CIDEr-D from pixels, caption colour accuracy)
  -> finetune_vqa -> evaluate_vqa (VQA accuracy, per question type, majority baseline)
  -> finetune_retrieval -> evaluate_retrieval (R@K both ways over a pool of held-out scenes
     whose captions are all distinct: first stage, re-ranked top k, full)
  -> finetune_nlvr2 -> evaluate_nlvr2 (accuracy, consistency, majority baseline)

pretrain_contrastive_accuracy is the pre-training's held-out 3-way (matched / polluted
caption / polluted tags) accuracy, pretrain_contrastive_majority what always answering
the most frequent class scores on the same batches.

caption_colour_accuracy: of the "<colour> <shape>" phrases in the generated captions whose
shape the scene has, the share whose colour one such object has (caption_phrase_accuracy:
both words right, over every phrase). vqa_colour_accuracy: the VQA accuracy on
"what color is the ..." questions. Targets (issue 19): VQA >= majority + 0.30, colour
questions >= 0.6, caption colour accuracy clearly above the --no-attributes run; (issue 20)
R@1 >= 0.5 both ways over 100 (chance 0.01), NLVR2 >= 0.75 (chance 0.5).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import tempfile
import time

import torch

from benchmarks import caption_learning
from benchmarks.caption_learning import add_split_flags, per_image_cider, write_held_out, write_labels

TASKS = ("caption", "vqa", "retrieval", "nlvr2")
stage = functools.partial(caption_learning.stage, prog="task_learning")


def caption_colour_accuracy(predictions: dict, scenes: dict[str, list[dict]]) -> dict:
    """How right the colours in generated captions are for the objects they name.

    Every "<colour> <shape>" phrase names an object by its shape; where the scene has that
    shape, the colour is right if one such object has it (`colour_accuracy`, over `named`
    phrases). A phrase whose shape the scene lacks names no object: a shape error, counted
    in `phrase_accuracy` (both words right, over all `phrases`) but not in the colour figure.
    """
    from benchmarks.synthetic_scenes import PALETTE, SHAPES

    phrase = re.compile(rf"\b({'|'.join(PALETTE)}) ({'|'.join(SHAPES)})\b")
    phrases = named = colour_right = both_right = 0
    for image_id, p in predictions.items():
        objects = scenes.get(image_id, [])
        for colour, shape in phrase.findall(p["caption"]):
            phrases += 1
            colours = {o["color"] for o in objects if o["name"] == shape}
            if colours:
                named += 1
                colour_right += colour in colours
                both_right += colour in colours
    return {"colour_accuracy": colour_right / named if named else None, "named": named,
            "phrase_accuracy": both_right / phrases if phrases else None, "phrases": phrases}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.task_learning", description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="where data and runs go (default: a temporary directory)")
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    ap.add_argument("--attributes", action=argparse.BooleanOptionalAction, default=True,
                    help="train the TEE's attribute head (colour, size) and give the student attribute tags")
    ap.add_argument("--train-images", type=int, default=2000)
    add_split_flags(ap)
    ap.add_argument("--scene-size", type=int, default=160)
    ap.add_argument("--tee-steps", type=int, default=500)
    # 400 pre-training steps left the contrastive head near the majority class (0.56 held-out);
    # it needs ~1,600 to align images and text (0.89), and retrieval stands on that alignment.
    ap.add_argument("--pretrain-steps", type=int, default=1600)
    ap.add_argument("--caption-steps", type=int, default=1200)
    ap.add_argument("--vqa-steps", type=int, default=1200)
    ap.add_argument("--retrieval-steps", type=int, default=1000)
    ap.add_argument("--nlvr2-steps", type=int, default=800)  # validation: 0.763; 1,500 steps gave 0.753
    ap.add_argument("--retrieval-pool", type=int, default=100, help="held-out images (distinct captions) to rank")
    ap.add_argument("--rerank-k", type=int, default=10)
    ap.add_argument("--fusion", default="4x256", help="LAYERSxHIDDEN of the random-init fusion")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from benchmarks.synthetic_scenes import write_dataset
    from pipelines.build_corpus import run as build_corpus
    from pipelines.evaluate_nlvr2 import run as evaluate_nlvr2
    from pipelines.evaluate_retrieval import run as evaluate_retrieval
    from pipelines.evaluate_vqa import run as evaluate_vqa
    from pipelines.extract_features import run as extract_features
    from pipelines.finetune_caption import run as finetune_caption
    from pipelines.finetune_nlvr2 import run as finetune_nlvr2
    from pipelines.finetune_retrieval import run as finetune_retrieval
    from pipelines.finetune_vqa import run as finetune_vqa
    from pipelines.train_student import run as pretrain
    from pipelines.train_tee import run as train_tee

    work = args.work or tempfile.mkdtemp(prefix="task_learning_")
    times: dict[str, float] = {}
    t0 = time.monotonic()
    loop = ["--no-progress", "--log-every", "50", "--num-workers", "1", "--seed", str(args.seed)]
    tr = write_dataset(work, args.train_images, seed=args.seed + 1, size=args.scene_size, subset="train",
                       prefix="train-")
    va = write_held_out(work, args.val_images, seed=args.seed + 2, size=args.scene_size)[args.split]
    images = tr["images_dir"]
    write_labels(tr["captions_json"], images, os.path.join(work, "labels", "labels"))
    times["data"] = round(time.monotonic() - t0, 1)

    attributes = ["--attributes", tr["attributes_csv"], "--attribute-classes", tr["attribute_classes_csv"]]
    stage("train_tee", train_tee, [
        "--images", tr["images_csv"], "--annotations", tr["boxes_csv"], "--classes", tr["classes_csv"],
        *(attributes if args.attributes else []),
        "--tee", "tee-tiny", "--image-size", "128", "--output", os.path.join(work, "tee"),
        "--max-steps", str(args.tee_steps), "--batch-size", "16", "--lr", "2e-3",
        "--warmup-steps", str(min(100, args.tee_steps // 10)), "--checkpoint-every", str(args.tee_steps), *loop],
        times)
    tee = os.path.join(work, "tee", "model")
    for name, split in (("extract_features", tr), (f"extract_{args.split}_features", va)):
        stage(name, extract_features, [
            "--runner", "DirectRunner", "--input", split["images_csv"], "--image-root", images, "--tee", tee,
            "--output", os.path.join(work, name), "--batch-size", "32", "--decode-size", "160", "--quiet"], times)
    corpus = os.path.join(work, "corpus")
    stage("build_corpus", build_corpus, [
        "--runner", "DirectRunner", "--labels", os.path.join(work, "labels", "labels"),
        "--features", os.path.join(work, "extract_features", "features"), "--output", corpus,
        "--val-fraction", "0.05", "--shard-rows", "500"], times)
    common = ["--batch-size", str(args.batch_size), "--checkpoint-every", "100000", *loop]
    stage("train_student", pretrain, [
        "--corpus", corpus, "--tee", tee, "--init", "random", "--fusion", args.fusion,
        "--max-caption-tokens", "20", "--max-tag-tokens", "12", "--max-regions", "20",
        "--output", os.path.join(work, "pretrain"), "--max-steps", str(args.pretrain_steps), "--lr", "5e-4",
        "--warmup-steps", str(args.pretrain_steps // 10), *common], times)
    pre = [json.loads(line) for line in open(os.path.join(work, "pretrain", "metrics.jsonl"))]
    val_rows = [r for r in pre if r.get("split") == "val"]
    last = val_rows[-1] if val_rows else {}
    result: dict = {"split": args.split, "seed": args.seed, "attributes": args.attributes, "tasks": args.tasks,
                    "work": work,
                    "pretrain_contrastive_accuracy": last.get("val_contrastive_accuracy"),
                    "pretrain_contrastive_majority": last.get("val_contrastive_majority")}

    if "caption" in args.tasks:
        from models.captioning import load_student_captioner
        from pipelines.evaluate_captions import evaluate

        stage("finetune_caption", finetune_caption, [
            "--init", os.path.join(work, "pretrain"), "--train", corpus, "--output", os.path.join(work, "caption"),
            "--max-steps", str(args.caption_steps), "--lr", "5e-4", "--warmup-steps", str(args.caption_steps // 20),
            "--mask-prob", "0.4", "--max-masked", "8", *common], times)
        t = time.monotonic()
        captioner = load_student_captioner(os.path.join(work, "caption"))
        scored = evaluate(captioner, va["captions_json"], images, beam_size=args.beam_size, meteor=False)
        times["evaluate_caption"] = round(time.monotonic() - t, 1)
        with open(va["captions_json"]) as f:
            scenes = {im["id"]: im["objects"] for im in json.load(f)["images"]}
        colours = caption_colour_accuracy(scored["predictions"], scenes)
        per_image = per_image_cider(va["captions_json"], scored["predictions"])
        result.update(caption_cider=scored["results"]["student vs references"]["CIDEr-D"],
                      caption_colour_accuracy=colours["colour_accuracy"],
                      caption_phrase_accuracy=colours["phrase_accuracy"], caption_colour_counts=colours,
                      caption_predictions={i: p["caption"] for i, p in scored["predictions"].items()},
                      caption_samples=[p["caption"] for p in list(scored["predictions"].values())[:5]],
                      caption_per_image_cider_mean=sum(per_image.values()) / max(1, len(per_image)),
                      per_image_cider_d=per_image)

    if "vqa" in args.tasks:
        stage("finetune_vqa", finetune_vqa, [
            "--init", os.path.join(work, "pretrain"), "--train", tr["vqa_questions_json"],
            "--train-annotations", tr["vqa_annotations_json"],
            "--features", os.path.join(work, "extract_features"), "--output", os.path.join(work, "vqa"),
            "--max-steps", str(args.vqa_steps), "--lr", "5e-4", "--warmup-steps", str(args.vqa_steps // 20),
            *common], times)
        stage("evaluate_vqa", evaluate_vqa, [
            "--checkpoint", os.path.join(work, "vqa"), "--questions", va["vqa_questions_json"],
            "--annotations", va["vqa_annotations_json"],
            "--features", os.path.join(work, f"extract_{args.split}_features"),
            "--output", os.path.join(work, "vqa_eval"),
            "--quiet"], times)
        with open(os.path.join(work, "vqa_eval", "vqa_eval.json")) as f:
            ev = json.load(f)
        per_type = ev["per_question_type"]
        result.update(vqa_accuracy=ev["accuracy"], vqa_majority_baseline=ev["majority_baseline"],
                      vqa_colour_accuracy=per_type.get("what color is the", {}).get("accuracy"),
                      vqa_per_question_type=per_type, vqa_questions=ev["questions_scored"])

    train_features = os.path.join(work, "extract_features")
    held_out = os.path.join(work, f"extract_{args.split}_features")
    if "retrieval" in args.tasks:
        stage("finetune_retrieval", finetune_retrieval, [
            "--init", os.path.join(work, "pretrain"), "--train", tr["karpathy_json"], "--train-split", "train",
            "--features", train_features,
            "--output", os.path.join(work, "retrieval"), "--max-steps", str(args.retrieval_steps), "--lr", "2e-4",
            "--warmup-steps", str(args.retrieval_steps // 20), *common], times)
        stage("evaluate_retrieval", evaluate_retrieval, [
            "--checkpoint", os.path.join(work, "retrieval"), "--data", va["karpathy_json"], "--split", "test",
            "--features", held_out, "--output", os.path.join(work, "retrieval_eval"),
            "--pool", str(args.retrieval_pool), "--distinct-captions", "--rerank-k", str(args.rerank_k)], times)
        with open(os.path.join(work, "retrieval_eval", "retrieval_eval.json")) as f:
            ev = json.load(f)
        result.update(retrieval_i2t_r1=ev["full"]["i2t"]["R@1"], retrieval_t2i_r1=ev["full"]["t2i"]["R@1"],
                      retrieval_pool=ev["images"], retrieval_rerank_i2t_r1=ev["reranked"]["i2t"]["R@1"],
                      retrieval_rerank_t2i_r1=ev["reranked"]["t2i"]["R@1"],
                      retrieval_first_stage_i2t_r1=ev["first_stage"]["i2t"]["R@1"],
                      retrieval_first_stage_t2i_r1=ev["first_stage"]["t2i"]["R@1"],
                      retrieval_ms_per_query=ev["ms_per_query"], retrieval_full_ranking=ev.get("full_ranking"),
                      retrieval_eval=ev)
    if "nlvr2" in args.tasks:
        stage("finetune_nlvr2", finetune_nlvr2, [
            "--init", os.path.join(work, "pretrain"), "--train", tr["nlvr2_jsonl"], "--features",
            train_features, "--output", os.path.join(work, "nlvr2"), "--max-steps", str(args.nlvr2_steps),
            "--lr", "2e-4", "--warmup-steps", str(args.nlvr2_steps // 20), *common], times)
        stage("evaluate_nlvr2", evaluate_nlvr2, [
            "--checkpoint", os.path.join(work, "nlvr2"), "--data", va["nlvr2_jsonl"], "--features", held_out,
            "--output", os.path.join(work, "nlvr2_eval"), "--quiet"], times)
        with open(os.path.join(work, "nlvr2_eval", "nlvr2_eval.json")) as f:
            ev = json.load(f)
        result.update(nlvr2_accuracy=ev["accuracy"], nlvr2_consistency=ev["consistency"],
                      nlvr2_majority_baseline=ev["majority_baseline"], nlvr2_statements=ev["statements_scored"])

    result.update(minutes=round((time.monotonic() - t0) / 60, 1), stage_seconds=times,
                  threads=torch.get_num_threads(),
                  config={k: getattr(args, k) for k in ("train_images", "val_images", "scene_size", "tee_steps",
                                                         "pretrain_steps", "caption_steps", "vqa_steps", "retrieval_steps",
                                                         "nlvr2_steps", "retrieval_pool", "rerank_k", "fusion",
                                                         "batch_size", "beam_size", "seed")})

    def fmt(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    print(f"\n| task learning ({args.split} split, seed {args.seed}), attributes "
          f"{'on' if args.attributes else 'off'} | value |")
    print("|---|---:|")
    for key in ("caption_cider", "caption_colour_accuracy", "caption_phrase_accuracy", "vqa_accuracy",
                "vqa_majority_baseline", "vqa_colour_accuracy", "retrieval_pool", "retrieval_i2t_r1",
                "retrieval_t2i_r1", "retrieval_rerank_i2t_r1", "retrieval_rerank_t2i_r1",
                "retrieval_first_stage_i2t_r1", "retrieval_first_stage_t2i_r1", "nlvr2_accuracy",
                "nlvr2_consistency", "nlvr2_majority_baseline", "pretrain_contrastive_accuracy",
                "pretrain_contrastive_majority", "minutes"):
        if key in result:
            print(f"| {key} | {fmt(result[key])} |")
    for qt, v in (result.get("vqa_per_question_type") or {}).items():
        print(f"| vqa: {qt} ({v['questions']}) | {fmt(v['accuracy'])} |")
    for name, ms in (result.get("retrieval_ms_per_query") or {}).items():
        print(f"| retrieval ms per query: {name} | {ms:.1f} |")
    if result.get("retrieval_full_ranking"):
        f = result["retrieval_full_ranking"]
        print(f"| retrieval full ranking ({f['pairs']} pairs, both directions): ms per pair | {f['ms_per_pair']:.3f} |")
    print("stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
