from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import FAILURES, LABELS, SchemaVersionError, count_rows, failure_row, labels_row, read_table


def _label(image_id="a"):
    return labels_row(
        image_id=image_id, source_uri=f"/x/{image_id}.jpg", sha256="0" * 64, width=640, height=480,
        captions=[{"text": "a dog", "score": -1.5}, {"text": "a cat", "score": -0.5}],
        tags=[{"label": "/m/1", "name": "dog", "score": 0.2}, {"label": "/m/2", "name": "cat", "score": 0.9}],
        captioner="tiny-random/blip", tagger="tiny-random/siglip", teacher_params={"caption": {"num_beams": 3}},
        license="CC BY 2.0", author="someone",
    )


def test_labels_round_trip_through_parquet(tmp_path):
    rows = [_label("a"), _label("b")]
    (tmp_path / "labels").mkdir()
    pq.write_table(LABELS.to_table(rows), tmp_path / "labels" / "part-0.parquet")
    back = read_table(str(tmp_path / "labels"), LABELS).to_pylist()
    assert [r["image_id"] for r in back] == ["a", "b"]
    r = back[0]
    assert [c["text"] for c in r["captions"]] == ["a cat", "a dog"]  # best first
    assert [t["name"] for t in r["tags"]] == ["cat", "dog"]
    assert r["captions"][0]["similarity"] is None
    assert r["schema_version"] == LABELS.version and r["license"] == "CC BY 2.0"
    assert count_rows(str(tmp_path / "labels"), LABELS) == 2


def test_failures_round_trip(tmp_path):
    row = failure_row(image_id="row:3", source_uri=None, stage="manifest", error_type="MalformedRow", message="x")
    pq.write_table(FAILURES.to_table([row]), tmp_path / "f.parquet")
    back = read_table(str(tmp_path / "f.parquet"), FAILURES).to_pylist()
    assert back[0]["stage"] == "manifest" and back[0]["failed_at"].tzinfo is not None


def test_reader_rejects_unknown_version_and_other_tables(tmp_path):
    table = LABELS.to_table([_label()])
    newer = table.replace_schema_metadata({b"minivlm.schema": b"labels", b"minivlm.schema_version": b"99"})
    pq.write_table(newer, tmp_path / "new.parquet")
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        read_table(str(tmp_path / "new.parquet"), LABELS)
    pq.write_table(table, tmp_path / "labels.parquet")
    with pytest.raises(SchemaVersionError, match="expected a 'failures' table"):
        read_table(str(tmp_path / "labels.parquet"), FAILURES)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(SchemaVersionError):
        count_rows(str(tmp_path / "plain.parquet"), LABELS)


def test_empty_table_dir_reads_as_empty_with_schema(tmp_path):
    t = read_table(str(tmp_path), FAILURES, columns=["stage"])
    assert t.num_rows == 0 and t.schema.names == ["stage"]


def test_validate_row_names_the_bad_field():
    row = _label()
    row["width"] = "wide"
    with pytest.raises(ValueError, match="'width'"):
        LABELS.validate_row(row)
    with pytest.raises(ValueError, match="unknown fields: bogus"):
        LABELS.validate_row({**_label(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown failure stage"):
        failure_row(image_id="a", source_uri=None, stage="nowhere", error_type="E", message="m")


def test_failure_message_is_bounded_and_never_empty():
    row = failure_row(image_id="a", source_uri=None, stage="read", error_type="OSError", message="x" * 10_000,
                      failed_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert len(row["message"]) == 2000
    assert failure_row(image_id="a", source_uri=None, stage="read", error_type="OSError", message="")["message"]
