"""The labeling job against real storage servers on loopback: gs://, s3://, http://.

Inputs, images, outputs and run.json all go through the same code as on real buckets:
fsspec (gcsfs, s3fs, HTTP) for reading and for the committed Parquet parts.
"""
import contextlib
import csv
import io
import json

import fsspec
import pytest

from schemas import FAILURES, LABELS, read_table
from tests import servers
from tests.conftest import SAMPLE_CSV, run_cli

FAST = ["--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny",
        "--num-captions", "1", "--num-beams", "1", "--max-new-tokens", "4"]
IMAGES = SAMPLE_CSV.parent / "images"


def _sample_rows(n):
    with open(SAMPLE_CSV, newline="") as f:
        return list(csv.DictReader(f))[:n]


def _manifest_text(rows) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _check_outputs(output: str, labeled: set, failed: dict):
    labels = read_table(f"{output}/labels", LABELS).to_pylist()
    failures = read_table(f"{output}/failures", FAILURES).to_pylist()
    assert {r["image_id"] for r in labels} == labeled
    assert {r["image_id"]: r["error_type"] for r in failures} == failed
    with fsspec.open(f"{output}/run.json", "r") as f:
        run = json.load(f)
    assert run["status"] == "succeeded"
    assert (run["counts"]["labeled"], run["counts"]["failed"]) == (len(labeled), len(failed))
    assert run["counts"]["extra_copies_removed"] == 0
    return labels


def test_gcs_manifest_images_and_outputs(tmp_path):
    rows = _sample_rows(3)
    rows.append({**rows[0], "ImageID": "missing0"})
    with servers.gcs_emulator("example-bucket") as env, servers.environ(env):
        fs = fsspec.filesystem("gs")
        for r in rows[:3]:
            fs.put(str(IMAGES / f"{r['ImageID']}.jpg"), f"example-bucket/oi/images/{r['ImageID']}.jpg")
        fs.pipe("example-bucket/oi/images.csv", _manifest_text(rows).encode())
        proc = run_cli(*FAST, "--input", "gs://example-bucket/oi/images.csv",
                       "--image-root", "gs://example-bucket/oi/images", "--output", "gs://example-bucket/out",
                       env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        labels = _check_outputs("gs://example-bucket/out", {r["ImageID"] for r in rows[:3]},
                                {"missing0": "FileNotFoundError"})
        assert all(r["source_uri"].startswith("gs://example-bucket/oi/images/") for r in labels)
        again = run_cli(*FAST, "--input", "gs://example-bucket/oi/images.csv", "--image-root",
                        "gs://example-bucket/oi/images", "--output", "gs://example-bucket/out", env=env)
        assert again.returncode == 2 and "already holds a run" in again.stderr  # checked on the bucket


def test_s3_glob_input_and_outputs():
    ids = [r["ImageID"] for r in _sample_rows(3)]
    with servers.s3_server() as env, servers.environ(env):
        fs = fsspec.filesystem("s3")
        fs.mkdir("photos")
        for i in ids:
            fs.put(str(IMAGES / f"{i}.jpg"), f"photos/in/{i}.jpg")
        fs.pipe("photos/in/broken.jpg", b"<html>AccessDenied</html>")
        proc = run_cli(*FAST, "--input", "s3://photos/in/*.jpg", "--output", "s3://photos/out", env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _check_outputs("s3://photos/out", set(ids), {"broken": "NotAnImage"})


def test_http_table_input(tmp_path):
    ids = [r["ImageID"] for r in _sample_rows(2)]
    with servers.http_server(IMAGES) as base:
        table = tmp_path / "table.csv"
        table.write_text("image_id,uri\n" + "".join(f"{i},{base}/{i}.jpg\n" for i in ids)
                         + f"gone,{base}/gone.jpg\n")
        out = tmp_path / "out"
        proc = run_cli(*FAST, "--input", table, "--output", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _check_outputs(str(out), set(ids), {"gone": "FileNotFoundError"})


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_storage_layer_round_trip(scheme):
    from pipelines.data import storage

    server = servers.gcs_emulator("bkt") if scheme == "gs" else servers.s3_server()
    with server as env, servers.environ(env):
        if scheme == "s3":
            fsspec.filesystem("s3").mkdir("bkt")
        url = f"{scheme}://bkt/dir/run.json"
        storage.write_text(url, '{"ok": true}')
        assert storage.exists(url) and json.loads(storage.read_text(url)) == {"ok": True}
        assert storage.read_bytes(url) == b'{"ok": true}'
        with pytest.raises(storage.PermanentReadError):
            storage.read_bytes(f"{scheme}://bkt/dir/missing.jpg", retries=0)
        storage.remove(f"{scheme}://bkt/dir")
        assert not storage.exists(url)


def test_teacher_loaded_from_a_gcs_directory(tmp_path):
    import teachers
    from teachers import TagParams, TeacherRef

    local = teachers.resolve(TeacherRef("tagger", "tiny"), cache_dir=str(tmp_path / "build"))
    with servers.gcs_emulator("models") as env, servers.environ(env):
        fs = fsspec.filesystem("gs")
        fs.put(local, "models/siglip-tiny", recursive=True)
        tagger = teachers.load_tagger("gs://models/siglip-tiny", TagParams(threshold=0.0, max_tags=2),
                                      device="cpu", cache_dir=str(tmp_path / "cache"))
        from tests.imagegen import gradient

        assert len(tagger([gradient(40, 30)])[0]) == 2
        assert list((tmp_path / "cache" / "remote").iterdir())  # copied once into the local cache


def _flaky_gcs(failures):
    """The GCS emulator behind a proxy that fails the first `failures` requests for flaky.jpg."""
    stack = contextlib.ExitStack()
    env = stack.enter_context(servers.gcs_emulator("flaky-bucket"))
    url, attempts = stack.enter_context(servers.failing_proxy(env["STORAGE_EMULATOR_HOST"], "flaky.jpg", failures))
    stack.enter_context(servers.environ({**env, "STORAGE_EMULATOR_HOST": url}))
    fsspec.filesystem("gs").pipe("flaky-bucket/flaky.jpg", b"jpeg bytes")
    return stack, attempts


def test_one_retry_policy_on_gcs_a_passing_failure_is_retried_once_over():
    from pipelines.data import storage

    stack, attempts = _flaky_gcs(failures=2)
    with stack:
        assert storage.read_bytes("gs://flaky-bucket/flaky.jpg", retries=3, backoff_s=0.01) == b"jpeg bytes"
    assert attempts["count"] == 3  # two 503s, then the object: gcsfs retried, nothing else did


@pytest.mark.slow
def test_one_retry_policy_on_gcs_is_not_stacked_on_gcsfs():
    import gcsfs

    from pipelines.data import storage

    stack, attempts = _flaky_gcs(failures=10_000)
    with stack:
        with pytest.raises(Exception) as e:
            storage.read_bytes("gs://flaky-bucket/flaky.jpg", retries=3, backoff_s=0.01)
    assert not isinstance(e.value, storage.PermanentReadError)  # a 503 stays transient
    # gcsfs's own attempts, once: ours on top would have made it 4 x as many.
    assert attempts["count"] == gcsfs.GCSFileSystem.retries
