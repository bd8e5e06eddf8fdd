"""The feature extraction job: its command line end to end, its stages, float16 round trips."""
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.tee import Regions
from pipelines import extract_features as fx
from pipelines.beam import extraction, jobrun
from pipelines.beam.handlers import HandlerOptions, TEEHandler, Work
from pipelines.data import images, sources
from pipelines.data.sources import ImageRef
from schemas import FAILURES, FEATURES, read_table, region_features
from tests import imagegen
from tests.conftest import REPO, SAMPLE_CSV

TINY = ["--runner", "DirectRunner", "--tee", "tiny"]


def run_extract(*args, timeout=600):
    """The extraction job as users run it: a separate process, real CLI."""
    cmd = [sys.executable, "-m", "pipelines.extract_features", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def _outputs(out):
    features = read_table(str(out / "features"), FEATURES)
    failures = read_table(str(out / "failures"), FAILURES).to_pylist()
    return features, failures, json.loads((out / "run.json").read_text())


def _manifest():
    with open(SAMPLE_CSV, newline="") as f:
        return {r["ImageID"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def tee():
    from models.tee import load_tee

    return load_tee("tiny")[0]


@pytest.fixture(scope="module")
def sample_features(tmp_path_factory):
    """The bundled sample through the tiny TEE, once for the tests that read it."""
    out = tmp_path_factory.mktemp("features") / "out"
    proc = run_extract(*TINY, "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_sample_gives_one_features_row_per_image(sample_features, tee):
    out, proc = sample_features
    table, failures, run = _outputs(out)
    rows = table.to_pylist()
    manifest = _manifest()
    assert sorted(r["image_id"] for r in rows) == sorted(manifest) and not failures  # all 22 readable
    assert run["job"] == "extract_features" and run["status"] == "succeeded"
    c = run["counts"]
    assert (c["extracted"], c["failed"], c["input_rows"], c["distinct_images"]) == (22, 0, 22, 22)
    assert c["extra_copies_removed"] == 0
    assert run["tee"]["extractor_id"] == tee.extractor_id()
    assert run["tee"]["provenance"] == "tiny-random/tee-tiny" and run["tee"]["reference"] == "tiny"
    assert run["tee"]["config"]["feature_dim"] == tee.config.feature_dim
    assert "[extract_features] 0/22 images (0%): read 1" in proc.stderr  # progress: done/total from the selection
    assert proc.stderr.strip().splitlines()[-1].startswith("extract_features: 22 images: 22 extracted, 0 failed")

    cfg = tee.config
    classes = dict(cfg.classes)
    for r in rows:
        n = r["num_regions"]
        assert cfg.min_regions <= n <= cfg.num_regions
        assert r["feature_dim"] == cfg.feature_dim and len(r["features"]) == n * cfg.feature_dim
        assert len(r["boxes"]) == len(r["scores"]) == len(r["labels"]) == len(r["names"]) == n
        boxes = np.asarray(r["boxes"], dtype=np.float32)
        assert boxes.shape == (n, 4) and (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
        assert all(classes[label] == name for label, name in zip(r["labels"], r["names"]))
        assert r["extractor"] == tee.extractor_id() and r["extractor_source"] == "tiny-random/tee-tiny"
        assert r["schema_version"] == FEATURES.version and r["extracted_at"].tzinfo is not None
        # the labels table's conventions: sha256 of the file's bytes, full size after orientation
        data = open(r["source_uri"], "rb").read()
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        rotation = images.parse_rotation(manifest[r["image_id"]]["Rotation"])
        decoded = images.decode_image(data, rotation=rotation, target_size=None)
        assert (r["width"], r["height"]) == (decoded.width, decoded.height) == decoded.pixels.shape[1::-1]
    assert region_features(table).shape == (sum(r["num_regions"] for r in rows), cfg.feature_dim)


def test_float16_features_read_back_equal_the_model_on_the_same_image(tmp_path, tee):
    """The job under TestPipeline (assert_that on its outputs), then its files against the bare model
    in the form the job runs it (batch norms folded; the same extractor id)."""
    import copy

    tee = copy.deepcopy(tee)
    tee.fold_batchnorms()
    args, _ = fx.parse_args(["--tee", "tiny", "--limit", "3", "--batch-size", "1", "--output", str(tmp_path / "out")])
    job = fx.make_job(args)
    refs = list(sources.iter_refs(job.source))
    with TestPipeline() as p:
        features, failures = extraction.build(p, job)
        assert_that(features | beam.Map(lambda r: r["image_id"]), equal_to([r.image_id for r in refs]),
                    label="features")
        assert_that(failures, equal_to([]), label="failures")
    table = read_table(str(tmp_path / "out" / "features"), FEATURES)
    ids = table.column("image_id").to_pylist()
    assert sorted(ids) == sorted(r.image_id for r in refs)
    for ref in refs:
        data = open(ref.uri, "rb").read()
        pixels = images.decode_image(data, rotation=ref.rotation, max_pixels=job.max_pixels,
                                     target_size=args.decode_size).pixels
        want = tee.extract([pixels])[0]
        row = table.slice(ids.index(ref.image_id), 1)
        got = region_features(row)
        assert got.dtype == np.float16 and got.shape == want.features.shape
        assert np.array_equal(got, want.features.astype(np.float16))  # exact, bit for bit
        assert np.array_equal(region_features(row.to_pylist()[0]), got)
        assert np.array_equal(np.asarray(row.column("boxes")[0].as_py(), np.float32), want.boxes)
        assert row.column("labels")[0].as_py() == want.labels and row.column("names")[0].as_py() == want.names


def test_hostile_inputs_become_failures_and_nothing_is_lost(tmp_path):
    root = tmp_path / "bucket"
    (root / "train").mkdir(parents=True)
    good = sorted(_manifest())[:2]
    for image_id in good:
        shutil.copy(SAMPLE_CSV.parent / "images" / f"{image_id}.jpg", root / "train" / f"{image_id}.jpg")
    (root / "train" / "trunc01.jpg").write_bytes(imagegen.jpeg(300, 200)[:500])
    (root / "train" / "html0001.jpg").write_bytes(b"<!doctype html><html>503</html>")
    (root / "train" / "empty001.jpg").write_bytes(b"")
    (root / "train" / "tiny0001.jpg").write_bytes(imagegen.cases()["one_pixel_png"])  # 1x1: an image
    manifest = tmp_path / "images.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageID", "Subset", "License", "Author", "OriginalURL", "Rotation"])
        for image_id in good:
            w.writerow([image_id, "train", "CC BY 2.0", "someone", "", ""])
        w.writerow([good[0], "train", "", "", "", ""])  # duplicate: first row wins
        for image_id in ("missing1", "trunc01", "html0001", "empty001", "tiny0001"):
            w.writerow([image_id, "train", "", "", "", ""])
        w.writerow(["", "train", "", "", "", ""])  # no ImageID
        w.writerow(["badrot1", "train", "", "", "", "33"])
    proc = run_extract(*TINY, "--input", manifest, "--image-root", root, "--image-path-template",
                       "{Subset}/{ImageID}.jpg", "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table, failures, run = _outputs(tmp_path / "out")
    assert sorted(table.column("image_id").to_pylist()) == sorted([*good, "tiny0001"])
    got = {r["image_id"]: (r["stage"], r["error_type"]) for r in failures}
    assert got == {
        "missing1": ("read", "FileNotFoundError"), "trunc01": ("decode", "CorruptImage"),
        "html0001": ("decode", "NotAnImage"), "empty001": ("decode", "EmptyFile"),
        "row:9": ("manifest", "MalformedRow"), "badrot1": ("manifest", "MalformedRow"),
    }
    c = run["counts"]
    assert (c["input_rows"], c["duplicates"], c["distinct_images"]) == (10, 1, 9)
    assert c["extracted"] + c["failed"] == c["distinct_images"] == table.num_rows + len(failures)
    assert c["failed_by_stage"] == {"read": 1, "decode": 3, "manifest": 2} and c["extra_copies_removed"] == 0


def test_resume_skips_committed_images(tmp_path, capsys):
    out = tmp_path / "out"
    first = run_extract(*TINY, "--limit", "3", "--rows-per-part", "2", "--output", out)
    assert first.returncode == 0, first.stderr[-2000:]
    parts = sorted(p.name for p in (out / "features").glob("*.parquet"))
    assert len(parts) >= 2  # at most 2 rows per part
    assert fx.run([*TINY, "--limit", "6", "--output", str(out)]) == 2  # not without --resume
    assert "already holds a run" in capsys.readouterr().err
    resumed = run_extract(*TINY, "--limit", "6", "--rows-per-part", "2", "--output", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "3 already done" in resumed.stderr.strip().splitlines()[-1]
    table, failures, run = _outputs(out)
    ids = table.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 6 and not failures
    assert sorted(ids) == sorted(r.image_id for r in sources.iter_refs(sources.SourceSpec(str(SAMPLE_CSV), limit=6)))
    c = run["counts"]
    assert (c["already_done"], c["extracted"], c["distinct_images"], c["extra_copies_removed"]) == (3, 6, 6, 0)
    assert [h["status"] for h in run["history"]] == ["succeeded"] and run["resumed_from_parts"] == len(parts)
    assert set(parts) <= {p.name for p in (out / "features").glob("*.parquet")}  # committed parts untouched


@pytest.mark.parametrize("flags,match", [
    (["--tee", "/no/such/tee"], "--tee /no/such/tee: cannot load a TEE"),
    (["--tee", "tiny", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--tee", "tiny", "--input", "/no/such/manifest.csv"], "does not exist"),
    (["--tee", "tiny", "--device", "tpu"], "--device"),
])
def test_bad_flags_exit_2_with_one_line_before_any_work(tmp_path, capsys, flags, match):
    assert fx.run([*flags, "--output", str(tmp_path / "out")]) == jobrun.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("extract_features: error: ") and match in err[0]
    assert not (tmp_path / "out").exists()


def test_tee_is_required(tmp_path, capsys):
    assert fx.run(["--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "extract_features: error: the following arguments are required: --tee"
    assert not (tmp_path / "out").exists()


def test_a_directory_that_is_not_a_saved_tee_is_refused(tmp_path, capsys):
    (tmp_path / "tee").mkdir()
    (tmp_path / "tee" / "config.json").write_text("{}")
    assert fx.run(["--tee", str(tmp_path / "tee"), "--output", str(tmp_path / "out")]) == 2
    assert "is not a saved TEE" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_an_output_holding_another_jobs_run_is_refused(tmp_path, capsys, flag):
    (tmp_path / "out" / "labels").mkdir(parents=True)
    (tmp_path / "out" / "run.json").write_text(json.dumps({"job": "pseudo_label", "status": "succeeded"}))
    assert fx.run(["--tee", "tiny", "--output", str(tmp_path / "out"), flag]) == 2
    assert "holds a pseudo_label run" in capsys.readouterr().err
    assert (tmp_path / "out" / "run.json").exists() and (tmp_path / "out" / "labels").exists()


def test_resume_with_a_different_tee_is_refused(tmp_path, capsys):
    (tmp_path / "out" / "features").mkdir(parents=True)
    record = {"job": "extract_features", "status": "running", "tee": {"extractor_id": "tee-d0-0123456789abcdef"}}
    (tmp_path / "out" / "run.json").write_text(json.dumps(record))
    assert fx.run(["--tee", "tiny", "--output", str(tmp_path / "out"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume: the TEE is tee-" in err and "but tee-d0-0123456789abcdef in the run" in err
    assert json.loads((tmp_path / "out" / "run.json").read_text()) == record  # untouched


def test_a_saved_tee_directory_is_loaded_and_identified(tmp_path, tee):
    eid = tee.save_pretrained(str(tmp_path / "tee"))
    spec = fx.load_spec(str(tmp_path / "tee"))
    assert spec.extractor_id == eid == tee.extractor_id() and spec.provenance == str(tmp_path / "tee")


class FailsOnTinyImages:
    """Wraps the real TEE; refuses images smaller than 8 px, as a buggy model might."""

    def __init__(self, real):
        self.real = real

    def __call__(self, batch):
        if any(min(im.shape[:2]) < 8 for im in batch):
            raise RuntimeError("image too small for this model")
        return self.real(batch)


def _item(image_id, pixels, failure=None):
    return Work(ImageRef(image_id, f"/{image_id}.jpg", 1), "0" * 64, 32, 32, pixels, failure=failure)


def test_tee_handler_isolates_a_failing_image_and_rows_follow(tee):
    handler = TEEHandler("tiny", tee.extractor_id(), HandlerOptions(device="cpu", batch_size=4))
    model = FailsOnTinyImages(handler.load_model())
    batch = [_item("a", imagegen.gradient(32, 32)), _item("b", np.zeros((4, 4, 3), np.uint8)),
             _item("c", imagegen.gradient(40, 9)), _item("d", None, failure=("decode", "X", "earlier"))]
    results = list(handler.run_inference(batch, model))
    assert [r.image_id for r in results] == ["a", "b", "c", "d"]
    assert results[1].failure[:2] == ("extract", "RuntimeError") and results[3].failure == ("decode", "X", "earlier")
    assert results[0].regions is not None and results[0].pixels is None  # pixels freed after the TEE
    spec = fx.load_spec("tiny")
    empty = Regions(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                    classes=np.zeros(0, np.int64), labels=[], names=[], features=np.zeros((0, 64), np.float32))
    items = [*results, Work(ImageRef("e", "/e.jpg", 5), "0" * 64, 1, 1, None, regions=empty)]
    with TestPipeline() as p:
        rows = p | beam.Create(items) | beam.ParDo(extraction.MakeFeatureRow(spec)).with_outputs(
            "failed", main="features")
        assert_that(rows.features | beam.Map(lambda r: (r["image_id"], r["extractor"])),
                    equal_to([("a", spec.extractor_id), ("c", spec.extractor_id)]), label="features")
        assert_that(rows.failed | beam.Map(lambda r: (r["image_id"], r["stage"], r["error_type"])),
                    equal_to([("b", "extract", "RuntimeError"), ("d", "decode", "X"),
                              ("e", "extract", "EmptyOutput")]), label="failed")


def test_a_worker_with_different_weights_stops_the_job(tee):
    handler = TEEHandler("tiny", "tee-tiny-0000000000000000", HandlerOptions(device="cpu"))
    with pytest.raises(RuntimeError, match="changed"):
        handler.load_model()


@pytest.mark.slow
def test_multi_processing_direct_runner(tmp_path):
    # Worker processes must unpickle the handler and DoFns: catches state Dataflow would choke on.
    proc = run_extract(*TINY, "--direct_running_mode", "multi_processing", "--direct_num_workers", "2",
                       "--limit", "3", "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table, failures, run = _outputs(tmp_path / "out")
    assert table.num_rows + len(failures) == 3 and run["counts"]["distinct_images"] == 3
    assert run["counts"]["extra_copies_removed"] == 0


@pytest.mark.slow
def test_dataflow_dry_run_translates_offline(tmp_path):
    proc = run_extract(
        "--runner", "DataflowRunner", "--project", "my-project", "--region", "us-central1",
        "--temp_location", "gs://example-bucket/tmp", "--output", "gs://example-bucket/features",
        "--input", "gs://example-bucket/images.csv", "--image-root", "gs://example-bucket/images",
        "--tee", "tiny", "--setup_file", "./setup.py", "--dry_run=True", "--no_auth",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run" in proc.stderr
