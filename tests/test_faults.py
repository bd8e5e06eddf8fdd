"""Transient faults are retried, permanent ones fail at once; hostile inputs are accounted for."""
import csv
import http.server
import json
import threading
from collections import Counter

import apache_beam as beam
import pytest

from pipelines.data import storage
from schemas import FAILURES, LABELS, labels_row, read_table
from tests import imagegen
from tests.conftest import SAMPLE_CSV, run_cli

FAST = ["--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny",
        "--num-captions", "1", "--num-beams", "1", "--max-new-tokens", "4"]


class FlakyServer:
    """Serves images over HTTP: some fail N times with 503 first, some always 500, some 404."""

    def __init__(self, files: dict[str, bytes], flaky: dict[str, int], broken: set[str]):
        self.files, self.flaky, self.broken = files, dict(flaky), broken
        self.gets: Counter = Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._respond(body=False)

            def do_GET(self):
                self._respond(body=True)

            def _respond(self, body: bool):
                name = self.path.lstrip("/")
                if body:
                    outer.gets[name] += 1
                if name in outer.broken:
                    return self.send_error(500, "always broken")
                if outer.flaky.get(name, 0) > 0:
                    if body:
                        outer.flaky[name] -= 1
                    return self.send_error(503, "try again")
                if name not in outer.files:
                    return self.send_error(404, "no such image")
                data = outer.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_read_bytes_retries_transient_and_not_permanent_errors():
    files = {"ok.jpg": b"a", "flaky.jpg": b"b"}
    with FlakyServer(files, flaky={"flaky.jpg": 2}, broken={"down.jpg"}) as srv:
        assert storage.read_bytes(f"{srv.url}/flaky.jpg", retries=3, backoff_s=0.01) == b"b"
        assert srv.gets["flaky.jpg"] == 3  # two 503s, then the bytes
        with pytest.raises(storage.PermanentReadError):
            storage.read_bytes(f"{srv.url}/gone.jpg", retries=3, backoff_s=0.01)
        assert srv.gets["gone.jpg"] <= 1  # a 404 is not retried
        with pytest.raises(Exception) as e:
            storage.read_bytes(f"{srv.url}/down.jpg", retries=2, backoff_s=0.01)
        assert not isinstance(e.value, storage.PermanentReadError)
        assert srv.gets["down.jpg"] == 3  # first try + 2 retries, then give up


def test_job_over_a_flaky_http_store(tmp_path):
    jpeg = imagegen.jpeg(64, 48)
    files = {f"img{i}.jpg": jpeg for i in range(4)}
    with FlakyServer(files, flaky={"img1.jpg": 2, "img2.jpg": 1}, broken={"down.jpg"}) as srv:
        table = tmp_path / "t.csv"
        names = [*files, "down.jpg", "gone.jpg"]
        table.write_text("image_id,uri\n" + "".join(f"{n[:-4]},{srv.url}/{n}\n" for n in names))
        proc = run_cli(*FAST, "--input", table, "--read-retries", "3", "--output", tmp_path / "out")
        assert proc.returncode == 0, proc.stderr[-3000:]
    labels = read_table(str(tmp_path / "out" / "labels"), LABELS).to_pylist()
    failures = read_table(str(tmp_path / "out" / "failures"), FAILURES).to_pylist()
    assert sorted(r["image_id"] for r in labels) == ["img0", "img1", "img2", "img3"]
    got = {r["image_id"]: (r["stage"], r["error_type"]) for r in failures}
    assert got["gone"] == ("read", "FileNotFoundError")
    assert got["down"][0] == "read" and "500" in next(r["message"] for r in failures if r["image_id"] == "down")
    c = json.loads((tmp_path / "out" / "run.json").read_text())["counts"]
    assert (c["labeled"], c["failed"], c["distinct_images"], c["extra_copies_removed"]) == (4, 2, 6, 0)


def test_hostile_manifest_and_names(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    cases = imagegen.cases()
    stored = imagegen.jpeg(64, 48)
    (root / "café-日本.jpg").write_bytes(stored)  # non-ASCII file name
    (root / "r90.jpg").write_bytes(stored)
    (root / "r270.jpg").write_bytes(stored)
    (root / "exif6.jpg").write_bytes(imagegen.jpeg(64, 48, exif_orientation=6))
    (root / "exif6-rot0.jpg").write_bytes(imagegen.jpeg(64, 48, exif_orientation=6))
    for name in ("cmyk_jpeg", "gray16_png", "palette_png", "rgba_png", "animated_gif", "webp", "tiff", "bmp",
                 "one_pixel_png", "extreme_aspect_png"):
        (root / name).write_bytes(cases[name])
    broken = imagegen.broken()  # empty, text, HTML page, truncated JPEG, PNG bomb, all named .jpg
    for name, (data, _) in broken.items():
        (root / f"{name}.jpg").write_bytes(data)
    rows = [("café-日本", "café-日本.jpg", ""), ("r90", "r90.jpg", "90"), ("r270", "r270.jpg", "270.0"),
            ("exif6", "exif6.jpg", ""), ("exif6-rot0", "exif6-rot0.jpg", "0"),
            *[(n, n, "") for n in cases if (root / n).exists()], ("r90", "r270.jpg", "270"),  # duplicate id
            *[(n, f"{n}.jpg", "") for n in broken], ("missing", "missing.jpg", ""), ("badrot", "r90.jpg", "45")]
    with open(tmp_path / "t.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "uri", "rotation"])
        for image_id, name, rot in rows:
            w.writerow([image_id, root / name, rot])
    proc = run_cli(*FAST, "--input", tmp_path / "t.csv", "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = {r["image_id"]: r for r in read_table(str(tmp_path / "out" / "labels"), LABELS).to_pylist()}
    failures = {r["image_id"]: (r["stage"], r["error_type"])
                for r in read_table(str(tmp_path / "out" / "failures"), FAILURES).to_pylist()}
    expected_failures = {n: ("decode", reason) for n, (_, reason) in broken.items()}
    expected_failures.update(missing=("read", "FileNotFoundError"), badrot=("manifest", "MalformedRow"))
    assert failures == expected_failures
    distinct = {r[0] for r in rows} - set(expected_failures)
    assert set(labels) == distinct  # every other one is a usable picture
    assert (labels["r90"]["width"], labels["r90"]["height"]) == (48, 64)
    assert (labels["r270"]["width"], labels["r270"]["height"]) == (48, 64)
    assert (labels["exif6"]["width"], labels["exif6"]["height"]) == (48, 64)
    assert (labels["exif6-rot0"]["width"], labels["exif6-rot0"]["height"]) == (64, 48)  # never both
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    c = run["counts"]
    assert (c["duplicates"], c["labeled"], c["failed"]) == (1, len(distinct), len(expected_failures))
    assert c["distinct_images"] == c["labeled"] + c["failed"] and c["extra_copies_removed"] == 0


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\x00\x81", b"", b"image,path\nx,y\n"])
def test_unparseable_local_manifest_is_exit_2(tmp_path, content):
    (tmp_path / "m.csv").write_bytes(content)
    proc = run_cli(*FAST, "--input", tmp_path / "m.csv", "--output", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("pseudo_label: error:")


# ---- the launcher's count, apart from the pipeline and its Beam counters -------------

class NoTeacherRow(beam.DoFn):
    """A decoded image -> a labels row with no captions or tags (a job with no model)."""

    def process(self, work):
        ref = work.ref
        yield labels_row(image_id=ref.image_id, source_uri=ref.uri, sha256=work.sha256, width=work.width,
                         height=work.height, captions=[], tags=[], captioner=None, tagger=None, teacher_params={})


def _bare_job(tmp_path, lose: str | None):
    """A labeling job with no selection stage (so no selection counters) that may lose one image."""
    from pipelines import pseudo_label as pl
    from pipelines.beam import jobrun, labeling
    from pipelines.beam.imagejob import FAILED, ReadAndDecode, commit_outputs
    from pipelines.data import sources

    def make_job(args):
        return labeling.LabelJob(**jobrun.common_job_fields(args), captioner=None, tagger=None, vocab=None)

    def build(p, job):
        refs = (p | beam.Create(list(sources.iter_refs(job.source)))
                | beam.Filter(lambda ref: ref.image_id != lose))  # a bug that drops an image
        decoded = refs | beam.ParDo(ReadAndDecode(64, 10**8, 0)).with_outputs(FAILED, main="ok")
        commit_outputs(job, labeling.KIND, decoded.ok | beam.ParDo(NoTeacherRow()), [decoded[FAILED]])

    args, beam_args = pl.parse_args(["--runner", "DirectRunner", "--limit", "4", "--output", str(tmp_path / "out")])
    return jobrun.run_job(labeling.KIND, args, beam_args, make_job=make_job, build=build, describe=pl.describe)


def test_counts_are_checked_without_beam_counters(tmp_path):
    assert _bare_job(tmp_path, lose=None) == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "succeeded" and run["beam_counters"] is None  # nothing for the check to lean on
    c = run["counts"]
    assert (c["input_rows"], c["distinct_images"], c["labeled"], c["extra_copies_removed"]) == (4, 4, 4, 0)


def test_a_job_that_loses_an_image_is_caught(tmp_path, capsys):
    with open(SAMPLE_CSV, newline="") as f:
        lost = next(csv.DictReader(f))["ImageID"]
    assert _bare_job(tmp_path, lose=lost) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "pseudo_label: error: 4 distinct images but 3 output rows"
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "inconsistent" and run["counts"]["labeled"] == 3
    assert run["counts"]["extra_copies_removed"] == 0
