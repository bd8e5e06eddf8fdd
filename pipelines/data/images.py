"""Image decoding and validation: the one decoder every job uses.

Bytes in, an RGB uint8 array out, plus the facts a labels row records (full-resolution
size after orientation, sha256 of the bytes). Every way an image can be bad ends as an
`ImageError` with a short reason, never as a crash or a half-decoded picture.
"""
from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# 89 Mpx is PIL's own warning threshold; Open Images originals stay well below it.
DEFAULT_MAX_PIXELS = 89_478_485
ROTATIONS = (0, 90, 180, 270)
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the picture a quarter


class ImageError(ValueError):
    """An image that cannot be used; `reason` is a stable, short error type."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (H, W, 3) uint8, oriented, possibly downscaled for the teachers
    width: int  # full resolution, after orientation
    height: int
    sha256: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_rotation(value: object) -> int | None:
    """Open Images `Rotation` (counter-clockwise degrees) -> 0/90/180/270, None when empty."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or text.lower() == "nan":
        return None
    try:
        degrees = float(text)
    except ValueError as e:
        raise ValueError(f"Rotation {text!r} is not a number") from e
    if not math.isfinite(degrees) or degrees != int(degrees) or int(degrees) % 360 not in ROTATIONS:
        raise ValueError(f"Rotation {text!r} is not a multiple of 90 degrees")
    return int(degrees) % 360


def decode_image(
    data: bytes,
    *,
    rotation: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    target_size: int | None = 512,
) -> DecodedImage:
    """Decode `data` into an oriented RGB array.

    rotation: counter-clockwise degrees from the manifest; when given, EXIF orientation
        is ignored (never both).
    max_pixels: images with more pixels are rejected from the header, before decoding.
    target_size: the teachers' working size. JPEGs are decoded in draft mode at the
        smallest scale that keeps the shorter side >= target_size, and the result is
        downscaled to that shorter side, the longer side capped at 4x target_size so
        extreme aspect ratios stay small (None keeps full resolution).
    """
    if not data:
        raise ImageError("EmptyFile", "the file is empty (0 bytes)")
    digest = sha256_hex(data)
    try:
        with warnings.catch_warnings():
            # We apply our own pixel limit below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # PIL's own hard limit (2x its warning threshold)
        raise ImageError("TooManyPixels", str(e)) from e
    except UnidentifiedImageError as e:
        head = data[:64].lstrip().lower()
        kind = "HTML page" if head.startswith((b"<!doctype html", b"<html")) else "not a recognised image format"
        raise ImageError("NotAnImage", f"{kind} ({len(data)} bytes)") from e
    except Exception as e:  # PIL raises assorted errors on corrupt headers
        raise ImageError("CorruptImage", f"{type(e).__name__}: {e}") from e

    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError("CorruptImage", f"image has size {w}x{h}")
    if w * h > max_pixels:
        raise ImageError("TooManyPixels", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")

    exif_orientation = 1
    if rotation is None:
        try:
            exif_orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1))
        except Exception:  # a broken EXIF block must not sink a readable picture
            exif_orientation = 1
    quarter = (rotation in (90, 270)) if rotation is not None else exif_orientation in _SWAPS_AXES
    full_w, full_h = (h, w) if quarter else (w, h)

    try:
        if target_size and img.format == "JPEG":
            img.draft("RGB", (target_size, target_size))
        img.seek(0)  # first frame of animations
        img.load()
        rgb = _to_rgb(img)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError("CorruptImage", f"{type(e).__name__}: {e}") from e

    if rotation is not None:
        if rotation:
            rgb = rgb.rotate(rotation, expand=True)  # PIL rotates counter-clockwise
    elif exif_orientation != 1:
        rgb = _exif_transpose(rgb, exif_orientation)

    if target_size:
        rgb = _shrink(rgb, target_size)
    # np.array copies: PIL-backed arrays are read-only and torch warns on those.
    return DecodedImage(pixels=np.array(rgb, dtype=np.uint8), width=full_w, height=full_h, sha256=digest)


def _exif_transpose(img: Image.Image, orientation: int) -> Image.Image:
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return img.transpose(method) if method is not None else img


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # PIL's convert("L") clips 16-bit values at 255; rescale to the real range instead.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if mode.startswith("I;16") else (float(arr.min()), float(arr.max()))
        if mode == "I" and hi <= 255 and lo >= 0:
            lo, hi = 0.0, 255.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _shrink(img: Image.Image, target: int) -> Image.Image:
    """Downscale so the shorter side is `target` (the longer at most 4x that), never upscale."""
    w, h = img.size
    scale = min(target / min(w, h), 4 * target / max(w, h))
    if scale >= 1:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
