"""Image files made in tests: every mode the decoder must handle, and broken ones."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def gradient(w: int, h: int) -> np.ndarray:
    """(h, w, 3) uint8 with distinct left/right and top/bottom colours, to check orientation."""
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.full((h, w, 1), 60.0)], axis=2).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(w=64, h=48, exif_orientation: int | None = None, quality=90) -> bytes:
    img = Image.fromarray(gradient(w, h))
    kw = {"quality": quality}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    return encode(img, "JPEG", **kw)


def png_bomb(w=100_000, h=100_000) -> bytes:
    """A valid PNG header claiming w x h pixels, with (almost) no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def cases() -> dict[str, bytes]:
    """name -> bytes for every readable kind of image the decoder must turn into RGB."""
    rgb = Image.fromarray(gradient(40, 30))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.new("L", rgb.size, 0))  # fully transparent -> white
    frames = [Image.new("RGB", (20, 10), c) for c in ("red", "blue")]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    i16 = Image.fromarray((np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50).astype(np.uint16))
    return {
        "rgb_jpeg": encode(rgb, "JPEG"),
        "gray_png": encode(rgb.convert("L"), "PNG"),
        "bilevel_png": encode(rgb.convert("1"), "PNG"),
        "gray16_png": encode(i16, "PNG"),
        "cmyk_jpeg": encode(rgb.convert("CMYK"), "JPEG"),
        "palette_png": encode(rgb.convert("P"), "PNG"),
        "palette_transparent_gif": encode(rgba.convert("P"), "GIF", transparency=0),
        "rgba_png": encode(rgba, "PNG"),
        "la_png": encode(rgba.convert("LA"), "PNG"),
        "animated_gif": anim.getvalue(),
        "webp": encode(rgb, "WEBP"),
        "tiff": encode(rgb, "TIFF"),
        "bmp": encode(rgb, "BMP"),
        "one_pixel_png": encode(Image.new("RGB", (1, 1), "green"), "PNG"),
        "extreme_aspect_png": encode(Image.new("RGB", (3000, 2), "blue"), "PNG"),
    }


def broken() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected ImageError reason)."""
    good = jpeg(200, 150)
    return {
        "empty": (b"", "EmptyFile"),
        "text": (b"just some text, not an image\n" * 4, "NotAnImage"),
        "html": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "NotAnImage"),
        "truncated_jpeg": (good[: len(good) // 2], "CorruptImage"),
        "png_bomb": (png_bomb(), "TooManyPixels"),
    }
