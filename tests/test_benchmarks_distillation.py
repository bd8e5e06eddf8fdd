"""The distillation benchmark stays runnable by one command: teachers trained here, the labeling job
with them, every arm pre-trained and fine-tuned (a few dozen scenes, a few steps of everything)."""
import json
import os

import pyarrow.parquet as pq
import pytest

from benchmarks import scene_teachers
from benchmarks.distillation import ARMS, main, summarise, without_tags

KEYS = ("teacher_cider", "pseudo_label_cider", "human_only_cider", "distilled_cider", "distilled_no_tags_cider",
        "oracle_cider", "distilled_minus_human_only", "tags_gain", "oracle_gain_recovered", "teacher_retention",
        "labels_captioner", "labels_tagger", "test_images", "minutes", "per_image")
TOY = ["--teacher-images", "40", "--pool-images", "30", "--human-images", "12", "--validation-images", "8",
       "--test-images", "10", "--scene-size", "64", "--captioner-steps", "3", "--tagger-steps", "3",
       "--tee-steps", "4", "--pretrain-steps", "3", "--finetune-steps", "3", "--batch-size", "8",
       "--beam-size", "2", "--broken-pool-images", "2"]


@pytest.mark.slow
def test_distillation_runs_every_arm_with_teachers_trained_here(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "result.json"
    assert main(["--work", str(work), *TOY, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(KEYS) <= set(result)
    assert set(result["per_image"]) == {"teacher", *ARMS}
    assert all(len(scores) == 10 for scores in result["per_image"].values()) and result["test_images"] == 10
    for key in ("distilled_minus_human_only", "tags_gain"):
        low, point, high = result[key]
        assert low <= point <= high
    # benchmarks.compare on the run's own JSON prints the same paired interval (the bootstrap seeded as the run)
    from benchmarks.compare import main as compare

    compared = tmp_path / "compared.json"
    assert compare([str(out), str(out), "--key", "per_image.human_only", "--key-b", "per_image.distilled",
                    "--seed", str(result["seed"]), "--json", str(compared)]) == 0
    d = json.loads(compared.read_text())["difference"]
    assert [d["low"], d["point"], d["high"]] == result["distilled_minus_human_only"]
    # The labels came from the teacher folders trained here, through --captioner DIR / --tagger DIR.
    teachers = result["teachers"]
    assert result["labels_captioner"] == [teachers["captioner"]["folder"]]
    assert result["labels_tagger"] == [teachers["tagger"]["folder"]]
    for kind, model_type in (("captioner", "blip"), ("tagger", "siglip")):
        folder = teachers[kind]["folder"]
        assert os.path.dirname(folder) == str(work / "teachers")
        with open(os.path.join(folder, "config.json")) as f:
            assert json.load(f)["model_type"] == model_type
    labels = pq.read_table(str(work / "labels" / "pool" / "labels")).to_pylist()
    assert all(r["captioner"] == teachers["captioner"]["folder"] for r in labels)
    # Two pool images are no images: the job failed them, labeled the rest and went on.
    assert len(labels) == 28 and result["pool_labeling"]["failed"] == 2
    failures = pq.read_table(str(work / "labels" / "pool" / "failures")).to_pylist()
    assert len(failures) == 2 and {f["stage"] for f in failures} == {"decode"}
    # distilled_no_tags pre-trained on the same rows with every tag removed.
    no_tags = pq.read_table(str(work / "labels" / "pool-no-tags" / "labels")).to_pylist()
    assert sorted(r["image_id"] for r in no_tags) == sorted(r["image_id"] for r in labels)
    assert all(r["tags"] == [] for r in no_tags)
    # The ground-truth arms speak the tagger's language: tags from its vocabulary.
    vocabulary = {name for _, name in scene_teachers.tag_vocabulary()}
    oracle = pq.read_table(str(work / "labels" / "pool-ground-truth" / "labels")).to_pylist()
    assert any(r["tags"] for r in oracle) and all(t["name"] in vocabulary for r in oracle for t in r["tags"])
    assert "| human_only |" in capsys.readouterr().out
    check_bad_teacher_inputs(teachers, tmp_path, capsys)

    # A rerun finds everything before the arms cached and runs only the arm asked for.
    assert main(["--work", str(work), *TOY, "--arms", "human_only", "--json", str(out)]) == 0
    rerun = json.loads(out.read_text())
    assert {"teacher_captioner", "teacher_tagger", "label_pool", "features_pool"} <= set(rerun["cached"])
    assert rerun["distilled_cider"] is None and rerun["oracle_gain_recovered"] is None
    assert rerun["per_image"]["teacher"] == result["per_image"]["teacher"]


def test_oracle_gain_recovered_is_null_with_a_reason_when_the_oracle_gains_nothing():
    flat = {f"i{k}": 1.0 + (k % 3) * 0.1 for k in range(30)}
    per_image = {"teacher": flat, "human_only": flat, "oracle": dict(flat),
                 "distilled": {i: v + 0.5 for i, v in flat.items()}}
    stats = summarise(per_image, seed=0)
    assert stats["oracle_gain_recovered"] is None and "within noise" in stats["oracle_gain_recovered_reason"]
    assert stats["distilled_minus_human_only"][0] == pytest.approx(0.5)

    per_image["oracle"] = {i: v - 1.0 for i, v in flat.items()}
    stats = summarise(per_image, seed=0)
    assert stats["oracle_gain_recovered"] is None and "worse than human_only" in stats["oracle_gain_recovered_reason"]

    per_image["oracle"] = {i: v + 1.0 for i, v in flat.items()}
    stats = summarise(per_image, seed=0)
    assert stats["oracle_gain_recovered"] == pytest.approx(0.5)
    low, high = stats["oracle_gain_recovered_interval"]
    assert low <= 0.5 <= high
    assert stats["teacher_retention"] == pytest.approx((sum(flat.values()) / 30 + 0.5) / (sum(flat.values()) / 30))


def check_bad_teacher_inputs(teachers: dict, tmp_path, capsys):
    """The trained folders given in the wrong role, and an empty vocabulary: one line, exit 2, before any work."""
    from pipelines.pseudo_label import run as pseudo_label

    vocab = tmp_path / "vocab.csv"
    scene_teachers.write_tag_vocab(str(vocab))
    empty = tmp_path / "empty.csv"
    empty.write_text("LabelName,DisplayName\n")
    base = ["--runner", "DirectRunner", "--limit", "2", "--tag-vocab", str(vocab)]
    cases = [(["--captioner", teachers["tagger"]["folder"], "--tagger", teachers["tagger"]["folder"]],
              "which transformers cannot load as an image-to-text model"),
             (["--captioner", teachers["captioner"]["folder"], "--tagger", teachers["captioner"]["folder"]],
              "not an image-text model with image and text features"),
             (["--captioner", teachers["captioner"]["folder"], "--tagger", teachers["tagger"]["folder"],
               "--tag-vocab", str(empty)], "no tags")]
    for k, (flags, message) in enumerate(cases):
        capsys.readouterr()
        out = tmp_path / f"refused-{k}"
        assert pseudo_label([*base, *flags, "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (out / "labels").exists()


def test_the_no_tags_copy_holds_only_the_tables_rows(tmp_path):
    """A copy made again over an earlier, larger one keeps none of its parts."""
    import pyarrow as pa

    labels, out = tmp_path / "labels", tmp_path / "no-tags"
    labels.mkdir(), out.mkdir()
    tags = pa.list_(pa.struct([("name", pa.string()), ("score", pa.float32())]))
    table = pa.table({"image_id": ["a", "b"], "tags": pa.array([[{"name": "red circle", "score": 0.9}], []], tags)})
    pq.write_table(table, str(labels / "part-00000.parquet"))
    pq.write_table(table, str(out / "part-00007.parquet"))  # left by an earlier run
    without_tags(str(labels), str(out))
    rows = pq.read_table(str(out)).to_pylist()
    assert rows == [{"image_id": "a", "tags": []}, {"image_id": "b", "tags": []}]
