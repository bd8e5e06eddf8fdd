"""Captioning with the student: attention pattern, decoding, fine-tuning data and launcher, the CLIs."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from benchmarks.caption_learning import write_labels
from benchmarks.synthetic_scenes import write_dataset
from models.captioning import StudentCaptioner, load_student_captioner, tags_from_regions
from models.minivlm import build_student, seq2seq_attention
from models.tee import load_tee
from pipelines.finetune_caption import run as finetune
from pipelines.train.caption_data import CaptionCollate, CaptionStream, MaskingConfig, read_coco_captions
from schemas import FEATURES, features_row
from tests.test_student import write_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_IMAGES = os.path.join(REPO, "data", "sample", "images")


@pytest.fixture(scope="module")
def tee(tmp_path_factory):
    return load_tee("tiny", cache_dir=str(tmp_path_factory.mktemp("cache")))[0]


@pytest.fixture(scope="module")
def captioner(tee):
    model, tok = build_student("tiny", tee, seed=3, task="captioning", max_caption_tokens=12, max_tag_tokens=6,
                               max_regions=20)
    return StudentCaptioner(model.eval(), tok, "tiny-random test")


def _contexts(d, sizes, seed=0):
    rng = np.random.default_rng(seed)
    feats = [rng.standard_normal((n, d)).astype(np.float32) for n in sizes]
    boxes = []
    for n in sizes:
        xy = rng.uniform(0, 0.5, (n, 2))
        boxes.append(np.concatenate([xy, xy + rng.uniform(0.1, 0.5, (n, 2))], axis=1).astype(np.float32))
    tags = [["dog", "grass"], [], ["person"], ["car", "road", "sky"], ["tree"]][:len(sizes)]
    return feats, boxes, tags


# ---- the attention pattern --------------------------------------------------------------

def test_seq2seq_attention_is_exactly_the_intended_matrix():
    # 3 caption positions ([CLS] w1 [SEP]), then 3 context positions (a tag, [SEP], a region)
    expected = torch.tensor([
        [1, 0, 0, 1, 1, 1],  # [CLS]: itself + context
        [1, 1, 0, 1, 1, 1],  # w1: the caption up to itself + context
        [1, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],  # tags and regions: context only, never the caption
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(seq2seq_attention(3, 3), expected)


def test_context_never_sees_the_caption_and_the_caption_is_causal(captioner):
    """Behaviour through the real encoder: change one caption token and see who notices."""
    from models.captioning import region_inputs, text_inputs

    m, c = captioner.model, captioner.config
    feats, boxes, _ = _contexts(c.region_feature_dim, [7])
    words = [2000, 2001, 2002, 2003]
    a = text_inputs(c, [[c.cls_token_id, *words, c.sep_token_id]], [[3000, 3001]])
    b = text_inputs(c, [[c.cls_token_id, *words[:2], 2999, words[3], c.sep_token_id]], [[3000, 3001]])
    r = region_inputs(feats, boxes, c.region_feature_dim)
    pattern = seq2seq_attention(c.caption_slot, c.text_length - c.caption_slot + 7)[None]
    with torch.no_grad():
        ha, hb = (m.encode(x["input_ids"], x["token_type_ids"], x["text_mask"], **r, attention=pattern)
                  for x in (a, b))
    changed = (ha - hb).abs().amax(-1)[0]  # (L,)
    assert torch.all(changed[:3] == 0)  # before the changed token (position 3)
    assert torch.all(changed[3:6] > 0)  # the token itself and every later caption token
    assert torch.all(changed[c.caption_slot:] == 0)  # tags and regions


# ---- decoding -------------------------------------------------------------------------------

def test_beam_one_is_greedy(captioner):
    feats, boxes, tags = _contexts(captioner.config.region_feature_dim, [3, 11, 1, 20, 6])
    beam = captioner.caption_regions(feats, boxes, tags, beam_size=1, max_length=10)
    greedy = captioner.caption_regions(feats, boxes, tags, greedy=True, max_length=10)
    assert [c.text for c in beam] == [c.text for c in greedy]
    assert [c.score for c in beam] == pytest.approx([c.score for c in greedy], abs=1e-5)
    assert len({c.text for c in beam}) > 1  # the contexts really differ


@pytest.mark.parametrize("decoding", [dict(beam_size=4), dict(greedy=True)])
def test_a_batch_gives_the_captions_of_one_by_one(captioner, decoding):
    feats, boxes, tags = _contexts(captioner.config.region_feature_dim, [3, 11, 1, 20, 6], seed=1)
    together = captioner.caption_regions(feats, boxes, tags, max_length=10, **decoding)
    alone = [captioner.caption_regions([f], [b], [t], max_length=10, **decoding)[0]
             for f, b, t in zip(feats, boxes, tags)]
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.score for c in together] == pytest.approx([c.score for c in alone], abs=1e-4)


def test_images_of_any_size_caption_in_a_batch_as_alone(captioner):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((60, 80), (120, 45), (33, 33))]
    together = captioner(images, beam_size=3, max_length=8)
    alone = [captioner([img], beam_size=3, max_length=8)[0] for img in images]
    assert [(c.text, c.tags) for c in together] == [(c.text, c.tags) for c in alone]


def test_beam_search_keeps_its_length_and_vocabulary_bounds(captioner):
    feats, boxes, tags = _contexts(captioner.config.region_feature_dim, [4, 9])
    tok = captioner.tokenizer
    for c in captioner.caption_regions(feats, boxes, tags, beam_size=3, max_length=5):
        ids = tok(c.text, add_special_tokens=False)["input_ids"]
        assert 1 <= len(ids) <= 5
        assert not set(ids) & set(tok.all_special_ids)
    with pytest.raises(ValueError, match="max_length"):
        captioner.caption_regions(feats, boxes, tags, max_length=13)


def test_tags_are_the_distinct_confident_region_names_best_first():
    names = ["dog", "grass", "dog", "cat", "sky"]
    scores = [0.5, 0.9, 0.95, 0.1, 0.3]
    assert tags_from_regions(names, scores, 0.2) == ["dog", "grass", "sky"]
    assert tags_from_regions(names, scores, 0.99) == []  # a teacher-free "nothing found" is allowed
    # With an attribute head the tags carry each region's attributes: two circles of two colours are two tags.
    assert tags_from_regions(["circle", "circle", "square"], [0.9, 0.8, 0.7], 0.2,
                             [["blue", "small"], ["red"], []]) == ["blue small circle", "red circle", "square"]


# ---- fine-tuning data -------------------------------------------------------------------------

def test_collate_masks_only_caption_words_and_the_closing_sep(captioner):
    c, tok = captioner.config, captioner.tokenizer
    from pipelines.train.caption_data import CaptionSample

    feats, boxes, _ = _contexts(c.region_feature_dim, [5] * 40)
    samples = [CaptionSample(f"i{i}", "a dog runs on the green grass", ["dog"], f, b, seed=i)
               for i, (f, b) in enumerate(zip(feats, boxes))]
    batch = CaptionCollate(tok, c, MaskingConfig(mask_prob=0.3, max_masked=3))(samples)
    labels, ids = batch["caption_labels"], batch["input_ids"]
    words = tok("a dog runs on the green grass", add_special_tokens=False)["input_ids"]
    caption = torch.tensor([c.cls_token_id, *words, c.sep_token_id])
    n = len(caption)
    chosen = labels != -100
    assert torch.all(chosen.sum(1) == min(3, round(0.3 * (n - 1))))
    assert not chosen[:, 0].any() and not chosen[:, n:].any()  # never [CLS], never tags or padding
    assert torch.equal(labels[chosen], caption.expand(len(samples), -1)[chosen[:, :n]])
    assert (ids[chosen] == c.mask_token_id).float().mean() > 0.6
    assert torch.all(batch["token_type_ids"][:, c.caption_slot:] == 1)
    assert torch.all(ids[~chosen][:, None].ne(-1))  # sanity: shapes line up


def test_coco_captions_and_features_make_samples_with_tee_tags(tee, tmp_path):
    d = tee.config.feature_dim
    coco = {"images": [{"id": 7, "file_name": "train/abc.jpg"}, {"id": 8, "file_name": "def.jpg"}],
            "annotations": [{"image_id": 7, "caption": "a cat"}, {"image_id": 7, "caption": "the cat"},
                            {"image_id": 8, "caption": "a dog"}, {"image_id": 99, "caption": "nowhere"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    refs = read_coco_captions(str(tmp_path / "c.json"))
    assert refs["abc"] == refs["7"] == ["a cat", "the cat"]
    rows = [features_row(image_id=i, source_uri=f"/x/{i}.jpg", sha256="0" * 64, width=10, height=10,
                         boxes=np.array([[0, 0, .5, .5], [.5, .5, 1, 1]], np.float32),
                         scores=np.array([0.9, 0.1], np.float32), labels=["/m/c", "/m/g"], names=["cat", "grass"],
                         features=np.ones((2, d), np.float32), extractor="e", extractor_source="test")
            for i in ("abc", "zzz")]
    os.makedirs(tmp_path / "features")
    pq.write_table(FEATURES.to_table(rows), tmp_path / "features" / "part-0.parquet")
    stream = CaptionStream([str(tmp_path / "features" / "part-0.parquet")], references=refs, feature_dim=d,
                           max_regions=20, tag_min_score=0.2, seed=0, batch_size=1)
    samples = [stream.load(r, np.random.default_rng(0)) for r in stream.items(0, 1, 0)]
    ok = [s for s in samples if s is not None]
    assert [s.image_id for s in ok] == ["abc"] and ok[0].caption in ("a cat", "the cat")
    assert ok[0].tags == ["cat"] and ok[0].features.shape == (2, d)
    assert stream.skipped == {"no caption": 1}


# ---- the launcher and the CLIs ------------------------------------------------------------------

def _finetune_args(init, train, out, steps=30, *extra):
    return ["--init", str(init), "--train", str(train), "--output", str(out), "--max-steps", str(steps),
            "--batch-size", "8", "--lr", "2e-3", "--warmup-steps", "0", "--num-workers", "0", "--no-progress",
            "--log-every", "5", "--mask-prob", "0.3", *map(str, extra)]


@pytest.fixture(scope="module")
def finetuned(tee, tmp_path_factory):
    """A tiny pre-trained student, a corpus of its TEE's features, and a 30-step fine-tuning run."""
    root = tmp_path_factory.mktemp("finetune")
    model, tok = build_student("tiny", tee, seed=0)
    model.save_pretrained(str(root / "pretrained"), tok)
    write_corpus(root / "corpus", tee)
    assert finetune(_finetune_args(root / "pretrained", root / "corpus", root / "ckpt")) == 0
    return root


def test_finetuning_learns_and_writes_a_captioning_checkpoint(finetuned):
    rows = [json.loads(line) for line in open(finetuned / "ckpt" / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    assert train[-1]["caption_loss"] < train[0]["caption_loss"]
    assert any(r["split"] == "val" and "val_caption_loss" in r for r in rows)
    captioner = load_student_captioner(str(finetuned / "ckpt"))  # CKPT2 or CKPT2/model both work
    assert captioner.config.task == "captioning"
    assert captioner.config.tag_min_score == captioner.model.tee.config.score_thresh
    assert captioner.config.extractor_id == captioner.model.tee.extractor_id()
    # loaded to caption: the TEE's batch norms are folded, its id kept, and the folded form is never saved
    assert captioner.model.tee.folded
    with pytest.raises(RuntimeError, match="folded for inference"):
        captioner.model.save_pretrained(str(finetuned / "never-written"))
    assert not (finetuned / "never-written").exists()


def test_finetuning_refuses_bad_inputs_with_one_line(finetuned, tmp_path, capsys):
    cases = [
        (_finetune_args(finetuned / "corpus", finetuned / "corpus", tmp_path / "a"), "not a saved MiniVLM"),
        (_finetune_args(finetuned / "pretrained", tmp_path / "none.json", tmp_path / "b"), "--features"),
        (_finetune_args(finetuned / "pretrained", tmp_path, tmp_path / "c"), "no corpus shards"),
        (_finetune_args(finetuned / "pretrained", finetuned / "corpus", tmp_path / "d", 5, "--tag-min-score", "2"),
         "--tag-min-score"),
    ]
    for argv, match in cases:
        assert finetune(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err


def test_finetuning_refuses_features_of_another_tee(finetuned, tmp_path, capsys):
    other, _ = load_tee("tiny", cache_dir=str(tmp_path / "cache2"))
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    write_corpus(tmp_path / "corpus", other)
    assert finetune(_finetune_args(finetuned / "pretrained", tmp_path / "corpus", tmp_path / "o", 5)) == 2
    assert "--allow-extractor-mismatch" in capsys.readouterr().err


def _caption_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipelines.caption", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_caption_cli_captions_the_bundled_sample(finetuned):
    proc = _caption_cli("--checkpoint", finetuned / "ckpt", SAMPLE_IMAGES, "--batch-size", "4", "--num-beams", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    files = sorted(f for f in os.listdir(SAMPLE_IMAGES) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    assert [line.split("\t")[0] for line in lines] == [os.path.join(SAMPLE_IMAGES, f) for f in files]
    assert all(line.split("\t")[1].strip() for line in lines)


def test_caption_cli_reports_bad_images_and_goes_on(finetuned, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = os.path.join(SAMPLE_IMAGES, sorted(os.listdir(SAMPLE_IMAGES))[0])
    proc = _caption_cli("--checkpoint", finetuned / "ckpt", "--json", "--greedy", tmp_path / "broken.jpg", good,
                        tmp_path / "missing.png")
    assert proc.returncode == 1
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["path"] for o in out] == [good] and out[0]["caption"] and isinstance(out[0]["tags"], list)
    err = [line for line in proc.stderr.splitlines() if line.startswith("caption:")]
    assert err[0].startswith("caption: note:") and "tiny-random" in err[0]  # what made these captions
    assert len(err) == 3 and "broken.jpg" in err[1] and "missing.png" in err[2]


def test_caption_cli_refuses_a_checkpoint_that_cannot_caption(finetuned):
    proc = _caption_cli("--checkpoint", finetuned / "pretrained", SAMPLE_IMAGES)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a captioning one" in proc.stderr


@pytest.mark.slow
def test_evaluate_captions_cli_scores_student_and_teacher(finetuned, tmp_path):
    """On synthetic scenes: the table prints, the JSON holds the three rows, and its numbers are
    the metrics of the predictions it wrote (recomputed here)."""
    from pipelines.data.coco import read_coco_references
    from pipelines.eval.captions import score_captions

    paths = write_dataset(str(tmp_path / "scenes"), 6, seed=5, size=64, subset="validation")
    images = str(tmp_path / "scenes" / "images")
    write_labels(paths["captions_json"], images, str(tmp_path / "labels"))
    proc = subprocess.run([sys.executable, "-m", "pipelines.evaluate_captions", "--checkpoint",
                           str(finetuned / "ckpt"), "--references", paths["captions_json"], "--images", images,
                           "--teacher-labels", str(tmp_path / "labels"), "--output", str(tmp_path / "eval"),
                           "--num-beams", "2", "--no-meteor"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CIDEr-D" in proc.stdout and "student vs teacher" in proc.stdout
    report = json.loads((tmp_path / "eval" / "caption_eval.json").read_text())
    assert set(report["results"]) == {"student vs references", "student vs teacher", "teacher vs references"}
    assert report["captioned"] == report["images"] == 6 and report["teacher_images"] == 6
    # the synthetic teacher is the ground truth: it scores perfectly against the references
    assert report["results"]["teacher vs references"]["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    preds = {json.loads(line)["image_id"]: json.loads(line)["caption"]
             for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()}
    _, refs = read_coco_references(paths["captions_json"])
    again = score_captions(refs, preds, meteor=False)["metrics"]
    assert again == pytest.approx(report["results"]["student vs references"])


@pytest.mark.slow
def test_torchrun_two_processes_finetune_and_resume(finetuned, tmp_path):
    """DDP with the unused contrastive head frozen; then --resume continues the same run."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STAGE": "finetune_caption", "PYTHON": sys.executable}
    script = os.path.join(REPO, "scripts", "train_student.sh")
    for argv in (["--stop-at", "2"], ["--resume"]):
        args = _finetune_args(finetuned / "pretrained", finetuned / "corpus", out, 4, "--checkpoint-every", "2", *argv)
        proc = subprocess.run(["bash", script, "2", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4]
    assert load_student_captioner(str(out)).config.task == "captioning"
