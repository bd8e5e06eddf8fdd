"""Kill anything, resume anything; and a finished job exits with the code it means, every time.

- extract_features killed with SIGKILL mid-way, then `--resume`: every image exactly once.
- build_corpus killed mid-way publishes nothing a trainer would take for a corpus: its
  run.json still says "running"; rerunning with --overwrite is the recovery.
- The labeling command whose every image fails (the case that used to abort at exit with
  134, beside a busy CPU) exits 0, run after run.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from schemas import CORPUS, FAILURES, FEATURES, LABELS, read_table
from tests.conftest import REPO, SAMPLE_CSV, run_cli


def _popen(module, *args):
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc, ready, timeout=300):
    """SIGKILL `proc` as soon as `ready()` holds (it must still be running then)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not ready():
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.1)
        assert ready(), "the job did not get far enough to be killed mid-way"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _ids(out, table, schema):
    return read_table(str(out / table), schema, columns=["image_id"]).column("image_id").to_pylist()


def _table(path, copies):
    """The sample's images `copies` times under distinct ids, plus one missing file."""
    images = sorted((SAMPLE_CSV.parent / "images").glob("*.jpg"))
    lines = ["image_id,uri"] + [f"{p.stem}-{k},{p}" for k in range(copies) for p in images]
    lines.append(f"missing-1,{SAMPLE_CSV.parent / 'images' / 'missing.jpg'}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def test_extract_features_sigkill_then_resume_gives_every_image_once(tmp_path):
    manifest, out = tmp_path / "table.csv", tmp_path / "out"
    total = _table(manifest, copies=2)
    args = ["--runner", "DirectRunner", "--tee", "tiny", "--input", manifest, "--output", out,
            "--rows-per-part", 4, "--batch-size", 2]
    proc = _popen("pipelines.extract_features", *args)
    _kill_when(proc, lambda: len(list((out / "features").glob("*.parquet"))) >= 3)
    committed = _ids(out, "features", FEATURES) + _ids(out, "failures", FAILURES)
    assert 0 < len(committed) < total
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    resumed = subprocess.run([sys.executable, "-m", "pipelines.extract_features", *map(str, args), "--resume"],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ids = _ids(out, "features", FEATURES) + _ids(out, "failures", FAILURES)
    assert len(ids) == len(set(ids)) == total  # nothing lost, nothing twice
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "succeeded" and run["counts"]["already_done"] == len(committed)
    assert run["counts"]["extra_copies_removed"] == 0
    assert not list(out.rglob("*.inprogress"))


@pytest.mark.slow
def test_build_corpus_killed_mid_way_is_marked_unfinished_and_a_rerun_recovers(tmp_path):
    from tests.test_corpus import fea, lab, write

    ids = [f"img{i:05d}" for i in range(3000)]
    for k in range(6):
        write(tmp_path / "in/labels", LABELS, [lab(i) for i in ids[k::6]], f"part-{k}.parquet")
        write(tmp_path / "in/features", FEATURES, [fea(i, n=1, dim=2) for i in ids[k::6]], f"part-{k}.parquet")
    out = tmp_path / "corpus"
    args = ["--labels", tmp_path / "in/labels", "--features", tmp_path / "in/features", "--output", out,
            "--shard-rows", 16]
    proc = _popen("pipelines.build_corpus", *args)
    _kill_when(proc, lambda: any((out / "shards").glob("*.parquet")))
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    # whatever shards it published, no trainer takes them for a corpus
    refused = subprocess.run([sys.executable, "-m", "pipelines.train_student", "--corpus", out, "--tee", "tiny",
                              "--init", "tiny", "--output", tmp_path / "ckpt", "--max-steps", "2"], cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "is not a finished corpus (run.json status 'running')" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

    again = subprocess.run([sys.executable, "-m", "pipelines.build_corpus", *map(str, args)], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already holds a corpus" in again.stderr
    rerun = subprocess.run([sys.executable, "-m", "pipelines.build_corpus", *map(str, args), "--overwrite"],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "succeeded" and run["counts"]["joined"] == len(ids)
    got = read_table(str(out / "shards"), CORPUS, columns=["image_id"]).column("image_id")
    val = read_table(str(out / "val"), CORPUS, columns=["image_id"]).column("image_id")
    assert sorted(got.to_pylist() + val.to_pylist()) == ids


def _all_fail(out):
    return run_cli("--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny", "--rerank",
                   "--min-caption-similarity", "1", "--num-captions", "3", "--num-beams", "3",
                   "--max-new-tokens", "6", "--limit", "5", "--output", out, "--overwrite")


@pytest.mark.slow
def test_a_run_where_every_image_fails_exits_0_every_time_beside_a_busy_cpu(tmp_path):
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for run in range(20):
            proc = _all_fail(tmp_path / "out")
            assert proc.returncode == 0, f"run {run}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    finally:
        burner.kill()
        burner.wait()
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["counts"]["failed"] == 5 and run["counts"]["labeled"] == 0
    assert run["counts"]["extra_copies_removed"] == 0
