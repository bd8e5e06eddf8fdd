"""Synthetic detection scenes written in Open Images formats, with templated captions.

    python -m benchmarks.synthetic_scenes --output DIR --num-images N [--size S] [--seed K]
        [--subset NAME] [--prefix P]

Coloured shapes (circle, square, triangle, star) on textured backgrounds: a data set
whose right answers are known exactly, small enough to train and score the detector and
the captioner on one machine, and written in the same files as the real thing (image
manifest, box CSV, class list, COCO captions) so it goes through the same readers.

Backgrounds are low-contrast gradients, stripes or checkers plus noise, so "anything not
background is an object" does not solve the task; every shape gets a palette colour that
stands out from the background under it. Shapes never touch each other and their boxes
overlap little (IoU < 0.3), so each box is the exact, fully visible extent of its shape.
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import math
import zlib
from typing import Callable

import fsspec
import numpy as np
from PIL import Image, ImageDraw

from pipelines.data import storage
from pipelines.data.sources import OPENIMAGES_COLUMNS

SHAPES = ("circle", "square", "triangle", "star")
LABEL_PREFIX = "/synth/"
ATTRIBUTE_PREFIX = "/synth/attr/"
SMALL_BELOW = 0.3  # shapes narrower than this fraction of the image side are "small", the rest "large"
SIZES = ("small", "large")
# Every colour has a 0 or 255 channel and backgrounds stay inside [16, 239], so a pixel of
# exactly an object's colour can only be that object (tests rely on it).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 170, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "purple": (128, 0, 128),
    "orange": (255, 140, 0),
}
BACKGROUND_RANGE = (16, 239)
MIN_CONTRAST = 100.0  # RGB distance between a shape's colour and every background pixel under it
MAX_BOX_IOU = 0.3
SIZE_RANGE = (0.15, 0.45)  # shape extent as a fraction of the image side
PLACEMENT_TRIES = 50
MIN_IMAGE_SIZE = 32
BOX_COLUMNS = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
               "IsGroupOf,IsDepiction,IsInside").split(",")
# Open Images' visual relationship file: an attribute is the relationship "is" from an object
# to an attribute label, with the object's box on both sides.
RELATIONSHIP_COLUMNS = ("ImageID,LabelName1,LabelName2,XMin1,XMax1,YMin1,YMax1,XMin2,XMax2,YMin2,YMax2,"
                        "RelationshipLabel").split(",")
LICENSE = "https://creativecommons.org/publicdomain/zero/1.0/"


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float: two close colours as a gradient, stripes or checker, plus noise."""
    c1 = rng.uniform(40, 215, 3)
    c2 = np.clip(c1 + rng.uniform(-40, 40, 3), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, math.pi)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    kind = rng.integers(3)
    if kind == 0:
        t = (along - along.min()) / max(np.ptp(along), 1e-9)
    elif kind == 1:
        period = rng.uniform(0.05, 0.2) * size
        t = (np.floor(along / (period / 2)) % 2).astype(np.float64)
    else:
        cell = max(2, int(rng.uniform(0.04, 0.15) * size))
        t = ((xx // cell + yy // cell) % 2).astype(np.float64)
    img = c1 + t[..., None] * (c2 - c1) + rng.normal(0, 6, (size, size, 3))
    return np.clip(img, *BACKGROUND_RANGE)


def _polygon(center: tuple[float, float], radii: list[float], angle: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [(center[0] + r * math.cos(angle + 2 * math.pi * k / n),
             center[1] + r * math.sin(angle + 2 * math.pi * k / n)) for k, r in enumerate(radii)]


def _shape_mask(kind: str, size: int, center: tuple[float, float], extent: float, angle: float) -> np.ndarray:
    """Boolean mask of one shape whose extent (diameter) is `extent` pixels."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    r = extent / 2
    cx, cy = center
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "square":
        # Mostly upright: a square turned 45 degrees would read as a diamond.
        draw.polygon(_polygon(center, [r] * 4, math.pi / 4 + angle * math.pi / 9), fill=255)
    elif kind == "triangle":
        draw.polygon(_polygon(center, [r] * 3, angle * math.pi), fill=255)
    elif kind == "star":
        draw.polygon(_polygon(center, [r, r * 0.45] * 5, angle * math.pi), fill=255)
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {', '.join(SHAPES)}")
    return np.asarray(mask) > 0


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_scene(rng: np.random.Generator, size: int, max_objects: int = 3, empty_fraction: float = 0.1
               ) -> tuple[Image.Image, list[dict]]:
    """An RGB size x size scene and its objects: dicts with label, name, color and
    box = (xmin, ymin, xmax, ymax), normalized, the tight box of the drawn pixels.

    A fraction `empty_fraction` of scenes has no objects (negative samples); the rest
    have 1..max_objects, fewer when a shape finds no free, contrasting place.
    """
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"size must be at least {MIN_IMAGE_SIZE} pixels, not {size}")
    if max_objects < 0:
        raise ValueError(f"max_objects must be >= 0, not {max_objects}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must be in [0, 1], not {empty_fraction}")
    pixels = _background(rng, size)
    objects: list[dict] = []
    if max_objects == 0 or rng.random() < empty_fraction:
        return Image.fromarray(pixels.astype(np.uint8), "RGB"), objects
    occupied = np.zeros((size, size), bool)
    colors = np.array(list(PALETTE.values()), np.float64)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _ in range(PLACEMENT_TRIES):
            kind = SHAPES[int(rng.integers(len(SHAPES)))]
            extent = rng.uniform(*SIZE_RANGE) * size
            center = (rng.uniform(extent / 2, size - extent / 2), rng.uniform(extent / 2, size - extent / 2))
            mask = _shape_mask(kind, size, center, extent, rng.uniform(-1, 1))
            bbox = Image.fromarray(mask).getbbox()  # right/lower exclusive: pixel-edge coordinates
            if bbox is None or (mask & occupied).any():
                continue
            box = tuple(v / size for v in bbox)
            if any(_box_iou(box, o["box"]) >= MAX_BOX_IOU for o in objects):
                continue
            under = pixels[mask]
            contrast = np.linalg.norm(under[None, :, :] - colors[:, None, :], axis=2).min(axis=1)
            usable = np.flatnonzero(contrast >= MIN_CONTRAST)
            if usable.size == 0:
                continue
            name = list(PALETTE)[int(rng.choice(usable))]
            pixels[mask] = PALETTE[name]
            occupied |= mask
            objects.append({"label": LABEL_PREFIX + kind, "name": kind, "color": name, "box": box,
                            "size": "small" if extent < SMALL_BELOW * size else "large"})
            break
    return Image.fromarray(pixels.astype(np.uint8), "RGB"), objects


def _phrase(obj: dict) -> str:
    article = "an" if obj["color"][0] in "aeiou" else "a"
    return f"{article} {obj['color']} {obj['name']}"


def _relation(a: dict, b: dict) -> str:
    """Where a is relative to b; b is never left of a (objects are taken left to right)."""
    ax, ay = (a["box"][0] + a["box"][2]) / 2, (a["box"][1] + a["box"][3]) / 2
    bx, by = (b["box"][0] + b["box"][2]) / 2, (b["box"][1] + b["box"][3]) / 2
    if bx - ax >= abs(by - ay):
        return "left of"
    return "above" if by > ay else "below"  # image y grows downwards


def caption_for(objects: list[dict]) -> str:
    """A templated caption: "an empty scene", "a green star", "a red circle left of a blue
    square", "a red circle left of a blue square, which is above an orange star".

    Objects are described left to right (ties: top to bottom), each one relative to the
    one before, from their box centres.
    """
    if not objects:
        return "an empty scene"
    ordered = sorted(objects, key=lambda o: ((o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2))
    text = _phrase(ordered[0])
    for i, (a, b) in enumerate(zip(ordered, ordered[1:])):
        text += (" " if i == 0 else ", which is ") + f"{_relation(a, b)} {_phrase(b)}"
    return text


def _centre(o: dict) -> tuple[float, float]:
    return (o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2


def questions_for(objects: list[dict], rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    """VQA questions about a scene with their one right answer: (question, answer, answer_type,
    question_type). Always a count; a colour question when some shape occurs once; a shape
    question when some colour occurs once; with two objects or more, a yes/no position question
    ("left of" as the captions mean it)."""
    out = []
    # Mostly a shape the scene has: otherwise "0" would answer most count questions.
    present = rng.random() < 0.6 and objects
    shape = objects[int(rng.integers(len(objects)))]["name"] if present else SHAPES[int(rng.integers(len(SHAPES)))]
    count = sum(o["name"] == shape for o in objects)
    out.append((f"how many {shape}s are there?", str(count), "number", "how many"))
    unique = [o for o in objects if sum(p["name"] == o["name"] for p in objects) == 1]
    if unique:
        o = unique[int(rng.integers(len(unique)))]
        out.append((f"what color is the {o['name']}?", o["color"], "other", "what color is the"))
    lone = [o for o in objects if sum(p["color"] == o["color"] for p in objects) == 1]
    if lone and rng.random() < 0.5:
        o = lone[int(rng.integers(len(lone)))]
        out.append((f"what shape is the {o['color']} object?", o["name"], "other", "what shape is the"))
    elif len(objects) >= 2:
        i, j = rng.choice(len(objects), size=2, replace=False)
        a, b = objects[int(i)], objects[int(j)]
        (ax, ay), (bx, by) = _centre(a), _centre(b)
        left = bx - ax >= abs(by - ay)
        out.append((f"is the {a['color']} {a['name']} left of the {b['color']} {b['name']}?", "yes" if left else "no",
                    "yes/no", "is the"))
    return out


STATEMENT_KINDS = 5  # more shapes, more objects, colour in both, colour-and-shape on one side, shape in one only
STATEMENT_TRIES = 20  # draws to find a statement with the wanted truth


def _count(objects: list[dict], key: str, value: str) -> int:
    return sum(o[key] == value for o in objects)


def _statement(left: list[dict], right: list[dict], kind: int, rng: np.random.Generator
               ) -> tuple[str, Callable[[list[dict], list[dict]], bool]]:
    """One statement of template `kind` about a pair, its arguments drawn with rng, and the judge
    that gives its truth on any pair (left objects, right objects)."""
    both = left + right
    # Half the time an argument the pair has: otherwise most presence statements would be false.
    shape = (both[int(rng.integers(len(both)))]["name"] if both and rng.random() < 0.5
             else SHAPES[int(rng.integers(len(SHAPES)))])
    color = (both[int(rng.integers(len(both)))]["color"] if both and rng.random() < 0.5
             else list(PALETTE)[int(rng.integers(len(PALETTE)))])
    side = "left" if rng.random() < 0.5 else "right"
    other_side = "right" if side == "left" else "left"

    def sides(a: list[dict], b: list[dict]) -> tuple[list[dict], list[dict]]:
        return (a, b) if side == "left" else (b, a)

    if kind == 0:
        return (f"the {side} image has more {shape}s than the {other_side} one",
                lambda a, b: _count(sides(a, b)[0], "name", shape) > _count(sides(a, b)[1], "name", shape))
    if kind == 1:
        return (f"there are more objects in the {side} image than in the {other_side} one",
                lambda a, b: len(sides(a, b)[0]) > len(sides(a, b)[1]))
    if kind == 2:
        article = "an" if color[0] in "aeiou" else "a"
        return (f"both images contain {article} {color} object",
                lambda a, b: _count(a, "color", color) > 0 and _count(b, "color", color) > 0)
    if kind == 3:
        phrase = _phrase({"name": shape, "color": color})
        return (f"the {side} image contains {phrase}",
                lambda a, b: any(o["name"] == shape and o["color"] == color for o in sides(a, b)[0]))
    return (f"exactly one image contains a {shape}",
            lambda a, b: (_count(a, "name", shape) > 0) != (_count(b, "name", shape) > 0))


def statements_for(left_objects: list[dict], right_objects: list[dict], rng: np.random.Generator
                   ) -> list[tuple[str, bool]]:
    """NLVR2-style statements about a pair of scenes with their exact truth: one or two
    (1.5 on average), each of a drawn template (count comparison, presence in both, in one
    side, in exactly one) whose truth is computed from the objects. Each statement draws its
    template and the truth it wants (True half the time), then arguments until the statement
    has that truth: labels are balanced within every template where the pair allows, so neither
    the template nor the pair's look alone tells the answer. Where it does not (no colour is in
    both scenes), the later draws try other templates, keeping the overall balance."""
    return [(sentence, judge(left_objects, right_objects))
            for sentence, judge in _statements(left_objects, right_objects, rng)]


def _statements(left_objects: list[dict], right_objects: list[dict], rng: np.random.Generator
                ) -> list[tuple[str, Callable[[list[dict], list[dict]], bool]]]:
    """statements_for's sentences with their judges (truth on any pair)."""
    out: list[tuple[str, Callable]] = []
    for _ in range(1 + int(rng.random() < 0.5)):
        kind, want = int(rng.integers(STATEMENT_KINDS)), bool(rng.random() < 0.5)
        for attempt in range(STATEMENT_TRIES):
            if attempt >= STATEMENT_TRIES // 2:
                kind = int(rng.integers(STATEMENT_KINDS))
            sentence, judge = _statement(left_objects, right_objects, kind, rng)
            if judge(left_objects, right_objects) == want and all(sentence != s for s, _ in out):
                break
        if all(sentence != s for s, _ in out):  # never the same sentence twice about one pair
            out.append((sentence, judge))
    return out


def _image_ids(rng: np.random.Generator, n: int) -> list[str]:
    ids: set[str] = set()
    while len(ids) < n:
        ids.add(rng.bytes(8).hex())
    return sorted(ids)  # the streaming box join needs every file sorted by ImageID


def _writer(f) -> csv.writer:
    return csv.writer(f, lineterminator="\n")  # Open Images files end lines with \n


def _write(out_dir: str, n: int, *, seed: int, size: int, subset: str, prefix: str,
           max_objects: int, empty_fraction: float) -> tuple[dict[str, str], dict[str, int]]:
    if n < 1:
        raise ValueError(f"number of images must be positive, not {n}")
    names = {"images_csv": f"{prefix}images.csv", "boxes_csv": f"{prefix}boxes.csv",
             "classes_csv": f"{prefix}classes.csv", "captions_json": f"{prefix}captions.json",
             "attributes_csv": f"{prefix}attributes.csv", "attribute_classes_csv": f"{prefix}attribute-classes.csv",
             "vqa_questions_json": f"{prefix}vqa-questions.json",
             "vqa_annotations_json": f"{prefix}vqa-annotations.json",
             "karpathy_json": f"{prefix}karpathy.json", "nlvr2_jsonl": f"{prefix}nlvr2.jsonl"}
    paths = {"images_dir": storage.join(out_dir, "images"),
             **{k: storage.join(out_dir, v) for k, v in names.items()}}
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(storage.join(root, "images"), exist_ok=True)
    # The subset is mixed into the seed so that train and validation written with one seed
    # into one folder do not share ImageIDs (and overwrite each other's images).
    stream = [seed, zlib.crc32(subset.encode("utf-8"))]
    ids = _image_ids(np.random.default_rng(stream), n)
    counts = {"images": n, "empty": 0, "boxes": 0}
    coco_images, coco_captions, vqa_questions, vqa_annotations = [], [], [], []
    karpathy_images, scene_objects = [], []
    with fs.open(storage.join(root, names["classes_csv"]), "w", newline="") as f:
        w = _writer(f)
        w.writerow(["LabelName", "DisplayName"])
        w.writerows([LABEL_PREFIX + s, s] for s in SHAPES)
    with fs.open(storage.join(root, names["attribute_classes_csv"]), "w", newline="") as f:
        w = _writer(f)
        w.writerow(["LabelName", "DisplayName"])
        w.writerows([ATTRIBUTE_PREFIX + a, a] for a in (*PALETTE, *SIZES))
    with fs.open(storage.join(root, names["images_csv"]), "w", newline="") as fi, \
            fs.open(storage.join(root, names["boxes_csv"]), "w", newline="") as fb, \
            fs.open(storage.join(root, names["attributes_csv"]), "w", newline="") as fa:
        images_csv, boxes_csv, attributes_csv = _writer(fi), _writer(fb), _writer(fa)
        images_csv.writerow(OPENIMAGES_COLUMNS)
        boxes_csv.writerow(BOX_COLUMNS)
        attributes_csv.writerow(RELATIONSHIP_COLUMNS)
        for i, image_id in enumerate(ids):
            # One generator per image: scene i does not depend on how scenes before it drew.
            image, objects = make_scene(np.random.default_rng([*stream, i]), size, max_objects, empty_fraction)
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=95)
            data = buf.getvalue()
            with fs.open(storage.join(root, f"images/{image_id}.jpg"), "wb") as f:
                f.write(data)
            caption = caption_for(objects)
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode("ascii")
            rec = {"ImageID": image_id, "Subset": subset, "License": LICENSE, "Author": "synthetic",
                   "Title": caption, "OriginalSize": str(len(data)), "OriginalMD5": md5}
            images_csv.writerow([rec.get(c, "") for c in OPENIMAGES_COLUMNS])
            for o in objects:
                xmin, ymin, xmax, ymax = o["box"]
                coords = [repr(xmin), repr(xmax), repr(ymin), repr(ymax)]
                boxes_csv.writerow([image_id, "synthetic", o["label"], 1, *coords, 0, 0, 0, 0, 0])
                for attribute in (o["color"], o["size"]):
                    attributes_csv.writerow([image_id, o["label"], ATTRIBUTE_PREFIX + attribute, *coords, *coords, "is"])
            counts["boxes"] += len(objects)
            counts["empty"] += not objects
            coco_images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": size, "height": size,
                                "objects": [{**o, "box": list(o["box"])} for o in objects]})
            coco_captions.append({"id": i + 1, "image_id": image_id, "caption": caption})
            karpathy_images.append({"filename": f"{image_id}.jpg", "filepath": "images",
                                    "split": "train" if subset == "train" else "test", "imgid": i,
                                    "sentences": [{"raw": caption, "tokens": caption.split()}]})
            scene_objects.append(objects)
            # Its own generator: the scenes stay what they were before questions existed.
            for k, (question, answer, answer_type, question_type) in enumerate(
                    questions_for(objects, np.random.default_rng([*stream, i, 7]))):
                qid = i * 10 + k
                vqa_questions.append({"question_id": qid, "image_id": image_id, "question": question})
                vqa_annotations.append({"question_id": qid, "image_id": image_id, "answer_type": answer_type,
                                        "question_type": question_type, "multiple_choice_answer": answer,
                                        "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": a + 1}
                                                    for a in range(10)]})
    coco = {"info": {"description": "synthetic shapes", "seed": seed, "subset": subset},
            "images": coco_images, "annotations": coco_captions}
    with fs.open(storage.join(root, names["captions_json"]), "w") as f:
        json.dump(coco, f, indent=1)
    with fs.open(storage.join(root, names["vqa_questions_json"]), "w") as f:  # the VQA v2 layout
        json.dump({"info": coco["info"], "questions": vqa_questions}, f)
    with fs.open(storage.join(root, names["vqa_annotations_json"]), "w") as f:
        json.dump({"info": coco["info"], "annotations": vqa_annotations}, f)
    with fs.open(storage.join(root, names["karpathy_json"]), "w") as f:  # the Karpathy split layout
        json.dump({"images": karpathy_images, "dataset": "synthetic"}, f)
    with fs.open(storage.join(root, names["nlvr2_jsonl"]), "w") as f:  # NLVR2's fields, LXMERT's img0/img1
        for row in _nlvr2_rows(ids, scene_objects, stream, subset):
            f.write(json.dumps(row) + "\n")
    return paths, counts


PAIR_TRIES = 20  # right images tried for a set's second pair, looking for one that flips its statements


def _nlvr2_rows(ids: list[str], scene_objects: list[list[dict]], stream: list[int], subset: str) -> list[dict]:
    """Set k: scene k paired with another scene (pair 0) and statements about that pair; the same
    statements judged again on a second pair of scenes (pair 1): of PAIR_TRIES drawn pairs, the
    first that flips every statement's truth, else the one that flips most, so labels stay near
    balanced. As in NLVR2, one sentence is judged on several pairs, and the identifiers
    (split-set-pair-sentence) group them for consistency. Rows in order of their left images."""
    rows = []
    for k in range(len(ids) if len(ids) > 1 else 0):  # one scene has nothing to be paired with
        # Its own generator: the scenes and their questions stay what they were before pairs existed.
        rng = np.random.default_rng([*stream, k, 11])
        j = int(rng.integers(len(ids) - 1))
        j += j >= k  # any scene but k itself
        said = _statements(scene_objects[k], scene_objects[j], rng)
        pairs = [(k, j)]
        if len(ids) > 2 and said:
            # The second pair's own generator: the first pair's rows stay what they were before it.
            other = np.random.default_rng([*stream, k, 13])
            before = [judge(scene_objects[k], scene_objects[j]) for _, judge in said]
            best, flips = None, -1
            for _ in range(PAIR_TRIES):
                left = int(other.integers(len(ids)))
                right = int(other.integers(len(ids) - 1))
                right += right >= left
                flipped = sum(judge(scene_objects[left], scene_objects[right]) != was
                              for (_, judge), was in zip(said, before))
                if (left, right) != (k, j) and flipped > flips:
                    best, flips = (left, right), flipped
                if flips == len(said):
                    break
            if best is not None:
                pairs.append(best)
        for p, (left, right) in enumerate(pairs):
            for s, (sentence, judge) in enumerate(said):
                rows.append({"identifier": f"{subset}-{k}-{p}-{s}", "sentence": sentence,
                             "label": str(judge(scene_objects[left], scene_objects[right])),
                             "img0": ids[left], "img1": ids[right]})
    return sorted(rows, key=lambda r: r["img0"])  # stable: a left image's rows keep their order


def write_dataset(out_dir: str, n: int, *, seed: int, size: int, subset: str = "train", prefix: str = "",
                  max_objects: int = 3, empty_fraction: float = 0.1) -> dict[str, str]:
    """Write n scenes to out_dir (any fsspec URL); returns the paths written.

    Layout: images/<ImageID>.jpg (JPEG quality 95) and <prefix>images.csv (Open Images
    image manifest), <prefix>boxes.csv (Open Images boxes), <prefix>classes.csv
    (LabelName,DisplayName), <prefix>attributes.csv (each object's colour and size as Open
    Images visual relationships "is"), <prefix>attribute-classes.csv, <prefix>captions.json
    (COCO captions; each image also lists its objects with colours and sizes),
    <prefix>vqa-questions.json + <prefix>vqa-annotations.json (VQA v2 layout: counts, colours,
    shapes, positions; ten identical human answers each), <prefix>karpathy.json (the Karpathy
    split layout of image-text retrieval: each image's caption, split "train" for the train
    subset and "test" otherwise) and <prefix>nlvr2.jsonl (NLVR2 statements, official fields
    plus img0/img1 naming the two ImageIDs: set k is scene k paired with another scene of the
    subset, one or two statements about that pair, about half of them true, then the same
    statements judged on a second pair, drawn to flip their truth; identifiers "<subset>-k-<pair>-<n>", so
    NLVR2's consistency groups two pairs per sentence). `prefix` lets several subsets
    share one folder and image root, like Open Images' train-/validation- files. ImageIDs are
    16 hex digits and every file is in ImageID order (nlvr2.jsonl: of its left images). The
    same seed and subset give byte-identical files.
    """
    paths, _ = _write(out_dir, n, seed=seed, size=size, subset=subset, prefix=prefix,
                      max_objects=max_objects, empty_fraction=empty_fraction)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", required=True, help="folder or fsspec URL to write into")
    ap.add_argument("--num-images", type=int, required=True)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", default="train", help="the Subset column, e.g. train or validation")
    ap.add_argument("--prefix", default="", help="file name prefix for the CSVs and captions, e.g. 'validation-'")
    ap.add_argument("--max-objects", type=int, default=3)
    ap.add_argument("--empty-fraction", type=float, default=0.1)
    args = ap.parse_args(argv)
    try:
        paths, counts = _write(args.output, args.num_images, seed=args.seed, size=args.size, subset=args.subset,
                               prefix=args.prefix, max_objects=args.max_objects,
                               empty_fraction=args.empty_fraction)
    except ValueError as e:
        ap.error(str(e))
    print(f"wrote {counts['images']} images ({counts['empty']} empty), {counts['boxes']} boxes, "
          f"{args.size}x{args.size}, subset {args.subset!r}, seed {args.seed}:")
    for key, path in paths.items():
        print(f"  {key:14s} {path}")


if __name__ == "__main__":
    main()
