import json
import re
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from benchmarks import synthetic_scenes as synth
from pipelines.data import annotations as boxes
from pipelines.data.nlvr2 import read_nlvr2
from pipelines.data.retrieval import read_karpathy
from pipelines.data.sources import SourceSpec, iter_refs
from pipelines.eval.nlvr2 import sentence_key

SIZE = 64


def _scenes(n=40, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return [synth.make_scene(rng, SIZE, **kw) for _ in range(n)]


def _pixel_box(box, size=SIZE):
    x0, y0, x1, y1 = (round(v * size) for v in box)
    return x0, y0, x1, y1


def test_boxes_are_tight_and_inside_the_image():
    scenes = _scenes(empty_fraction=0.0)
    assert sum(len(objs) for _, objs in scenes) >= 40
    for image, objects in scenes:
        assert image.mode == "RGB" and image.size == (SIZE, SIZE)
        pixels = np.asarray(image)
        for obj in objects:
            assert set(obj) == {"label", "name", "color", "size", "box"} and obj["size"] in synth.SIZES
            assert obj["label"] == "/synth/" + obj["name"] and obj["color"] in synth.PALETTE
            xmin, ymin, xmax, ymax = obj["box"]
            assert 0 <= xmin < xmax <= 1 and 0 <= ymin < ymax <= 1
            assert synth.SIZE_RANGE[0] * 0.5 <= max(xmax - xmin, ymax - ymin) <= synth.SIZE_RANGE[1] + 0.05
            x0, y0, x1, y1 = _pixel_box(obj["box"])
            own = (pixels == synth.PALETTE[obj["color"]]).all(axis=2)
            inside = own[y0:y1, x0:x1]
            # Tight: the shape touches all four sides of its box and fills a fair part of it.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert inside.mean() > 0.3
        # Every pixel of an object colour lies in a box of an object with that colour.
        for color in {o["color"] for o in objects}:
            covered = np.zeros((SIZE, SIZE), bool)
            for o in objects:
                if o["color"] == color:
                    x0, y0, x1, y1 = _pixel_box(o["box"])
                    covered[y0:y1, x0:x1] = True
            assert not ((pixels == synth.PALETTE[color]).all(axis=2) & ~covered).any()


def test_objects_overlap_little_and_contrast_with_the_background():
    for image, objects in _scenes(empty_fraction=0.0):
        for i, a in enumerate(objects):
            for b in objects[i + 1:]:
                assert synth._box_iou(a["box"], b["box"]) < synth.MAX_BOX_IOU
        background = np.asarray(image).reshape(-1, 3)
        background = background[(background >= synth.BACKGROUND_RANGE[0]).all(1)
                                & (background <= synth.BACKGROUND_RANGE[1]).all(1)]
        assert background.std(axis=0).max() > 2  # textured, not a flat fill


def test_empty_scenes_and_object_counts():
    scenes = _scenes(n=60, empty_fraction=0.3)
    counts = [len(objs) for _, objs in scenes]
    assert 5 <= counts.count(0) <= 35 and max(counts) <= 3
    assert all(not objs for _, objs in _scenes(n=5, empty_fraction=1.0))
    with pytest.raises(ValueError, match="size must be at least"):
        synth.make_scene(np.random.default_rng(0), 16)
    with pytest.raises(ValueError, match="empty_fraction"):
        synth.make_scene(np.random.default_rng(0), 64, empty_fraction=1.5)


def _obj(name, color, box):
    return {"label": "/synth/" + name, "name": name, "color": color, "box": box}


def test_captions():
    circle = _obj("circle", "red", (0.0, 0.4, 0.2, 0.6))
    square = _obj("square", "blue", (0.6, 0.4, 0.8, 0.6))
    star = _obj("star", "orange", (0.7, 0.0, 0.9, 0.2))
    low = _obj("triangle", "green", (0.05, 0.8, 0.25, 1.0))
    assert synth.caption_for([]) == "an empty scene"
    assert synth.caption_for([star]) == "an orange star"
    assert synth.caption_for([square, circle]) == "a red circle left of a blue square"
    assert synth.caption_for([square, circle, star]) == \
        "a red circle left of a blue square, which is below an orange star"
    assert synth.caption_for([circle, low]) == "a red circle above a green triangle"
    assert synth.caption_for([low, star]) == "a green triangle below an orange star"  # |dy| > dx
    assert synth.caption_for([square, low]) == "a green triangle left of a blue square"


def test_write_dataset_is_readable_by_sources_and_boxes(tmp_path):
    paths = synth.write_dataset(str(tmp_path / "d"), 30, seed=3, size=SIZE, subset="validation")
    refs = list(iter_refs(SourceSpec(paths["images_csv"])))
    ids = [r.image_id for r in refs]
    assert len(ids) == 30 and ids == sorted(ids) and len(set(ids)) == 30
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert all(r.error is None and r.license.startswith("https://creativecommons.org/") and r.author == "synthetic"
               for r in refs)
    for ref in refs[:5]:
        with Image.open(ref.uri) as im:
            assert im.format == "JPEG" and im.size == (SIZE, SIZE)

    classes = boxes.read_classes(paths["classes_csv"])
    assert [n for _, n in classes] == list(synth.SHAPES)
    stats = boxes.BoxStats()
    joined = list(boxes.join_sorted(refs, boxes.iter_box_groups(paths["boxes_csv"], boxes.class_index(classes),
                                                                stats), stats))
    assert stats.skipped() == 0 and stats.annotations_without_image == 0 and stats.rows == stats.boxes > 0
    assert len(joined) == 30 and stats.images_without_boxes == sum(len(b) == 0 for _, b, _ in joined)

    # Each object's colour and size, as Open Images relationships "is", land on its box.
    attribute_classes = boxes.read_classes(paths["attribute_classes_csv"])
    assert [n for _, n in attribute_classes] == [*synth.PALETTE, *synth.SIZES]
    astats, bstats = boxes.AttributeStats(), boxes.BoxStats()
    samples = boxes.join_sorted(refs, boxes.iter_box_groups(paths["boxes_csv"], boxes.class_index(classes), bstats),
                                bstats)
    groups = boxes.iter_attribute_groups(paths["attributes_csv"], boxes.class_index(classes),
                                         boxes.class_index(attribute_classes), astats)
    with_attributes = list(boxes.attach_attributes(samples, groups, len(attribute_classes), astats))
    assert astats.rows == astats.attributes == 2 * stats.boxes and astats.unmatched == 0
    names = [n for _, n in attribute_classes]

    coco = json.loads((tmp_path / "d" / "captions.json").read_text())
    for (ref, _, _, attributes, known), image in zip(with_attributes, coco["images"]):
        assert known.all() and attributes.sum(axis=1).tolist() == [2.0] * len(image["objects"])
        assert [sorted(names[i] for i in np.flatnonzero(a)) for a in attributes] == [
            sorted([o["color"], o["size"]]) for o in image["objects"]]
    assert [im["id"] for im in coco["images"]] == ids
    assert [a["image_id"] for a in coco["annotations"]] == ids
    assert {im["file_name"] for im in coco["images"]} == {f"{i}.jpg" for i in ids}
    by_id = {im["id"]: im for im in coco["images"]}
    for (ref, bxs, labels), ann in zip(joined, coco["annotations"]):
        objects = by_id[ref.image_id]["objects"]
        assert ann["caption"] == synth.caption_for(objects)
        np.testing.assert_allclose(bxs, np.array([o["box"] for o in objects], np.float32).reshape(-1, 4))
        assert labels.tolist() == [synth.SHAPES.index(o["name"]) + 1 for o in objects]
        # Loosely tight after JPEG: the box centre region is mostly the object's colour for
        # circles and squares (their centre is always filled).
        with Image.open(ref.uri) as im:
            pixels = np.asarray(im.convert("RGB"), np.float64)
        for o in objects:
            if o["name"] in ("circle", "square"):
                x0, y0, x1, y1 = _pixel_box(o["box"])
                cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
                patch = pixels[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3)
                assert np.linalg.norm(patch - synth.PALETTE[o["color"]], axis=1).mean() < 40


def test_empty_scenes_are_written_as_negatives(tmp_path):
    paths = synth.write_dataset(str(tmp_path), 20, seed=0, size=SIZE, empty_fraction=0.5)
    refs = list(iter_refs(SourceSpec(paths["images_csv"])))
    stats = boxes.BoxStats()
    groups = boxes.iter_box_groups(paths["boxes_csv"], boxes.class_index(boxes.read_classes(paths["classes_csv"])),
                                   stats)
    list(boxes.join_sorted(refs, groups, stats))
    assert stats.images_without_boxes >= 3
    captions = json.loads((tmp_path / "captions.json").read_text())["annotations"]
    assert sum(a["caption"] == "an empty scene" for a in captions) == stats.images_without_boxes


def test_same_seed_same_bytes(tmp_path):
    a = synth.write_dataset(str(tmp_path / "a"), 8, seed=5, size=SIZE)
    b = synth.write_dataset(str(tmp_path / "b"), 8, seed=5, size=SIZE)
    c = synth.write_dataset(str(tmp_path / "c"), 8, seed=6, size=SIZE)
    for key in ("images_csv", "boxes_csv", "classes_csv", "captions_json"):
        assert open(a[key], "rb").read() == open(b[key], "rb").read()
    assert open(a["images_csv"], "rb").read() != open(c["images_csv"], "rb").read()


def test_subsets_share_a_folder_without_collisions(tmp_path):
    train = synth.write_dataset(str(tmp_path), 5, seed=1, size=SIZE, subset="train", prefix="train-")
    val = synth.write_dataset(str(tmp_path), 5, seed=1, size=SIZE, subset="validation", prefix="validation-")
    assert train["boxes_csv"].endswith("/train-boxes.csv") and val["images_dir"] == train["images_dir"]
    t_ids = {r.image_id for r in iter_refs(SourceSpec(train["images_csv"]))}
    v_ids = {r.image_id for r in iter_refs(SourceSpec(val["images_csv"]))}
    assert not t_ids & v_ids and len(list((tmp_path / "images").iterdir())) == 10


def test_cli(tmp_path, capsys):
    synth.main(["--output", str(tmp_path / "cli"), "--num-images", "3", "--size", "48", "--seed", "2"])
    out = capsys.readouterr().out
    assert out.startswith("wrote 3 images") and "boxes.csv" in out and "captions.json" in out
    with pytest.raises(SystemExit):
        synth.main(["--output", str(tmp_path / "bad"), "--num-images", "0"])


# ---- retrieval (Karpathy layout) and NLVR2 statements about pairs -------------------------------

def _truth(sentence, left, right):
    """The statement's truth, worked out here from its words, apart from the generator's code."""
    sides = {"left": left, "right": right}
    shapes = lambda objs, shape: sum(o["name"] == shape for o in objs)  # noqa: E731
    if m := re.fullmatch(r"the (left|right) image has more (\w+)s than the (left|right) one", sentence):
        return shapes(sides[m[1]], m[2]) > shapes(sides[m[3]], m[2])
    if m := re.fullmatch(r"there are more objects in the (left|right) image than in the (left|right) one", sentence):
        return len(sides[m[1]]) > len(sides[m[2]])
    if m := re.fullmatch(r"both images contain an? (\w+) object", sentence):
        return all(any(o["color"] == m[1] for o in objs) for objs in (left, right))
    if m := re.fullmatch(r"the (left|right) image contains an? (\w+) (\w+)", sentence):
        return any(o["color"] == m[2] and o["name"] == m[3] for o in sides[m[1]])
    if m := re.fullmatch(r"exactly one image contains a (\w+)", sentence):
        return (shapes(left, m[1]) > 0) != (shapes(right, m[1]) > 0)
    raise AssertionError(f"unknown template: {sentence!r}")


def test_statement_truth_for_a_hand_built_pair():
    left = [_obj("circle", "red", (0.0, 0.0, 0.2, 0.2)), _obj("circle", "red", (0.5, 0.5, 0.7, 0.7)),
            _obj("square", "blue", (0.0, 0.6, 0.2, 0.8))]
    right = [_obj("star", "red", (0.3, 0.3, 0.5, 0.5))]
    known = {"the left image has more circles than the right one": True,
             "the right image has more circles than the left one": False,
             "the right image has more squares than the left one": False,
             "there are more objects in the left image than in the right one": True,
             "there are more objects in the right image than in the left one": False,
             "both images contain a red object": True, "both images contain a blue object": False,
             "the left image contains a blue square": True, "the right image contains a blue square": False,
             "the right image contains a red star": True, "the left image contains a red star": False,
             "exactly one image contains a star": True, "exactly one image contains a circle": True,
             "exactly one image contains a triangle": False}
    seen, truths = set(), []
    for seed in range(300):
        out = synth.statements_for(left, right, np.random.default_rng(seed))
        assert 1 <= len(out) <= 2 and len({s for s, _ in out}) == len(out)
        for sentence, truth in out:
            assert truth is _truth(sentence, left, right) and known.get(sentence, truth) is truth
            seen.add(sentence)
            truths.append(truth)
    assert len(seen & set(known)) >= 10 and 0.3 < np.mean(truths) < 0.7  # balanced over the draws
    for sentence, truth in synth.statements_for([], [], np.random.default_rng(0)):
        assert truth is False and _truth(sentence, [], []) is False  # nothing is true of two empty scenes


def test_karpathy_and_nlvr2_files_read_back(tmp_path):
    paths = synth.write_dataset(str(tmp_path), 200, seed=4, size=48, subset="validation", prefix="validation-")
    ids = [r.image_id for r in iter_refs(SourceSpec(paths["images_csv"]))]
    coco = json.loads(open(paths["captions_json"]).read())

    images, stats = read_karpathy(paths["karpathy_json"])
    assert paths["karpathy_json"].endswith("/validation-karpathy.json")
    assert [i.image_id for i in images] == ids and {i.split for i in images} == {"test"}
    assert [i.captions for i in images] == [[a["caption"]] for a in coco["annotations"]]
    assert stats.malformed == stats.blank_captions == stats.duplicate_images == 0
    assert read_karpathy(paths["karpathy_json"], {"train"})[0] == []

    statements, nstats = read_nlvr2(paths["nlvr2_jsonl"])
    assert nstats.malformed == nstats.unlabeled == 0 and len({s.identifier for s in statements}) == len(statements)
    assert 2 * 1.3 < len(statements) / 200 < 2 * 1.7  # 1.5 sentences per set, each judged on two pairs
    assert [s.left for s in statements] == sorted(s.left for s in statements)  # in order of left images
    first = [s for s in statements if s.identifier.split("-")[2] == "0"]
    assert {s.left for s in first} == set(ids)  # set k's first pair is scene k beside another
    assert all(s.right in ids and s.left in ids and s.left != s.right for s in statements)
    assert 0.3 <= np.mean([s.label for s in statements]) <= 0.7
    groups = defaultdict(list)  # the official consistency groups: identifiers with the pair field blanked
    for s in statements:
        groups[sentence_key(s.identifier)].append(s)
    assert len(groups) == len(first) and all(len(g) == 2 and g[0].sentence == g[1].sentence
                                             and (g[0].left, g[0].right) != (g[1].left, g[1].right)
                                             for g in groups.values())
    assert sum(g[0].label != g[1].label for g in groups.values()) > len(groups) / 2  # most sentences flip
    objects = {im["id"]: im["objects"] for im in coco["images"]}
    for s in statements:
        assert s.label is _truth(s.sentence, objects[s.left], objects[s.right])

    train = synth.write_dataset(str(tmp_path), 3, seed=4, size=48, subset="train", prefix="train-")
    assert {i.split for i in read_karpathy(train["karpathy_json"])[0]} == {"train"}


def test_retrieval_and_nlvr2_files_are_deterministic(tmp_path):
    a = synth.write_dataset(str(tmp_path / "a"), 8, seed=5, size=SIZE)
    b = synth.write_dataset(str(tmp_path / "b"), 8, seed=5, size=SIZE)
    for key in ("karpathy_json", "nlvr2_jsonl"):
        assert open(a[key], "rb").read() == open(b[key], "rb").read()
    lone = synth.write_dataset(str(tmp_path / "c"), 1, seed=5, size=SIZE)
    assert open(lone["nlvr2_jsonl"]).read() == ""  # one scene has no other to be paired with
