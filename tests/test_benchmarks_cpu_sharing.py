"""The CPU-sharing benchmark runs whole extract_features commands both ways (no timing assertions)."""
import json

import pytest

from benchmarks.cpu_sharing import run


@pytest.mark.slow
def test_cpu_sharing_benchmark_runs_both_settings_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sharing.json"
    report = run(["--repeats", "1", "--busy", "0", "--tee", "tiny", "--json", str(out)])
    assert json.loads(out.read_text()) == report
    (row,) = report["rows"]
    cpus, workers = report["settings"]["cpus"], report["settings"]["workers"]
    assert row["every core"]["threads"] == cpus and row["even share"]["threads"] == max(cpus // workers, 1)
    for setting in ("every core", "even share"):
        assert row[setting]["job_s"]["median"] > 0 and row[setting]["wall_s"]["median"] >= row[setting]["job_s"]["min"]
    assert "job time, every core / even share" in capsys.readouterr().out


def test_a_failing_job_is_reported_not_timed(tmp_path):
    with pytest.raises(RuntimeError, match="extract_features exited 2"):
        run(["--repeats", "1", "--busy", "0", "--tee", str(tmp_path / "no-tee")])
