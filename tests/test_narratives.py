"""Localized Narratives as references: the streaming reader, format detection, and the
teacher-only `evaluate_captions` (a labeling run's captions scored with no student).

The narratives file is hand-made in the published format (one JSON object per line with
dataset_id, image_id, annotator_id, caption, timed_caption, traces, voice_recording):
two narratives for one image, one truncated line, one image the labels do not have.
Metrics run without METEOR (its JVM is slow to start); the PTB tokenizer still runs.
"""
import gzip
import json
import subprocess
import sys
import tracemalloc

import pyarrow.parquet as pq
import pytest

from pipelines import evaluate_captions
from pipelines.data.narratives import detect_format, parse_line, read_narratives
from pipelines.eval.captions import score_captions
from schemas import LABELS, labels_row
from tests.conftest import REPO

# Open Images ImageIDs (16 hex digits)
DOG, CAR, TABLE, FRUIT, CAT = ("0001a2b3c4d5e6f7", "0002b3c4d5e6f7a8", "0003c4d5e6f7a8b9", "0004d5e6f7a8b9c0",
                               "0099ffffffffffff")

# image id, annotator, caption (words as str.split() counts them)
NARRATIVES = [
    (DOG, 10, "In this image I can see a dog running on the grass. In the background I can see trees and "
              "the sky."),  # 22
    (DOG, 23, "In this picture there is a brown dog on the ground and there are plants."),  # 15
    (CAR, 10, "In this image I can see a red car parked on the road. On the right side there is a building."),  # 21
    (TABLE, 41, "In this image there are two persons sitting on the chairs in front of a table, on the table "
                "there are cups."),  # 22
    (CAT, 7, "In this image I can see a cat."),  # not labeled: never kept when the labeled ids are asked for
]
# The teacher's captions, best first after labels_row sorts them by score.
TEACHER = {
    DOG: [("a dog", -0.9), ("a dog running on the grass", -0.2)],  # best: 6 words
    CAR: [("a red car parked on a street", -0.1)],  # 7
    TABLE: [("two people sitting at a table", -0.3)],  # 6
    FRUIT: [("a bowl of fruit on a table", -0.4)],  # labeled, but nobody narrated it
}
BEST = {DOG: "a dog running on the grass", CAR: "a red car parked on a street", TABLE: "two people sitting at a table"}
REFERENCES = {DOG: [NARRATIVES[0][2], NARRATIVES[1][2]], CAR: [NARRATIVES[2][2]], TABLE: [NARRATIVES[3][2]]}


def narrative_line(image_id, annotator, caption):
    """One line as the published files have it (only image_id and caption are read)."""
    words = caption.split()
    timed = [{"utterance": w, "start_time": round(0.4 * k, 1), "end_time": round(0.4 * k + 0.3, 1)}
             for k, w in enumerate(words)]
    traces = [[{"x": round(0.1 + 0.01 * k, 4), "y": round(0.5 - 0.01 * k, 4), "t": round(0.05 * k, 3)}
               for k in range(12)]]
    return json.dumps({"dataset_id": "open_images", "image_id": image_id, "annotator_id": annotator,
                       "caption": caption, "timed_caption": timed, "traces": traces,
                       "voice_recording": f"open_images_validation/open_images_validation_{image_id}_{annotator}.ogg"})


def write_narratives(path, records=NARRATIVES):
    lines = [narrative_line(*r) for r in records]
    # A download cut off mid-line: not JSON. Placed in the middle, so reading must go on.
    lines.insert(3, lines[3][:57])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_labels(folder):
    rows = [LABELS.validate_row(labels_row(
        image_id=image_id, source_uri=f"gs://open-images/validation/{image_id}.jpg", sha256="0" * 64, width=64,
        height=48, captions=[{"text": t, "score": s} for t, s in captions], tags=[], captioner="blip-large",
        tagger=None, teacher_params={"caption": {"num_beams": 3}})) for image_id, captions in TEACHER.items()]
    folder.mkdir(parents=True)
    pq.write_table(LABELS.to_table(rows[:2]), folder / "part-00000.parquet")
    pq.write_table(LABELS.to_table(rows[2:]), folder / "part-00001.parquet")
    return folder


# ---- the reader ---------------------------------------------------------------------------

def test_reader_keeps_exactly_the_wanted_narratives_and_counts_the_malformed_line(tmp_path, caplog):
    path = write_narratives(tmp_path / "open_images_validation_localized_narratives.jsonl")
    with caplog.at_level("WARNING", logger="pipelines.data.narratives"):
        found = read_narratives(str(path), set(TEACHER))
    assert found.captions == REFERENCES  # both narratives of DOG, in file order; CAT not asked for
    assert (found.lines, found.malformed, found.kept) == (6, 1, 4)
    assert found.examples == [f"{path.name}:4: not JSON (Unterminated string starting at)"]
    assert "skipped 1 malformed of 6 lines" in caplog.text
    # no set of ids: every narrated image
    assert read_narratives(str(path)).captions == {**REFERENCES, CAT: [NARRATIVES[4][2]]}
    assert read_narratives(str(path), set()).captions == {}


@pytest.mark.parametrize("line, why", [
    ('{"image_id": "a", "caption": "x"', "not JSON"),
    ('["a", "x"]', "not a JSON object but list"),
    ('{"caption": "x"}', "no 'image_id' string"),
    ('{"image_id": "", "caption": "x"}', "no 'image_id' string"),
    ('{"image_id": "a"}', "no 'caption' string"),
    ('{"image_id": "a", "caption": null}', "no 'caption' string"),
    ('{"image_id": "a", "caption": "  "}', "blank caption"),
])
def test_malformed_lines_say_why(line, why):
    with pytest.raises(ValueError, match=f"^{why}"):
        parse_line(line)


def test_integer_ids_are_taken_as_text():
    assert parse_line('{"image_id": 137576, "caption": "In this image"}') == ("137576", "In this image")


def test_shards_by_glob_and_gzip_read_as_one_file(tmp_path):
    lines = [narrative_line(*r) for r in NARRATIVES]
    (tmp_path / "n-00000-of-00002.jsonl").write_text("\n".join(lines[:2]) + "\n\n")  # a blank line: ignored
    with gzip.open(tmp_path / "n-00001-of-00002.jsonl.gz", "wt") as f:
        f.write("\n".join(lines[2:]) + "\n")
    found = read_narratives(str(tmp_path / "n-*-of-00002.jsonl*"), set(TEACHER))
    assert found.captions == REFERENCES and found.malformed == 0 and found.lines == 5
    with pytest.raises(FileNotFoundError, match="no file matches"):
        read_narratives(str(tmp_path / "none-*.jsonl"))


def test_memory_stays_flat_in_the_file_size(tmp_path):
    """Thousands of narratives of other images stream past; only the wanted ones are held."""
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for k in range(3000):
            f.write(narrative_line(f"{k:016x}", k, NARRATIVES[k % 4][2]) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        found = read_narratives(str(path), {f"{7:016x}"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.captions == {f"{7:016x}": [NARRATIVES[3][2]]} and found.lines == 3000
    assert size > 5_000_000 and peak < size / 20, (size, peak)


def test_format_detection(tmp_path):
    narratives = write_narratives(tmp_path / "references")  # no extension: the first line decides
    coco = tmp_path / "captions"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": [{"image_id": 1, "caption": "a"}]}))
    pretty = tmp_path / "captions-indented"
    pretty.write_text(json.dumps({"images": [], "annotations": []}, indent=2))
    assert [detect_format(str(p)) for p in (narratives, coco, pretty)] == ["narratives", "coco", "coco"]
    # by extension, without opening the file
    assert [detect_format(str(tmp_path / n)) for n in ("x.jsonl", "x.jsonl.gz", "x.json", "s-*.jsonl")] == \
        ["narratives", "narratives", "coco", "narratives"]


# ---- teacher-only evaluate_captions ----------------------------------------------------------

def test_cli_scores_the_teacher_against_narratives_end_to_end(tmp_path):
    labels = write_labels(tmp_path / "run" / "labels")
    references = write_narratives(tmp_path / "open_images_validation_localized_narratives.jsonl")
    proc = subprocess.run([sys.executable, "-m", "pipelines.evaluate_captions", "--teacher-labels", str(labels),
                           "--references", str(references), "--output", str(tmp_path / "eval"), "--no-meteor"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "teacher vs references" in proc.stdout and "words per caption" in proc.stdout
    assert "skipped 1 malformed of 6 lines" in proc.stderr
    assert "3 images scored (narratives references); 1 of 4 images with a teacher caption have no reference; " \
           "1 malformed of 6 reference lines skipped" in proc.stdout

    report = json.loads((tmp_path / "eval" / "caption_eval.json").read_text())
    # the same numbers as scoring the same pairs directly
    expected = score_captions(REFERENCES, BEST, meteor=False)["metrics"]
    assert set(report["results"]) == {"teacher vs references"}
    assert report["results"]["teacher vs references"] == pytest.approx(expected, abs=1e-12)
    assert "METEOR" not in report["results"]["teacher vs references"]
    assert (report["mode"], report["references_format"], report["images"], report["teacher_images"],
            report["without_references"]) == ("teacher", "narratives", 3, 4, 1)
    assert report["references_read"] == {"lines": 6, "narratives": 4, "malformed": 1, "malformed_examples": [
        f"{references.name}:4: not JSON (Unterminated string starting at)"]}

    # words per caption, counted by hand: the teacher's 6, 7, 6; the narratives' 22, 15, 21, 22
    empty = {"0": 0, "1-5": 0, "6-10": 0, "11-15": 0, "16-20": 0, "21-30": 0, "31-40": 0, "41-60": 0, "61-80": 0,
             "81+": 0}
    teacher, refs = report["lengths"]["teacher"], report["lengths"]["references"]
    assert {k: teacher[k] for k in ("captions", "min", "median", "max")} == {"captions": 3, "min": 6, "median": 6.0,
                                                                             "max": 7}
    assert teacher["mean"] == pytest.approx(19 / 3) and teacher["histogram"] == {**empty, "6-10": 3}
    assert refs == {"captions": 4, "min": 15, "median": 21.5, "mean": 20.0, "max": 22,
                    "histogram": {**empty, "11-15": 1, "21-30": 3}}

    per_image = [json.loads(line) for line in (tmp_path / "eval" / "teacher_captions.jsonl").read_text().splitlines()]
    assert [(p["image_id"], p["caption"], p["references"]) for p in per_image] == [
        (DOG, BEST[DOG], 2), (CAR, BEST[CAR], 1), (TABLE, BEST[TABLE], 1)]


def test_teacher_against_coco_references_and_the_limit(tmp_path, capsys):
    """The same mode on a COCO captions file: a labels row matches a COCO image by its file stem."""
    labels = write_labels(tmp_path / "labels")
    coco = tmp_path / "captions_val.json"
    ids = {DOG: 11, CAR: 12, "not-labeled": 13}
    coco.write_text(json.dumps({
        "images": [{"id": n, "file_name": f"{i}.jpg"} for i, n in ids.items()],
        "annotations": [{"image_id": ids[DOG], "caption": "A dog runs on the grass."},
                        {"image_id": ids[DOG], "caption": "A brown dog in a park"},
                        {"image_id": ids[CAR], "caption": "A red car on a street."},
                        {"image_id": 13, "caption": "A cat."}]}))
    assert evaluate_captions.run(["--teacher-labels", str(labels), "--references", str(coco), "--no-meteor",
                                  "--limit", "1", "--output", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "1 images scored (coco references); 1 of 3 reference images have no teacher caption" in out
    report = json.loads((tmp_path / "eval" / "caption_eval.json").read_text())
    assert report["references_read"] is None and report["images"] == 1  # --limit 1: the first id, "11"
    expected = score_captions({"11": ["A dog runs on the grass.", "A brown dog in a park"]}, {"11": BEST[DOG]},
                              meteor=False)["metrics"]
    assert report["results"]["teacher vs references"] == pytest.approx(expected, abs=1e-12)


def test_no_shared_image_is_one_line_exit_2(tmp_path, capsys):
    labels = write_labels(tmp_path / "labels")
    references = tmp_path / "other.jsonl"
    references.write_text(narrative_line(CAT, 1, "In this image I can see a cat.") + "\n")
    assert evaluate_captions.run(["--teacher-labels", str(labels), "--references", str(references),
                                  "--no-meteor"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("evaluate_captions: error: no image has both a teacher caption")


@pytest.mark.parametrize("argv, message", [
    (["--references", "r.json"], "nothing to score: give --checkpoint and --images"),
    (["--checkpoint", "CKPT2", "--references", "r.json"], "--checkpoint needs --images"),
    (["--teacher-labels", "L", "--references", "r.jsonl", "--num-beams", "3"],
     "--num-beams only applies with --checkpoint"),
    (["--teacher-labels", "L", "--references", "r.jsonl", "--images", "I", "--greedy"],
     "--images, --greedy only apply with --checkpoint"),
    (["--checkpoint", "CKPT2", "--images", "I", "--references", "r.jsonl"], "is Localized Narratives"),
    (["--teacher-labels", "L", "--references", "r.jsonl", "--limit", "0"], "--limit must be >= 1, not 0"),
    (["--teacher-labels", "L"], "the following arguments are required: --references"),
    (["--teacher-labels", "L", "--references", "/nonexistent/n.jsonl"], "no such file: /nonexistent/n.jsonl"),
    (["--teacher-labels", "L", "--references", "/nonexistent/n-*.jsonl"], "no file matches /nonexistent/n-*.jsonl"),
])
def test_flags_that_make_no_sense_together_are_one_line_exit_2(argv, message, capsys):
    assert evaluate_captions.run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("evaluate_captions: error: ") and message in err


def test_a_bad_flag_combination_from_the_shell(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.evaluate_captions", "--references", "r.jsonl"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "nothing to score" in proc.stderr
