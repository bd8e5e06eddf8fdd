"""The COCO captions format: `images` (id, file_name) and `annotations` (image_id, caption)."""
from __future__ import annotations

import json
import logging

from pipelines.data import storage

log = logging.getLogger(__name__)


def read_coco_references(path: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A COCO captions file (local or any fsspec URL) -> (file_name by image id, captions by image id).

    Ids become strings (COCO's are ints). The file names cover every image in the file;
    the captions only images with at least one non-blank caption, since an image without
    references cannot be scored. Images left without captions, annotations of images the
    file does not list, and blank captions are skipped and counted in a warning.
    """
    data = json.loads(storage.read_text(path))
    missing = [k for k in ("images", "annotations") if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"{path} is not a COCO captions file: no {' or '.join(repr(k) for k in missing)} list")
    file_names: dict[str, str] = {}
    for k, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise ValueError(f"{path}: images[{k}] needs an 'id' and a 'file_name', got {str(image)[:200]}")
        image_id = str(image["id"])
        if image_id in file_names:
            raise ValueError(f"{path}: image id {image_id!r} appears more than once in 'images'")
        file_names[image_id] = image["file_name"]

    captions: dict[str, list[str]] = {}
    unknown = blank = 0
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise ValueError(f"{path}: annotations[{k}] needs an 'image_id' and a 'caption', got {str(ann)[:200]}")
        image_id = str(ann["image_id"])
        if image_id not in file_names:
            unknown += 1
        elif not isinstance(ann["caption"], str) or not ann["caption"].strip():
            blank += 1
        else:
            captions.setdefault(image_id, []).append(ann["caption"])
    uncaptioned = len(file_names) - len(captions)
    if unknown or blank or uncaptioned:
        log.warning("%s: skipped %d annotations of unknown images and %d blank captions; %d images have no caption",
                    path, unknown, blank, uncaptioned)
    return file_names, captions
