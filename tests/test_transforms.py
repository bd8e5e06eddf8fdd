"""The job's transforms under Beam's TestPipeline, asserted with assert_that."""
import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

import teachers
from pipelines import pseudo_label as pl
from pipelines.beam import labeling
from pipelines.beam.handlers import HandlerOptions, TeacherHandler, Work
from pipelines.data.sources import ImageRef, SourceSpec
from tests import imagegen


def _job(tmp_path, input_path, captioner="tiny", tagger="tiny", **over):
    argv = ["--input", str(input_path), "--output", str(tmp_path / "out"), "--captioner", captioner,
            "--tagger", tagger, "--num-captions", "2", "--num-beams", "2", "--max-new-tokens", "4", "--batch-size", "4"]
    for k, v in over.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    args, _ = pl.parse_args(argv)
    return pl.make_job(args)


def test_first_new_row_wins_duplicates_and_done_ids_are_dropped():
    refs = [ImageRef("a", "/3", row=3), ImageRef("a", "/1", row=1), ImageRef("b", "/2", row=2),
            ImageRef("a", "/9", row=9), ImageRef("c", "/4", row=4)]
    with TestPipeline() as p:
        keyed = p | "Refs" >> beam.Create(refs) | beam.Map(lambda r: (r.image_id, r))
        done = p | "Done" >> beam.Create([("c", True), ("zombie", True)])
        out = ({"refs": keyed, "done": done} | beam.CoGroupByKey()
               | beam.ParDo(labeling.FirstNewRow()) | beam.Map(lambda r: (r.image_id, r.uri)))
        assert_that(out, equal_to([("a", "/1"), ("b", "/2")]))


def test_read_and_decode_splits_failures_by_stage(tmp_path):
    (tmp_path / "good.jpg").write_bytes(imagegen.jpeg(80, 60))
    (tmp_path / "trunc.jpg").write_bytes(imagegen.jpeg(200, 150)[:300])
    (tmp_path / "page.jpg").write_bytes(b"<html><body>error</body></html>")
    refs = [ImageRef("good", str(tmp_path / "good.jpg"), 1), ImageRef("trunc", str(tmp_path / "trunc.jpg"), 2),
            ImageRef("page", str(tmp_path / "page.jpg"), 3), ImageRef("gone", str(tmp_path / "gone.jpg"), 4),
            ImageRef("row:5", None, 5, error="manifest row 5 has no ImageID")]
    with TestPipeline() as p:
        res = p | beam.Create(refs) | beam.ParDo(labeling.ReadAndDecode(64, 10**8, 0)).with_outputs("failed", main="ok")
        ok = res.ok | beam.Map(lambda w: (w.image_id, w.width, w.height, w.pixels.shape[2]))
        assert_that(ok, equal_to([("good", 80, 60, 3)]), label="ok")
        failed = res.failed | beam.Map(lambda r: (r["image_id"], r["stage"], r["error_type"]))
        assert_that(failed, equal_to([
            ("trunc", "decode", "CorruptImage"), ("page", "decode", "NotAnImage"),
            ("gone", "read", "FileNotFoundError"), ("row:5", "manifest", "MalformedRow"),
        ]), label="failed")


def _work(image_id, captions=None, tags=None, failure=None):
    return Work(ImageRef(image_id, f"/{image_id}.jpg", 1, license="CC0"), "f" * 64, 10, 20, None,
                captions=captions, tags=tags, failure=failure)


def test_make_row_gives_exactly_one_row_per_image(tmp_path):
    job = _job(tmp_path, imagegen_dir(tmp_path))
    caps = [{"text": "a thing", "score": -1.0}]
    tags = [{"label": "l", "name": "n", "score": 0.5}]
    items = [
        _work("ok", caps, tags),
        _work("nocap", [], tags),  # a captioner that returns nothing
        _work("notags", caps, []),  # no tag passed the threshold: still labeled
        _work("failed", failure=("caption", "RuntimeError", "boom")),
    ]
    with TestPipeline() as p:
        res = p | beam.Create(items) | beam.ParDo(labeling.MakeRow(job)).with_outputs("failed", main="labels")
        labels = res.labels | beam.Map(lambda r: (r["image_id"], len(r["captions"]), len(r["tags"]), r["license"]))
        assert_that(labels, equal_to([("ok", 1, 1, "CC0"), ("notags", 1, 0, "CC0")]), label="labels")
        failed = res.failed | beam.Map(lambda r: (r["image_id"], r["stage"], r["error_type"]))
        assert_that(failed, equal_to([("nocap", "caption", "EmptyOutput"), ("failed", "caption", "RuntimeError")]),
                    label="failed")


def imagegen_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir(exist_ok=True)
    (d / "one.jpg").write_bytes(imagegen.jpeg(50, 40))
    return d


class FailsOnTinyImages:
    """Wraps a real captioner; refuses images smaller than 8 px, as a buggy teacher might."""

    def __init__(self, real):
        self.real = real

    def __call__(self, images):
        if any(min(im.shape[:2]) < 8 for im in images):
            raise RuntimeError("image too small for this teacher")
        return self.real(images)


def test_handler_isolates_a_failing_image_in_a_batch():
    handler = TeacherHandler("caption", "tiny", teachers.CaptionParams(1, 1, 3), HandlerOptions(device="cpu"))
    model = FailsOnTinyImages(handler.load_model())

    def item(image_id, pixels, failure=None):
        return Work(ImageRef(image_id, None, 1), "0" * 64, 1, 1, pixels, failure=failure)

    batch = [item("a", imagegen.gradient(32, 32)), item("b", np.zeros((4, 4, 3), np.uint8)),
             item("c", imagegen.gradient(20, 9)), item("d", None, failure=("decode", "X", "earlier"))]
    results = list(handler.run_inference(batch, model))
    assert [r.image_id for r in results] == ["a", "b", "c", "d"]
    assert [r.failure is None for r in results] == [True, False, True, False]
    assert results[1].failure[:2] == ("caption", "RuntimeError") and "too small" in results[1].failure[2]
    assert results[0].captions and results[3].failure == ("decode", "X", "earlier")  # passed through untouched
    assert handler.batch_elements_kwargs()["max_batch_size"] == 8


def test_whole_job_in_test_pipeline(tmp_path):
    d = imagegen_dir(tmp_path)
    (d / "two.png").write_bytes(imagegen.cases()["rgba_png"])
    (d / "bad.jpg").write_bytes(b"")
    (d / "sub").mkdir()
    (d / "sub" / "one.jpg").write_bytes(imagegen.jpeg(10, 10))  # duplicate id "one": first in sorted order wins
    job = _job(tmp_path, d)
    with TestPipeline() as p:
        labels, failures = labeling.build(p, job)
        assert_that(labels | "L" >> beam.Map(lambda r: (r["image_id"], r["width"], r["captioner"])),
                    equal_to([("one", 50, "tiny-random/blip"), ("two", 40, "tiny-random/blip")]), label="labels")
        assert_that(failures | "F" >> beam.Map(lambda r: (r["image_id"], r["error_type"])),
                    equal_to([("bad", "EmptyFile")]), label="failures")
    counts = pl.count_outputs(job.output)
    assert (counts["labeled"], counts["failed"]) == (2, 1)


def test_tagger_only_job_with_empty_tags_fails_those_images(tmp_path):
    job = _job(tmp_path, imagegen_dir(tmp_path), captioner="none", tag_threshold=1.0)
    assert job.captioner is None
    with TestPipeline() as p:
        labels, failures = labeling.build(p, job)
        assert_that(labels, equal_to([]), label="labels")
        assert_that(failures | beam.Map(lambda r: (r["image_id"], r["stage"], r["error_type"])),
                    equal_to([("one", "tag", "EmptyOutput")]), label="failures")


@pytest.mark.parametrize("flags,match", [
    (dict(num_captions=9), "cannot exceed"),
    (dict(batch_size=0), "batch-size"),
    (dict(device="tpu"), "--device"),
    (dict(tag_vocab="/no/such/vocab.csv"), "vocab"),
])
def test_make_job_turns_bad_flags_into_usage_errors(tmp_path, flags, match):
    with pytest.raises(pl.UsageError, match=match):
        _job(tmp_path, imagegen_dir(tmp_path), **flags)


def test_both_teachers_off_is_a_usage_error(tmp_path):
    with pytest.raises(pl.UsageError, match="nothing to label"):
        _job(tmp_path, imagegen_dir(tmp_path), captioner="none", tagger="none")


def test_source_spec_is_carried_into_the_job(tmp_path):
    job = _job(tmp_path, imagegen_dir(tmp_path), limit=1)
    assert job.source == SourceSpec(str(imagegen_dir(tmp_path)), limit=1)


def test_dead_letters_become_one_failure_row_per_image():
    convert = labeling.dead_letters_to_failures("tag")
    batch = [_work("a"), _work("b", failure=("caption", "RuntimeError", "earlier"))]
    beam_style = (batch, (ValueError, "ValueError('bad batch')", ["Traceback ..."]))
    rows = list(convert(beam_style))
    assert [(r["image_id"], r["stage"], r["error_type"]) for r in rows] == [
        ("a", "tag", "ValueError"), ("b", "caption", "RuntimeError")]
    assert "bad batch" in rows[0]["message"]
    (row, _) = list(convert((batch, KeyError("k"))))
    assert row["error_type"] == "KeyError"


def _committed(out):
    """Parts an earlier run committed: c labeled; d failed permanently (404); e and f failed on a 503."""
    from pipelines.beam import sinks
    from schemas import FAILURES, LABELS, failure_row, labels_row

    sinks.commit_part(out, "labels", LABELS, [labels_row(
        image_id="c", source_uri="/c", sha256="0" * 64, width=1, height=1, captions=[{"text": "c", "score": -1.0}],
        tags=[], captioner="tiny-random/blip", tagger=None, teacher_params={})])
    sinks.commit_part(out, "failures", FAILURES, [
        failure_row(image_id="d", source_uri="/d", stage="read", error_type="FileNotFoundError", message="/d"),
        failure_row(image_id="e", source_uri="/e", stage="read", error_type="ClientResponseError",
                    message="503, message='Service Unavailable', url='/e'"),
        failure_row(image_id="f", source_uri="/f", stage="caption", error_type="RuntimeError", message="OOM"),
        failure_row(image_id="zombie", source_uri="/z", stage="decode", error_type="EmptyFile", message="empty")])
    return tuple((t, p) for t in ("labels", "failures") for p in sinks.list_parts(out, t))


@pytest.mark.parametrize("retry,only_retry,expected", [
    (None, False, {"a": "/a1", "b": "/b", "g": "/g"}),  # --resume: the new ones
    ("transient", True, {"e": "/e", "f": "/f"}),  # --retry-failures: the 503 and the model error
    ("transient", False, {"a": "/a1", "b": "/b", "e": "/e", "f": "/f", "g": "/g"}),  # both, with --resume
    ("all", True, {"d": "/d", "e": "/e", "f": "/f"}),  # --retry-failures all: the 404 too
])
def test_disk_and_shuffle_select_the_same_rows(tmp_path, retry, only_retry, expected):
    """The on-disk pass (DirectRunner) and the CoGroupByKey (Dataflow) pick the same first rows."""
    import os
    from dataclasses import replace

    from pipelines.beam import imagejob

    out = str(tmp_path / "out")
    (tmp_path / "t.csv").write_text("image_id,uri\n" + "".join(f"{i},{u}\n" for i, u in [
        ("a", "/a1"), ("b", "/b"), ("a", "/a2"), ("c", "/c"), ("d", "/d"), ("e", "/e"), ("f", "/f"), ("g", "/g"),
        ("e", "/e2")]))
    job = replace(_job(tmp_path, tmp_path / "t.csv"), done_parts=_committed(out), retry=retry,
                  only_retry=only_retry, scratch_dir=str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    for select in (imagejob.select_on_disk, imagejob.select_by_shuffle):
        with TestPipeline() as p:
            rows = select(p, job, labeling.KIND) | beam.Map(lambda r: (r.image_id, r.uri))
            assert_that(rows, equal_to(sorted(expected.items())))
    assert os.listdir(tmp_path / "scratch") == []  # every spill shard read and removed


def test_plan_counts_what_first_new_row_counts(tmp_path):
    from pipelines.beam import plan

    out = str(tmp_path / "out")
    refs = [ImageRef(i, f"/{i}", n) for n, i in enumerate(["a", "b", "a", "c", "d", "e", "g", "e"], start=1)]
    with plan.Plan(only_retry=True) as selection:
        selection.load(_committed(out), labeling.KIND.tables, "transient")
        picked = [r.image_id for r in selection.select(refs)]
        counts = selection.counts()
    assert picked == ["e"]  # f is not in this input
    assert counts == {"input_rows": 8, "duplicates": 2, "distinct_images": 6, "already_done": 2, "retried": 1,
                      "skipped_new": 3, "done_not_in_input": 2}
