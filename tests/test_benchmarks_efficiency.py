"""The efficiency benchmark runs end to end and writes the promised JSON (no timing assertions)."""
import json
import math

import pytest

from benchmarks.efficiency import run

KEYS = ("baseline_params", "minivlm_params", "baseline_ms", "minivlm_ms", "baseline_vision_ms", "tee_ms",
        "baseline_gflops", "minivlm_gflops")


@pytest.mark.slow
def test_efficiency_benchmark_writes_well_formed_json(tmp_path, capsys):
    out = tmp_path / "eff.json"
    run(["--repeats", "1", "--warmup", "0", "--classes", "10", "--image", "60x80", "--json", str(out)])
    data = json.loads(out.read_text())
    for k in KEYS:
        assert isinstance(data[k], (int, float)) and math.isfinite(data[k]) and data[k] > 0, k
    assert data["minivlm_params"] < data["baseline_params"]  # structural: the student is the smaller model
    assert set(data["targets_met"]) == {"params_ratio", "time_ratio", "vision_time_ratio"}
    table = capsys.readouterr().out
    assert "| total ms |" in table and "paper" in table
