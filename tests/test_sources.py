import csv

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data import sources
from pipelines.data.sources import SourceError, SourceSpec
from tests.conftest import SAMPLE_CSV

HEADER = sources.OPENIMAGES_COLUMNS


def _oi_csv(path, rows, header=HEADER):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(r if isinstance(r, list) else [r.get(c, "") for c in header])
    return str(path)


def test_bundled_sample_reads_with_metadata():
    refs = list(sources.iter_refs(SourceSpec(str(SAMPLE_CSV))))
    assert 12 <= len(refs) <= 32
    assert len({r.image_id for r in refs}) == len(refs)
    assert all(r.uri.endswith(f"/images/{r.image_id}.jpg") and r.license and r.author for r in refs)
    assert sum(r.rotation == 180 for r in refs) == 1
    assert sources.check(SourceSpec(str(SAMPLE_CSV))) == "openimages"


def test_openimages_root_template_and_bad_rows(tmp_path):
    path = _oi_csv(tmp_path / "m.csv", [
        {"ImageID": "aaa", "Subset": "train", "License": "L", "Author": "A", "OriginalURL": "http://o", "Rotation": "90.0"},
        {"ImageID": "", "Subset": "train"},
        {"ImageID": "ccc", "Subset": "test", "Rotation": "45"},
        ["ddd", "train"],  # too few fields
        {"ImageID": "eee", "Subset": "validation"},
    ])
    spec = SourceSpec(path, image_root="gs://bucket/images/", path_template="{Subset}/{ImageID}.jpg")
    refs = list(sources.iter_refs(spec))
    assert [r.image_id for r in refs] == ["aaa", "row:2", "ccc", "ddd", "eee"]
    a = refs[0]
    assert (a.uri, a.rotation, a.license, a.author, a.original_url) == (
        "gs://bucket/images/train/aaa.jpg", 90, "L", "A", "http://o")
    assert "no ImageID" in refs[1].error
    assert "Rotation" in refs[2].error
    assert "fields" in refs[3].error
    assert refs[4].error is None and refs[4].rotation is None
    assert [r.row for r in refs] == [1, 2, 3, 4, 5]


def test_default_image_root_is_images_beside_manifest(tmp_path):
    path = _oi_csv(tmp_path / "m.csv", [{"ImageID": "x1"}])
    (ref,) = sources.iter_refs(SourceSpec(path))
    assert ref.uri == str(tmp_path / "images" / "x1.jpg")


def test_table_csv_and_parquet(tmp_path):
    with open(tmp_path / "t.csv", "w") as f:
        f.write("image_id,uri,license,rotation\none,/p/1.jpg,CC0,\ntwo,,,\n,/p/3.jpg,,\n")
    refs = list(sources.iter_refs(SourceSpec(str(tmp_path / "t.csv"))))
    assert [(r.image_id, r.uri, r.license) for r in refs[:1]] == [("one", "/p/1.jpg", "CC0")]
    assert "no uri" in refs[1].error and refs[2].image_id == "row:3"
    pq.write_table(pa.table({"image_id": ["p1", "p2"], "uri": ["s3://b/1.png", "s3://b/2.png"]}), tmp_path / "t.parquet")
    spec = SourceSpec(str(tmp_path / "t.parquet"))
    assert sources.check(spec) == "table"
    assert [r.uri for r in sources.iter_refs(spec)] == ["s3://b/1.png", "s3://b/2.png"]


def test_glob_and_directory_inputs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "a.png", "sub/c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    by_glob = list(sources.iter_refs(SourceSpec(str(tmp_path / "*.*"))))
    assert [r.image_id for r in by_glob] == ["a", "b"]
    by_dir = list(sources.iter_refs(SourceSpec(str(tmp_path))))
    assert sorted(r.image_id for r in by_dir) == ["a", "b", "c"]
    assert sources.check(SourceSpec(str(tmp_path))) == "files"


def test_limit_counts_input_rows():
    assert len(list(sources.iter_refs(SourceSpec(str(SAMPLE_CSV), limit=5)))) == 5


@pytest.mark.parametrize("make,match", [
    (lambda p: str(p / "missing.csv"), "does not exist"),
    (lambda p: (p / "bad.csv").write_text("foo,bar\n1,2\n") and str(p / "bad.csv"), "neither an Open Images"),
    (lambda p: (p / "empty.csv").write_text("") == 0 and str(p / "empty.csv"), "empty"),
    (lambda p: str(p / "nothing-*.jpg"), "matches no image files"),
    (lambda p: str(p / "what.xyz"), "cannot tell"),
])
def test_check_rejects_unusable_inputs(tmp_path, make, match):
    with pytest.raises(SourceError, match=match):
        sources.check(SourceSpec(make(tmp_path)))


def test_check_rejects_template_fields_missing_from_header(tmp_path):
    path = _oi_csv(tmp_path / "m.csv", [{"ImageID": "x"}])
    with pytest.raises(SourceError, match="Shard"):
        sources.check(SourceSpec(path, path_template="{Shard}/{ImageID}.jpg"))


def test_remote_inputs_are_not_read_at_check_time():
    # Building a Dataflow job must not touch the bucket: check() only looks at the name.
    assert sources.check(SourceSpec("gs://example-bucket/images.csv")) == "csv"
    assert sources.check(SourceSpec("s3://b/imgs/*.jpg")) == "files"


def test_one_broken_row_does_not_end_a_large_manifest(tmp_path):
    path = tmp_path / "m.csv"
    filler = "".join(f"id{i},train\n" for i in range(3000))  # push the bad bytes past the first read
    path.write_bytes(b"ImageID,Subset\n" + filler.encode() + b"bad\xff\xfeid,train\n"
                     + b'"' + b"x" * (1 << 21) + b'",train\n' + b"last,train\n")
    refs = list(sources.iter_refs(SourceSpec(str(path))))
    assert refs[-1].image_id == "last" and refs[-1].error is None
    assert len(refs) == 3003
    assert refs[3000].error is None  # invalid bytes replaced, row kept
    assert refs[3001].error and "cannot be parsed" in refs[3001].error and refs[3001].image_id == "row:3002"


@pytest.mark.parametrize("value", ["inf", "-inf", "1e400"])
def test_non_finite_rotation_is_a_malformed_row(tmp_path, value):
    path = _oi_csv(tmp_path / "m.csv", [{"ImageID": "a", "Rotation": value}])
    (ref,) = sources.iter_refs(SourceSpec(path))
    assert "Rotation" in ref.error
