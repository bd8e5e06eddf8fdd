"""The end-to-end captioning check stays runnable by one command (a few steps of each stage)."""
import json

import pytest

from benchmarks.caption_learning import main


@pytest.mark.slow
def test_caption_learning_runs_every_stage_and_reports(tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(["--work", str(tmp_path / "work"), "--train-images", "40", "--val-images", "6", "--scene-size", "64",
                 "--tee-steps", "4", "--pretrain-steps", "4", "--finetune-steps", "4", "--batch-size", "8",
                 "--beam-size", "2", "--no-meteor", "--export", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["stage_seconds"]) >= {"train_tee", "extract_features", "build_corpus", "train_student",
                                            "finetune_caption", "evaluate_trained"}
    assert result["val_images"] == 6 and {"CIDEr-D", "BLEU-4"} <= set(result["trained"])
    assert "METEOR" not in result["trained"]
    table = capsys.readouterr().out
    assert "| trained end to end |" in table and "| held-out scenes, greedy | 6 |" in table
    export = result["export"]  # the trained captioner exported, fp32 and int8, through pipelines.export
    assert [export["parity"][k]["images"] for k in ("held_out_greedy", "sample_greedy", "held_out_beam")] == [6, 22, 6]
    for name in ("held_out_greedy", "sample_greedy", "held_out_beam"):
        assert export["parity"][name]["failed"] == 0  # every image captioned on both sides
    quality = export["int8_quality"]
    assert quality["images"] == 6
    if quality["cider_ratio"] is not None:  # four training steps may caption nothing right: no ratio then
        low, high = quality["ratio_interval"]
        assert 0 <= low <= high and quality["cider_ratio"] == quality["cider_d"] / quality["eager_fp32_cider_d"]
