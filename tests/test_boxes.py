import fsspec
import numpy as np
import pytest

from pipelines.data import annotations as boxes
from pipelines.data.annotations import BoxStats
from pipelines.data.sources import ImageRef

HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
          "IsGroupOf,IsDepiction,IsInside")
CLASSES = {"/m/cat": 1, "/m/dog": 2}


def _row(image_id, label="/m/cat", conf="1", xmin="0.1", xmax="0.5", ymin="0.2", ymax="0.6"):
    return f"{image_id},xclick,{label},{conf},{xmin},{xmax},{ymin},{ymax},0,0,0,0,0"


def _write(path, lines, header=HEADER):
    path.write_text("\n".join([header, *lines]) + "\n")
    return str(path)


def _groups(path, classes=CLASSES):
    stats = BoxStats()
    return list(boxes.iter_box_groups(path, classes, stats)), stats


def test_every_skip_reason_is_counted_once(tmp_path):
    path = _write(tmp_path / "b.csv", [
        _row("a1"),                                   # kept
        _row("a1", label="/m/dog", xmin="0", xmax="1", ymin="0", ymax="1"),  # kept
        _row("a2", conf="0"),                         # unverified
        _row("a2", label="/m/owl"),                   # unknown label
        _row("a3", xmax="1.2"),                       # out of range
        _row("a3", ymin="-0.01"),                     # out of range
        _row("a3", xmin="-0.0000001", xmax="1.0000001"),  # within tolerance: kept, clamped
        _row("a4", xmin="0.6", xmax="0.5"),           # inverted
        _row("a4", ymin="0.7", ymax="0.6"),           # inverted
        _row("a4", xmin="0.3", xmax="0.3"),           # degenerate
        _row("a5", xmin="abc"),                       # malformed number
        _row("a5", ymax="nan"),                       # malformed: not finite
        _row("a5", conf="yes"),                       # malformed confidence
        "a5,xclick,/m/cat,1,0.1",                     # missing fields
        ",xclick,/m/cat,1,0.1,0.5,0.2,0.6,0,0,0,0,0",  # no ImageID
        "",                                           # blank line: not a row
    ])
    groups, stats = _groups(path)
    assert [g[0] for g in groups] == ["a1", "a3"]
    a1_boxes, a1_labels = groups[0][1], groups[0][2]
    assert a1_boxes.dtype == np.float32 and a1_labels.dtype == np.int64
    np.testing.assert_allclose(a1_boxes, [[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], rtol=1e-6)  # xyxy
    assert a1_labels.tolist() == [1, 2]
    np.testing.assert_array_equal(groups[1][1], np.array([[0, 0.2, 1, 0.6]], np.float32))
    assert stats.to_dict() == {
        "rows": 15, "boxes": 3, "images_with_boxes": 2, "skipped_malformed": 5, "skipped_unverified": 1,
        "skipped_unknown_label": 1, "skipped_out_of_range": 2, "skipped_inverted": 2, "skipped_degenerate": 1,
        "annotations_without_image": 0, "images_without_boxes": 0, "duplicate_images": 0,
        "images_with_errors": 0,
    }
    assert stats.rows == stats.boxes + stats.skipped()


def test_minimal_columns_without_confidence(tmp_path):
    path = _write(tmp_path / "b.csv", ["x,/m/dog,0.25,0.75,0.0,0.5"], header="ImageID,LabelName,XMin,XMax,YMin,YMax")
    (group,), stats = _groups(path)
    assert group[0] == "x" and group[2].tolist() == [2]
    np.testing.assert_allclose(group[1], [[0.25, 0.0, 0.75, 0.5]])
    assert stats.boxes == 1 and stats.skipped() == 0


def test_missing_required_column_and_empty_file(tmp_path):
    path = _write(tmp_path / "b.csv", ["x,/m/dog,0.25,0.75,0.0"], header="ImageID,LabelName,XMin,XMax,YMin")
    with pytest.raises(ValueError, match="lacks columns YMax"):
        _groups(path)
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        _groups(str(tmp_path / "e.csv"))


def test_unsorted_file_names_the_line(tmp_path):
    path = _write(tmp_path / "b.csv", [_row("a"), _row("c"), _row("b")])
    with pytest.raises(ValueError, match=r"line 4: ImageID 'b' sorts before the previous 'c'.*sort"):
        _groups(path)


def test_interleaved_ids_are_an_ordering_error(tmp_path):
    path = _write(tmp_path / "b.csv", [_row("a"), _row("b"), _row("a")])
    with pytest.raises(ValueError, match="line 4"):
        _groups(path)


def test_memory_url_and_gzip(tmp_path):
    url = "memory://boxes-test/b.csv"
    with fsspec.open(url, "w") as f:
        f.write("\n".join([HEADER, _row("m1"), _row("m1"), _row("m2", label="/m/dog")]) + "\n")
    groups, stats = _groups(url)
    assert [(g[0], len(g[1])) for g in groups] == [("m1", 2), ("m2", 1)]
    with fsspec.open(str(tmp_path / "b.csv.gz"), "wt", compression="gzip") as f:
        f.write("\n".join([HEADER, _row("g1")]) + "\n")
    groups, _ = _groups(str(tmp_path / "b.csv.gz"))
    assert [g[0] for g in groups] == ["g1"]


@pytest.mark.parametrize("text", [
    "/m/cat,Cat\n/m/dog,Dog\n",
    "LabelName,DisplayName\n/m/cat,Cat\n/m/dog,Dog\n",
    "\ufeffLabelName,DisplayName\r\n/m/cat,Cat\r\n\r\n/m/dog,Dog\r\n",
])
def test_read_classes_with_and_without_header(tmp_path, text):
    path = tmp_path / "c.csv"
    path.write_bytes(text.encode("utf-8"))
    classes = boxes.read_classes(str(path))
    assert classes == [("/m/cat", "Cat"), ("/m/dog", "Dog")]
    assert boxes.class_index(classes) == {"/m/cat": 1, "/m/dog": 2}


def test_read_classes_display_name_with_comma(tmp_path):
    (tmp_path / "c.csv").write_text('/m/x,"Ball, tennis"\n')
    assert boxes.read_classes(str(tmp_path / "c.csv")) == [("/m/x", "Ball, tennis")]


@pytest.mark.parametrize("text,message", [
    ("/m/cat,Cat\n/m/dog,Dog\n/m/cat,Kitty\n", "line 3: duplicate LabelName '/m/cat' \\(first on line 1\\)"),
    ("/m/cat,Cat,extra\n", "line 1: expected 2 fields"),
    (",Nothing\n", "line 1: empty LabelName"),
    ("LabelName,DisplayName\n", "no classes"),
])
def test_read_classes_rejects_bad_files(tmp_path, text, message):
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        boxes.read_classes(str(tmp_path / "c.csv"))


def _ref(image_id, row=1, error=None):
    return ImageRef(image_id=image_id, uri=f"/img/{image_id}.jpg", row=row, error=error)


def _group(image_id, n=1, label=1):
    return image_id, np.tile(np.array([[0.1, 0.1, 0.5, 0.5]], np.float32), (n, 1)), np.full((n,), label, np.int64)


def test_join_negatives_orphans_and_duplicates():
    refs = [_ref("b"), _ref("c"), _ref("c", row=3), _ref("e"), _ref("f")]
    groups = [_group("a"), _group("b", 2), _group("d"), _group("e", 1, 2), _group("g"), _group("h")]
    stats = BoxStats()
    out = list(boxes.join_sorted(iter(refs), iter(groups), stats))
    assert [(r.image_id, r.row, len(b), lab.tolist()) for r, b, lab in out] == [
        ("b", 1, 2, [1, 1]), ("c", 1, 0, []), ("e", 1, 1, [2]), ("f", 1, 0, [])]
    empty_boxes, empty_labels = out[1][1], out[1][2]
    assert empty_boxes.shape == (0, 4) and empty_boxes.dtype == np.float32
    assert empty_labels.shape == (0,) and empty_labels.dtype == np.int64
    assert (stats.images_without_boxes, stats.annotations_without_image, stats.duplicate_images) == (2, 4, 1)


def test_join_passes_error_refs_through():
    refs = [_ref("a"), _ref("row:2", row=2, error="manifest row 2 has no ImageID"), _ref("b", row=3)]
    stats = BoxStats()
    out = list(boxes.join_sorted(refs, [_group("a"), _group("b")], stats))
    assert [(r.image_id, len(b)) for r, b, _ in out] == [("a", 1), ("row:2", 0), ("b", 1)]
    assert stats.images_with_errors == 1 and stats.images_without_boxes == 0


def test_join_rejects_unsorted_inputs():
    with pytest.raises(ValueError, match="image refs out of order: 'a' after 'b'"):
        list(boxes.join_sorted([_ref("b"), _ref("a")], [], BoxStats()))
    with pytest.raises(ValueError, match="box groups out of order: 'a' after 'b'"):
        list(boxes.join_sorted([_ref("z")], [_group("b"), _group("a")], BoxStats()))


def test_join_with_file_reader_end_to_end(tmp_path):
    path = _write(tmp_path / "b.csv", [_row("i1"), _row("i2", conf="0"), _row("i3"), _row("i9")])
    stats = BoxStats()
    refs = [_ref("i1"), _ref("i2"), _ref("i3"), _ref("i4")]
    out = list(boxes.join_sorted(refs, boxes.iter_box_groups(path, CLASSES, stats), stats))
    assert [(r.image_id, len(b)) for r, b, _ in out] == [("i1", 1), ("i2", 0), ("i3", 1), ("i4", 0)]
    assert (stats.rows, stats.boxes, stats.skipped_unverified) == (4, 3, 1)
    assert (stats.images_with_boxes, stats.images_without_boxes, stats.annotations_without_image) == (3, 2, 1)


# ---- attributes: Open Images visual relationships "is" -------------------------------------

RELATIONSHIP_HEADER = "ImageID,LabelName1,LabelName2,XMin1,XMax1,YMin1,YMax1,XMin2,XMax2,YMin2,YMax2,RelationshipLabel"
ATTRIBUTES = {"/a/red": 1, "/a/wooden": 2, "/a/small": 3}


def _rel(image_id, attribute, label="/m/cat", box=("0.1", "0.5", "0.2", "0.6"), relation="is"):
    return f"{image_id},{label},{attribute},{','.join(box)},{','.join(box)},{relation}"


def test_attributes_land_on_their_boxes_and_every_other_row_is_counted(tmp_path):
    box_file = _write(tmp_path / "b.csv", [_row("a1"), _row("a1", "/m/dog", xmin="0.6", xmax="0.9"), _row("b2"),
                                           _row("d4")])
    rel_file = _write(tmp_path / "r.csv", [
        _rel("a0", "/a/red"),                                  # image not in the manifest: unmatched
        _rel("a1", "/a/red"), _rel("a1", "/a/small"),          # both on a1's cat
        _rel("a1", "/a/wooden", "/m/dog", ("0.6", "0.9", "0.2", "0.6")),  # on a1's dog
        _rel("a1", "/m/dog", relation="on"),                   # a relationship between objects, not an attribute
        _rel("a1", "/a/shiny"),                                # attribute not in the list
        _rel("a1", "/a/red", box=("0.1", "x", "0.2", "0.6")),  # malformed
        _rel("b2", "/a/red", box=("0.3", "0.5", "0.2", "0.6")),  # no such box on b2: unmatched
        _rel("d4", "/a/small"), _rel("z9", "/a/small"),        # z9 after the last image: unmatched
    ], header=RELATIONSHIP_HEADER)
    refs = [ImageRef(image_id=i, uri=f"mem://{i}", row=n) for n, i in enumerate(("a1", "b2", "c3", "d4"), 1)]
    stats, astats = BoxStats(), boxes.AttributeStats()
    samples = boxes.join_sorted(refs, boxes.iter_box_groups(box_file, CLASSES, stats), stats)
    groups = boxes.iter_attribute_groups(rel_file, CLASSES, ATTRIBUTES, astats)
    out = {ref.image_id: (a, k) for ref, _, _, a, k in boxes.attach_attributes(samples, groups, 3, astats)}
    assert out["a1"][0].tolist() == [[1, 0, 1], [0, 1, 0]] and out["a1"][1].tolist() == [True, True]
    assert out["b2"][1].tolist() == [False] and out["c3"][0].shape == (0, 3)  # c3: no boxes at all
    assert out["d4"][0].tolist() == [[0, 0, 1]]
    assert astats.to_dict() == {"rows": 10, "attributes": 7, "not_attributes": 1, "skipped_malformed": 1,
                                "skipped_unknown": 1, "unmatched": 3}
    assert astats.rows == astats.attributes + astats.not_attributes + astats.skipped_malformed + astats.skipped_unknown

    unsorted = _write(tmp_path / "u.csv", [_rel("b2", "/a/red"), _rel("a1", "/a/red")], header=RELATIONSHIP_HEADER)
    with pytest.raises(ValueError, match="relationship file must be sorted by ImageID"):
        list(boxes.iter_attribute_groups(unsorted, CLASSES, ATTRIBUTES, boxes.AttributeStats()))
