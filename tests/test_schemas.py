from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import (
    FAILURES,
    FEATURES,
    LABELS,
    SchemaVersionError,
    count_rows,
    failure_row,
    features_row,
    labels_row,
    read_table,
    region_features,
)


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


def _regions(n=3, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    xy = np.sort(rng.random((n, 2, 2)), axis=1)  # x0 <= x1, y0 <= y1
    boxes = np.stack([xy[:, 0, 0], xy[:, 0, 1], xy[:, 1, 0], xy[:, 1, 1]], axis=1).astype(np.float32)
    return dict(boxes=boxes, scores=rng.random(n).astype(np.float32), labels=[f"/m/{i}" for i in range(n)],
                names=[f"thing {i}" for i in range(n)], features=(rng.standard_normal((n, dim)) * 3).astype(np.float32))


def _features(image_id="a", n=3, dim=5, seed=0, **over):
    args = dict(image_id=image_id, source_uri=f"/x/{image_id}.jpg", sha256="0" * 64, width=640, height=480,
                extractor="tee-tiny-0123456789abcdef", extractor_source="tiny-random/tee-tiny",
                **_regions(n, dim, seed))
    return features_row(**{**args, **over})


def test_features_round_trip_float16_exactly(tmp_path):
    regions = [_regions(3, 5, seed=0), _regions(7, 5, seed=1)]
    rows = [_features("a", 3, 5, seed=0), _features("b", 7, 5, seed=1)]
    (tmp_path / "features").mkdir()
    pq.write_table(FEATURES.to_table(rows), tmp_path / "features" / "part-0.parquet", compression="zstd")
    table = read_table(str(tmp_path / "features"), FEATURES)
    assert table.schema.field("features").type == pa.list_(pa.float16())
    back = table.to_pylist()
    assert [(r["num_regions"], r["feature_dim"]) for r in back] == [(3, 5), (7, 5)]
    for i, (r, want) in enumerate(zip(back, regions)):
        expected = want["features"].astype(np.float16)
        assert np.array_equal(region_features(r), expected)  # from a dict row
        one = region_features(table.slice(i, 1))  # from a one-row slice
        assert one.dtype == np.float16 and np.array_equal(one, expected)
        assert np.array_equal(np.asarray(r["boxes"], np.float32), want["boxes"])
        assert r["labels"] == want["labels"] and r["names"] == want["names"]
    stacked = region_features(table)
    assert stacked.shape == (10, 5) and np.array_equal(stacked[3:], regions[1]["features"].astype(np.float16))
    assert region_features(table.to_batches()[0]).shape == (10, 5)
    assert count_rows(str(tmp_path / "features"), FEATURES) == 2
    with pytest.raises(SchemaVersionError, match="expected a 'labels' table"):
        read_table(str(tmp_path / "features"), LABELS)


def test_features_v2_carry_region_attributes_and_v1_files_read_them_as_null(tmp_path):
    from schemas.io import iter_batches

    with_attrs = _features("a", 3, 5, attributes=[["blue", "small"], [], ["red"]],
                           attribute_scores=[[0.9, 0.6], [], [0.7]])
    (tmp_path / "v2").mkdir()
    pq.write_table(FEATURES.to_table([with_attrs, _features("b", 2, 5)]), tmp_path / "v2" / "part-0.parquet")
    back = read_table(str(tmp_path / "v2"), FEATURES, columns=["image_id", "attributes", "attribute_scores"])
    assert back.to_pylist() == [
        {"image_id": "a", "attributes": [["blue", "small"], [], ["red"]],
         "attribute_scores": [[pytest.approx(0.9), pytest.approx(0.6)], [], [pytest.approx(0.7)]]},
        {"image_id": "b", "attributes": None, "attribute_scores": None}]  # a TEE without an attribute head
    # A version-1 file (written before attributes existed) reads on, its attributes null.
    v1_fields = [f for f in FEATURES.fields if f.name not in ("attributes", "attribute_scores")]
    v1 = pa.schema(v1_fields, metadata={b"minivlm.schema": b"features", b"minivlm.schema_version": b"1"})
    row = {k: v for k, v in _features("c", 2, 5).items() if k in v1.names}
    (tmp_path / "v1").mkdir()
    pq.write_table(pa.Table.from_pylist([{**row, "schema_version": 1}], schema=v1), tmp_path / "v1" / "p.parquet")
    for got in (read_table(str(tmp_path / "v1"), FEATURES, columns=["image_id", "attributes"]),
                pa.Table.from_batches(list(iter_batches(str(tmp_path / "v1"), FEATURES, ["image_id", "attributes"])))):
        assert got.to_pylist() == [{"image_id": "c", "attributes": None}]
        assert got.schema.field("attributes").type == pa.list_(pa.list_(pa.string()))
    with pytest.raises(ValueError, match="one score per attribute"):
        _features("d", 2, 5, attributes=[["blue"], ["red"]], attribute_scores=[[0.9], []])
    with pytest.raises(ValueError, match="go together"):
        _features("d", 2, 5, attributes=[["blue"], ["red"]])


@pytest.mark.parametrize("over,match", [
    (dict(features=np.zeros((3, 5, 1))), "features must be"),
    (dict(boxes=np.zeros((2, 4))), "boxes must be"),
    (dict(scores=np.zeros(4)), "scores must be"),
    (dict(names=["x"]), "labels and names"),
    (dict(boxes=np.array([[0.5, 0, 0.4, 1]] * 3)), "normalised xyxy"),
    (dict(boxes=np.array([[0, 0, 1.5, 1]] * 3)), "normalised xyxy"),
    (dict(features=np.full((3, 5), 1e6, np.float32)), "float16 range"),
    (dict(features=np.full((3, 5), np.nan, np.float32)), "finite"),
])
def test_features_row_refuses_inconsistent_regions(over, match):
    with pytest.raises(ValueError, match=match):
        _features(**over)


def test_region_features_refuses_a_row_whose_sizes_disagree():
    row = _features()
    row["num_regions"] = 4
    with pytest.raises(ValueError, match="num_regions"):
        region_features(row)
    table = FEATURES.to_table([_features("a", dim=5), _features("b", dim=6)])
    with pytest.raises(ValueError, match="mix feature dimensions"):
        region_features(table)


def test_failure_stages_include_extract():
    row = failure_row(image_id="a", source_uri="/a.jpg", stage="extract", error_type="EmptyOutput", message="none")
    assert FAILURES.validate_row(row)["stage"] == "extract" and FAILURES.version == 1
