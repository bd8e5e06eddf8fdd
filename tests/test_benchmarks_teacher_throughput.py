"""The teacher throughput benchmark runs end to end on the replicas (no timing assertions)."""
import json
import math

import pytest

from benchmarks.teacher_throughput import REAL, main


@pytest.mark.slow
def test_teacher_throughput_runs_both_sides_and_writes_json(tmp_path, capsys):
    out = tmp_path / "tt.json"
    assert main(["--size", "tiny", "--images", "2", "--batch-sizes", "1", "2", "--num-beams", "2",
                 "--num-captions", "1", "--max-new-tokens", "4", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(r["dtype"], r["batch_size"]) for r in data["rows"]] == [("float32", 1), ("float32", 2)]
    for row in data["rows"]:
        for side in ("bare", "job"):
            assert math.isfinite(row[side]["images_per_s"]) and row[side]["images_per_s"] > 0
        assert row["bare"]["captioned"] == 2 and row["job"]["labeled"] == 2
    assert {t["replicates"] for t in data["teachers"]} == {repo for _, repo, _ in REAL.values()}
    table = capsys.readouterr().out
    assert "| float32 | 2 |" in table and "at tiny size" in table
