"""Does a teacher's knowledge, carried through the labeling job, make the student better?

    python -m benchmarks.distillation [--json PATH] [--work DIR] [--arms ...] [--seed N]
        [--device cpu|cuda] [--split test|validation]

The MiniVLM recipe end to end on synthetic scenes (benchmarks.synthetic_scenes), with
teachers trained here (benchmarks.scene_teachers: a BLIP captioner and a SigLIP tagger,
ordinary Hugging Face folders) and every stage through the product's commands:

  teacher set --> train the teachers (cached by digest), train_tee --attributes (shared by every arm)
  pool --> pseudo_label --captioner DIR --tagger DIR --tag-vocab CSV --rerank --> teacher labels
  pool, human set, validation, test --> extract_features (once per split)
  per arm: build_corpus --> train_student (pre-training) --> finetune_caption on the human set
           --> captions of the reported split from their pixels, CIDEr-D per image

Five disjoint splits, each written with its own seed: the teacher set (the teachers and
the TEE learn from it), the unlabelled pool (the teacher labels it; its ground truth is
read only by the oracle arm and to score the pseudo-labels), the human set (what every
student fine-tunes on, like COCO), validation (where every choice of this benchmark was
made: sizes, steps, thresholds) and test (read once per arm, at the end).

The arms differ only in what they pre-train on; each then fine-tunes on the human set
with the same steps:
  human_only         the human set's ground truth alone
  distilled          the pool's teacher labels (captions and tags)
  distilled_no_tags  the same labels with their tags removed (a copy, not a second
                     labeling run); nothing to pollute tags with, so --polluted-tags 0
  oracle             the pool's ground truth
and the teacher itself captions the reported split through the same labeling job.

Tags speak one language: the tagger's vocabulary and the ground-truth tags name objects
as the TEE (with its attribute head) names regions, "red large circle".

Reported (the JSON keys): CIDEr-D per arm with a 95% bootstrap interval, the paired
bootstrap differences distilled - human_only and distilled - distilled_no_tags
(`tags_gain`), oracle_gain_recovered = (distilled - human_only) / (oracle - human_only)
(null, with the reason, when the oracle's own gain is inside its interval),
teacher_retention = distilled / teacher, and the pseudo-labels' quality against the
pool's ground truth (evaluate_captions --teacher-labels, evaluate_tags). Per-image
scores are in the JSON (`per_image`: arm -> image id -> CIDEr-D).

Everything before the arms (data, TEE, teachers, labels, features, corpora) is cached
in --work by a digest of its settings and inputs, so a rerun goes straight to the arms.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict

ARMS = ("human_only", "distilled", "distilled_no_tags", "oracle")
# name: (flag default size, seed offset, Open Images Subset)
SPLITS = {"teacher": (4000, 1, "train"), "pool": (3000, 2, "train"), "human": (300, 3, "train"),
          "validation": (200, 4, "validation"), "test": (500, 5, "test")}
PROG = "distillation"


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """Stages run once per settings: a stage whose record in WORK/stages says it finished with
    the same settings (which name the digests of the stages it reads) is skipped."""

    def __init__(self, work: str):
        self.dir = os.path.join(work, "stages")
        os.makedirs(self.dir, exist_ok=True)
        self.seconds: dict[str, float] = {}
        self.cached: list[str] = []
        self.digests: dict[str, str] = {}

    def run(self, name: str, settings: dict, fn) -> dict:
        """fn() -> a JSON-able result, kept in the record and returned on later runs."""
        key = digest({"name": name, **settings})
        path = os.path.join(self.dir, f"{name}.json")
        if os.path.isfile(path):
            with open(path) as f:
                record = json.load(f)
            if record.get("digest") == key:
                self.cached.append(name)
                self.digests[name] = key
                log(f"{name}: cached ({record['seconds']:.0f} s when it ran)")
                return record["result"]
            os.remove(path)  # stale: whatever it made is made again
        t = time.monotonic()
        result = fn() or {}
        seconds = round(time.monotonic() - t, 1)
        with open(path, "w") as f:
            json.dump({"digest": key, "settings": settings, "result": result, "seconds": seconds}, f, indent=2)
        self.seconds[name] = seconds
        self.digests[name] = key
        log(f"{name}: {seconds:.0f} s")
        return result


def command(name: str, fn, argv: list[str]) -> None:
    """One product command's run(argv), its stdout sent to stderr (this benchmark's stdout is its table);
    anything but exit 0 ends the benchmark."""
    with contextlib.redirect_stdout(sys.stderr):
        rc = fn(argv)
    if rc != 0:
        raise SystemExit(f"{PROG}: {name} failed (exit {rc}): {' '.join(argv)}")


# ---- data ----------------------------------------------------------------------------------

def write_splits(data: str, sizes: dict[str, int], *, seed: int, scene_size: int) -> dict[str, dict]:
    """The five splits in one folder (one image root), file names prefixed by split."""
    from benchmarks.synthetic_scenes import write_dataset

    return {name: write_dataset(data, sizes[name], seed=10 * seed + offset, size=scene_size, subset=subset,
                                prefix=f"{name}-")
            for name, (_, offset, subset) in SPLITS.items()}


def ground_truth_tag(obj: dict) -> tuple[str, str]:
    from benchmarks.scene_teachers import TAG_LABEL_PREFIX, object_tag

    name = object_tag(obj)
    return TAG_LABEL_PREFIX + name.replace(" ", "-"), name


def write_human_labels(captions_json: str, path: str) -> None:
    """Every image's every vocabulary tag as an Open Images human-verified label (Confidence 1 where the
    scene has that object, 0 where it has not): what evaluate_tags scores the tagger against."""
    from benchmarks.scene_teachers import read_scenes, tag_vocabulary

    vocab = tag_vocabulary()
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ImageID", "Source", "LabelName", "Confidence"])
        for s in read_scenes(captions_json):
            present = {ground_truth_tag(o)[0] for o in s["objects"]}
            w.writerows([s["id"], "synthetic", label, int(label in present)] for label, _ in vocab)


def without_tags(labels: str, out_dir: str) -> None:
    """A copy of a labels table with every row's tags emptied (the rest, provenance included, kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.io import parquet_files, read_file

    shutil.rmtree(out_dir, ignore_errors=True)  # parts of an earlier, larger table must not stay
    os.makedirs(out_dir)
    for k, path in enumerate(parquet_files(labels)):
        table = read_file(path)
        i = table.schema.get_field_index("tags")
        empty = pa.array([[] for _ in range(table.num_rows)], type=table.schema.field("tags").type)
        pq.write_table(table.set_column(i, table.schema.field("tags"), empty),
                       os.path.join(out_dir, f"part-{k:05d}.parquet"))


def provenance(labels: str) -> dict[str, list[str]]:
    """The distinct captioner and tagger ids the labels rows name."""
    from schemas import LABELS
    from schemas.io import read_table

    table = read_table(labels, LABELS, columns=["captioner", "tagger"])
    return {c: sorted(set(table.column(c).to_pylist())) for c in ("captioner", "tagger")}


# ---- scoring -------------------------------------------------------------------------------

def score_student(checkpoint: str, captions_json: str, images: str, *, beam_size: int, device: str) -> dict:
    """{image id: CIDEr-D} of the fine-tuned student's captions of the split (from pixels), and examples."""
    from benchmarks.caption_learning import per_image_cider
    from models.captioning import load_student_captioner
    from pipelines.evaluate_captions import evaluate

    captioner = load_student_captioner(checkpoint, device=device)
    report = evaluate(captioner, captions_json, images, beam_size=beam_size, meteor=False)
    if report["failed"]:
        raise SystemExit(f"{PROG}: {len(report['failed'])} images could not be captioned: "
                         f"{list(report['failed'].items())[:3]}")
    predictions = report["predictions"]
    return {"per_image": per_image_cider(captions_json, predictions),
            "examples": {i: predictions[i]["caption"] for i in sorted(predictions)[:5]}}


def score_teacher(labels: str, captions_json: str) -> dict:
    """{image id: CIDEr-D} of the teacher's best caption (the labels' first) on the split's images."""
    from benchmarks.caption_learning import per_image_cider
    from pipelines.data.coco import read_coco_references
    from pipelines.evaluate_captions import coco_teacher_captions

    files, refs = read_coco_references(captions_json)
    teacher = coco_teacher_captions(labels, files, refs)
    # An image the teacher gave no caption (none, or only blank ones) scores as an empty caption: 0.
    missing = sorted(set(refs) - set(teacher))
    predictions = {i: {"caption": teacher[i][0] if i in teacher else ""} for i in refs}
    return {"per_image": per_image_cider(captions_json, predictions), "uncaptioned": missing,
            "examples": {i: predictions[i]["caption"] for i in sorted(predictions)[:5]}}


def summarise(per_image: dict[str, dict[str, float]], seed: int) -> dict:
    """The report's statistics from per-image scores (arm -> image -> CIDEr-D)."""
    import numpy as np

    from benchmarks.caption_learning import (
        BOOTSTRAP_RESAMPLES,
        bootstrap_interval,
        paired_difference,
    )

    out: dict = {"intervals": {}}
    for arm, scores in per_image.items():
        low, high = bootstrap_interval(list(scores.values()), seed=seed)
        out["intervals"][arm] = [low, float(np.mean(list(scores.values()))), high]
    point = {arm: v[1] for arm, v in out["intervals"].items()}

    def paired(a: str, b: str):
        return paired_difference(per_image[a], per_image[b], seed=seed) if a in per_image and b in per_image else None

    out["distilled_minus_human_only"] = paired("distilled", "human_only")
    out["tags_gain"] = paired("distilled", "distilled_no_tags")
    out["oracle_minus_human_only"] = oracle = paired("oracle", "human_only")
    out["oracle_gain_recovered"], out["oracle_gain_recovered_interval"] = None, None
    if oracle is None or out["distilled_minus_human_only"] is None:
        out["oracle_gain_recovered_reason"] = "needs the arms distilled, oracle and human_only"
    elif oracle[2] < 0:
        out["oracle_gain_recovered_reason"] = (f"the oracle is worse than human_only, {oracle[1]:+.3f} "
                                               f"[{oracle[0]:+.3f}, {oracle[2]:+.3f}]: no gain to recover")
    elif oracle[0] <= 0:
        out["oracle_gain_recovered_reason"] = (f"the oracle's own gain over human_only, {oracle[1]:+.3f} "
                                               f"[{oracle[0]:+.3f}, {oracle[2]:+.3f}], is within noise of 0")
    else:
        out["oracle_gain_recovered"] = out["distilled_minus_human_only"][1] / oracle[1]
        ids = sorted(set(per_image["distilled"]) & set(per_image["oracle"]) & set(per_image["human_only"]))
        d, o, h = (np.array([per_image[a][i] for i in ids]) for a in ("distilled", "oracle", "human_only"))
        draws = np.random.default_rng(seed).integers(0, len(ids), size=(BOOTSTRAP_RESAMPLES, len(ids)))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = (d[draws] - h[draws]).mean(1) / (o[draws] - h[draws]).mean(1)
        ratios = ratios[np.isfinite(ratios)]
        out["oracle_gain_recovered_interval"] = [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]
        out["oracle_gain_recovered_reason"] = None
    out["teacher_retention"] = (point["distilled"] / point["teacher"]
                                if "distilled" in point and point.get("teacher") else None)
    return out


def table(result: dict) -> str:
    from pipelines.evaluate_tags import score_text

    split = result["split"]
    rows = [f"\n| {split} split ({result['test_images']} scenes) | CIDEr-D | 95% interval |", "|---|---:|---|"]
    for arm in ("teacher", *ARMS):
        v = result["intervals"].get(arm)
        if v:
            rows.append(f"| {arm} | {v[1]:.3f} | [{v[0]:.3f}, {v[2]:.3f}] |")

    def diff(name, key):
        v = result[key]
        return f"{name}: {v[1]:+.3f} [{v[0]:+.3f}, {v[2]:+.3f}]" if v else f"{name}: -"

    lines = rows + ["", diff("distilled - human_only", "distilled_minus_human_only"),
                    diff("distilled - distilled_no_tags (tags_gain)", "tags_gain"),
                    diff("oracle - human_only", "oracle_minus_human_only")]
    if result["oracle_gain_recovered"] is not None:
        lo, hi = result["oracle_gain_recovered_interval"]
        lines.append(f"oracle_gain_recovered {result['oracle_gain_recovered']:.3f} [{lo:.3f}, {hi:.3f}]")
    else:
        lines.append(f"oracle_gain_recovered: null ({result['oracle_gain_recovered_reason']})")
    if result["teacher_retention"] is not None:
        lines.append(f"teacher_retention (distilled / teacher) {result['teacher_retention']:.3f}")
    q = result["pseudo_labels"]
    c = result["pool_labeling"]
    lines.append(f"pool labeling: {c['labeled']} of {c['distinct_images']} images labeled, {c['failed']} failed "
                 f"{c['failed_by_error_type'] or ''}".rstrip())
    lines.append(f"pseudo-labels on the pool ({q['images']} images): caption CIDEr-D {result['pseudo_label_cider']:.3f}, "
                 f"BLEU-4 {q['captions'].get('BLEU-4', 0):.3f}; tags P {score_text(q['tags']['precision'])} "
                 f"R {score_text(q['tags']['recall'])} F1 {score_text(q['tags']['f1'])} at {q['tags']['threshold']}")
    lines.append(f"teachers: captioner {result['teachers']['captioner']['parameters']:,} parameters, "
                 f"{result['teachers']['captioner']['seconds']:.0f} s; tagger "
                 f"{result['teachers']['tagger']['parameters']:,} parameters, "
                 f"{result['teachers']['tagger']['seconds']:.0f} s")
    lines.append(f"wall time {result['minutes']:.1f} min (cached stages: {', '.join(result['cached']) or 'none'})")
    return "\n".join(lines)


# ---- the benchmark --------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.distillation", description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="where data, models and runs go (default: a temporary directory); "
                                                 "a rerun with the same --work reuses what is cached there")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    ap.add_argument("--split", choices=("test", "validation"), default="test",
                    help="where the arms and the teacher are scored: validation while choosing settings, test "
                         "(read once per arm) for the report")
    ap.add_argument("--seed", type=int, default=0, help="data, teachers, TEE and students (data seeds 10*seed+k)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    g = ap.add_argument_group("splits (scenes)")
    for name, (size, _, _) in SPLITS.items():
        g.add_argument(f"--{name}-images", type=int, default=size)
    g.add_argument("--scene-size", type=int, default=160)
    g.add_argument("--broken-pool-images", type=int, default=0, metavar="K",
                   help="overwrite K pool images with bytes that are no image: the jobs count them as failures")
    t = ap.add_argument_group("teachers and labeling")
    t.add_argument("--captioner-steps", type=int, default=None, help="unset: scene_teachers.CaptionerSettings'")
    t.add_argument("--tagger-steps", type=int, default=None, help="unset: scene_teachers.TaggerSettings'")
    t.add_argument("--num-captions", type=int, default=3, help="pseudo_label --num-captions")
    t.add_argument("--num-beams", type=int, default=5, help="pseudo_label --num-beams")
    t.add_argument("--tag-threshold", type=float, default=0.15, help="pseudo_label --tag-threshold")
    t.add_argument("--max-tags", type=int, default=5, help="pseudo_label --max-tags")
    s = ap.add_argument_group("TEE and students")
    s.add_argument("--tee-steps", type=int, default=500)
    s.add_argument("--pretrain-steps", type=int, default=800)
    s.add_argument("--finetune-steps", type=int, default=500,
                   help="chosen on validation: 250, 500 and 1000 tried on human_only and distilled")
    s.add_argument("--fusion", default="4x256", help="LAYERSxHIDDEN of the random-init fusion")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--beam-size", type=int, default=5, help="the students' beam when they caption the split")
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks import scene_teachers
    from benchmarks.caption_learning import write_labels
    from pipelines.build_corpus import run as build_corpus
    from pipelines.evaluate_captions import run as evaluate_captions
    from pipelines.evaluate_tags import run as evaluate_tags
    from pipelines.extract_features import run as extract_features
    from pipelines.finetune_caption import run as finetune_caption
    from pipelines.pseudo_label import run as pseudo_label
    from pipelines.train_student import run as train_student
    from pipelines.train_tee import run as train_tee

    t0 = time.monotonic()
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="distillation_"))
    stages = Stages(work)
    sizes = {name: getattr(args, f"{name}_images") for name in SPLITS}
    data = os.path.join(work, "data")

    def make_data():
        shutil.rmtree(data, ignore_errors=True)
        written = write_splits(data, sizes, seed=args.seed, scene_size=args.scene_size)
        scene_teachers.write_tag_vocab(os.path.join(data, "tag-vocab.csv"))
        write_human_labels(written["pool"]["captions_json"], os.path.join(data, "pool-human-labels.csv"))
        ids = {n: {s["id"] for s in scene_teachers.read_scenes(written[n]["captions_json"])} for n in SPLITS}
        shared = [(a, b) for a in SPLITS for b in SPLITS if a < b and ids[a] & ids[b]]
        if shared:
            raise SystemExit(f"{PROG}: splits share scenes: {shared}")
        for image_id in sorted(ids["pool"])[:args.broken_pool_images]:
            with open(os.path.join(written["pool"]["images_dir"], f"{image_id}.jpg"), "wb") as f:
                f.write(b"not an image: the labeling and feature jobs fail this one and go on")
        return written

    paths = stages.run("data", {"sizes": sizes, "seed": args.seed, "scene_size": args.scene_size,
                                "broken_pool_images": args.broken_pool_images}, make_data)
    images = paths["teacher"]["images_dir"]
    vocab_csv = os.path.join(data, "tag-vocab.csv")
    device = ["--device", args.device]
    loop = ["--no-progress", "--log-every", "100", "--num-workers", "1", "--seed", str(args.seed), *device]

    # The TEE (with the attribute head, as the task check has it) from the teacher set's boxes: every arm's.
    tee_dir = os.path.join(work, "tee")
    teacher_split = paths["teacher"]
    stages.run("train_tee", {"data": stages.digests["data"], "steps": args.tee_steps, "seed": args.seed,
                             "device": args.device},
               lambda: command("train_tee", train_tee, [
                   "--images", teacher_split["images_csv"], "--annotations", teacher_split["boxes_csv"],
                   "--classes", teacher_split["classes_csv"], "--attributes", teacher_split["attributes_csv"],
                   "--attribute-classes", teacher_split["attribute_classes_csv"], "--tee", "tee-tiny",
                   "--image-size", "128", "--output", tee_dir, "--overwrite", "--max-steps", str(args.tee_steps),
                   "--batch-size", "16", "--lr", "2e-3", "--warmup-steps", str(min(100, args.tee_steps // 10)),
                   "--checkpoint-every", str(args.tee_steps), *loop]))
    tee = os.path.join(tee_dir, "model")

    # The teachers, trained on the teacher set (cached by their own digest inside WORK/teachers too).
    teachers = {}
    for kind, steps in (("captioner", args.captioner_steps), ("tagger", args.tagger_steps)):
        settings = scene_teachers.KINDS[kind](seed=args.seed, **({"steps": steps} if steps else {}))

        def train(kind=kind, settings=settings):
            folder, record = scene_teachers.trained_teacher(
                kind, settings, teacher_split["captions_json"], images, os.path.join(work, "teachers"),
                device=args.device, log=log)
            return {"folder": folder, "seconds": record["seconds"], "parameters": record["parameters"],
                    "settings": record["settings"], "final": record["history"][-1]}

        teachers[kind] = stages.run(f"teacher_{kind}", {"data": stages.digests["data"], "settings": asdict(settings),
                                                        "recipe": scene_teachers.RECIPE_VERSION, "device": args.device},
                                    train)

    # The labeling job over the pool and over the scored split: the teacher folders through --captioner/--tagger.
    label_flags = ["--captioner", teachers["captioner"]["folder"], "--tagger", teachers["tagger"]["folder"],
                   "--tag-vocab", vocab_csv, "--tag-prompt", scene_teachers.TAG_PROMPT, "--rerank",
                   "--num-captions", str(args.num_captions), "--num-beams", str(args.num_beams),
                   "--max-new-tokens", "24", "--tag-threshold", str(args.tag_threshold), "--max-tags",
                   str(args.max_tags)]
    labeled = {}
    for split in ("pool", args.split):
        out = os.path.join(work, "labels", split)
        stages.run(f"label_{split}", {"data": stages.digests["data"], "flags": label_flags, "device": args.device,
                                      "teachers": [stages.digests["teacher_captioner"],
                                                   stages.digests["teacher_tagger"]]},
                   lambda split=split, out=out: command(f"pseudo_label {split}", pseudo_label, [
                       "--runner", "DirectRunner", "--input", paths[split]["images_csv"], "--image-root", images,
                       "--output", out, "--overwrite", "--batch-size", "32", "--decode-size", str(args.scene_size),
                       "--quiet", "--cache-dir", os.path.join(work, "cache"), *label_flags, *device]))
        labeled[split] = os.path.join(out, "labels")

    # Region features of every split a student trains or validates on, once each (the scored split is
    # captioned from its pixels).
    features = {}
    for split in ("pool", "human", "validation"):
        out = os.path.join(work, "features", split)
        stages.run(f"features_{split}", {"data": stages.digests["data"], "tee": stages.digests["train_tee"],
                                         "device": args.device},
                   lambda split=split, out=out: command(f"extract_features {split}", extract_features, [
                       "--runner", "DirectRunner", "--input", paths[split]["images_csv"], "--image-root", images,
                       "--tee", tee, "--output", out, "--overwrite", "--batch-size", "32", "--decode-size",
                       str(args.scene_size), "--quiet", *device]))
        features[split] = out

    # What each arm pre-trains on: a labels table joined with its images' features.
    gt_labels = {}
    # The pool's ground truth is the oracle's alone: written only when that arm runs.
    for split in ("human", "pool") if "oracle" in args.arms else ("human",):
        out = os.path.join(work, "labels", f"{split}-ground-truth", "labels")
        stages.run(f"ground_truth_{split}", {"data": stages.digests["data"]},
                   lambda split=split, out=out: {"rows": write_labels(
                       paths[split]["captions_json"], images, out, tag_of=ground_truth_tag)})
        gt_labels[split] = out
    no_tags = os.path.join(work, "labels", "pool-no-tags", "labels")
    stages.run("labels_no_tags", {"labels": stages.digests["label_pool"]},
               lambda: without_tags(labeled["pool"], no_tags))
    arm_inputs = {"human_only": (gt_labels["human"], "human", "ground_truth_human"),
                  "distilled": (labeled["pool"], "pool", "label_pool"),
                  "distilled_no_tags": (no_tags, "pool", "labels_no_tags"),
                  "oracle": (gt_labels.get("pool"), "pool", "ground_truth_pool")}
    corpora = {}
    for arm in args.arms:
        labels, split, made_by = arm_inputs[arm]
        out = os.path.join(work, "corpus", arm)
        stages.run(f"corpus_{arm}", {"labels": stages.digests[made_by], "features": stages.digests[f"features_{split}"],
                                     "seed": args.seed},
                   lambda labels=labels, split=split, out=out, arm=arm: command(f"build_corpus {arm}", build_corpus, [
                       "--runner", "DirectRunner", "--labels", labels, "--features",
                       os.path.join(features[split], "features"), "--output", out, "--overwrite",
                       "--val-fraction", "0.05", "--shard-rows", "1000", "--seed", str(args.seed)]))
        corpora[arm] = out

    # The pseudo-labels' quality against the pool's ground truth.
    def label_quality():
        out = os.path.join(work, "eval", "pseudo-labels")
        command("evaluate_captions --teacher-labels", evaluate_captions, [
            "--teacher-labels", labeled["pool"], "--references", paths["pool"]["captions_json"], "--no-meteor",
            "--output", out])
        command("evaluate_tags", evaluate_tags, [
            "--labels", labeled["pool"], "--human-labels", os.path.join(data, "pool-human-labels.csv"),
            "--classes", vocab_csv, "--output", out, "--quiet"])
        with open(os.path.join(out, "caption_eval.json")) as f:
            captions = json.load(f)
        with open(os.path.join(out, "tag_eval.json")) as f:
            tags = json.load(f)
        return {"images": captions["images"], "captions": captions["results"]["teacher vs references"],
                "tags": {**{k: tags["overall"][k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")},
                         "threshold": tags["threshold"], "macro_f1": tags["macro_f1"]}}

    quality = stages.run("pseudo_label_quality", {"labels": stages.digests["label_pool"]}, label_quality)

    # The arms: pre-train, fine-tune on the human set, caption the scored split. Never cached.
    scored = paths[args.split]
    per_image, examples, arm_seconds = {}, {}, {}
    teacher_scores = score_teacher(labeled[args.split], scored["captions_json"])
    per_image["teacher"], examples["teacher"] = teacher_scores["per_image"], teacher_scores["examples"]
    common = ["--batch-size", str(args.batch_size), "--checkpoint-every", "100000", "--overwrite", *loop]
    human = paths["human"]
    for arm in args.arms:
        t = time.monotonic()
        pretrain, caption = os.path.join(work, "arms", arm, "pretrain"), os.path.join(work, "arms", arm, "caption")
        command(f"train_student {arm}", train_student, [
            "--corpus", corpora[arm], "--tee", tee, "--init", "random", "--fusion", args.fusion,
            "--max-caption-tokens", "20", "--max-tag-tokens", "15", "--max-regions", "20",
            *(["--polluted-tags", "0"] if arm == "distilled_no_tags" else []),
            "--output", pretrain, "--max-steps", str(args.pretrain_steps), "--lr", "5e-4",
            "--warmup-steps", str(max(1, args.pretrain_steps // 10)), *common])
        command(f"finetune_caption {arm}", finetune_caption, [
            "--init", pretrain, "--train", human["captions_json"], "--features", features["human"],
            "--val", paths["validation"]["captions_json"], "--val-features", features["validation"],
            "--output", caption, "--max-steps", str(args.finetune_steps), "--lr", "5e-4",
            "--warmup-steps", str(max(1, args.finetune_steps // 20)), "--mask-prob", "0.4", "--max-masked", "8",
            *common])
        scores = score_student(caption, scored["captions_json"], images, beam_size=args.beam_size,
                               device=args.device)
        per_image[arm], examples[arm] = scores["per_image"], scores["examples"]
        arm_seconds[arm] = round(time.monotonic() - t, 1)
        log(f"{arm}: CIDEr-D {sum(per_image[arm].values()) / len(per_image[arm]):.3f} on {args.split}, "
            f"{arm_seconds[arm]:.0f} s")

    with open(os.path.join(os.path.dirname(labeled["pool"]), "run.json")) as f:
        counts = json.load(f)["counts"]
    pool_counts = {k: counts[k] for k in ("distinct_images", "labeled", "failed", "failed_by_error_type")}
    stats = summarise(per_image, args.seed)
    point = {arm: v[1] for arm, v in stats["intervals"].items()}
    made = provenance(labeled["pool"])
    result = {
        "split": args.split, "seed": args.seed, "device": args.device,
        "teacher_cider": point["teacher"],
        "pseudo_label_cider": quality["captions"]["CIDEr-D"],
        **{f"{arm}_cider": point.get(arm) for arm in ARMS},
        **stats,
        "labels_captioner": made["captioner"], "labels_tagger": made["tagger"],
        "teachers": teachers, "pseudo_labels": quality, "pool_labeling": pool_counts,
        "test_images": len(per_image["teacher"]),
        "teacher_uncaptioned": teacher_scores["uncaptioned"],
        "minutes": round((time.monotonic() - t0) / 60, 2),
        "stage_seconds": {**stages.seconds, **{f"arm_{a}": s for a, s in arm_seconds.items()}},
        "cached": stages.cached,
        "sizes": sizes,
        "config": {k: getattr(args, k) for k in ("pretrain_steps", "finetune_steps", "tee_steps", "fusion",
                                                  "batch_size", "beam_size", "num_captions", "num_beams",
                                                  "tag_threshold", "max_tags", "scene_size")},
        "examples": examples, "per_image": per_image, "work": work,
    }
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
