"""A labeling job killed mid-way (SIGKILL) and resumed: every image exactly once."""
import json
import os
import signal
import subprocess
import sys
import time

from schemas import FAILURES, LABELS, read_table
from tests.conftest import REPO, SAMPLE_CSV, run_cli

ROWS_PER_PART = 4


def _big_table(path, copies=2):
    """The sample's images listed `copies` times under distinct ids, plus one missing file."""
    images = sorted((SAMPLE_CSV.parent / "images").glob("*.jpg"))
    lines = ["image_id,uri"] + [f"{p.stem}-{k},{p}" for k in range(copies) for p in images]
    lines.append(f"missing-1,{SAMPLE_CSV.parent / 'images' / 'missing.jpg'}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def _ids(out, table, schema):
    return read_table(str(out / table), schema, columns=["image_id"]).column("image_id").to_pylist()


def test_sigkill_then_resume_labels_every_image_exactly_once(tmp_path):
    manifest = tmp_path / "table.csv"
    total = _big_table(manifest)
    out = tmp_path / "out"
    args = ["--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny", "--input", manifest,
            "--output", out, "--rows-per-part", ROWS_PER_PART, "--batch-size", 2]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.pseudo_label", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and len(list((out / "labels").glob("*.parquet"))) < 3:
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    committed = _ids(out, "labels", LABELS) + _ids(out, "failures", FAILURES)
    assert 0 < len(committed) < total
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    again = run_cli(*args)
    assert "already holds a run" in again.stderr and again.returncode == 2  # not without --resume
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ids = _ids(out, "labels", LABELS) + _ids(out, "failures", FAILURES)
    assert len(ids) == len(set(ids)) == total  # nothing lost, nothing twice
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "succeeded" and run["counts"]["already_done"] == len(committed)
    assert run["counts"]["extra_copies_removed"] == 0
    assert run["history"][0]["status"] == "running" and len(run["history"]) == 1
    assert not list(out.rglob("*.inprogress"))
    # every committed part holds at most ROWS_PER_PART rows: the most a kill can lose
    for part in (out / "labels").glob("*.parquet"):
        assert len(read_table(str(part), LABELS, columns=["image_id"])) <= ROWS_PER_PART


def test_resume_of_a_finished_run_does_nothing_new(tmp_path):
    args = ["--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny", "--num-captions", "1",
            "--num-beams", "1", "--limit", "3", "--output", tmp_path / "out"]
    assert run_cli(*args).returncode == 0
    parts = sorted(p.name for p in (tmp_path / "out" / "labels").glob("*.parquet"))
    second = run_cli(*args, "--resume")
    assert second.returncode == 0, second.stderr[-2000:]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["counts"]["already_done"] == 3 and run["counts"]["labeled"] == 3
    assert run["counts"]["extra_copies_removed"] == 0
    assert sorted(p.name for p in (tmp_path / "out" / "labels").glob("*.parquet")) == parts
    assert [h["status"] for h in run["history"]] == ["succeeded"]


def test_overwrite_and_resume_together_is_a_usage_error(tmp_path):
    args = ["--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny", "--limit", "1",
            "--num-captions", "1", "--num-beams", "1", "--output", tmp_path / "out"]
    assert run_cli(*args).returncode == 0
    proc = run_cli(*args, "--resume", "--overwrite")
    assert proc.returncode == 2 and "contradict" in proc.stderr


def test_resume_by_the_shuffle_as_on_dataflow(tmp_path):
    """--dedupe shuffle (Dataflow's CoGroupByKey) resumes a run the on-disk selection began."""
    args = ["--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny", "--num-captions", "1",
            "--num-beams", "1", "--max-new-tokens", "4", "--output", tmp_path / "out"]
    first = run_cli(*args, "--limit", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_cli(*args, "--limit", "5", "--resume", "--dedupe", "shuffle")
    assert second.returncode == 0, second.stderr[-2000:]
    ids = _ids(tmp_path / "out", "labels", LABELS) + _ids(tmp_path / "out", "failures", FAILURES)
    assert len(ids) == len(set(ids)) == 5
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    c = run["counts"]
    assert run["dedupe"] == "shuffle" and run["history"][0]["dedupe"] == "disk"
    assert (c["already_done"], c["distinct_images"], c["extra_copies_removed"]) == (3, 5, 0)
    assert run["beam_counters"] == {k: c[k] for k in run["beam_counters"]}  # the grouping counted the same
