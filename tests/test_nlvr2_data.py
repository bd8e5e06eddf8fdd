"""NLVR2: the official JSON Lines rows and LXMERT's preprocessed rows, as lines or an array,
every accepted label kind, the image ids, and malformed records counted, never fatal."""
import json

import pytest

from pipelines.data.nlvr2 import Statement, read_nlvr2

OFFICIAL = [
    {"identifier": "dev-850-0-0", "sentence": "There are two dogs. ", "label": "True", "left_url": "http://l",
     "right_url": "http://r", "writer": "103", "synset": "n02084071", "query": "dogs 10"},
    {"identifier": "dev-850-0-1", "sentence": "A dog is sleeping.", "label": "False"},
    {"identifier": "test1-12-3-2", "sentence": "Hidden label."},  # the hidden test set: no label
]
LXMERT = [
    {"identifier": "dev-850-0-0", "img0": "dev-850-0-img0", "img1": "dev-850-0-img1", "sent": "There are two dogs.",
     "label": 1},
    {"identifier": "train-1-1-0", "img0": "abc", "img1": "def", "sent": "Both have a cat.", "label": 0},
]


def _lines(tmp_path, rows, name="dev.json", extra=()):
    path = tmp_path / name
    path.write_text("\n".join([json.dumps(r) for r in rows] + list(extra)) + "\n")
    return str(path)


def test_official_rows_name_images_from_the_identifier(tmp_path):
    # The official release is JSON Lines in a file named .json.
    statements, stats = read_nlvr2(_lines(tmp_path, OFFICIAL))
    assert statements == [
        Statement("dev-850-0-0", "There are two dogs.", "dev-850-0-img0", "dev-850-0-img1", True),
        Statement("dev-850-0-1", "A dog is sleeping.", "dev-850-0-img0", "dev-850-0-img1", False),
        Statement("test1-12-3-2", "Hidden label.", "test1-12-3-img0", "test1-12-3-img1", None)]
    assert stats.to_dict() == {"statements": 3, "malformed": 0, "unlabeled": 1}


def test_lxmert_rows_name_their_images(tmp_path):
    statements, stats = read_nlvr2(_lines(tmp_path, LXMERT, "valid.jsonl"))
    assert [(s.identifier, s.sentence, s.left, s.right, s.label) for s in statements] == [
        ("dev-850-0-0", "There are two dogs.", "dev-850-0-img0", "dev-850-0-img1", True),
        ("train-1-1-0", "Both have a cat.", "abc", "def", False)]
    assert stats.malformed == 0 and stats.unlabeled == 0


def test_array_form(tmp_path):
    path = tmp_path / "valid.json"
    path.write_text(json.dumps(LXMERT + OFFICIAL, indent=2))
    statements, stats = read_nlvr2(str(path))
    assert [s.identifier for s in statements] == [r["identifier"] for r in LXMERT + OFFICIAL]
    assert stats.statements == 5 and stats.unlabeled == 1
    one = tmp_path / "one.json"  # a single statement, pretty-printed
    one.write_text(json.dumps(OFFICIAL[0], indent=2))
    assert read_nlvr2(str(one))[0][0].left == "dev-850-0-img0"


@pytest.mark.parametrize("label, expected", [
    ("True", True), ("False", False), ("true", True), (" FALSE ", False), (True, True), (False, False),
    (1, True), (0, False), (None, None),
])
def test_accepted_labels(tmp_path, label, expected):
    statements, stats = read_nlvr2(_lines(tmp_path, [{**OFFICIAL[0], "label": label}]))
    assert [s.label for s in statements] == [expected] and stats.unlabeled == (expected is None)


def test_malformed_records_and_lines_are_counted(tmp_path):
    bad = [
        {**OFFICIAL[0], "label": "yes"},
        {**OFFICIAL[0], "label": 2},
        {**OFFICIAL[0], "label": 1.0},
        {**OFFICIAL[0], "sentence": "  "},
        {"identifier": "dev-850-0-0", "label": "True"},  # no sentence
        {"sentence": "no identifier", "label": "True"},
        {**OFFICIAL[0], "identifier": "nodash"},  # no statement number to drop, no img0/img1
        {**OFFICIAL[0], "identifier": "dev-850-0-x"},
        {**LXMERT[0], "img1": None},  # one image named only
        {key: v for key, v in LXMERT[0].items() if key != "img1"},
        ["a", "list"],
    ]
    statements, stats = read_nlvr2(_lines(tmp_path, [OFFICIAL[1], *bad], extra=["{not json", "   "]))
    assert [s.identifier for s in statements] == ["dev-850-0-1"]
    assert stats.to_dict() == {"statements": 1, "malformed": len(bad) + 1, "unlabeled": 0}


def test_bad_files(tmp_path):
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": OFFICIAL}, indent=1))
    with pytest.raises(ValueError, match=r"wrapped\.json is not NLVR2: the top-level JSON value is neither"):
        read_nlvr2(str(wrapped))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"identifier": "dev-1-0-0",')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON") as err:
        read_nlvr2(str(broken))
    assert isinstance(err.value.__cause__, json.JSONDecodeError)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    statements, stats = read_nlvr2(str(empty))
    assert statements == [] and stats.to_dict() == {"statements": 0, "malformed": 0, "unlabeled": 0}


def test_consistency_groups_as_the_official_script():
    """lil-lab/nlvr's metrics.py: a sentence is its identifier with the pair field blanked; the same
    words under two sets are two sentences, and a wrong pair spoils only its own sentence."""
    from pipelines.eval.nlvr2 import score, sentence_key

    assert sentence_key("dev-850-2-0") == "dev-850--0" and sentence_key("odd-id") == "odd-id"
    statements = [Statement("dev-1-0-0", "two dogs", "a", "b", True),
                  Statement("dev-1-1-0", "two dogs", "c", "d", False),
                  Statement("dev-2-0-0", "two dogs", "e", "f", True),   # same words, another set
                  Statement("dev-2-0-1", "a cat", "e", "f", True),
                  Statement("dev-2-1-1", "a cat", "g", "h", False)]
    right = {s.identifier: s.label for s in statements}
    wrong_once = {**right, "dev-2-1-1": True}
    assert score(right, statements)["consistency"] == 1.0
    out = score(wrong_once, statements)
    # groups dev-1--0 (right), dev-2--0 (right), dev-2--1 (one pair wrong): 2 of 3; by text it would be 1 of 2
    assert out["consistency"] == pytest.approx(2 / 3) and out["accuracy"] == pytest.approx(4 / 5)
