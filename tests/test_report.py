"""The data card (python -m pipelines.report): numbers, escaping, self-containment, and
what a real browser makes of the page."""
import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import report
from pipelines.eval import card
from schemas import FAILURES, LABELS, count_rows, failure_row, labels_row
from tests import imagegen
from tests.conftest import REPO

SECTIONS = ("overview", "fix", "captions", "tags", "images", "failures", "samples")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = "/usr/bin/chromium"
# Anything that would make the page fetch from elsewhere: an absolute or protocol-relative URL
# in src/href/url(), a stylesheet link, an external script.
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:(?!image/)|//)|url\(\s*["']?(?!data:)"""
                      r"""|<link\b|<script[^>]*\bsrc""", re.IGNORECASE)


def run_report(*args, timeout=180):
    cmd = [sys.executable, "-m", "pipelines.report", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.DOTALL)
    assert m, f"no section {sid}"
    return m.group(1)


def _valid_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


# ---- the bundled sample, labeled by the tiny teachers ----------------------------------------

@pytest.fixture(scope="module")
def sample_report(sample_run, tmp_path_factory):
    out, _ = sample_run
    dest = tmp_path_factory.mktemp("report") / "sample"
    proc = run_report("--run", out, "--output", dest)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, dest


def test_sample_report_has_every_section_and_matches_the_tables(sample_report):
    out, dest = sample_report
    page = (dest / "index.html").read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    assert 'id="tag-quality"' not in page  # only with --tag-eval
    assert 'id="tiny-random-warning"' in page  # the tiny teachers are random models: said loud
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["tiny_random"] and summary["labels"]["tiny_random"]

    pngs = sorted(dest.glob("*.png"))
    assert {"caption_lengths", "top_words", "caption_scores", "top_tags", "tag_scores", "tags_per_image"} <= {
        p.stem for p in pngs}
    for p in pngs:
        w, h = _valid_png(p)
        assert w > 100 and h > 100
        assert f'id="plot-{p.stem}"' in page  # embedded as well as written

    labeled = count_rows(str(out / "labels"), LABELS)
    failed = count_rows(str(out / "failures"), FAILURES) if (out / "failures").exists() else 0
    assert summary["counts"] == {"labeled": labeled, "failed": failed, "total": labeled + failed}
    assert summary["failures"]["total"] == failed  # --run reads OUT/failures, absent when nothing failed
    assert labeled > 0
    captions = pq.read_table(out / "labels", columns=["captions"]).column("captions").to_pylist()
    assert summary["labels"]["captions"]["total"] == sum(len(c) for c in captions)
    assert summary["samples"]["shown"] == min(24, labeled) and summary["samples"]["unreadable"] == 0
    assert _section(page, "samples").count('src="data:image/jpeg;base64,') == summary["samples"]["shown"]
    # The tiny captioner's greedy search says one thing about every image: the card says so.
    lowest = min(12, labeled)
    assert _section(page, "fix").count('src="data:image/jpeg;base64,') == lowest  # no --rerank: no similarity
    best = summary["curation"]["best_captions"]
    assert best["captioned"] == labeled and best["distinct"] < labeled and "distinct best captions" in page

    assert not EXTERNAL.search(page), EXTERNAL.search(page).group(0)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


# ---- a hand-made run with known numbers ------------------------------------------------------

def _write(table, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    """Three labeled images (one readable, one missing, one not an image), three failures, a tag evaluation."""
    tmp_path = tmp_path_factory.mktemp("handmade")
    good = tmp_path / "img" / "good.jpg"
    good.parent.mkdir()
    good.write_bytes(imagegen.jpeg(64, 48, exif_orientation=6))  # shown 48 wide, 64 high
    junk = tmp_path / "img" / "junk.jpg"
    junk.write_bytes(b"<html>not a picture</html>")
    common = {"sha256": "0" * 64, "captioner": "org/captioner@abc", "tagger": "org/tagger@def",
              "teacher_params": {"caption": {"num_beams": 3}}}
    rows = [
        labels_row(image_id="a", source_uri=str(good), width=48, height=64, **common,
                   captions=[{"text": "a small cat", "score": -2.0},
                             {"text": "A cat on a mat.", "score": -1.0, "similarity": 0.31}],
                   tags=[{"label": "m/cat", "name": "cat", "score": 0.9}, {"label": "m/mat", "name": "mat", "score": 0.5}]),
        labels_row(image_id="b", source_uri=str(tmp_path / "img" / "missing.jpg"), width=10, height=10, **common,
                   captions=[{"text": "<script>alert(1)</script> dog", "score": -3.0}],
                   tags=[{"label": "m/dog", "name": "dog <b>", "score": 0.7},
                         {"label": "m/cat", "name": "cat", "score": 0.8}]),
        labels_row(image_id="c", source_uri=str(junk), width=10, height=10, **common, captions=[], tags=[]),
    ]
    _write(LABELS.to_table(rows[:2]), tmp_path / "out" / "labels" / "part-1.parquet")
    _write(LABELS.to_table(rows[2:]), tmp_path / "out" / "labels" / "part-2.parquet")
    fails = [failure_row(image_id="x", source_uri="gs://b/x.jpg", stage="read", error_type="PermanentReadError",
                         message="FileNotFoundError: gs://b/x.jpg"),
             failure_row(image_id="y", source_uri="gs://b/y.jpg", stage="read", error_type="PermanentReadError",
                         message="FileNotFoundError: gs://b/y.jpg"),
             failure_row(image_id="z", source_uri="gs://b/z.jpg", stage="decode", error_type="NotAnImage",
                         message="<img src=x onerror=alert(2)> (27 bytes)")]
    _write(FAILURES.to_table(fails), tmp_path / "out" / "failures" / "part-1.parquet")
    tag_eval = {"threshold": 0.5,
                "overall": {"precision": 0.75, "recall": 0.6, "f1": 0.6667, "tp": 3, "fp": 1, "fn": 2, "images": 3},
                "per_class": [{"label": "m/cat", "name": "cat", "precision": 1.0, "recall": 0.5, "f1": 0.6667,
                               "tp": 1, "fp": 0, "fn": 1},
                              {"label": "m/dog", "name": "dog", "precision": None, "recall": None, "f1": None,
                               "tp": 0, "fp": 0, "fn": 0}],
                "curve": [{"threshold": t / 10, "precision": None if t == 9 else 0.5 + t / 20, "recall": 1 - t / 10,
                           "f1": 0.5} for t in range(10)] + [{"threshold": 1.0, "precision": None, "recall": None,
                                                               "f1": None}]}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "tag_eval.json").write_text(json.dumps(tag_eval))
    return tmp_path


@pytest.fixture(scope="module")
def handmade_report(handmade):
    out, dest = handmade / "out", handmade / "report"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = report.run(["--labels", str(out / "labels"), "--failures", str(out / "failures"),
                         "--tag-eval", str(handmade / "eval"), "--output", str(dest), "--samples", "10"])
    assert rc == 0, err.getvalue()
    return dest


def test_handmade_run_numbers_placeholders_and_escaping(handmade_report):
    dest = handmade_report
    s = json.loads((dest / "summary.json").read_text())
    assert s["counts"] == {"labeled": 3, "failed": 3, "total": 6}
    caps = s["labels"]["captions"]
    # words: a cat on a mat | a small cat | script alert 1 script dog
    assert caps["vocabulary_size"] == 9 and not caps["counts_approximate"]
    assert caps["top_words"][:2] == [["a", 3], ["cat", 2]]
    assert caps["mean_words_best"] == 5.0  # the best caption is the higher score, whatever the input order
    assert caps["words_all"] == {"3": 1, "5": 2} and caps["per_image"] == {"0": 1, "1": 1, "2": 1}
    assert caps["similarity"]["count"] == 1
    tags = s["labels"]["tags"]
    assert tags["top"][0] == {"label": "m/cat", "name": "cat", "count": 2} and tags["distinct"] == 3
    assert tags["per_image"] == {"0": 1, "2": 2}
    assert s["labels"]["teachers"] == [{"captioner": "org/captioner@abc", "tagger": "org/tagger@def", "images": 3}]
    assert not s["labels"]["tiny_random"] and not s["tiny_random"]
    f = s["failures"]
    assert f["by_stage"] == {"decode": 1, "read": 2} and f["by_error_type"] == {"NotAnImage": 1, "PermanentReadError": 2}
    assert f["examples"][0]["stage"] == "read" and f["examples"][0]["count"] == 2
    assert s["samples"] == {"requested": 10, "shown": 3, "seed": 0, "unreadable": 2, "image_ids": ["a", "b", "c"]}
    assert s["tag_eval"]["precision"] == 0.75 and s["tag_eval"]["threshold"] == 0.5

    page = (dest / "index.html").read_text()
    assert 'id="tiny-random-warning"' not in page
    samples = _section(page, "samples")
    assert samples.count('class="placeholder"') == 2 and samples.count("<img ") == 1
    assert "NotAnImage" in samples and "missing.jpg" in samples  # the reason is shown
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; dog" in page
    assert "dog &lt;b&gt;" in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in _section(page, "failures")
    assert "0.75" in _section(page, "tag-quality")
    for name in ("failures", "tag_pr_curve", "caption_similarity"):
        _valid_png(dest / f"{name}.png")
    assert not EXTERNAL.search(page)


# ---- what a curator fixes: duplicates, repeats, the lowest-scored, sizes, attribution ----------

@pytest.fixture(scope="module")
def curation_report(tmp_path_factory):
    """Seven rows with every problem the card flags, in two parts, read in batches of two."""
    tmp_path = tmp_path_factory.mktemp("curation")

    def row(image_id, sha, size, captions, license=None, author=None):
        return labels_row(image_id=image_id, source_uri=str(tmp_path / f"{image_id}.jpg"), sha256=sha * 64,
                          width=size[0], height=size[1], license=license, author=author, captions=captions, tags=[],
                          captioner="org/captioner@abc", tagger="org/tagger@def", teacher_params={})

    def cap(text, score, similarity=None):
        return [{"text": text, "score": score, "similarity": similarity}]

    rows = [
        row("a", "1", (640, 480), cap("A cat on a mat.", -1.0, 0.3), "CC BY 2.0", "Ann"),
        row("b", "1", (640, 480), cap("a cat  on a mat", -2.0, 0.2), "CC BY 2.0", "Bob"),  # a's bytes, a's caption
        row("c", "2", (480, 640), cap("\u0642\u0637\u0629 \u0639\u0644\u0649 \u062d\u0635\u064a\u0631\u0629", -3.0),
            None, ""),  # Arabic; an empty author is no author
        row("d", "3", (1024, 576), cap("evil \u202egnp.exe and a bell\x07", -4.0, 0.1), "CC BY-SA 2.0"),
        row("=2+3", "4", (300, 300), cap("a formula id", -5.0), "CC BY 2.0", "Ann"),  # a spreadsheet formula as id
        row("f", "5", (300, 300), []),
        row("a", "6", (640, 480), cap("a dog", -0.1)),  # a's id again
    ]
    _write(LABELS.to_table(rows[:4]), tmp_path / "labels" / "part-1.parquet")
    _write(LABELS.to_table(rows[4:]), tmp_path / "labels" / "part-2.parquet")
    dest = tmp_path / "report"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.MonkeyPatch.context() as mp:
        mp.setattr(card, "BATCH_ROWS", 2)
        rc = report.run(["--labels", str(tmp_path / "labels"), "--output", str(dest), "--lowest", "2"])
    assert rc == 0, err.getvalue()
    return dest


def test_card_flags_duplicates_repeats_and_the_lowest_scored(curation_report):
    s = json.loads((curation_report / "summary.json").read_text())
    cur = s["curation"]
    assert cur["duplicates"] == {"groups": 1, "images": 2, "largest": [{"key": "1" * 64, "images": 2, "first": "a"}]}
    assert cur["repeated_ids"] == {"groups": 1, "images": 2, "largest": [{"key": "a", "images": 2, "first": "a"}]}
    best = cur["best_captions"]
    assert (best["captioned"], best["distinct"], best["groups"], best["images"]) == (6, 5, 1, 2)
    assert best["largest"] == [{"key": "a cat on a mat", "images": 2, "first": "a"}]  # case, spaces, full stop
    assert [r["image_id"] for r in s["lowest"]["score"]] == ["=2+3", "d"]
    assert [(r["image_id"], round(r["value"], 3)) for r in s["lowest"]["similarity"]] == [("d", 0.1), ("b", 0.2)]
    sizes = cur["sizes"]
    assert sizes["width"] == {"300": 2, "480": 1, "640": 3, "1024": 1} and sizes["images"] == 7
    assert sizes["aspect"] == {"0.75": 1, "1.00": 2, "1.33": 3, "1.78": 1}
    assert sizes["width_range"] == {"min": 300, "median": 640, "max": 1024}
    attr = cur["attribution"]
    assert attr["licenses"] == [["CC BY 2.0", 3], ["CC BY-SA 2.0", 1]] and attr["without_license"] == 3
    assert attr["authors"] == [["Ann", 2], ["Bob", 1]] and attr["without_author"] == 4

    with open(curation_report / "flagged.csv", newline="", encoding="utf-8") as f:
        flagged = [tuple(r) for r in csv.reader(f)]
    assert flagged[0] == ("image_id", "reason", "detail")
    by_reason = {}
    for image_id, reason, _ in flagged[1:]:
        by_reason.setdefault(reason, []).append(image_id)
    assert by_reason == {"duplicate_image": ["a", "b"], "repeated_image_id": ["a", "a"],
                         "repeated_caption": ["a", "b"], "low_caption_score": ["'=2+3", "d"],
                         "low_similarity": ["d", "b"]}  # the formula-like id is quoted for spreadsheets
    assert cur["flagged"]["rows"] == 10 and cur["flagged"]["by_reason"]["repeated_image_id"] == 2
    assert ("a", "repeated_caption", "2 images: a cat on a mat") in flagged

    page = (curation_report / "index.html").read_text(encoding="utf-8")
    fix = _section(page, "fix")
    assert 'href="flagged.csv"' in fix and "2 images are byte-identical" in fix and 'id="lowest-score"' in fix
    # Controls and bidi overrides are shown, never acted on; right-to-left text is kept, isolated.
    assert "\u202e" not in page and "\x07" not in page
    assert "evil \\u202egnp.exe and a bell\\u0007" in page
    assert "<bdi>\u0642\u0637\u0629 \u0639\u0644\u0649" in page
    assert {"image_sizes", "aspect_ratios"} <= {p.stem for p in curation_report.glob("*.png")}
    assert "CC BY-SA 2.0" in _section(page, "images")


def test_fsspec_urls_many_parts_and_small_batches_give_the_same_numbers(monkeypatch, capsys, tmp_path):
    """Any fsspec URL in and out (memory:// here, as gs:// or s3://); batches and parts do not change the sums."""
    fs = fsspec.filesystem("memory")
    root = f"memory://report-test-{os.getpid()}"
    fs.pipe(f"{root}/img/one.jpg", imagegen.jpeg(40, 30))
    rows = [labels_row(image_id=f"i{n:03d}", source_uri=f"{root}/img/one.jpg", sha256="0" * 64, width=40, height=30,
                       captions=[{"text": f"word{n % 5} shared", "score": -1.0}],
                       tags=[{"label": f"t{n % 3}", "name": f"tag {n % 3}", "score": 0.5}],
                       captioner="c", tagger="t", teacher_params={}) for n in range(60)]
    for part in range(4):
        with fs.open(f"{root}/out/labels/part-{part}.parquet", "wb") as f:
            pq.write_table(LABELS.to_table(rows[part * 15:(part + 1) * 15]), f)
    monkeypatch.setattr(card, "BATCH_ROWS", 7)
    try:
        assert report.run(["--labels", f"{root}/out/labels", "--output", f"{root}/rep", "--samples", "5",
                           "--seed", "1"]) == 0, capsys.readouterr().err
        s = json.loads(fs.cat(f"{root}/rep/summary.json"))
        assert s["counts"]["labeled"] == 60 and s["labels"]["captions"]["vocabulary_size"] == 6
        assert s["labels"]["captions"]["top_words"][0] == ["shared", 60]
        assert [t["count"] for t in s["labels"]["tags"]["top"]] == [20, 20, 20]
        assert s["samples"]["shown"] == 5 and s["samples"]["unreadable"] == 0
        assert fs.cat(f"{root}/rep/top_tags.png")[:8] == PNG_MAGIC
        assert 'id="samples"' in fs.cat(f"{root}/rep/index.html").decode()
        # One file's bytes behind all 60 rows; five best captions, twelve images each.
        assert s["curation"]["duplicates"]["groups"] == 1 and s["curation"]["duplicates"]["images"] == 60
        best = s["curation"]["best_captions"]
        assert best["distinct"] == 5 and [g["images"] for g in best["largest"]] == [12] * 5
        assert fs.cat(f"{root}/rep/flagged.csv").decode().count("\n") == 1 + 60 + 60 + 12 + 0
        # The seed alone decides the sample.
        ids = [report.build(report.Inputs(labels=f"{root}/out/labels"), workdir=str(tmp_path), samples=5,
                            seed=seed)["summary"]["samples"]["image_ids"] for seed in (1, 2)]
    finally:
        fs.rm(root, recursive=True)
    assert ids[0] == s["samples"]["image_ids"] != ids[1] and len(set(ids[0])) == 5


def test_thumbnail_follows_exif_orientation(tmp_path):
    path = tmp_path / "turned.jpg"
    path.write_bytes(imagegen.jpeg(64, 48, exif_orientation=6))
    uri, size, reason = report.thumbnail(str(path))
    assert reason is None and size == (48, 64) and uri.startswith("data:image/jpeg;base64,")
    uri, size, reason = report.thumbnail(str(tmp_path / "nope.jpg"))
    assert uri is None and "nope.jpg" in reason


def test_empty_labels_still_give_a_page(tmp_path, capsys):
    empty = tmp_path / "run"
    (empty / "labels").mkdir(parents=True)  # a run that labeled nothing wrote no part files
    _write(LABELS.arrow.empty_table(), tmp_path / "run2" / "labels" / "part-0.parquet")
    for run_dir in (empty, tmp_path / "run2"):
        dest = tmp_path / "report" / run_dir.name
        assert report.run(["--run", str(run_dir), "--output", str(dest)]) == 0, capsys.readouterr().err
        page = (dest / "index.html").read_text()
        assert all(f'<section id="{sid}">' in page for sid in SECTIONS)
        assert 'id="empty"' in page and "nothing was labeled" in page
        assert json.loads((dest / "summary.json").read_text())["counts"] == {"labeled": 0, "failed": 0, "total": 0}


@pytest.mark.parametrize("args, message", [
    ([], "one of the arguments --run --labels is required"),
    (["--run", "R", "--labels", "L"], "not allowed with argument"),
    (["--labels", "{tmp}/nowhere"], "has no Parquet files and does not exist"),
    (["--run", "{tmp}/nowhere"], "does not exist"),
    (["--labels", "{tmp}/run/labels", "--samples", "-1"], "--samples must be between 0 and 1000, not -1"),
    (["--labels", "{tmp}/run/labels", "--samples", "many"], "invalid int value"),
    (["--labels", "{tmp}/run/failures"], "expected a 'labels' table"),
    (["--labels", "{tmp}/run/labels", "--tag-eval", "{tmp}/run/bad.json"], "'threshold' must be a number"),
    (["--labels", "{tmp}/run/labels", "--run-json", "{tmp}/run/nope.json"], "does not exist"),
    (["--labels", "{tmp}/run/labels", "--output", "{tmp}/run/bad.json/report"], "cannot write the report"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, args, message):
    _write(LABELS.arrow.empty_table(), tmp_path / "run" / "labels" / "part-0.parquet")
    _write(FAILURES.arrow.empty_table(), tmp_path / "run" / "failures" / "part-0.parquet")
    (tmp_path / "run" / "bad.json").write_text(json.dumps({"threshold": "high", "overall": {}}))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "report")]
    assert report.run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("report: error: ") and message in err[0], err


def test_word_counts_stay_bounded_and_the_vocabulary_is_estimated():
    counter = card.TopCounter(limit=2_000, keep=1_000)
    for start in range(0, 20_000, 500):
        counter.update({f"w{i}": 1 + (i % 7 == 0) for i in range(start, start + 500)})
    assert len(counter.counts) <= 2_000 and counter.approximate
    assert abs(counter.distinct() - 20_000) < 0.06 * 20_000
    exact = card.TopCounter()
    exact.update({"a": 2, "b": 1})
    assert exact.distinct() == 2 and not exact.approximate


# ---- a real browser --------------------------------------------------------------------------

def _chromium(binary: str, tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh profile per launch
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line or "Uncaught" in line or "Refused to" in line]


def test_page_renders_in_headless_chromium(sample_report, handmade_report, tmp_path):
    chromium = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not chromium:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI installs it (.ci/run)")
        pytest.skip("chromium is not installed (apt install chromium)")
    shot = tmp_path / "shot.png"
    for page in (sample_report[1] / "index.html", handmade_report / "index.html"):
        extra = [f"--screenshot={shot}", "--window-size=1280,2000"] if not shot.exists() else []
        proc = _chromium(chromium, tmp_path, page.as_uri(), "--dump-dom", *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert not _console_errors(proc.stderr), _console_errors(proc.stderr)  # no script error, no CSP refusal
        # The page's own script counts the decoded images once everything loaded.
        total = page.read_text().count("<img ")
        assert total > 0
        assert f'data-images-total="{total}"' in proc.stdout and f'data-images-loaded="{total}"' in proc.stdout
        assert "<script>alert" not in proc.stdout

    with Image.open(shot) as im:  # the sample page, as a person would see its first screen
        assert im.size == (1280, 2000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50  # not a blank page
    if os.environ.get("REPORT_SCREENSHOT_COPY"):
        shutil.copy(shot, "/tmp/report_shot.png")
        print(f"screenshot: {shot} (copied to /tmp/report_shot.png)")


# One letter of each script a caption may come in: each must draw as a glyph, not as the box
# a character without any font gets (the page's own font stack, as Chromium resolves it).
SCRIPTS = {"arabic": "\u0642", "hebrew": "\u05e9", "devanagari": "\u0915", "thai": "\u0e01", "cjk": "\u732b",
           "cyrillic": "\u043a", "greek": "\u03bb"}
PROBE = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><script>
function ink(text) {
  var c = document.createElement("canvas"); c.width = 120; c.height = 60;
  var x = c.getContext("2d"); x.font = "40px " + FAMILY; x.fillText(text, 10, 45);
  return c.toDataURL();
}
// A private-use character has no font anywhere: how a missing glyph looks on this machine.
var missing = ink("\\ue000"), blank = ink(""), out = {};
for (var k in SCRIPTS) { var i = ink(SCRIPTS[k]); out[k] = i !== missing && i !== blank; }
out.control = ink("\\ue000") === missing;  // the probe itself tells a missing glyph apart
document.body.dataset.glyphs = JSON.stringify(out);
</script></body></html>"""


def test_non_latin_captions_draw_as_glyphs_in_headless_chromium(tmp_path):
    from pipelines.eval import plots

    chromium = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not chromium:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI installs it (.ci/run)")
        pytest.skip("chromium is not installed (apt install chromium)")
    family = re.search(r"body \{ font: \S+ ([^;]+);", plots.CSS).group(1)
    probe = tmp_path / "probe.html"
    probe.write_text(PROBE.replace("FAMILY", json.dumps(family)).replace("SCRIPTS", json.dumps(SCRIPTS)),
                     encoding="utf-8")
    proc = _chromium(chromium, tmp_path, probe.as_uri(), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'data-glyphs="([^"]*)"', proc.stdout)
    assert found, proc.stdout[-2000:]
    glyphs = json.loads(found.group(1).replace("&quot;", '"'))
    assert glyphs.pop("control") is True
    missing = sorted(k for k, ok in glyphs.items() if not ok)
    if missing and not os.environ.get("CI"):
        pytest.skip(f"no font for {missing} (apt install fonts-noto-core fonts-droid-fallback, as .ci/run does)")
    assert not missing, f"captions in {missing} would show as boxes: .ci/run installs their fonts"
