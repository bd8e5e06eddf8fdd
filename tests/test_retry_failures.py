"""--retry-failures: transient failures are reprocessed, permanent ones left alone, and every
image still ends as exactly one row, against the HTTP server that fails on purpose."""
import json
import os
import subprocess
import sys

import pytest

from pipelines import pseudo_label as pl
from pipelines.beam import retry
from schemas import FAILURES, FEATURES, LABELS, read_table
from tests import imagegen
from tests.conftest import REPO, run_cli
from tests.test_faults import FlakyServer

FAST = ["--captioner", "tiny", "--tagger", "tiny", "--num-captions", "1", "--num-beams", "1", "--max-new-tokens", "4"]
ALWAYS = 10**6  # a flaky image that answers 503 to every request until reset


def _table(path, url, names):
    path.write_text("image_id,uri\n" + "".join(f"{n.rsplit('.', 1)[0]},{url}/{n}\n" for n in names))


def _rows(out, table=("labels", LABELS)):
    done = read_table(str(out / table[0]), table[1], columns=["image_id"]).column("image_id").to_pylist()
    failures = {r["image_id"]: (r["stage"], r["error_type"])
                for r in read_table(str(out / "failures"), FAILURES).to_pylist()}
    return done, failures


def _exactly_once(out, ids, table=("labels", LABELS)):
    """Every id is one row in `table` or failures, no other row exists; run.json agrees."""
    done, failures = _rows(out, table)
    assert sorted(done + list(failures)) == sorted(ids)  # nothing lost, nothing twice
    run = json.loads((out / "run.json").read_text())
    c = run["counts"]
    assert run["status"] == "succeeded"
    assert c[{"labels": "labeled", "features": "extracted"}[table[0]]] == len(done)
    assert (c["failed"], c["distinct_images"]) == (len(failures), len(ids))
    assert not list(out.rglob("*.inprogress"))
    return set(done), failures, run


@pytest.mark.slow  # three labeling jobs
def test_retry_recovers_transient_failures_and_leaves_permanent_ones(tmp_path):
    jpeg = imagegen.jpeg(64, 48)
    files = {f"img{i}.jpg": jpeg for i in range(4)}
    files["empty.jpg"] = b""  # decodes to nothing: permanent
    names = [*files, "gone.jpg"]  # gone.jpg: 404, permanent
    ids = [n.rsplit(".", 1)[0] for n in names]
    out = tmp_path / "out"
    with FlakyServer(files, flaky={"img1.jpg": ALWAYS, "img2.jpg": ALWAYS}, broken=set()) as srv:
        _table(tmp_path / "t.csv", srv.url, names)
        first = run_cli("--runner", "DirectRunner", *FAST, "--input", tmp_path / "t.csv", "--read-retries", "0",
                        "--rows-per-part", "2", "--output", out)
        assert first.returncode == 0, first.stderr[-3000:]
        labeled, failures, run = _exactly_once(out, ids)
        assert labeled == {"img0", "img3"} and run["counts"]["extra_copies_removed"] == 0
        assert failures["img1"] == ("read", "ClientResponseError") and failures["gone"] == ("read", "FileNotFoundError")
        old_failure_parts = {p.name for p in (out / "failures").glob("*.parquet")}

        # img1 is back, img2 still answers 503: one recovers, one fails again.
        srv.flaky["img1.jpg"] = 0
        gets_before = dict(srv.gets)
        again = run_cli("--runner", "DirectRunner", "--output", out, "--retry-failures")  # the run's own settings
        assert again.returncode == 0, again.stderr[-3000:]
        labeled, failures, run = _exactly_once(out, ids)
        assert labeled == {"img0", "img1", "img3"}
        assert failures == {"img2": ("read", "ClientResponseError"), "gone": ("read", "FileNotFoundError"),
                            "empty": ("decode", "EmptyFile")}
        assert run["retry"] == {"mode": "transient", "retried": 2, "recovered": 1, "failed_again": 1,
                                "not_retried": 0, "left_alone": 2,
                                "left_alone_by_kind": {"decode/EmptyFile": 1, "read/FileNotFoundError": 1}}
        c = run["counts"]
        assert (c["retried"], c["already_done"], c["extra_copies_removed"]) == (2, 4, 0)
        assert run["beam_counters"]["retried"] == 2  # the pipeline's own count agrees
        assert run["options"]["num_beams"] == 1 and run["options"]["retry_failures"] == "transient"
        assert [h["status"] for h in run["history"]] == ["succeeded"]
        # only the retried images were read again
        assert {n: srv.gets[n] - gets_before.get(n, 0) for n in names if srv.gets[n] != gets_before.get(n, 0)} \
            == {"img1.jpg": 1, "img2.jpg": 1}
        # the parts that held them were rewritten, published whole under new names
        assert old_failure_parts - {p.name for p in (out / "failures").glob("*.parquet")}

        # all: the permanent ones too; gone.jpg has appeared meanwhile, empty.jpg is still empty
        srv.flaky["img2.jpg"] = 0
        srv.files["gone.jpg"] = jpeg
        last = run_cli("--runner", "DirectRunner", "--output", out, "--retry-failures", "all")
        assert last.returncode == 0, last.stderr[-3000:]
    labeled, failures, run = _exactly_once(out, ids)
    assert labeled == {"img0", "img1", "img2", "img3", "gone"} and failures == {"empty": ("decode", "EmptyFile")}
    assert run["retry"] == {"mode": "all", "retried": 3, "recovered": 2, "failed_again": 1, "not_retried": 0,
                            "left_alone": 0, "left_alone_by_kind": {}}
    assert run["counts"]["extra_copies_removed"] == 0 and len(run["history"]) == 2
    assert "retried 3 failures (all): 2 recovered, 1 failed again" in last.stderr


def test_extract_features_retries_too(tmp_path):
    files = {f"img{i}.jpg": imagegen.jpeg(64, 48) for i in range(3)}
    out = tmp_path / "out"
    with FlakyServer(files, flaky={"img1.jpg": ALWAYS}, broken=set()) as srv:
        _table(tmp_path / "t.csv", srv.url, [*files, "gone.jpg"])
        cmd = [sys.executable, "-m", "pipelines.extract_features", "--runner", "DirectRunner"]
        first = subprocess.run([*cmd, "--tee", "tiny", "--input", str(tmp_path / "t.csv"), "--read-retries", "0",
                                "--output", str(out)], cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
        assert first.returncode == 0, first.stderr[-3000:]
        srv.flaky.clear()
        again = subprocess.run([*cmd, "--output", str(out), "--retry-failures"], cwd=REPO, capture_output=True,
                               text=True, env=dict(os.environ))  # no --tee: the run's own
        assert again.returncode == 0, again.stderr[-3000:]
    done, failures, run = _exactly_once(out, ["img0", "img1", "img2", "gone"], table=("features", FEATURES))
    assert done == {"img0", "img1", "img2"} and failures == {"gone": ("read", "FileNotFoundError")}
    assert (run["retry"]["recovered"], run["retry"]["left_alone"], run["counts"]["extra_copies_removed"]) == (1, 1, 0)
    assert run["tee"]["reference"] == "tiny"


# ---- what counts as transient -------------------------------------------------------

@pytest.mark.parametrize("stage,error_type,message,transient", [
    ("read", "ClientResponseError", "503, message='Service Unavailable', url='http://h/a.jpg'", True),
    ("read", "ClientResponseError", "500, message='Internal Server Error', url='http://h/a.jpg'", True),
    ("read", "ClientResponseError", "429, message='Too Many Requests', url='http://h/a.jpg'", True),
    ("read", "ClientResponseError", "403, message='Forbidden', url='http://h/a.jpg'", False),
    ("read", "FileNotFoundError", "http://h/a.jpg", False),
    ("read", "PermissionError", "Access Denied", False),
    ("read", "TimeoutError", "", True),
    ("read", "ServerDisconnectedError", "Server disconnected", True),
    ("read", "OSError", "Forbidden: bucket/a.jpg", True),  # what gcsfs raises for a 403: storage retries it too
    ("decode", "CorruptImage", "truncated", False),
    ("manifest", "MalformedRow", "manifest row 3 has no ImageID", False),
    ("caption", "RuntimeError", "CUDA out of memory", True),
    ("extract", "OutOfMemoryError", "CUDA out of memory", True),
    ("tag", "EmptyOutput", "the tagger returned no tag above the threshold", False),
    ("rerank", "LowCaptionSimilarity", "all 3 captions are below", False),
    ("label", "ValueError", "bad row", False),
])
def test_transient_or_permanent(stage, error_type, message, transient):
    row = {"stage": stage, "error_type": error_type, "message": message}
    assert retry.is_transient(stage, error_type, message) is transient
    assert retry.retryable(row, "transient") is transient and retry.retryable(row, "all")


# ---- refused before any work ---------------------------------------------------------

def _record(out, argv, **fields):
    """A run.json as a run with these flags would have written it (no job runs)."""
    args, _ = pl.parse_args([*argv, "--output", str(out)])
    out.mkdir(parents=True, exist_ok=True)
    record = {"job": "pseudo_label", "status": "succeeded", "options": vars(args), **fields}
    (out / "run.json").write_text(json.dumps(record))
    return record


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pseudo_label: error: "), err
    return err[0]


def test_retry_needs_an_earlier_run(tmp_path, capsys):
    assert pl.run(["--output", str(tmp_path / "out"), "--retry-failures"]) == 2
    assert "holds no run" in _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_retry_and_overwrite_contradict(tmp_path, capsys):
    _record(tmp_path / "out", FAST)
    assert pl.run(["--output", str(tmp_path / "out"), "--retry-failures", "--overwrite"]) == 2
    assert "--overwrite and --retry-failures contradict" in _one_line(capsys)
    assert (tmp_path / "out" / "run.json").exists()


def test_retry_keeps_the_runs_settings(tmp_path, capsys):
    record = _record(tmp_path / "out", FAST)
    assert pl.run(["--output", str(tmp_path / "out"), "--retry-failures", "--num-beams", "3"]) == 2
    assert "--num-beams 3 differs from its 1" in _one_line(capsys)
    assert json.loads((tmp_path / "out" / "run.json").read_text()) == record  # untouched


def test_retry_of_an_unfinished_run_needs_resume(tmp_path, capsys):
    _record(tmp_path / "out", FAST, status="running")
    assert pl.run(["--output", str(tmp_path / "out"), "--retry-failures"]) == 2
    assert "add --resume" in _one_line(capsys)


def test_retry_of_a_record_without_options_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.json").write_text(json.dumps({"job": "pseudo_label", "status": "succeeded"}))
    assert pl.run(["--output", str(tmp_path / "out"), "--retry-failures"]) == 2
    assert "records no options" in _one_line(capsys)
