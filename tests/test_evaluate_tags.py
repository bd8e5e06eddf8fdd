"""Teacher tags against human-verified Open Images image labels, on a pair small enough to score by hand."""
import itertools
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipelines import evaluate_tags
from pipelines.eval import tags as tag_eval
from schemas import LABELS, labels_row
from tests.conftest import REPO

RUN_PARAMS = {"caption": {"model": "tiny-random/blip"}, "tag": {"model": "tiny-random/siglip", "threshold": 0.1}}
CLASSES = [("/m/a", "Dog"), ("/m/b", "Cat"), ("/m/c", "Car, sports"), ("/m/d", "Tree"), ("/m/e", "Person"),
           ("/m/f", "Fish")]
# The teacher's tags (the run stored everything at or above its threshold 0.1).
TAGS = {
    "img1": [("/m/a", 0.9), ("/m/b", 0.6), ("/m/c", 0.3), ("/m/e", 0.2)],
    "img2": [("/m/a", 0.8), ("/m/d", 0.5)],
    "img3": [("/m/c", 0.7)],  # no human labels: not counted
    "img4": [("/m/b", 0.15)],
}
HUMAN = [  # ImageID, Source, LabelName, Confidence
    ("img1", "verification", "/m/a", 1),  # tagged 0.9: TP
    ("img1", "crowdsource-verification", "/m/a", 1),  # the same class again: counts once
    ("img1", "verification", "/m/b", 0),  # tagged 0.6: FP (a verified negative)
    ("img1", "verification", "/m/d", 1),  # not tagged: FN
    ("img1", "verification", "/m/e", 1),  # tagged 0.2: TP at 0.1, FN at 0.25
    # img1's /m/c (0.3) nobody verified: an unverified tag, ignored
    ("img2", "verification", "/m/a", 0),  # tagged 0.8: FP
    ("img2", "verification", "/m/d", 1),  # tagged 0.5: TP
    ("img2", "verification", "/m/b", 1),  # not tagged: FN
    ("img2", "verification", "/m/e", 0),  # not tagged, negative: a true negative, not scored
    ("img4", "verification", "/m/b", 1),  # tagged 0.15: TP at 0.1, FN at 0.25
    ("img4", "verification", "/m/f", 0),  # not tagged, negative: /m/f never appears in per_class
    ("img9", "verification", "/m/a", 1),  # not in the labels: ignored
]


def write_pair(root, header=True):
    """The labels table (two part files), the human labels and the classes under `root`."""
    names = dict(CLASSES)
    rows = [LABELS.validate_row(labels_row(
        image_id=image_id, source_uri=f"/images/{image_id}.jpg", sha256="0" * 64, width=64, height=48,
        captions=[{"text": "a thing", "score": -1.0}], captioner="tiny-random/blip", tagger="tiny-random/siglip",
        tags=[{"label": label, "name": names[label].lower(), "score": score} for label, score in tags],
        teacher_params=RUN_PARAMS)) for image_id, tags in TAGS.items()]
    os.makedirs(root / "labels", exist_ok=True)
    pq.write_table(LABELS.to_table(rows[:2]), root / "labels" / "part-00000.parquet")
    pq.write_table(LABELS.to_table(rows[2:]), root / "labels" / "part-00001.parquet")
    with open(root / "human.csv", "w") as f:
        f.write("ImageID,Source,LabelName,Confidence\n")
        f.writelines(f"{i},{s},{label},{c}\n" for i, s, label, c in HUMAN)
    with open(root / "classes.csv", "w") as f:
        f.write("LabelName,DisplayName\n" if header else "")
        f.writelines(f'{label},"{name}"\n' for label, name in CLASSES)
    return root


def _args(root, *extra):
    return ["--labels", str(root / "labels"), "--human-labels", str(root / "human.csv"),
            "--classes", str(root / "classes.csv"), "--output", str(root / "eval"), *extra]


def _evaluate(root, *extra):
    assert evaluate_tags.run(_args(root, *extra)) == 0
    return json.loads((root / "eval" / "tag_eval.json").read_text())


def _per_class(result):
    return {r["label"]: (r["tp"], r["fp"], r["fn"], r["precision"], r["recall"], r["f1"]) for r in result["per_class"]}


def test_scores_at_the_runs_threshold(tmp_path, capsys):
    result = _evaluate(write_pair(tmp_path))
    assert result["threshold"] == 0.1  # from the rows' teacher_params
    # TP: img1 /m/a, img1 /m/e, img2 /m/d, img4 /m/b = 4; FP: img1 /m/b, img2 /m/a = 2;
    # FN: img1 /m/d, img2 /m/b = 2. P = 4/6, R = 4/6, F1 = 2*4/(2*4+2+2) = 8/12.
    assert result["overall"] == {"precision": pytest.approx(0.666667, abs=1e-6), "recall": pytest.approx(0.666667, abs=1e-6),
                                 "f1": pytest.approx(0.666667, abs=1e-6), "tp": 4, "fp": 2, "fn": 2, "images": 3}
    assert result["unverified_tags"] == 1  # img1 /m/c
    assert result["images_without_human_labels"] == 1  # img3
    assert _per_class(result) == {
        "/m/a": (1, 1, 0, 0.5, 1.0, pytest.approx(0.666667, abs=1e-6)),  # F1 = 2/(2+1+0)
        "/m/b": (1, 1, 1, 0.5, 0.5, 0.5),  # F1 = 2/(2+1+1)
        "/m/d": (1, 0, 1, 1.0, 0.5, pytest.approx(0.666667, abs=1e-6)),  # F1 = 2/(2+0+1)
        "/m/e": (1, 0, 0, 1.0, 1.0, 1.0),
    }  # /m/c: only an unverified tag; /m/f: only a true negative
    assert {r["label"]: r["name"] for r in result["per_class"]}["/m/a"] == "Dog"  # from --classes
    assert result["macro_f1"] == pytest.approx(0.708333, abs=1e-6)  # (2/3 + 1/2 + 2/3 + 1) / 4 = 17/24
    out = capsys.readouterr().out
    assert "precision 0.6667  recall 0.6667  F1 0.6667  (TP 4, FP 2, FN 2)" in out
    assert "nobody verified for their image, not scored (neither right nor wrong): 1" in out and "| Person | /m/e | 1.0000 |" in out


def test_a_custom_threshold_drops_the_tags_below_it(tmp_path):
    result = _evaluate(write_pair(tmp_path), "--threshold", "0.25")
    assert result["threshold"] == 0.25
    # img1 /m/e (0.2) and img4 /m/b (0.15) fall below 0.25 and become FN.
    # TP: img1 /m/a, img2 /m/d = 2; FP: img1 /m/b, img2 /m/a = 2; FN: img1 /m/d, img1 /m/e, img2 /m/b, img4 /m/b = 4.
    # P = 2/4, R = 2/6, F1 = 2*2/(2*2+2+4) = 4/10.
    o = result["overall"]
    assert (o["tp"], o["fp"], o["fn"], o["images"]) == (2, 2, 4, 3)
    assert (o["precision"], o["recall"], o["f1"]) == (0.5, pytest.approx(1 / 3), pytest.approx(0.4))
    assert result["unverified_tags"] == 1  # img1 /m/c at 0.3 is still above 0.25
    pc = _per_class(result)
    assert pc["/m/b"] == (0, 1, 2, 0.0, 0.0, 0.0)
    assert pc["/m/e"] == (0, 0, 1, None, 0.0, 0.0)  # never tagged: precision undefined, F1 0
    assert result["macro_f1"] == pytest.approx(1 / 3)  # (2/3 + 0 + 2/3 + 0) / 4
    # the curve still starts at the run's threshold: tags below it were never stored
    assert result["curve"][0]["threshold"] == 0.1


def test_curve_runs_from_the_runs_threshold_to_one(tmp_path):
    result = _evaluate(write_pair(tmp_path))
    c = result["curve"]
    assert len(c) == tag_eval.CURVE_POINTS and c[0]["threshold"] == 0.1 and c[-1]["threshold"] == 1.0
    assert all(a["threshold"] < b["threshold"] for a, b in itertools.pairwise(c))
    assert all(a["recall"] >= b["recall"] for a, b in itertools.pairwise(c))
    first = {k: result["overall"][k] for k in ("precision", "recall", "f1")}
    assert {k: c[0][k] for k in first} == first  # the run's threshold is the overall result
    assert c[-1] == {"threshold": 1.0, "precision": None, "recall": 0.0, "f1": 0.0}  # no tag scores 1


def test_classes_csv_with_and_without_header(tmp_path):
    with_header = tag_eval.load_classes(str(write_pair(tmp_path / "a", header=True) / "classes.csv"))
    without = tag_eval.load_classes(str(write_pair(tmp_path / "b", header=False) / "classes.csv"))
    assert with_header == without == dict(CLASSES)
    assert with_header["/m/c"] == "Car, sports"  # a quoted comma stays in the name


def test_human_labels_stream_keeps_only_labelled_images(tmp_path):
    write_pair(tmp_path)
    verified, rows = tag_eval.read_human_labels(str(tmp_path / "human.csv"), {"img1", "img3", "img4"})
    assert rows == len(HUMAN)
    assert verified == {"img1": {"/m/a": True, "/m/b": False, "/m/d": True, "/m/e": True},
                        "img4": {"/m/b": True, "/m/f": False}}


def _one_line_error(capsys, argv):
    assert evaluate_tags.run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evaluate_tags: error: ")
    return err[0]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    root = write_pair(tmp_path)
    assert "no Parquet files" in _one_line_error(capsys, _args(root)[:1] + [str(tmp_path / "nope"), *_args(root)[2:]])
    assert "within [0, 1]" in _one_line_error(capsys, _args(root, "--threshold", "1.5"))
    (tmp_path / "bad.csv").write_text("ImageID,Label,Confidence\nimg1,/m/a,1\n")
    args = _args(root)
    args[args.index("--human-labels") + 1] = str(tmp_path / "bad.csv")
    assert "no LabelName column" in _one_line_error(capsys, args)
    (tmp_path / "bad.csv").write_text("ImageID,Source,LabelName,Confidence\nimg1,x,/m/a,yes\n")
    assert "line 2 has no numeric Confidence" in _one_line_error(capsys, args)


def test_a_run_without_a_tagger_threshold_needs_threshold(tmp_path, capsys):
    root = write_pair(tmp_path)
    row = labels_row(image_id="img1", source_uri="/x.jpg", sha256="0" * 64, width=1, height=1, captions=[],
                     tags=[{"label": "/m/a", "name": "dog", "score": 0.9}], captioner=None, tagger="elsewhere",
                     teacher_params={"caption": {}})
    for part in (root / "labels").iterdir():
        part.unlink()
    pq.write_table(LABELS.to_table([row]), root / "labels" / "part-00000.parquet")
    assert "pass --tag-threshold" in _one_line_error(capsys, _args(root))
    assert _evaluate(root, "--tag-threshold", "0.5")["overall"]["tp"] == 1


def test_cli_end_to_end_writes_tag_eval_json(tmp_path):
    root = write_pair(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pipelines.evaluate_tags", *_args(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unverified" not in proc.stderr and "tag_eval.json" in proc.stdout
    result = json.loads((root / "eval" / "tag_eval.json").read_text())
    # the exact shape another report reads
    assert set(result) == {"threshold", "overall", "macro_f1", "per_class", "curve", "unverified_tags",
                           "images_without_human_labels"}
    assert set(result["overall"]) == {"precision", "recall", "f1", "tp", "fp", "fn", "images"}
    assert all(set(r) == {"label", "name", "precision", "recall", "f1", "tp", "fp", "fn"}
               for r in result["per_class"])
    assert all(set(p) == {"threshold", "precision", "recall", "f1"} for p in result["curve"])
    o = result["overall"]
    assert (o["tp"], o["fp"], o["fn"], o["images"]) == (4, 2, 2, 3)
    assert round(o["precision"], 4) == round(o["recall"], 4) == round(o["f1"], 4) == 0.6667
    assert (result["unverified_tags"], result["images_without_human_labels"]) == (1, 1)
    assert isinstance(result["threshold"], float) and result["threshold"] == 0.1


def test_the_bundled_sample_and_its_human_labels(sample_run, tmp_path):
    """The README's command on the sample: every verified positive is a TP or an FN, every
    scored tag hits a verified class, whatever the (random) tiny tagger said."""
    import csv

    out, _ = sample_run
    human = os.path.join(REPO, "data", "sample", "human-imagelabels.csv")
    proc = subprocess.run([sys.executable, "-m", "pipelines.evaluate_tags", "--labels", str(out / "labels"),
                           "--human-labels", human, "--classes", os.path.join(REPO, "schemas", "vocabularies",
                                                                              "default_tags.csv"),
                           "--output", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "tag_eval.json").read_text())
    with open(human) as f:
        rows = list(csv.DictReader(f))
    positives = sum(r["Confidence"] == "1" for r in rows)
    overall = result["overall"]
    assert overall["images"] == 22 and overall["tp"] + overall["fn"] == positives
    labels = pq.read_table(str(out / "labels")).to_pylist()
    verified = {(r["ImageID"], r["LabelName"]) for r in rows}
    stored = sum(1 for row in labels for t in row["tags"] if (row["image_id"], t["label"]) in verified)
    assert overall["tp"] + overall["fp"] == stored
    assert result["unverified_tags"] == sum(len(row["tags"]) for row in labels) - stored
