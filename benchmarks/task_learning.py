"""Does one small pre-trained student fine-tune for several tasks? Captioning and VQA on synthetic scenes.

    python -m benchmarks.task_learning [--json PATH] [--work DIR] [--no-attributes] [--tasks caption vqa]

Synthetic scenes (benchmarks.synthetic_scenes) carry their objects' colours and sizes as
Open Images relationships and VQA v2 questions about counts, colours, shapes and
positions. One TEE (with the attribute head unless --no-attributes) and one pre-training
are shared by every task; then each task fine-tunes from that pre-trained student through
its real command and is scored on held-out scenes:

  train_tee --attributes -> extract_features (train, held-out) -> build_corpus -> train_student
  -> finetune_caption -> evaluate (CIDEr-D from pixels, caption colour accuracy)
  -> finetune_vqa -> evaluate_vqa (VQA accuracy, per question type, majority baseline)

caption_colour_accuracy: of the "<colour> <shape>" phrases in the generated captions whose
shape the scene has, the share whose colour one such object has (caption_phrase_accuracy:
both words right, over every phrase). vqa_colour_accuracy: the VQA accuracy on
"what color is the ..." questions. Targets (issue 19): VQA >= majority + 0.30, colour
questions >= 0.6, caption colour accuracy clearly above the --no-attributes run.
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
from benchmarks.caption_learning import per_image_cider, write_labels

TASKS = ("caption", "vqa")
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
    ap.add_argument("--val-images", type=int, default=200)
    ap.add_argument("--scene-size", type=int, default=160)
    ap.add_argument("--tee-steps", type=int, default=500)
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--caption-steps", type=int, default=1200)
    ap.add_argument("--vqa-steps", type=int, default=1200)
    ap.add_argument("--fusion", default="4x256", help="LAYERSxHIDDEN of the random-init fusion")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from benchmarks.synthetic_scenes import write_dataset
    from pipelines.build_corpus import run as build_corpus
    from pipelines.evaluate_vqa import run as evaluate_vqa
    from pipelines.extract_features import run as extract_features
    from pipelines.finetune_caption import run as finetune_caption
    from pipelines.finetune_vqa import run as finetune_vqa
    from pipelines.train_student import run as pretrain
    from pipelines.train_tee import run as train_tee

    work = args.work or tempfile.mkdtemp(prefix="task_learning_")
    times: dict[str, float] = {}
    t0 = time.monotonic()
    loop = ["--no-progress", "--log-every", "50", "--num-workers", "1", "--seed", str(args.seed)]
    tr = write_dataset(work, args.train_images, seed=args.seed + 1, size=args.scene_size, subset="train",
                       prefix="train-")
    va = write_dataset(work, args.val_images, seed=args.seed + 2, size=args.scene_size, subset="validation",
                       prefix="validation-")
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
    for name, split in (("extract_features", tr), ("extract_val_features", va)):
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
    result: dict = {"attributes": args.attributes, "tasks": args.tasks, "work": work,
                    "pretrain_contrastive_accuracy": val_rows[-1].get("val_contrastive_accuracy") if val_rows else None}

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
                      caption_per_image_cider_mean=sum(per_image.values()) / max(1, len(per_image)))

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
            "--features", os.path.join(work, "extract_val_features"), "--output", os.path.join(work, "vqa_eval"),
            "--quiet"], times)
        with open(os.path.join(work, "vqa_eval", "vqa_eval.json")) as f:
            ev = json.load(f)
        per_type = ev["per_question_type"]
        result.update(vqa_accuracy=ev["accuracy"], vqa_majority_baseline=ev["majority_baseline"],
                      vqa_colour_accuracy=per_type.get("what color is the", {}).get("accuracy"),
                      vqa_per_question_type=per_type, vqa_questions=ev["questions_scored"])

    result.update(minutes=round((time.monotonic() - t0) / 60, 1), stage_seconds=times,
                  threads=torch.get_num_threads(),
                  config={k: getattr(args, k) for k in ("train_images", "val_images", "scene_size", "tee_steps",
                                                         "pretrain_steps", "caption_steps", "vqa_steps", "fusion",
                                                         "batch_size", "beam_size", "seed")})

    def fmt(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    print(f"\n| task learning (held-out synthetic scenes), attributes {'on' if args.attributes else 'off'} | value |")
    print("|---|---:|")
    for key in ("caption_cider", "caption_colour_accuracy", "caption_phrase_accuracy", "vqa_accuracy",
                "vqa_majority_baseline",
                "vqa_colour_accuracy", "pretrain_contrastive_accuracy", "minutes"):
        if key in result:
            print(f"| {key} | {fmt(result[key])} |")
    for qt, v in (result.get("vqa_per_question_type") or {}).items():
        print(f"| vqa: {qt} ({v['questions']}) | {fmt(v['accuracy'])} |")
    print("stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
