"""The end-to-end captioning check stays runnable by one command (a few steps of each stage)."""
import json

import pytest

from benchmarks.caption_learning import main


@pytest.mark.slow
def test_caption_learning_runs_every_stage_and_reports(tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(["--work", str(tmp_path / "work"), "--train-images", "40", "--val-images", "6", "--scene-size", "64",
                 "--tee-steps", "4", "--pretrain-steps", "4", "--finetune-steps", "4", "--batch-size", "8",
                 "--beam-size", "2", "--no-meteor", "--export", "--int8-per-channel", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["stage_seconds"]) >= {"train_tee", "extract_features", "build_corpus", "train_student",
                                            "finetune_caption", "evaluate_trained"}
    assert result["val_images"] == 6 and {"CIDEr-D", "BLEU-4"} <= set(result["trained"])
    # scored on the test split (the default), which shares no scene with validation or train
    work = tmp_path / "work"
    ids = {split: {r["id"] for r in json.loads((work / f"{split}-captions.json").read_text())["images"]}
           for split in ("train", "validation", "test")}
    assert result["split"] == "test" and set(result["per_image_cider_d"]) == ids["test"]
    assert not ids["test"] & ids["validation"] and not (ids["test"] | ids["validation"]) & ids["train"]
    assert "METEOR" not in result["trained"]
    table = capsys.readouterr().out
    assert "| trained end to end |" in table and "| held-out scenes, greedy | 6 |" in table
    export = result["export"]  # the trained captioner exported, fp32 and int8, through pipelines.export
    assert [export["parity"][k]["images"] for k in ("held_out_greedy", "sample_greedy", "held_out_beam")] == [6, 22, 6]
    for name in ("held_out_greedy", "sample_greedy", "held_out_beam"):
        assert export["parity"][name]["failed"] == 0  # every image captioned on both sides
    quality = export["int8_quality"]
    assert quality["images"] == 6
    per_channel = export["int8_per_channel_quality"]  # --int8-per-channel: the same measure, other scales
    assert per_channel["images"] == 6 and set(per_channel["per_image_cider_d"]) == set(result["per_image_cider_d"])
    scales = {name: json.loads((tmp_path / "work" / name / "export.json").read_text()).get("int8_scales")
              for name in ("export-int8", "export-int8-per-channel")}
    assert scales == {"export-int8": "per-tensor", "export-int8-per-channel": "per-channel"}
    assert "int8, per-channel weight scales: CIDEr-D" in table
    if quality["cider_ratio"] is not None:  # four training steps may caption nothing right: no ratio then
        low, high = quality["ratio_interval"]
        assert 0 <= low <= high and quality["cider_ratio"] == quality["cider_d"] / quality["eager_fp32_cider_d"]
