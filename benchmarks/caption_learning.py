"""Does the student learn to caption, end to end? The whole chain on synthetic scenes, on this CPU.

    python -m benchmarks.caption_learning [--split test|validation] [--seed N] [--json PATH] [--work DIR]
        [--embedding-rank R] [--reuse DIR]

Synthetic scenes (benchmarks.synthetic_scenes: coloured shapes on textured backgrounds)
come with templated ground-truth captions ("a red circle left of a blue square"). The
scene generator plays the teacher: its captions are written as a labels table, exactly
what pipelines.pseudo_label would write. Then every stage runs through its real entry
point:

  train_tee (detection) -> extract_features (Beam) -> build_corpus (Beam)
  -> train_student (pre-training) -> finetune_caption -> evaluate_captions

and the student is scored on held-out scenes it never saw (captioned from their pixels),
next to the same architecture untrained. Two held-out splits are written, each its own
scenes: validation, where anything is chosen (steps, settings), and test (the default
--split), which the tables report and no choice saw. Reduced configuration so it fits a laptop-class
CPU with no pre-trained weights: tee-tiny at 128 px, fusion 4 layers x 256 from random.
Target on 2 cores: CIDEr-D >= 1.0 within 30 minutes.

CIDEr-D comes with a 95% bootstrap interval over the scored split's images (per-image scores
resampled with replacement; the idf stays that of the whole held-out set). `--reuse DIR`
takes the data, TEE, features and corpus of an earlier run's --work DIR (the same data
settings, checked against DIR/prepared.json) and runs only pre-training, fine-tuning and
evaluation, so variants of the student (e.g. `--embedding-rank 64`) share everything before.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch


def shape_tag(obj: dict) -> tuple[str, str]:
    """A scene object's ground-truth tag as (label, name): its shape ("circle")."""
    return "/synth/" + obj["name"], obj["name"]


HELD_OUT = ("validation", "test")  # every learning check's held-out splits: choose on the first, report the second


def add_split_flags(ap) -> None:
    """--val-images and --split, as every learning check spells them."""
    ap.add_argument("--val-images", type=int, default=200, help="scenes in each held-out split (validation, test)")
    ap.add_argument("--split", choices=HELD_OUT, default="test",
                    help="the held-out split scored: validation to choose anything, test to report")


def write_held_out(work: str, n: int, *, seed: int, size: int) -> dict[str, dict[str, str]]:
    """The held-out splits, n scenes each, beside the training scenes in `work`: split -> the paths
    write_dataset returns (files prefixed "<split>-"). Each split is its own stream of scenes
    (synthetic_scenes seeds by seed and subset), so they share no scene with each other or train."""
    from benchmarks.synthetic_scenes import write_dataset

    return {split: write_dataset(work, n, seed=seed, size=size, subset=split, prefix=f"{split}-")
            for split in HELD_OUT}


def write_labels(coco_json: str, image_root: str, out_dir: str, tag_of=shape_tag,
                 provenance: str = "synthetic-ground-truth") -> int:
    """The scene generator as the teacher: its captions (and objects as tags, named by `tag_of`:
    (label, name) of an object) -> a labels table, tags distinct and sorted by name."""
    import hashlib

    import pyarrow.parquet as pq

    from schemas import LABELS, labels_row

    with open(coco_json) as f:
        coco = json.load(f)
    captions = {a["image_id"]: a["caption"] for a in coco["annotations"]}
    rows = []
    for img in coco["images"]:
        path = os.path.join(image_root, img["file_name"])
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        tags = sorted({tag_of(o) for o in img.get("objects", [])}, key=lambda t: t[1])
        rows.append(LABELS.validate_row(labels_row(
            image_id=img["id"], source_uri=path, sha256=digest, width=img["width"], height=img["height"],
            captions=[{"text": captions[img["id"]], "score": 0.0}],
            tags=[{"label": label, "name": name, "score": 1.0} for label, name in tags],
            captioner=provenance, tagger=provenance, teacher_params={})))
    os.makedirs(out_dir, exist_ok=True)
    pq.write_table(LABELS.to_table(rows), os.path.join(out_dir, "part-00000.parquet"))
    return len(rows)


def stage(name: str, fn, argv: list[str], times: dict, prog: str = "caption_learning") -> None:
    """Run one command's run(argv), timed into `times`; a failing stage ends the benchmark."""
    t = time.monotonic()
    rc = fn(argv)
    times[name] = round(time.monotonic() - t, 1)
    print(f"{prog}: {name}: exit {rc}, {times[name]:.0f} s", file=sys.stderr, flush=True)
    if rc != 0:
        raise SystemExit(f"{prog}: {name} failed (exit {rc})")


PREPARED = "prepared.json"  # in --work once data, TEE, features and corpus are done: what made them
DATA_SETTINGS = ("train_images", "val_images", "scene_size", "tee_steps", "seed", "class_agnostic_boxes")
SETTING_DEFAULTS = {"class_agnostic_boxes": False}  # settings added later: a record without them had these
BOOTSTRAP_RESAMPLES = 1000


def prepared_paths(work: str) -> dict:
    """Where a --work folder keeps what the first four stages made."""
    return {"images": os.path.join(work, "images"),
            "train_captions": os.path.join(work, "train-captions.json"),
            "val_captions": os.path.join(work, "validation-captions.json"),
            "test_captions": os.path.join(work, "test-captions.json"),
            "tee": os.path.join(work, "tee", "model"), "corpus": os.path.join(work, "corpus")}


def check_reusable(reuse: str, args) -> dict:
    """--reuse DIR: DIR must hold finished data, TEE and corpus stages made with this run's data settings."""
    from pipelines.train.pretrain_data import check_corpus_finished

    record = os.path.join(reuse, PREPARED)
    if not os.path.isfile(record):
        raise SystemExit(f"caption_learning: --reuse {reuse}: no {PREPARED} there (not a finished caption_learning "
                         "--work folder)")
    with open(record) as f:
        made = json.load(f)
    differ = [f"{k} {made.get(k, SETTING_DEFAULTS.get(k))} there, {getattr(args, k)} here" for k in DATA_SETTINGS
              if made.get(k, SETTING_DEFAULTS.get(k)) != getattr(args, k)]
    if differ:
        raise SystemExit(f"caption_learning: --reuse {reuse} was made with other data settings: {'; '.join(differ)}")
    paths = prepared_paths(reuse)
    absent = [k for k, v in paths.items() if not os.path.exists(v)]
    if absent:
        raise SystemExit(f"caption_learning: --reuse {reuse} lacks {', '.join(absent)}")
    try:
        check_corpus_finished(paths["corpus"])
    except ValueError as e:
        raise SystemExit(f"caption_learning: --reuse {reuse}: {e}") from None
    return paths


def bootstrap_interval(scores: list[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image scores (images resampled with replacement)."""
    import numpy as np

    x = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_difference(a: dict[str, float], b: dict[str, float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0, level: float = 0.95) -> list[float]:
    """[low, point, high] of mean(a - b) over the images both scored: a percentile bootstrap that
    resamples images with replacement, both sides together (a paired interval)."""
    import numpy as np

    ids = sorted(set(a) & set(b))
    if not ids:
        raise ValueError("no image scored on both sides")
    d = np.array([a[i] - b[i] for i in ids], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(d.mean()), float(np.percentile(means, 100 - tail))]


def paired_ratio(a: dict[str, float], b: dict[str, float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0) -> list[float] | None:
    """[low, high] 95% interval of mean(b) / mean(a) over the images both scored, resampling images
    with replacement, both sides together; a resample whose `a` mean is 0 has no ratio and is left
    out. None when no resample has one."""
    import numpy as np

    ids = sorted(set(a) & set(b))
    x, y = np.array([a[i] for i in ids]), np.array([b[i] for i in ids])
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = y[draws].mean(axis=1) / x[draws].mean(axis=1)
    ratios = ratios[np.isfinite(ratios)]
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))] if len(ratios) else None


def graphs_mb(directory: str) -> float:
    """An export's two ONNX graphs on disk, in MB."""
    return round(sum(os.path.getsize(os.path.join(directory, f)) for f in ("vision.onnx", "fusion.onnx")) / 1e6, 2)


def per_image_cider(captions_json: str, predictions: dict) -> dict[str, float]:
    """CIDEr-D of each captioned held-out image, as pycocoevalcap's Cider().compute_score gives it
    (its second value) over the same images evaluate_captions scored; their mean is the corpus CIDEr-D."""
    from pipelines.data.coco import read_coco_references
    from pipelines.eval.captions import score_captions

    _, refs = read_coco_references(captions_json)
    scored = score_captions({i: refs[i] for i in predictions}, {i: p["caption"] for i, p in predictions.items()},
                            meteor=False)
    return {i: s["CIDEr-D"] for i, s in scored["per_image"].items()}


def int8_quality(quantized_captioner, name: str, scored_captions: str, images: str, after: dict, per_image: dict,
                 args, times: dict) -> dict:
    """An int8 export's CIDEr-D on the scored split against eager fp32's: the ratio of the means with a
    paired bootstrap interval (images resampled, both sides together), and its captions equal to eager's."""
    from pipelines.evaluate_captions import evaluate

    t = time.monotonic()
    quantized = evaluate(quantized_captioner, scored_captions, images, beam_size=args.beam_size, meteor=False)
    times[name] = round(time.monotonic() - t, 1)
    int8_image = per_image_cider(scored_captions, quantized["predictions"])
    ids = sorted(set(per_image) & set(int8_image))
    fp32_cider = after["results"]["student vs references"]["CIDEr-D"]
    int8_cider = quantized["results"]["student vs references"]["CIDEr-D"]
    return {"cider_d": int8_cider, "eager_fp32_cider_d": fp32_cider,
            "cider_ratio": int8_cider / fp32_cider if fp32_cider > 0 else None,
            "ratio_interval": paired_ratio(per_image, int8_image, seed=args.seed),
            "resamples": BOOTSTRAP_RESAMPLES, "target": 0.97,
            "captions_equal_to_eager": sum(quantized["predictions"][i]["caption"] ==
                                           after["predictions"][i]["caption"] for i in ids),
            "images": len(ids), "per_image_cider_d": int8_image}


def export_parity(trained, checkpoint: str, work: str, scored_captions: str, images: str, after: dict,
                  per_image: dict, args, times: dict) -> dict:
    """The trained captioner exported (fp32 and int8, through pipelines.export) and run on ONNX Runtime:
    greedy captions against eager on the held-out scenes and the bundled sample (a differing caption
    counts as a near-tie when the two scores are within 1e-3), beam captions against eager on the
    held-out scenes, and int8's CIDEr-D against eager fp32's with a paired bootstrap interval; with
    --int8-per-channel the same for an int8 export with one weight scale per output channel."""
    from models.runtime import load_onnx_captioner
    from pipelines.data.coco import read_coco_references
    from pipelines.evaluate_captions import caption_files
    from pipelines.export import run as export

    out = {}
    for precision, flags in (("fp32", []), ("int8", ["--int8"])):
        directory = os.path.join(work, f"export-{precision}")
        stage(f"export_{precision}", export, ["--checkpoint", checkpoint, "--output", directory, "--overwrite",
                                              *flags], times)
        out[precision] = {"directory": directory, "mb": graphs_mb(directory)}
    fp32, int8 = (load_onnx_captioner(out[p]["directory"]) for p in ("fp32", "int8"))
    files, _ = read_coco_references(scored_captions)
    held_out = {i: os.path.join(images, files[i]) for i in sorted(files)}
    sample_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "sample", "images")
    sample = {f: os.path.join(sample_dir, f) for f in sorted(os.listdir(sample_dir))
              if f.lower().endswith((".jpg", ".jpeg", ".png"))}
    length = 20

    def compare(paths: dict, eager: dict | None = None, **decoding) -> dict:
        """Eager's captions (`eager`, when already made with these settings) against fp32's on `paths`."""
        a = eager if eager is not None else caption_files(trained, paths, max_length=length, batch_size=8,
                                                          **decoding)[0]
        b, _ = caption_files(fp32, paths, max_length=length, batch_size=8, **decoding)
        failed = sorted(set(paths) - (set(a) & set(b)))  # not captioned on one side: counted apart, never "equal"
        differ = [i for i in a if i in b and a[i]["caption"] != b[i]["caption"]]
        ties = [i for i in differ if abs(a[i]["score"] - b[i]["score"]) < 1e-3]
        return {"images": len(paths), "equal": len(set(a) & set(b)) - len(differ), "differ_near_tie": len(ties),
                "differ_other": len(differ) - len(ties), "failed": len(failed),
                "examples": [{"image": i, "eager": a[i]["caption"], "onnx": b[i]["caption"],
                              "eager_score": a[i]["score"], "onnx_score": b[i]["score"]} for i in differ[:5]]}

    t = time.monotonic()
    out["parity"] = {"held_out_greedy": compare(held_out, beam_size=1, greedy=True),
                     "sample_greedy": compare(sample, beam_size=1, greedy=True),
                     # evaluate() captioned the held-out scenes so (beam_size, 20 words, batch 8) already
                     "held_out_beam": compare(held_out, after["predictions"], beam_size=args.beam_size,
                                              greedy=False)}
    times["export_parity"] = round(time.monotonic() - t, 1)
    out["int8_quality"] = int8_quality(int8, "evaluate_int8", scored_captions, images, after, per_image, args, times)
    if args.int8_per_channel:
        from models.captioning import load_for_inference
        from models.export import export_captioner

        directory = os.path.join(work, "export-int8-per-channel")
        t = time.monotonic()
        export_captioner(*load_for_inference(checkpoint, device="cpu"), directory, int8=True, per_channel=True,
                         source=checkpoint)
        times["export_int8_per_channel"] = round(time.monotonic() - t, 1)
        out["int8_per_channel"] = {"directory": directory, "mb": graphs_mb(directory)}
        out["int8_per_channel_quality"] = int8_quality(load_onnx_captioner(directory), "evaluate_int8_per_channel",
                                                       scored_captions, images, after, per_image, args, times)
    return out


def int8_line(name: str, q: dict) -> str:
    return (f"{name}: CIDEr-D {q['cider_d']:.3f} vs eager fp32 {q['eager_fp32_cider_d']:.3f}: "
            + (f"ratio {q['cider_ratio']:.3f}, 95% paired bootstrap [{q['ratio_interval'][0]:.3f}, "
               f"{q['ratio_interval'][1]:.3f}]" if q["cider_ratio"] is not None and q["ratio_interval"] else "no ratio")
            + f"; same caption as eager on {q['captions_equal_to_eager']}/{q['images']}")


def export_table(e: dict) -> str:
    p, q = e["parity"], e["int8_quality"]

    def row(name, r):
        return (f"| {name} | {r['images']} | {r['equal']} | {r['differ_near_tie']} | {r['differ_other']} |")

    lines = ["", "| ONNX Runtime fp32 vs eager | images | same caption | differ, near-tie | differ, other |",
             "|---|---:|---:|---:|---:|",
             row("held-out scenes, greedy", p["held_out_greedy"]), row("bundled sample, greedy", p["sample_greedy"]),
             row("held-out scenes, beam", p["held_out_beam"]), "",
             int8_line("int8 (dynamic, fusion linear layers)", q) + f" (target >= {q['target']}); graphs fp32 "
             f"{e['fp32']['mb']} MB, int8 {e['int8']['mb']} MB"]
    if "int8_per_channel_quality" in e:
        lines.append(int8_line("int8, per-channel weight scales", e["int8_per_channel_quality"])
                     + f"; graphs {e['int8_per_channel']['mb']} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.caption_learning", description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="where data and runs go (default: a temporary directory)")
    ap.add_argument("--train-images", type=int, default=2000)
    add_split_flags(ap)
    ap.add_argument("--scene-size", type=int, default=160)
    ap.add_argument("--tee-steps", type=int, default=500)
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--finetune-steps", type=int, default=1200)
    ap.add_argument("--fusion", default="4x256", help="LAYERSxHIDDEN of the random-init fusion")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--mask-prob", type=float, default=0.4, help="fine-tuning: masked share of caption tokens")
    ap.add_argument("--max-masked", type=int, default=8)
    ap.add_argument("--embedding-rank", type=int, default=None,
                    help="factorise the fusion's word embedding at this rank (train_student --embedding-rank)")
    ap.add_argument("--class-agnostic-boxes", action=argparse.BooleanOptionalAction, default=None,
                    help="the TEE's box refinement: one for all classes, or (--no-...) one per class "
                         "(unset: tee-tiny's registered choice)")
    ap.add_argument("--reuse", default=None, metavar="DIR",
                    help="an earlier run's --work: take its data, TEE, features and corpus, run only the student")
    ap.add_argument("--no-meteor", action="store_true", help="skip METEOR (its Java process is the slow part)")
    ap.add_argument("--export", action="store_true",
                    help="also export the trained captioner (pipelines.export, fp32 and --int8) and measure parity: "
                         "greedy captions against eager on the held-out scenes and the bundled sample, int8 CIDEr-D "
                         "against eager fp32 with a paired bootstrap interval")
    ap.add_argument("--int8-per-channel", action="store_true",
                    help="with --export: also an int8 export with per-channel weight scales, scored the same way")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.int8_per_channel and not args.export:
        ap.error("--int8-per-channel needs --export")

    from benchmarks.synthetic_scenes import write_dataset
    from models.captioning import StudentCaptioner
    from models.minivlm import build_student
    from models.tee import TEE, load_tee, tee_config

    if args.class_agnostic_boxes is None:  # recorded resolved: --reuse compares what the TEE had
        args.class_agnostic_boxes = tee_config("tee-tiny").class_agnostic_boxes
    from pipelines.build_corpus import run as build_corpus
    from pipelines.evaluate_captions import evaluate
    from pipelines.extract_features import run as extract_features
    from pipelines.finetune_caption import run as finetune
    from pipelines.train_student import run as pretrain
    from pipelines.train_tee import run as train_tee

    work = args.work or tempfile.mkdtemp(prefix="caption_learning_")
    times: dict[str, float] = {}
    t0 = time.monotonic()
    loop = ["--no-progress", "--log-every", "50", "--num-workers", "1", "--seed", str(args.seed)]
    reused_seconds = None
    if args.reuse:
        prepared = check_reusable(args.reuse, args)
        with open(os.path.join(args.reuse, PREPARED)) as f:
            reused_seconds = json.load(f).get("stage_seconds")
        os.makedirs(work, exist_ok=True)
        print(f"caption_learning: data, TEE, features and corpus from {args.reuse}", file=sys.stderr, flush=True)
    else:
        prepared = prepared_paths(work)
        tr = write_dataset(work, args.train_images, seed=args.seed + 1, size=args.scene_size, subset="train",
                           prefix="train-")
        write_held_out(work, args.val_images, seed=args.seed + 2, size=args.scene_size)
        images = prepared["images"]
        write_labels(tr["captions_json"], images, os.path.join(work, "labels", "labels"))
        times["data"] = round(time.monotonic() - t0, 1)

        stage("train_tee", train_tee, [
            "--images", tr["images_csv"], "--annotations", tr["boxes_csv"], "--classes", tr["classes_csv"],
            "--tee", "tee-tiny", "--image-size", "128", "--output", os.path.join(work, "tee"),
            "--max-steps", str(args.tee_steps), "--batch-size", "16", "--lr", "2e-3",
            "--warmup-steps", str(min(100, args.tee_steps // 10)), "--checkpoint-every", str(args.tee_steps),
            "--class-agnostic-boxes" if args.class_agnostic_boxes else "--no-class-agnostic-boxes", *loop],
            times)
        stage("extract_features", extract_features, [
            "--runner", "DirectRunner", "--input", tr["images_csv"], "--image-root", images,
            "--tee", prepared["tee"], "--output", os.path.join(work, "features"), "--batch-size", "32",
            "--decode-size", "160"], times)
        stage("build_corpus", build_corpus, [
            "--runner", "DirectRunner", "--labels", os.path.join(work, "labels", "labels"),
            "--features", os.path.join(work, "features", "features"), "--output", prepared["corpus"],
            "--val-fraction", "0.05", "--shard-rows", "500"], times)
        with open(os.path.join(work, PREPARED), "w") as f:
            json.dump({**{k: getattr(args, k) for k in DATA_SETTINGS}, "stage_seconds": times}, f, indent=2)
    images, tee_dir, corpus = prepared["images"], prepared["tee"], prepared["corpus"]
    scored_captions = prepared["val_captions" if args.split == "validation" else "test_captions"]
    common = ["--batch-size", str(args.batch_size), "--checkpoint-every", "100000", *loop]
    stage("train_student", pretrain, [
        "--corpus", corpus, "--tee", tee_dir, "--init", "random", "--fusion", args.fusion,
        *([] if args.embedding_rank is None else ["--embedding-rank", str(args.embedding_rank)]),
        "--max-caption-tokens", "20", "--max-tag-tokens", "8", "--max-regions", "20",
        "--output", os.path.join(work, "pretrain"), "--max-steps", str(args.pretrain_steps), "--lr", "5e-4",
        "--warmup-steps", str(args.pretrain_steps // 10), *common], times)
    stage("finetune_caption", finetune, [
        "--init", os.path.join(work, "pretrain"), "--train", corpus,
        "--output", os.path.join(work, "caption"), "--max-steps", str(args.finetune_steps), "--lr", "5e-4",
        "--warmup-steps", str(args.finetune_steps // 20), "--mask-prob", str(args.mask_prob),
        "--max-masked", str(args.max_masked), *common], times)

    from models.captioning import load_student_captioner

    t = time.monotonic()
    trained = load_student_captioner(os.path.join(work, "caption"))
    after = evaluate(trained, scored_captions, images, beam_size=args.beam_size, meteor=not args.no_meteor)
    times["evaluate_trained"] = round(time.monotonic() - t, 1)
    total = round(time.monotonic() - t0, 1)
    per_image = per_image_cider(scored_captions, after["predictions"])
    low, high = bootstrap_interval(list(per_image.values()), seed=args.seed)

    # the same architecture with nothing learned: random fusion over an untrained TEE
    c = trained.config
    tee, _ = load_tee(f"tiny:{TEE.from_pretrained(tee_dir).config.name}", cache_dir=os.path.join(work, "cache"))
    raw, tok = build_student("random", tee, seed=args.seed, hidden_size=c.hidden_size, num_layers=c.num_layers,
                             num_heads=c.num_heads, intermediate_size=c.intermediate_size,
                             max_caption_tokens=c.max_caption_tokens, max_tag_tokens=c.max_tag_tokens,
                             max_regions=c.max_regions, embedding_rank=c.embedding_rank, task="captioning")
    before = evaluate(StudentCaptioner(raw, tok, "untrained"), scored_captions, images, beam_size=args.beam_size,
                      meteor=not args.no_meteor)

    s, u = after["results"]["student vs references"], before["results"]["student vs references"]
    samples = list(after["predictions"].items())[:5]
    cider_ci = {"low": low, "high": high, "level": 0.95, "resamples": BOOTSTRAP_RESAMPLES,
                "per_image_mean": sum(per_image.values()) / len(per_image)}
    result = {"split": args.split, "seed": args.seed, "trained": s, "untrained": u,
              "trained_cider_d_bootstrap": cider_ci, "total_seconds": total,
              "stage_seconds": times,
              "reused": args.reuse and {"from": args.reuse, "stage_seconds": reused_seconds},
              "threads": torch.get_num_threads(), "train_images": args.train_images, "val_images": after["images"],
              "config": {"tee": "tee-tiny @128 px", "tee_steps": args.tee_steps,
                         "class_agnostic_boxes": args.class_agnostic_boxes, "fusion": args.fusion,
                         "pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps,
                         "embedding_rank": args.embedding_rank, "batch_size": args.batch_size, "mask_prob": args.mask_prob, "max_masked": args.max_masked,
                         "beam_size": args.beam_size,
                         "fusion_parameters": sum(p.numel() for n, p in trained.model.named_parameters()
                                                  if not n.startswith("tee."))},
              "samples": [{"image_id": i, "student": p["caption"]} for i, p in samples], "work": work,
              "per_image_cider_d": per_image}
    if args.export:
        try:
            result["export"] = export_parity(trained, os.path.join(work, "caption"), work, scored_captions, images,
                                             after, per_image, args, times)
        except SystemExit as e:  # an export that fails its own check: the learning results stand, and say so
            result["export"] = {"failed": str(e)}
    names = [k for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D") if k in s]
    print(f"\n| student ({args.split} split, {after['images']} synthetic scenes, seed {args.seed}) | "
          + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    print("| untrained (same architecture) | " + " | ".join(f"{u[k]:.3f}" for k in names) + " |")
    print("| trained end to end | " + " | ".join(f"{s[k]:.3f}" for k in names) + " |")
    print(f"\ntrained CIDEr-D {s['CIDEr-D']:.3f}, 95% bootstrap interval over {len(per_image)} {args.split} images "
          f"[{low:.3f}, {high:.3f}] ({BOOTSTRAP_RESAMPLES} resamples)")
    print(f"wall time {total / 60:.1f} min on {torch.get_num_threads()} threads, target CIDEr-D >= 1.0 "
          f"within 30 min: {'met' if s['CIDEr-D'] >= 1.0 and total <= 1800 else 'NOT met'}")
    print("stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"config: {json.dumps(result['config'])}")
    for i, p in samples:
        print(f"  {i}: {p['caption']!r}")
    if args.export and "failed" not in result["export"]:
        print(export_table(result["export"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.export and "failed" in result["export"]:
        print(f"caption_learning: {result['export']['failed']}: the learning results above stand", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
