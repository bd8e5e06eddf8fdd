"""COCO caption metrics: the same numbers as pycocoevalcap's own COCOEvalCap, sanity of the
scores, precise validation errors, METEOR's JVM closed, and the two reference readers.

Java starts for every tokenization (~0.5 s); METEOR's JVM takes 10 s or more to load
its paraphrase table, so METEOR runs in one test only.
"""
import json
import logging
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.coco import read_coco_references
from pipelines.eval import captions as cm
from schemas import LABELS, labels_row

# Case, punctuation, '&', hyphens and an apostrophe: the PTB tokenizer has work to do.
REFERENCES = {
    "1": ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean!",
          "Man on a surfboard, riding an ocean wave", "a person SURFING on a big wave"],
    "2": ["Two dogs play with a frisbee in the park.", "Dogs playing in the grass.", "Two brown dogs chase a Frisbee"],
    "3": ["A plate of food with broccoli and rice.", "A white plate topped with rice, broccoli & chicken."],
    "4": ["A red double-decker bus drives down the street.", "A bus on a city street.",
          "The big red bus is parked by the curb.", "A bus's driver waits; the red bus is parked.",
          "red bus"],
    "5": ["A cat sleeping on a laptop keyboard.", "A kitten naps on top of an open laptop.", "Cat lying on a computer"],
}
PREDICTIONS = {
    "1": "A man riding a surfboard on a wave.",
    "2": "two dogs playing with a Frisbee",
    "3": "a bowl of soup on a table",  # wrong
    "4": "A red bus driving down a city street.",
    "5": "",  # empty: allowed, scores 0
}
OURS_TO_COCO = {"BLEU-1": "Bleu_1", "BLEU-2": "Bleu_2", "BLEU-3": "Bleu_3", "BLEU-4": "Bleu_4",
                "METEOR": "METEOR", "ROUGE-L": "ROUGE_L", "CIDEr-D": "CIDEr"}


class _Stub:
    """Stands in for a pycocoevalcap scorer in COCOEvalCap's list; scores nothing."""

    def __init__(self, name):
        self.name = name

    def method(self):
        return self.name

    def compute_score(self, gts, res):
        return 0.0, [0.0] * len(gts)


def _cocoevalcap(meteor=None):
    """pycocoevalcap's own COCOEvalCap.evaluate on REFERENCES/PREDICTIONS.

    Its code path runs as is (pycocotools' COCO objects, its PTBTokenizer, the scorers
    in its order, setEval/setImgToEvalImgs); only SPICE is stubbed out (it downloads
    CoreNLP models on first use), and METEOR is the given instance or a stub.
    """
    import pycocoevalcap.eval as coco_eval_module
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {
        "images": [{"id": int(i), "file_name": f"{i}.jpg"} for i in REFERENCES],
        "annotations": [{"id": 100 * int(i) + k, "image_id": int(i), "caption": c}
                        for i, refs in REFERENCES.items() for k, c in enumerate(refs)],
    }
    coco.createIndex()
    res = coco.loadRes([{"image_id": int(i), "caption": c} for i, c in PREDICTIONS.items()])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(coco_eval_module, "Spice", lambda: _Stub("SPICE"))
        mp.setattr(coco_eval_module, "Meteor", lambda: meteor or _Stub("METEOR"))
        evaluator = coco_eval_module.COCOEvalCap(coco, res)
        evaluator.evaluate()
    return evaluator


def _assert_same(result, coco_eval, names):
    assert result["images"] == len(REFERENCES)
    assert set(result["metrics"]) == set(names)
    for name in names:
        assert result["metrics"][name] == pytest.approx(coco_eval.eval[OURS_TO_COCO[name]], abs=1e-9), name
    assert set(result["per_image"]) == set(REFERENCES)
    for image_id, scores in result["per_image"].items():
        theirs = coco_eval.imgToEval[int(image_id)]
        assert set(scores) == set(names)
        for name in names:
            assert scores[name] == pytest.approx(theirs[OURS_TO_COCO[name]], abs=1e-9), (image_id, name)


def test_same_numbers_as_cocoevalcap_without_meteor():
    result = cm.score_captions(REFERENCES, PREDICTIONS, meteor=False)
    _assert_same(result, _cocoevalcap(), [m for m in cm.METRICS if m != "METEOR"])
    assert all(isinstance(v, float) for v in result["metrics"].values())
    # Close captions beat the wrong one on every metric; the empty one scores nothing.
    per = result["per_image"]
    for name in result["metrics"]:
        assert per["1"][name] > per["3"][name], name
        assert per["4"][name] > per["3"][name], name
        assert per["5"][name] == 0.0, name


@pytest.mark.slow  # METEOR's JVM loads its paraphrase table: ~10 s idle, 25 s on a busy 2-core box
def test_same_numbers_as_cocoevalcap_with_meteor_and_jvm_closed(monkeypatch):
    # One METEOR JVM serves both sides: in -stdio mode the jar keeps no state between
    # EVAL requests, and both sides still drive it through pycocoevalcap's Meteor class.
    meteor = cm.Meteor()
    coco_eval = _cocoevalcap(meteor)
    assert meteor.meteor_p.returncode is None  # COCOEvalCap leaves closing to Meteor.__del__
    monkeypatch.setattr(cm, "Meteor", lambda: meteor)
    result = cm.score_captions(REFERENCES, PREDICTIONS)
    _assert_same(result, coco_eval, cm.METRICS)
    per = result["per_image"]
    assert per["1"]["METEOR"] > per["3"]["METEOR"] and per["5"]["METEOR"] == 0.0
    # Killed and reaped (no zombie), pipes closed, as soon as the scores were read.
    assert meteor.meteor_p.returncode is not None
    assert meteor.meteor_p.stdout.closed and meteor.meteor_p.stderr.closed


def test_perfect_beats_wrong_without_meteor():
    ids = list(REFERENCES)
    perfect = {i: REFERENCES[i][0] for i in ids}
    wrong = {i: REFERENCES[ids[(k + 1) % len(ids)]][0] for k, i in enumerate(ids)}  # another image's caption
    good = cm.score_captions(REFERENCES, perfect, meteor=False)
    bad = cm.score_captions(REFERENCES, wrong, meteor=False)
    for result in (good, bad):
        assert set(result["metrics"]) == set(cm.METRICS) - {"METEOR"}
        assert all("METEOR" not in s for s in result["per_image"].values())
    # Each prediction equals one reference: every n-gram matches, no brevity penalty.
    assert good["metrics"]["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert bad["metrics"]["BLEU-4"] < 0.2
    assert good["metrics"]["CIDEr-D"] > 3 * bad["metrics"]["CIDEr-D"]
    assert good["metrics"]["ROUGE-L"] > bad["metrics"]["ROUGE-L"]


def test_ptb_tokenize_matches_line_by_line():
    # Java ends a line at \r and U+2028 too; left in, they would shift later captions
    # onto the wrong image (pycocoevalcap replaces only \n).
    got = cm.ptb_tokenize(["Two\rcats, sleeping.", "A dog\u2028runs!", "", "Café crème... (hot)", "end\n"])
    # "-lrb-"/"-rrb-" stay: pycocoevalcap's punctuation list has "-LRB-", but the tokens
    # come out lower-cased, so COCO scores keep them; so do we.
    assert got == ["two cats sleeping", "a dog runs", "", "café crème -lrb- hot -rrb-", "end"]
    assert cm.ptb_tokenize([]) == []


@pytest.mark.parametrize("refs, preds, error, message", [
    ({"a": ["x"], "b": ["y"]}, {"a": "x"}, ValueError, r"1 reference images have no prediction: 'b'"),
    ({"a": ["x"]}, {"a": "x", "q": "z", "p": "z"}, ValueError,
     r"2 predictions are for images not in the references: 'p', 'q'"),
    ({"a": ["x"], "b": []}, {"a": "x", "b": "y"}, ValueError, r"image 'b' has an empty reference list"),
    ({"a": ["x", "  "]}, {"a": "x"}, ValueError, r"reference 1 of image 'a' is not a non-blank string: '  '"),
    ({}, {}, ValueError, r"no references to score against"),
    ({"a": "x"}, {"a": "x"}, TypeError, r"references of image 'a' must be a list of strings, got str"),
    ({"a": ["x"]}, {"a": None}, TypeError, r"prediction for image 'a' must be a string, got NoneType"),
    ({1: ["x"]}, {1: "x"}, TypeError, r"image ids must be strings; got int ids such as 1"),
])
def test_validation_errors(refs, preds, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        cm.score_captions(refs, preds)


def test_unknown_ids_are_listed_a_few_at_a_time():
    preds = {"a": "x", **{f"z{k:02d}": "y" for k in range(12)}}
    with pytest.raises(ValueError, match=r"^12 predictions .*: 'z00', 'z01', 'z02', 'z03', 'z04', \.\.\. \(7 more\)$"):
        cm.score_captions({"a": ["x"]}, preds)


class _DyingMeteor(cm.Meteor):
    """A Meteor whose 'JVM' dies at once, as a JVM without memory would."""

    def __init__(self):
        import subprocess
        import threading

        self.meteor_p = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stderr.write('out of memory'); sys.exit(3)"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lock = threading.Lock()
        _DyingMeteor.last = self


def test_meteor_failure_is_reported_and_cleaned_up(monkeypatch):
    monkeypatch.setattr(cm, "Meteor", _DyingMeteor)
    with pytest.raises(RuntimeError, match=r"METEOR .* failed: .*stderr: out of memory"):
        cm._meteor({"a": ["a dog"]}, {"a": ["a dog"]})
    dead = _DyingMeteor.last
    assert dead.meteor_p.returncode is not None
    # compute_score died holding Meteor's lock; __del__ must not block on it.
    assert dead.lock.acquire(timeout=1)
    dead.lock.release()


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_read_coco_references(tmp_path, caplog):
    path = _write_json(tmp_path / "captions_val.json", {
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
                   {"id": 7, "file_name": "b.jpg"}, {"id": "x9", "file_name": "c.jpg"}],
        "annotations": [{"id": 1, "image_id": 42, "caption": "A dog."},
                        {"id": 2, "image_id": 42, "caption": "A brown dog runs"},
                        {"id": 3, "image_id": "x9", "caption": "A cat"},
                        {"id": 4, "image_id": 999, "caption": "orphan"},
                        {"id": 5, "image_id": 7, "caption": "   "}],
    })
    with caplog.at_level(logging.WARNING, logger="pipelines.data.coco"):
        names, refs = read_coco_references(path)
    assert names == {"42": "COCO_val2014_000000000042.jpg", "7": "b.jpg", "x9": "c.jpg"}
    assert refs == {"42": ["A dog.", "A brown dog runs"], "x9": ["A cat"]}
    assert "skipped 1 annotations of unknown images and 1 blank captions; 1 images have no caption" in caplog.text


def test_read_coco_references_from_an_fsspec_url():
    import fsspec

    with fsspec.open("memory://coco/captions.json", "w") as f:
        json.dump({"images": [{"id": 1, "file_name": "a.jpg"}],
                   "annotations": [{"image_id": 1, "caption": "a"}]}, f)
    assert read_coco_references("memory://coco/captions.json") == ({"1": "a.jpg"}, {"1": ["a"]})


@pytest.mark.parametrize("data, message", [
    ({"images": []}, r"is not a COCO captions file: no 'annotations' list"),
    ([], r"is not a COCO captions file: no 'images' or 'annotations' list"),
    ({"images": [{"id": 1}], "annotations": []}, r"images\[0\] needs an 'id' and a 'file_name'"),
    ({"images": [{"id": 1, "file_name": "a"}, {"id": "1", "file_name": "b"}], "annotations": []},
     r"image id '1' appears more than once in 'images'"),
    ({"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1}]},
     r"annotations\[0\] needs an 'image_id' and a 'caption'"),
])
def test_read_coco_references_rejects_malformed_files(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        read_coco_references(_write_json(tmp_path / "bad.json", data))


def _lab(image_id, captions):
    row = labels_row(image_id=image_id, source_uri=f"/img/{image_id}.jpg", sha256="s0", width=40, height=30,
                     captions=[{"text": t, "score": s} for t, s in captions],
                     tags=[{"label": "/m/01", "name": "dog", "score": 0.9}], captioner="cap-1", tagger="tag-1",
                     teacher_params={"caption": {"num_beams": 3}})
    return LABELS.validate_row(row)


def _write_labels(folder, rows, name):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=LABELS.arrow), folder / name)


def test_teacher_references(tmp_path, caplog):
    labels = tmp_path / "labels"
    _write_labels(labels, [
        _lab("a", [("a dog on grass", -0.9), ("a dog", -0.2), ("a brown dog", -0.5)]),
        _lab("b", [("a cat", -0.1)]),
        _lab("blank", [("  ", -0.1), ("", -0.3)]),
    ], "part-0.parquet")
    _write_labels(labels, [
        _lab("c", [("a bus", -0.3), ("", -0.1)]),
        _lab("a", [("a second labeling run", -0.1)]),
    ], "part-1.parquet")
    wanted = {"a", "c", "blank", "not-labeled"}
    with caplog.at_level(logging.WARNING, logger=cm.__name__):
        refs = cm.teacher_references(str(labels), wanted)
    # Best first, blank captions dropped; "b" was not asked for; the first row of "a" wins.
    assert refs == {"a": ["a dog", "a brown dog", "a dog on grass"], "c": ["a bus"]}
    assert "1 duplicate labels rows" in caplog.text
    assert cm.teacher_references(str(labels), wanted, top=1) == {"a": ["a dog"], "c": ["a bus"]}
    assert cm.teacher_references(str(labels / "part-1.parquet"), {"a"}) == {"a": ["a second labeling run"]}
    assert cm.teacher_references(str(labels), set()) == {}
    # None: every image of the table (blank-only "blank" still left out, "a" still its first row)
    assert cm.teacher_references(str(labels), None, top=1) == {"a": ["a dog"], "b": ["a cat"], "c": ["a bus"]}


def test_teacher_references_rejects_bad_arguments(tmp_path):
    from schemas import SchemaVersionError

    with pytest.raises(ValueError, match=r"^no labels Parquet files at "):
        cm.teacher_references(str(tmp_path / "nothing"), {"a"})
    _write_labels(tmp_path / "labels", [_lab("a", [("a dog", -0.1)])], "part-0.parquet")
    with pytest.raises(ValueError, match=r"^top must be a positive integer or None, got 0$"):
        cm.teacher_references(str(tmp_path / "labels"), {"a"}, top=0)
    with pytest.raises(TypeError, match=r"^image ids must be strings; got int ids such as 5$"):
        cm.teacher_references(str(tmp_path / "labels"), {5})
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(pa.table({"image_id": ["a"], "captions": [[{"text": "x"}]]}), other / "part-0.parquet")
    with pytest.raises(SchemaVersionError, match="expected a 'labels' table"):
        cm.teacher_references(str(other), {"a"})


def test_format_table():
    table = cm.format_table({
        "student vs references": {"BLEU-4": 0.31234, "CIDEr-D": 1.05, "METEOR": 0.25},
        "student vs teacher": {"BLEU-4": 0.5, "CIDEr-D": 12.3456},
    })
    assert table.splitlines() == [
        "                       BLEU-4  METEOR  CIDEr-D",
        "student vs references   0.312   0.250    1.050",
        "student vs teacher      0.500       -   12.346",
    ]
    with pytest.raises(ValueError, match="no results to format"):
        cm.format_table({})


def test_length_stats_and_their_table():
    stats = cm.length_stats(["A dog.", "a man riding a wave on a surfboard", "one two three four five six seven "
                             "eight nine ten eleven twelve", "In this image I can see " + "word " * 80])
    # words split at whitespace as written: 2, 8, 12, 86
    assert stats == {"captions": 4, "min": 2, "median": 10.0, "mean": 27.0, "max": 86, "histogram": {
        "0": 0, "1-5": 1, "6-10": 1, "11-15": 1, "16-20": 0, "21-30": 0, "31-40": 0, "41-60": 0, "61-80": 0,
        "81+": 1}}
    assert cm.length_stats(["", "  "])["histogram"]["0"] == 2
    none = cm.length_stats([])
    assert none["captions"] == 0 and none["min"] is none["median"] is none["mean"] is none["max"] is None
    table = cm.format_lengths({"teacher": cm.length_stats(["a b c", "a b c d e f"]), "references": none})
    assert table.splitlines() == [
        "words per caption  captions  min  median  mean  max  1-5  6-10",
        "teacher                   2    3     4.5   4.5    6    1     1",
        "references                0    -       -     -    -    0     0",
    ]
