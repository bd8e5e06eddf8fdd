"""VQA: the format readers, the standard accuracy against hand-computed values, and the two
commands (finetune_vqa, evaluate_vqa) on a tiny student with its bad inputs."""
import json
import subprocess
import sys
from collections import Counter

import pytest

from models.minivlm import MiniVLM, build_student
from models.tee import load_tee
from pipelines.data import vqa
from pipelines.evaluate_vqa import run as evaluate
from pipelines.finetune_vqa import run as finetune
from tests.conftest import REPO
from tests.test_student import write_corpus

# ---- the metric ----------------------------------------------------------------------------

@pytest.mark.parametrize("predicted, answers, expected", [
    ("2", ["2"] * 10, 1.0),
    ("2", ["2"] * 3 + ["3"] * 7, 0.9),  # left out one of the three: 2/3 (x3); one of the others: 1 (x7)
    ("2", ["2"] * 2 + ["3"] * 8, 0.6),  # (2 x 1/3 + 8 x 2/3) / 10
    ("yes", ["yes"] + ["no"] * 9, 0.3),  # (0 + 9 x 1/3) / 10
    ("maybe", ["yes"] * 10, 0.0),
    ("Two!", ["2"] * 4 + ["two"] * 6, 1.0),  # the prediction is normalised ("two" -> "2")...
    ("2", ["2"] * 4 + ["two"] * 6, 1.0),  # ...the human answers only lose punctuation, as in vqaEval.py
    ("the red ball", ["red ball"] * 10, 1.0),  # articles dropped
    ("dont know", ["don't know"] * 10, 1.0),  # contractions restored
])
def test_vqa_accuracy_matches_hand_computed_values(predicted, answers, expected):
    assert vqa.answer_accuracy(predicted, answers) == pytest.approx(expected)


def test_soft_scores_and_the_vocabulary():
    answers = ["two"] * 3 + ["3"] * 7
    assert vqa.soft_scores(answers) == {"2": pytest.approx(0.9), "3": pytest.approx(1.0)}
    # Without the field, a question's multiple_choice_answer is its most frequent normalised
    # human answer, ties broken by text; the vocabulary counts those, not the human answers.
    qs = [vqa.Question("1", "a", "q?", ["red"] * 10), vqa.Question("2", "b", "q?", ["blue"] * 9 + ["red"]),
          vqa.Question("3", "c", "q?", ["A green ball."] * 2),
          vqa.Question("4", "d", "q?", ["red"] * 5 + ["blue"] * 5),
          vqa.Question("5", "e", "q?", ["Blue"] * 3 + ["red"], multiple_choice_answer="blue"),
          vqa.Question("6", "f", "q?")]  # no answers: counts for nothing
    assert [q.multiple_choice_answer for q in qs] == ["red", "blue", "green ball", "blue", "blue", None]
    # 3, 1, 1 questions; the 17 humans who said "red" do not count.
    assert vqa.answer_vocabulary(qs, min_count=1) == ["blue", "green ball", "red"]
    assert vqa.answer_vocabulary(qs, min_count=3) == ["blue"]
    assert vqa.answer_vocabulary(qs) == []  # the default, VQA v2 practice: 9
    assert vqa.answer_vocabulary(qs + qs, min_count=3) == ["blue"]  # a question id counts once
    assert vqa.majority_answer([]) is None and vqa.majority_answer(["", "?"]) is None
    with pytest.raises(ValueError, match=r"must be >= 1, not 0"):
        vqa.answer_vocabulary(qs, min_count=0)
    with pytest.raises(TypeError, match="must be an int"):
        vqa.answer_vocabulary(qs, min_count=9.0)


# ---- the formats ---------------------------------------------------------------------------

def _vqa_files(tmp_path, items, annotate=True, extra_questions=(), extra_annotations=()):
    """items: (question_id, image_id, question, answer, answer_type) -> the official VQA v2 pair."""
    questions = [{"question_id": q, "image_id": i, "question": text} for q, i, text, _, _ in items]
    annotations = [{"question_id": q, "image_id": i, "answer_type": t, "question_type": text.split()[0],
                    "multiple_choice_answer": a, "answers": [{"answer": a, "answer_id": k + 1} for k in range(10)]}
                   for q, i, text, a, t in items]
    qf, af = tmp_path / "questions.json", tmp_path / "annotations.json"
    qf.write_text(json.dumps({"questions": questions + list(extra_questions)}))
    af.write_text(json.dumps({"annotations": annotations + list(extra_annotations)}))
    return str(qf), str(af) if annotate else None


def test_official_pair_and_json_lines_read_alike_and_bad_records_are_counted(tmp_path):
    qf, af = _vqa_files(tmp_path, [(1, 7, "what color is it?", "red", "other"), (2, 8, "how many?", "2", "number")],
                        extra_questions=[{"question_id": 3, "image_id": 9}, "not a record"],  # no question text
                        extra_annotations=[{"question_id": 99, "answers": [{"answer": "x"}]},  # no such question
                                           {"question_id": 4}])  # no answers
    found, stats = vqa.read_vqa(qf, af)
    assert [(q.question_id, q.image_id, q.answers[0], q.answer_type) for q in found] == [
        ("1", "7", "red", "other"), ("2", "8", "2", "number")]
    assert stats.to_dict() == {"questions": 2, "malformed": 3, "without_annotation": 0,
                               "annotations_without_question": 1}
    lines = tmp_path / "q.jsonl"
    lines.write_text("\n".join([json.dumps({"question_id": 1, "image_id": 7, "question": "what color is it?",
                                            "answers": ["red"] * 10, "answer_type": "other"}),
                                "{not json", json.dumps({"question_id": 2, "image_id": 8, "question": "",
                                                         "answers": []}), ""]))
    found, stats = vqa.read_vqa(str(lines))
    assert [(q.question_id, q.answers) for q in found] == [("1", ["red"] * 10)] and stats.malformed == 2
    only_questions, stats = vqa.read_vqa(qf)  # the test split: questions without answers
    assert [q.answers for q in only_questions] == [[], []]
    with pytest.raises(ValueError, match="not a VQA questions file"):
        vqa.read_vqa(af)


def _pair(path, records, name):
    """records: (question_id, image_id, multiple_choice_answer or None, 10 human answers) -> the
    official VQA v2 pair (a record with None has no multiple_choice_answer field)."""
    questions = [{"question_id": q, "image_id": i, "question": f"question {q}?"} for q, i, _, _ in records]
    annotations = [{"question_id": q, "image_id": i, "answer_type": "other", "question_type": "what",
                    **({"multiple_choice_answer": m} if m is not None else {}),
                    "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)]}
                   for q, i, m, answers in records]
    qf, af = path / f"{name}-questions.json", path / f"{name}-annotations.json"
    qf.write_text(json.dumps({"questions": questions}))
    af.write_text(json.dumps({"annotations": annotations}))
    return str(qf), str(af)


def _counted_records(images):
    """A VQA v2 train set with known counts (images: the image ids to spread the questions over).

    multiple_choice_answer: "yes" 12 times; "2" 9 times (5 "2", 3 "Two", one record without the
    field whose human answers are mostly "two"/"2"); "blue" 9 times (8, and one record without
    the field whose human answers tie "blue" and "green": the text decides); "no" 8 times. The
    human answers differ from it: "no" is given 76 times, "purple" 12, "3" 13, "green" 5, and
    only "yes", "2" and "blue" are ever a multiple_choice_answer 9 times or more.
    """
    groups = ([("yes", ["yes"] * 6 + ["no"] * 3 + ["purple"])] * 12 + [("2", ["2"] * 10)] * 5
              + [("Two", ["two"] * 7 + ["3"] * 3)] * 3 + [(None, ["two"] * 4 + ["2"] * 2 + ["3"] * 4)]
              + [("no", ["no"] * 5 + ["yes"] * 5)] * 8 + [("blue", ["blue"] * 10)] * 8
              + [(None, ["green"] * 5 + ["blue"] * 5)])
    return [(100 + n, images[n % len(images)], m, answers) for n, (m, answers) in enumerate(groups)]


def test_the_vocabulary_counts_multiple_choice_answers_of_9_questions_as_vqa_v2_practice(tmp_path):
    qf, af = _pair(tmp_path, _counted_records(["7", "8"]), "train")
    found, stats = vqa.read_vqa(qf, af)
    assert stats.malformed == 0 and len(found) == 12 + 9 + 8 + 9
    choices = [q.multiple_choice_answer for q in found]
    assert choices[12:21] == ["2"] * 5 + ["Two"] * 3 + ["2"]  # the field as given; computed where absent
    assert choices[-1] == "blue"  # 5 "green", 5 "blue": the tie goes to the text first in order
    assert vqa.answer_vocabulary(found) == ["yes", "2", "blue"]  # 12, 9, 9 (ties by text); "no" is 8
    assert vqa.answer_vocabulary(found, min_count=8) == ["yes", "2", "blue", "no"]
    # The old rule (humans giving the answer) would have kept "no" (76), "3" (13), "purple" (12).
    humans = Counter(vqa.normalize_answer(a) for q in found for a in q.answers)
    assert humans["no"] == 76 and humans["3"] == 13 and humans["purple"] == 12
    assert set(vqa.answer_vocabulary(found, min_count=1)) == {"yes", "2", "blue", "no"}

    # JSON Lines: the record's own field, or computed from its answers; a field of a wrong type is malformed.
    lines = tmp_path / "q.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in [
        {"question_id": 1, "image_id": 7, "question": "what?", "answers": ["two"] * 6 + ["3"] * 4,
         "multiple_choice_answer": "3"},
        {"question_id": 2, "image_id": 7, "question": "what?", "answers": ["Two"] * 6 + ["3"] * 4},
        {"question_id": 3, "image_id": 7, "question": "what?", "answers": ["3"] * 10, "multiple_choice_answer": 3}]))
    found, stats = vqa.read_vqa(str(lines))
    assert [q.multiple_choice_answer for q in found] == ["3", "2"] and stats.malformed == 1
    bad = tmp_path / "bad-annotations.json"
    bad.write_text(json.dumps({"annotations": [{"question_id": 100, "answers": ["yes"] * 10,
                                                "multiple_choice_answer": ["yes"]}]}))
    found, stats = vqa.read_vqa(qf, str(bad))
    assert stats.malformed == 1 and stats.without_annotation == len(found)


# ---- the commands on a tiny student --------------------------------------------------------

@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny pre-trained student, a corpus of its TEE's features, questions about the corpus images,
    and a short VQA fine-tuning run."""
    root = tmp_path_factory.mktemp("vqa")
    tee, _ = load_tee("tiny", cache_dir=str(root / "cache"))
    model, tok = build_student("tiny", tee, seed=0)
    model.save_pretrained(str(root / "pretrained"), tok)
    rows = write_corpus(root / "corpus", tee, rows=24, shards=2, val=0)
    items = []
    for n, row in enumerate(rows):  # the answer is in the region count: something the features carry
        items.append((2 * n, row["image_id"], "are there many regions?", "yes" if row["num_regions"] > 15 else "no",
                      "yes/no"))
        items.append((2 * n + 1, row["image_id"], "what is it?", "thing", "other"))
    items.append((999, "img99999", "what is it?", "ghost", "other"))  # an image without features
    (root / "data").mkdir()
    qf, af = _vqa_files(root / "data", items)
    args = ["--init", root / "pretrained", "--train", qf, "--train-annotations", af, "--features", root / "corpus",
            "--output", root / "ckpt", "--min-answer-count", "1", "--max-steps", "30", "--batch-size", "8",
            "--lr", "2e-3", "--warmup-steps", "0", "--num-workers", "0", "--no-progress", "--log-every", "5"]
    assert finetune([str(a) for a in args]) == 0
    return root, qf, af


def test_finetuning_learns_and_writes_a_vqa_checkpoint(chain):
    root, _, _ = chain
    rows = [json.loads(line) for line in open(root / "ckpt" / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    assert train[-1]["vqa_loss"] < train[0]["vqa_loss"] and 0 <= train[-1]["vqa_score"] <= 1
    model = MiniVLM.from_pretrained(str(root / "ckpt" / "model"))
    assert model.config.task == "vqa" and set(model.config.answers) == {"yes", "no", "thing", "ghost"}
    assert model.vqa[-1].out_features == 4
    info = json.loads((root / "ckpt" / "train_config.json").read_text())
    assert info["data"]["questions_without_features"] == 1 and info["data"]["answers"] == 4


def test_evaluate_answers_and_scores_every_question_with_features(chain, capsys):
    root, qf, af = chain
    out = root / "eval"
    assert evaluate(["--checkpoint", str(root / "ckpt"), "--questions", qf, "--annotations", af,
                     "--features", str(root / "corpus"), "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "| VQA accuracy |" in printed.out and "48 of 49 questions answered (1 without features)" in printed.err
    results = json.loads((out / "vqa_results.json").read_text())
    assert len(results) == 48 and all(isinstance(r["question_id"], int) for r in results)
    report = json.loads((out / "vqa_eval.json").read_text())
    assert report["questions_scored"] == 48 and report["questions_without_prediction"] == 1
    # Every "what is it?" about a known image is "thing": a student that learned anything gets those.
    by_id = {r["question_id"]: r["answer"] for r in results}
    assert sum(by_id[q] == "thing" for q in by_id if q % 2) >= 20
    assert 0.0 <= report["accuracy"] <= 1.0 and report["per_answer_type"]["other"]["questions"] == 24
    # "thing" is the most frequent multiple_choice_answer (24 questions): right on half the scored questions.
    assert report["majority_answer"] == "thing" and report["majority_baseline"] == pytest.approx(0.5)


def test_a_checkpoint_of_another_task_is_one_line_exit_2(chain, capsys):
    root, qf, af = chain
    common = ["--questions", qf, "--annotations", af, "--features", str(root / "corpus"), "--output",
              str(root / "e2")]
    assert evaluate(["--checkpoint", str(root / "pretrained"), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a pretraining MiniVLM checkpoint, not a VQA one" in err[0], err
    again = ["--init", str(root / "ckpt"), "--train", qf, "--train-annotations", af, "--features",
             str(root / "corpus"), "--output", str(root / "again"), "--max-steps", "1"]
    assert finetune(again) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a vqa MiniVLM checkpoint, not a pre-trained one" in err[0], err
    from pipelines.finetune_caption import run as finetune_caption

    assert finetune_caption(["--init", str(root / "ckpt"), "--train", str(root / "corpus"), "--output",
                             str(root / "cap"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a vqa MiniVLM checkpoint, not a pre-trained one" in err[0], err


def test_the_default_vocabulary_counts_train_and_val_questions(chain, tmp_path, capsys):
    root, qf, _ = chain
    images = sorted({q["image_id"] for q in json.loads(open(qf).read())["questions"]} - {"img99999"})
    tf, ta = _pair(tmp_path, _counted_records(images), "train")
    # One more "no" in --val: 9 over --train and --val, so "no" is in (the text orders the 9s).
    vf, va = _pair(tmp_path, [(900, images[0], "no", ["no"] * 10)], "val")
    common = ["--init", str(root / "pretrained"), "--features", str(root / "corpus"), "--max-steps", "1",
              "--batch-size", "4", "--warmup-steps", "0", "--num-workers", "0", "--no-progress"]
    out = tmp_path / "run"
    assert finetune([*common, "--train", tf, "--train-annotations", ta, "--val", vf, "--val-annotations", va,
                     "--output", str(out)]) == 0
    model = MiniVLM.from_pretrained(str(out / "model"))
    assert list(model.config.answers) == ["yes", "2", "blue", "no"]
    data = json.loads((out / "train_config.json").read_text())["data"]
    assert data["answers"] == 4 and data["min_answer_count"] == 9
    assert data["answers_counted_over"] == "--train and --val"
    assert "4 answers in the vocabulary (the multiple_choice_answer of 9+ questions over --train and --val)" \
        in capsys.readouterr().err
    # Over --train alone "no" is 8; nothing is the multiple_choice_answer of 13 questions.
    train_only = [*common, "--train", tf, "--train-annotations", ta, "--output", str(tmp_path / "x"), "--check-only"]
    assert finetune(train_only) == 0
    for count, message in (("13", "no answer is the multiple_choice_answer of 13+ questions over --train: "
                                  "lower --min-answer-count"),
                           ("0", "--min-answer-count must be >= 1, not 0")):
        capsys.readouterr()
        assert finetune([*train_only, "--min-answer-count", count]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_help_and_unknown_flags():
    for module in ("pipelines.finetune_vqa", "pipelines.evaluate_vqa"):
        proc = subprocess.run([sys.executable, "-m", module, "--bogus"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_answer_from_raw_images_in_order_with_bad_lines_and_images_reported(chain, tmp_path):
    import io

    from pipelines.answer import run as answer

    root, _, _ = chain
    images = sorted((REPO / "data" / "sample" / "images").glob("*.jpg"))[:3]
    out, err = io.StringIO(), io.StringIO()
    assert answer(["--checkpoint", str(root / "ckpt"), "--question", "what is it?", "--batch-size", "2",
                   *map(str, images)], out=out, err=err) == 0, err.getvalue()
    lines = [ln.split("\t") for ln in out.getvalue().splitlines()]
    assert [ln[0] for ln in lines] == [str(p) for p in images] and all(ln[1] == "what is it?" for ln in lines)
    assert all(ln[2] in {"yes", "no", "thing", "ghost"} for ln in lines)

    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("\n".join([json.dumps({"image": str(images[0]), "question": "are there many regions?"}),
                                "{broken", json.dumps({"image": str(tmp_path / "missing.jpg"), "question": "what?"}),
                                json.dumps({"image": str(images[1]), "question": "what is it?"})]) + "\n")
    out, err = io.StringIO(), io.StringIO()
    assert answer(["--checkpoint", str(root / "ckpt"), "--questions", str(jsonl), "--json"], out=out, err=err) == 1
    rows = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [(r["path"], r["question"]) for r in rows] == [(str(images[0]), "are there many regions?"),
                                                          (str(images[1]), "what is it?")]
    assert all(0 <= r["score"] <= 1 and isinstance(r["tags"], list) for r in rows)
    problems = err.getvalue().strip().splitlines()
    assert len(problems) == 2 and "line 2" in problems[0] and "missing.jpg" in problems[1]


@pytest.mark.parametrize("args, message", [
    (["--question", "what?"], "--question needs images"),
    (["--questions", "{tmp}/nope.jsonl"], "does not exist"),
    (["--question", "what?", "--questions", "{tmp}/q.jsonl", "x.jpg"], "not allowed with argument"),
    (["--question", "what?", "--checkpoint", "{pretrained}", "x.jpg"], "is a pretraining MiniVLM checkpoint"),
])
def test_answer_refuses_bad_flags_and_other_checkpoints_with_one_line(chain, tmp_path, args, message):
    import io

    from pipelines.answer import run as answer

    root, _, _ = chain
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{pretrained}", str(root / "pretrained")) for a in args]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(root / "ckpt")]
    err = io.StringIO()
    assert answer(argv, out=io.StringIO(), err=err) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(chain, tmp_path):
    import torch

    root, qf, af = chain

    def args(out, *extra):
        return ["--init", str(root / "pretrained"), "--train", qf, "--train-annotations", af, "--features",
                str(root / "corpus"), "--output", str(out), "--min-answer-count", "1", "--max-steps", "4",
                "--batch-size", "8",
                "--warmup-steps", "0", "--num-workers", "0", "--no-progress", "--log-every", "1",
                "--checkpoint-every", "2", *extra]

    assert finetune(args(tmp_path / "straight")) == 0
    assert finetune(args(tmp_path / "resumed", "--stop-at", "2")) == 0
    assert finetune(args(tmp_path / "resumed", "--resume")) == 0
    a, b = (MiniVLM.from_pretrained(str(tmp_path / d / "model")).state_dict() for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(line)["loss"] for line in open(tmp_path / d / "metrics.jsonl")] for d in ("straight", "resumed")]
    assert losses[0] == losses[1] and len(losses[0]) == 4
