"""The end-to-end captioning check stays runnable by one command (a few steps of each stage)."""
import json

import pytest

from benchmarks.caption_learning import main


@pytest.mark.slow
def test_caption_learning_runs_every_stage_and_reports(tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(["--work", str(tmp_path / "work"), "--train-images", "40", "--val-images", "6", "--scene-size", "64",
                 "--tee-steps", "4", "--pretrain-steps", "4", "--finetune-steps", "4", "--batch-size", "8",
                 "--beam-size", "2", "--no-meteor", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["stage_seconds"]) >= {"train_tee", "extract_features", "build_corpus", "train_student",
                                            "finetune_caption", "evaluate_trained"}
    assert result["val_images"] == 6 and {"CIDEr-D", "BLEU-4"} <= set(result["trained"])
    assert "METEOR" not in result["trained"]
    assert "| trained end to end |" in capsys.readouterr().out
