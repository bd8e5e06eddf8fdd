"""The labeling job end to end, through its command line, as users run it."""
import csv
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import FAILURES, LABELS, read_table
from tests import imagegen
from tests.conftest import REPO, SAMPLE_CSV, run_cli

TINY = ["--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny"]
FAST = ["--num-captions", "1", "--num-beams", "1", "--max-new-tokens", "4"]


def _manifest_ids(path=SAMPLE_CSV):
    with open(path, newline="") as f:
        return [r["ImageID"] for r in csv.DictReader(f)]


def _outputs(out):
    labels = read_table(str(out / "labels"), LABELS).to_pylist()
    failures = read_table(str(out / "failures"), FAILURES).to_pylist()
    return labels, failures, json.loads((out / "run.json").read_text())


def _one_line_error(proc):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("pseudo_label: error: ")
    return line


def test_sample_every_image_is_exactly_one_row(sample_run):
    out, proc = sample_run
    labels, failures, run = _outputs(out)
    ids = [r["image_id"] for r in labels] + [r["image_id"] for r in failures]
    assert sorted(ids) == sorted(_manifest_ids())  # nothing lost, nothing twice
    assert run["status"] == "succeeded"
    c = run["counts"]
    assert c["labeled"] == len(labels) and c["failed"] == len(failures)
    assert c["distinct_images"] == c["input_rows"] == len(_manifest_ids()) and c["duplicates"] == 0
    assert c["extra_copies_removed"] == 0 and run["dedupe"] == "disk"  # the DirectRunner's selection
    assert run["beam_counters"] == {k: c[k] for k in run["beam_counters"]}  # the job's counters agree
    assert f"[pseudo_label] 0/{len(ids)} images (0%): read 1" in proc.stderr  # progress: done/total from the selection
    assert f"{len(ids)} images" in proc.stderr.strip().splitlines()[-1]
    assert "token_id must be" not in proc.stderr  # SigLIP's unused bos/eos ids: not reported (teachers/tagger.py)


def test_sample_labels_carry_provenance_attribution_and_orientation(sample_run):
    out, _ = sample_run
    labels, _, run = _outputs(out)
    by_id = {r["image_id"]: r for r in labels}
    with open(SAMPLE_CSV, newline="") as f:
        manifest = {r["ImageID"]: r for r in csv.DictReader(f)}
    for image_id, row in by_id.items():
        assert row["captioner"] == "tiny-random/blip" and row["tagger"] == "tiny-random/siglip"
        assert row["license"] == manifest[image_id]["License"] and row["author"] == manifest[image_id]["Author"]
        assert len(row["sha256"]) == 64 and row["captions"] and row["schema_version"] == 1
        params = json.loads(row["teacher_params"])
        assert params["caption"]["num_beams"] == 5 and params["tag"]["vocab"] == "bundled:default_tags.csv"
    assert run["teachers"]["captioner"]["model"] == "tiny-random/blip"
    assert run["versions"]["apache-beam"].startswith("2.77")
    from PIL import Image

    for image_id, m in manifest.items():
        if image_id not in by_id:
            continue
        stored = Image.open(SAMPLE_CSV.parent / "images" / f"{image_id}.jpg")
        w, h = stored.size
        turned = m["Rotation"] in ("90.0", "270.0") or (not m["Rotation"] and stored.getexif().get(0x0112) in (5, 6, 7, 8))
        assert (by_id[image_id]["width"], by_id[image_id]["height"]) == ((h, w) if turned else (w, h))


def test_existing_output_is_refused_then_overwritten(tmp_path):
    out = tmp_path / "out"
    first = run_cli(*TINY, *FAST, "--limit", "2", "--output", out)
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_cli(*TINY, *FAST, "--limit", "2", "--output", out)
    assert "--overwrite" in _one_line_error(again)
    third = run_cli(*TINY, *FAST, "--limit", "3", "--output", out, "--overwrite")
    assert third.returncode == 0, third.stderr[-2000:]
    labels, failures, run = _outputs(out)
    assert len(labels) + len(failures) == 3 and run["counts"]["input_rows"] == 3
    assert run["counts"]["extra_copies_removed"] == 0


def test_default_hub_teachers_offline_exit_2_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    line = _one_line_error(run_cli("--output", tmp_path / "out"))
    assert "tiny" in line and "local directory" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,match", [
    (["--input", "/no/such/manifest.csv"], "does not exist"),
    (["--num-captions", "9"], "cannot exceed"),
    (["--image-path-template", "{Nope}/{ImageID}.jpg"], "Nope"),
    (["--captioner", "none", "--tagger", "none"], "nothing to label"),
])
def test_bad_flags_exit_2_before_any_work(tmp_path, args, match):
    line = _one_line_error(run_cli(*TINY, "--output", tmp_path / "out", *args))
    assert match in line
    assert not (tmp_path / "out").exists()


def test_openimages_csv_with_image_root_and_hostile_rows(tmp_path):
    root = tmp_path / "bucket"
    (root / "train").mkdir(parents=True)
    good = _manifest_ids()[:3]
    for image_id in good:
        shutil.copy(SAMPLE_CSV.parent / "images" / f"{image_id}.jpg", root / "train" / f"{image_id}.jpg")
    (root / "train" / "trunc01.jpg").write_bytes(imagegen.jpeg(300, 200)[:500])
    (root / "train" / "html0001.jpg").write_bytes(b"<!doctype html><html>503</html>")
    (root / "train" / "bomb0001.jpg").write_bytes(imagegen.png_bomb(12_000, 12_000))
    manifest = tmp_path / "images.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageID", "Subset", "License", "Author", "OriginalURL", "Rotation"])
        for image_id in good:
            w.writerow([image_id, "train", "CC BY 2.0", "someone", f"https://example.org/{image_id}", ""])
        w.writerow([good[0], "train", "dup", "dup", "", ""])  # duplicate: first row wins
        w.writerow(["missing1", "train", "", "", "", ""])
        w.writerow(["trunc01", "train", "", "", "", ""])
        w.writerow(["html0001", "train", "", "", "", ""])
        w.writerow(["bomb0001", "train", "", "", "", ""])
        w.writerow(["", "train", "", "", "", ""])
        w.writerow(["badrot1", "train", "", "", "", "33"])
    proc = run_cli(*TINY, *FAST, "--input", manifest, "--image-root", root, "--image-path-template",
                   "{Subset}/{ImageID}.jpg", "--max-pixels", "50000000", "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels, failures, run = _outputs(tmp_path / "out")
    assert sorted(r["image_id"] for r in labels) == sorted(good)
    assert all(r["license"] == "CC BY 2.0" and r["original_url"].startswith("https://") for r in labels)
    got = {r["image_id"]: (r["stage"], r["error_type"]) for r in failures}
    assert got == {
        "missing1": ("read", "FileNotFoundError"), "trunc01": ("decode", "CorruptImage"),
        "html0001": ("decode", "NotAnImage"), "bomb0001": ("decode", "TooManyPixels"),
        "row:9": ("manifest", "MalformedRow"), "badrot1": ("manifest", "MalformedRow"),
    }
    c = run["counts"]
    assert (c["input_rows"], c["duplicates"], c["distinct_images"]) == (10, 1, 9)
    assert c["labeled"] + c["failed"] == 9 and c["failed_by_stage"] == {"read": 1, "decode": 3, "manifest": 2}
    assert c["extra_copies_removed"] == 0


def test_glob_input(tmp_path):
    proc = run_cli(*TINY, *FAST, "--input", str(SAMPLE_CSV.parent / "images" / "*.jpg"), "--limit", "4",
                   "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels, failures, run = _outputs(tmp_path / "out")
    assert len(labels) + len(failures) == 4 and run["counts"]["input_rows"] == 4
    assert run["counts"]["extra_copies_removed"] == 0
    assert all(r["license"] is None for r in labels)  # a bare glob carries no attribution


def test_parquet_table_input_with_alternative_teachers(tmp_path):
    ids = _manifest_ids()[:3]
    table = pa.table({"image_id": ids, "uri": [str(SAMPLE_CSV.parent / "images" / f"{i}.jpg") for i in ids],
                      "license": ["CC0"] * 3})
    pq.write_table(table, tmp_path / "table.parquet")
    proc = run_cli("--runner", "DirectRunner", "--captioner", "tiny-git", "--tagger", "tiny-clip",
                   "--tag-threshold", "0", "--max-tags", "3", *FAST,
                   "--input", tmp_path / "table.parquet", "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels, failures, _ = _outputs(tmp_path / "out")
    assert sorted(r["image_id"] for r in labels) == sorted(ids) and not failures
    assert {r["captioner"] for r in labels} == {"tiny-random/git"}
    assert all(len(r["tags"]) == 3 and r["license"] == "CC0" for r in labels)


@pytest.mark.slow
def test_multi_processing_direct_runner(tmp_path):
    # Worker processes must unpickle every DoFn and handler: catches state Dataflow would choke on.
    proc = run_cli(*TINY, *FAST, "--direct_running_mode", "multi_processing", "--direct_num_workers", "2",
                   "--limit", "6", "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels, failures, run = _outputs(tmp_path / "out")
    assert len(labels) + len(failures) == 6 and run["counts"]["distinct_images"] == 6
    assert run["counts"]["extra_copies_removed"] == 0 and run["dedupe"] == "disk"  # shards over 2 processes


@pytest.mark.slow
def test_dataflow_dry_run_translates_offline(tmp_path):
    proc = run_cli(
        "--runner", "DataflowRunner", "--project", "my-project", "--region", "us-central1",
        "--temp_location", "gs://example-bucket/tmp", "--output", "gs://example-bucket/out",
        "--input", "gs://example-bucket/images.csv", "--image-root", "gs://example-bucket/images",
        "--captioner", "tiny", "--tagger", "tiny", "--setup_file", "./setup.py", "--dry_run=True", "--no_auth",
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run" in proc.stderr


def test_dedupe_on_disk_needs_a_local_runner(tmp_path):
    line = _one_line_error(run_cli("--runner", "DataflowRunner", "--project", "my-project", "--region", "us-central1",
                                   "--temp_location", "gs://example-bucket/tmp", "--output", "gs://example-bucket/out",
                                   "--captioner", "tiny", "--tagger", "tiny", "--dedupe", "disk", "--dry_run=True",
                                   "--no_auth"))
    assert "--dedupe disk needs a runner on this machine" in line


def test_unreachable_remote_manifest_fails_the_job_with_a_record(tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli(*TINY, "--input", f"http://127.0.0.1:{port}/images.csv", "--read-retries", "0",
                   "--output", tmp_path / "out")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("pseudo_label: error: the job failed:")
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "failed" and run["error"]


def test_the_docs_pandas_example_opens_the_labels(sample_run):
    out, _ = sample_run
    labels = read_table(str(out / "labels"), LABELS).to_pandas()  # docs/labeling.md, as written there
    assert len(labels) == len(_outputs(out)[0]) and {"image_id", "captions", "tags"} <= set(labels.columns)


def test_quiet_job_prints_no_progress(tmp_path):
    proc = run_cli(*TINY, *FAST, "--limit", "2", "--quiet", "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[pseudo_label]" not in proc.stderr and "2 images: 2 labeled" in proc.stderr
