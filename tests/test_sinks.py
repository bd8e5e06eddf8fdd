from pipelines.beam import sinks
from schemas import FAILURES, LABELS, failure_row, labels_row, read_table


def _label(image_id, text="a caption"):
    return labels_row(image_id=image_id, source_uri=f"/{image_id}.jpg", sha256="0" * 64, width=1, height=1,
                      captions=[{"text": text, "score": -1.0}], tags=[], captioner="tiny-random/blip",
                      tagger=None, teacher_params={})


def _failure(image_id):
    return failure_row(image_id=image_id, source_uri=None, stage="read", error_type="OSError", message="flaky")


def _ids(out, table, schema):
    return sorted(read_table(f"{out}/{table}", schema, columns=["image_id"]).column("image_id").to_pylist())


def test_commit_part_is_named_by_its_ids_and_leaves_no_temp_files(tmp_path):
    out = str(tmp_path)
    first = sinks.commit_part(out, "labels", LABELS, [_label("a"), _label("b")])
    again = sinks.commit_part(out, "labels", LABELS, [_label("b"), _label("a")])  # a retried bundle
    assert first == again and _ids(out, "labels", LABELS) == ["a", "b"]
    assert not list(tmp_path.rglob(f"*{sinks.IN_PROGRESS}"))


def test_reconcile_keeps_exactly_one_row_per_image(tmp_path):
    out = str(tmp_path)
    sinks.commit_part(out, "labels", LABELS, [_label("a"), _label("b")])
    sinks.commit_part(out, "labels", LABELS, [_label("b"), _label("c")])  # b twice in labels
    sinks.commit_part(out, "failures", FAILURES, [_failure("c"), _failure("d")])  # c labeled and failed
    removed = sinks.reconcile(out, {"labels": LABELS, "failures": FAILURES})
    assert removed == 2
    assert _ids(out, "labels", LABELS) == ["a", "b", "c"]
    assert _ids(out, "failures", FAILURES) == ["d"]
    assert sinks.reconcile(out, {"labels": LABELS, "failures": FAILURES}) == 0


def test_remove_in_progress(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / f"part-x.parquet.1234{sinks.IN_PROGRESS}").write_bytes(b"half")
    assert sinks.remove_in_progress(str(tmp_path), "labels") == 1
    assert sinks.remove_in_progress(str(tmp_path), "failures") == 0


def test_drop_rows_publishes_the_rest_whole_and_removes_the_old_part(tmp_path):
    out = str(tmp_path)
    part = sinks.commit_part(out, "failures", FAILURES, [_failure("a"), _failure("b"), _failure("c")])
    sinks.drop_rows(out, "failures", FAILURES, part, [1])
    assert _ids(out, "failures", FAILURES) == ["a", "c"]
    assert part not in sinks.list_parts(out, "failures") and not list(tmp_path.rglob(f"*{sinks.IN_PROGRESS}"))
    (only,) = sinks.list_parts(out, "failures")
    sinks.drop_rows(out, "failures", FAILURES, only, [0, 1])  # nothing left: the part goes
    assert sinks.list_parts(out, "failures") == []


def test_parts_of_another_run_are_never_replaced(tmp_path):
    out = str(tmp_path)
    first = sinks.commit_part(out, "failures", FAILURES, [_failure("a")], run_id="2030-01-01T00:00:00")
    again = sinks.commit_part(out, "failures", FAILURES, [_failure("a")], run_id="2030-01-01T00:00:00")
    later = sinks.commit_part(out, "failures", FAILURES, [_failure("a")], run_id="2030-01-02T00:00:00")
    assert first == again != later  # a retried bundle replaces its part; a later run adds its own


def test_settle_drops_the_older_rows_of_retried_images(tmp_path):
    from pipelines.beam import retry

    out = str(tmp_path)
    tables = {"labels": LABELS, "failures": FAILURES}
    transient = {"source_uri": None, "stage": "read", "error_type": "ClientResponseError",
                 "message": "503, message='Service Unavailable', url='/x'"}
    old = {sinks.commit_part(out, "failures", FAILURES, [
        failure_row(image_id="a", **transient), failure_row(image_id="b", **transient),
        failure_row(image_id="c", **transient), _failure_404("d")])}
    sinks.commit_part(out, "labels", LABELS, [_label("a")], run_id="retry")  # recovered
    sinks.commit_part(out, "failures", FAILURES, [failure_row(image_id="b", **transient)], run_id="retry")  # again
    counts = retry.settle(out, tables, old, "transient", codec="zstd")
    assert counts == {"mode": "transient", "retried": 2, "recovered": 1, "failed_again": 1, "not_retried": 1,
                      "left_alone": 1, "left_alone_by_kind": {"read/FileNotFoundError": 1}}
    assert _ids(out, "labels", LABELS) == ["a"] and _ids(out, "failures", FAILURES) == ["b", "c", "d"]
    assert sinks.reconcile(out, tables) == 0  # one row per image


def _failure_404(image_id):
    return failure_row(image_id=image_id, source_uri=None, stage="read", error_type="FileNotFoundError",
                       message=f"/{image_id}")
