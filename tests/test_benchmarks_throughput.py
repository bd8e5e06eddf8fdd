"""benchmarks.throughput runs end to end with tiny settings and writes well-formed JSON.

No timing assertions: benchmarks measure, they do not judge.
"""
import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO

KEYS = ("bare_images_per_s", "job_images_per_s", "ratio", "ratio_end_to_end", "job_teachers_off_images_per_s",
        "peak_rss_1000_mb", "peak_rss_8000_mb")


@pytest.mark.slow  # six fresh interpreters, each importing torch and Beam
def test_throughput_benchmark_tiny(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.throughput", "--captioner-size", "tiny", "--images", "8",
         "--batch-size", "4", "--max-new-tokens", "4", "--threads", "1", "--repeats", "1",
         "--off-images", "16", "--memory-sizes", "20", "40",
         "--memory-repeats", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| ratio (b)/(a), steady state |" in proc.stdout

    report = json.loads(out.read_text())
    for key in KEYS:
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] > 0, key
    assert math.isfinite(report["growth_bytes_per_image"])  # may be negative: RSS noise
    # Null when the larger tiny run happened to finish no later than the smaller one.
    marginal = report["job_teachers_off_marginal_images_per_s"]
    assert marginal is None or (math.isfinite(marginal) and marginal > 0)
    assert report["noise_bytes_per_image"] > 0
    settings = report["settings"]
    assert settings["images"] == 8 and settings["batch_size"] == 4 and settings["threads"] == 1
    assert settings["memory_sizes"] == [20, 40]
    assert settings["captioner"]["size"] == "tiny" and settings["captioner"]["generated_tokens"] == 4
    loop, job = report["loop_runs"][0], report["job_runs"][0]
    assert loop["captioned"] == 8 and sum(loop["batch_sizes"]) == 8 and sum(job["batch_sizes"]) == 8
    assert loop["torch_threads_seen"] == job["torch_threads_seen"] == [1]
    assert job["batch_sizes"] == [4, 4]  # RunInference batches are full from the start
    assert [m["images"] for m in report["memory"]] == [20, 40]
