"""Image-text retrieval: the Karpathy split reader (JSON and JSON Lines), the distinct-caption
evaluation pool, and recall@K / median rank against hand-computed values."""
import json

import fsspec
import numpy as np
import pytest

from pipelines.data.retrieval import RetrievalImage, distinct_caption_pool, parse_splits, read_karpathy
from pipelines.eval.retrieval import image_text_recalls, ranks, recall_at_k


def _rec(filename, split, *raws, tokens=None):
    sentences = [{"raw": r, "tokens": r.lower().split()} for r in raws]
    if tokens is not None:
        sentences.append({"tokens": tokens})  # no "raw": the tokens are the caption
    return {"filename": filename, "filepath": "val2014", "split": split, "sentences": sentences, "imgid": 0}


RECORDS = [
    _rec("COCO_val2014_000000391895.jpg", "test", " A man riding a bike. ", "A person on a bicycle"),
    _rec("COCO_train2014_000000000009.jpg", "train", "Food in bowls", tokens=["a", "meal", "on", "a", "tray"]),
    _rec("COCO_val2014_000000000042.jpg", "restval", "A dog", "   ", ""),  # two blank captions dropped
    _rec("COCO_val2014_000000000073.jpg", "val", "A motorbike"),
    _rec("COCO_val2014_000000391895.jpg", "test", "the same image again"),  # duplicate: skipped
    _rec("blank.jpg", "train", " "),  # no caption left: skipped
    {"filepath": "val2014", "split": "test", "sentences": []},  # no filename
    {"filename": "x.jpg", "split": "test", "sentences": "A cat"},  # sentences not a list
    {"filename": "y.jpg", "split": "test", "sentences": [{"raw": 3}]},  # neither raw text nor tokens
    "not a record",
]


def _karpathy(tmp_path, records=RECORDS, name="dataset_coco.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"images": records, "dataset": "coco"}))
    return str(path)


def test_karpathy_json_reads_ids_captions_and_counts(tmp_path):
    images, stats = read_karpathy(_karpathy(tmp_path))
    assert [(i.image_id, i.split) for i in images] == [
        ("COCO_val2014_000000391895", "test"), ("COCO_train2014_000000000009", "train"),
        ("COCO_val2014_000000000042", "restval"), ("COCO_val2014_000000000073", "val")]
    assert images[0].captions == ["A man riding a bike.", "A person on a bicycle"]  # raw, stripped
    assert images[1].captions == ["Food in bowls", "a meal on a tray"]  # tokens joined where raw is missing
    assert images[2].captions == ["A dog"]
    assert stats.to_dict() == {"images": 4, "captions": 6, "malformed": 4, "blank_captions": 3, "other_splits": 0,
                               "duplicate_images": 1, "without_captions": 1}


def test_karpathy_split_filter(tmp_path):
    path = _karpathy(tmp_path)
    train, stats = read_karpathy(path, parse_splits("train, restval"))
    assert [i.image_id for i in train] == ["COCO_train2014_000000000009", "COCO_val2014_000000000042"]
    # The duplicate (test) and the malformed records never reach the filter; "blank" (train) passes it.
    assert stats.other_splits == 3 and stats.malformed == 4 and stats.without_captions == 1
    test, _ = read_karpathy(path, {"test"})
    assert [i.image_id for i in test] == ["COCO_val2014_000000391895"]
    assert read_karpathy(path, {"nothing"})[0] == []


def test_karpathy_jsonl_counts_bad_lines(tmp_path):
    path = tmp_path / "coco.jsonl"
    lines = [json.dumps(r) for r in RECORDS[:4]] + ["{not json", "", json.dumps(RECORDS[6])]
    path.write_text("\n".join(lines) + "\n")
    images, stats = read_karpathy(str(path))
    assert len(images) == 4 and stats.malformed == 2 and stats.captions == 6


def test_karpathy_reads_fsspec_urls():
    with fsspec.open("memory://retrieval/dataset.json", "w") as f:
        f.write(json.dumps({"images": RECORDS[:2]}))
    images, _ = read_karpathy("memory://retrieval/dataset.json")
    assert [i.image_id for i in images] == ["COCO_val2014_000000391895", "COCO_train2014_000000000009"]


def test_karpathy_bad_files(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(RECORDS))
    with pytest.raises(ValueError, match=r"list\.json is not a Karpathy split file"):
        read_karpathy(str(listed))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"images": {"a": 1}}))
    with pytest.raises(ValueError, match="no top-level object with an 'images' list"):
        read_karpathy(str(wrapped))
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON") as err:
        read_karpathy(str(broken))
    assert isinstance(err.value.__cause__, json.JSONDecodeError)


def test_parse_splits():
    assert parse_splits("train,restval") == {"train", "restval"}
    assert parse_splits(" test ") == {"test"}
    with pytest.raises(ValueError, match="no split named"):
        parse_splits(" , ")


def test_distinct_caption_pool():
    images = [RetrievalImage("a", ["A dog runs.", "x"], "test"), RetrievalImage("b", ["a  DOG runs"], "test"),
              RetrievalImage("c", ["A cat"], "test"), RetrievalImage("d", [], "test"),
              RetrievalImage("e", ["a cat.", "other"], "test"), RetrievalImage("f", ["A bird"], "test")]
    pool = distinct_caption_pool(images, 3)
    # b and e repeat a chosen caption up to case, spacing and the final '.'; d has none.
    assert [(i.image_id, i.captions) for i in pool] == [("a", ["A dog runs."]), ("c", ["A cat"]), ("f", ["A bird"])]
    assert images[0].captions == ["A dog runs.", "x"]  # the input is not changed
    assert [i.image_id for i in distinct_caption_pool(images, 2)] == ["a", "c"]
    assert len(distinct_caption_pool(images, 100)) == 3  # runs out
    with pytest.raises(ValueError, match="pool size must be positive"):
        distinct_caption_pool(images, 0)


# ---- the metrics -----------------------------------------------------------------------------

# 3 images x 4 captions; captions 0 and 1 belong to image 0, 2 to image 1, 3 to image 2.
SCORES = np.array([[0.9, 0.5, 0.9, 0.1],
                   [0.2, 0.8, 0.7, 0.3],
                   [0.4, 0.4, 0.4, 0.4]])
OWNER = [0, 0, 1, 2]


def test_recalls_by_hand_with_ties_and_several_right_captions():
    # Image 0: best right caption 0.9, tied by caption 2 (wrong) -> rank 1 (pessimistic).
    # Image 1: its caption 0.7, caption 1 scores 0.8 -> rank 1. Image 2: all tied -> rank 3.
    assert ranks(SCORES, [{0, 1}, {2}, {3}]).tolist() == [1, 1, 3]
    out = image_text_recalls(SCORES, OWNER, ks=(1, 2, 4))
    assert out["i2t"] == {"R@1": 0.0, "R@2": pytest.approx(2 / 3), "R@4": 1.0, "median_rank": 2.0, "queries": 3}
    # Captions: 0 -> image 0 first (0.9); 1 -> image 0 (0.5) after image 1 (0.8); 2 -> image 1 (0.7)
    # after image 0 (0.9); 3 -> image 2 (0.4) first. Ranks 0, 1, 1, 0.
    assert out["t2i"] == {"R@1": 0.5, "R@2": 1.0, "R@4": 1.0, "median_rank": 1.5, "queries": 4}


def test_right_candidates_do_not_push_each_other_down():
    scores = np.array([[0.5, 0.5, 0.1, 0.5]])
    assert ranks(scores, [{0, 1}]).tolist() == [1]  # only the wrong candidate 3 is ahead
    assert ranks(scores, [{0, 1, 3}]).tolist() == [0]


def test_perfect_reversed_and_constant_scorers():
    n = 12
    perfect = recall_at_k(np.eye(n), [{i} for i in range(n)])
    assert perfect == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "queries": n}
    # Every query's right candidate (0) scores lowest: rank n - 1.
    reversed_ = recall_at_k(np.tile(np.arange(n, dtype=float), (n, 1)), [{0}] * n)
    assert reversed_ == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "median_rank": float(n), "queries": n}
    constant = recall_at_k(np.zeros((3, 3)), [{0}, {1}, {2}], ks=(1, 3))
    assert constant == {"R@1": 0.0, "R@3": 1.0, "median_rank": 3.0, "queries": 3}
    assert recall_at_k(np.zeros((2, 1)), [{0}, {0}], ks=(1,))["R@1"] == 1.0  # one candidate: always right


def test_relevant_as_arrays():
    by_index = recall_at_k(SCORES.T, np.array(OWNER), ks=(1,))
    mask = np.zeros((4, 3), bool)
    mask[np.arange(4), OWNER] = True
    assert by_index == recall_at_k(SCORES.T, mask, ks=(1,)) == recall_at_k(SCORES.T, [{o} for o in OWNER], ks=(1,))


def test_metric_errors():
    with pytest.raises(ValueError, match="query 1 has no relevant candidate"):
        recall_at_k(SCORES, [{0}, set(), {3}])
    with pytest.raises(ValueError, match="relevant has 2 entries for 3 queries"):
        recall_at_k(SCORES, [{0}, {1}])
    with pytest.raises(ValueError, match="out of range"):
        recall_at_k(SCORES, [{0}, {4}, {3}])
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(np.array([[np.nan, 1.0]]), [{0}])
    with pytest.raises(ValueError, match="matrix"):
        recall_at_k(np.zeros(3), [{0}])
    with pytest.raises(ValueError, match="K must be >= 1"):
        recall_at_k(SCORES, [{0}, {1}, {2}], ks=(0,))
    with pytest.raises(ValueError, match="caption_image has 3 entries for 4 captions"):
        image_text_recalls(SCORES, [0, 1, 2])
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        image_text_recalls(SCORES, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="query 2 has no relevant candidate"):
        image_text_recalls(SCORES, [0, 0, 1, 1])  # image 2 has no caption
