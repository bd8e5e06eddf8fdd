"""The task learning check stays runnable by one command (a few steps of each stage), and its
caption colour measure counts what it says."""
import json

import pytest

from benchmarks.task_learning import caption_colour_accuracy, main


def test_caption_colour_accuracy_counts_colour_shape_phrases_against_the_scene():
    scenes = {"a": [{"color": "blue", "name": "circle"}, {"color": "red", "name": "square"}], "b": []}
    predictions = {"a": {"caption": "a blue circle left of a green square, which is above a red star"},
                   "b": {"caption": "an empty scene"}}
    # blue circle: right; green square: a square in another colour, wrong; red star: no star, a shape error
    assert caption_colour_accuracy(predictions, scenes) == {"colour_accuracy": 0.5, "named": 2,
                                                            "phrase_accuracy": pytest.approx(1 / 3), "phrases": 3}
    assert caption_colour_accuracy({"b": {"caption": "nothing"}}, scenes)["colour_accuracy"] is None


@pytest.mark.slow
def test_task_learning_runs_every_stage_and_writes_its_keys(tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(["--work", str(tmp_path / "work"), "--train-images", "40", "--val-images", "8", "--scene-size", "96",
                 "--tee-steps", "2", "--pretrain-steps", "2", "--caption-steps", "2", "--vqa-steps", "2",
                 "--retrieval-steps", "2", "--nlvr2-steps", "2", "--retrieval-pool", "6", "--rerank-k", "3",
                 "--batch-size", "8", "--beam-size", "1", "--split", "validation", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("vqa_accuracy", "vqa_majority_baseline", "vqa_colour_accuracy", "caption_colour_accuracy",
                "caption_cider", "minutes", "pretrain_contrastive_accuracy", "pretrain_contrastive_majority",
                "retrieval_i2t_r1", "retrieval_t2i_r1", "retrieval_pool", "retrieval_rerank_i2t_r1", "nlvr2_accuracy"):
        assert key in result, key
    assert result["attributes"] is True and 0 <= result["vqa_accuracy"] <= 1
    assert result["retrieval_pool"] == 6 and 0 <= result["retrieval_i2t_r1"] <= 1 and 0 <= result["nlvr2_accuracy"] <= 1
    assert result["split"] == "validation"  # scored where choices are made; test is the default
    validation = {r["id"] for r in json.loads((tmp_path / "work" / "validation-captions.json").read_text())["images"]}
    assert set(result["per_image_cider_d"]) == validation
    assert set(result["stage_seconds"]) >= {"train_tee", "extract_features", "extract_validation_features",
                                            "build_corpus",
                                            "train_student", "finetune_caption", "finetune_vqa", "evaluate_vqa",
                                            "finetune_retrieval", "evaluate_retrieval", "finetune_nlvr2",
                                            "evaluate_nlvr2"}
    assert "| vqa_accuracy |" in capsys.readouterr().out
    # The TEE was trained with its attribute head and the features carry region attributes.
    config = json.loads((tmp_path / "work" / "tee" / "model" / "config.json").read_text())
    assert [n for _, n in config["attributes"]][:2] == ["red", "green"]
    from schemas import FEATURES, read_table

    features = read_table(str(tmp_path / "work" / "extract_validation_features" / "features"), FEATURES,
                          columns=["num_regions", "attributes", "attribute_scores"]).to_pylist()
    assert len(features) == 8 and all(len(r["attributes"]) == r["num_regions"] for r in features)
