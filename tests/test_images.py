import numpy as np
import pytest
from PIL import Image

from pipelines.data import images
from tests import imagegen


@pytest.mark.parametrize("name", sorted(imagegen.cases()))
def test_every_mode_decodes_to_rgb(name):
    data = imagegen.cases()[name]
    out = images.decode_image(data, target_size=None)
    assert out.pixels.dtype == np.uint8 and out.pixels.ndim == 3 and out.pixels.shape[2] == 3
    assert (out.height, out.width) == out.pixels.shape[:2]
    assert out.sha256 == images.sha256_hex(data)


def test_alpha_is_composited_over_white():
    out = images.decode_image(imagegen.cases()["rgba_png"], target_size=None)
    assert out.pixels.min() == 255  # fully transparent picture -> white, not black


def test_animation_uses_first_frame():
    out = images.decode_image(imagegen.cases()["animated_gif"], target_size=None)
    r, g, b = out.pixels[5, 5]
    assert r > 200 and b < 50  # the red frame, not the blue one


def test_16_bit_gray_is_rescaled_not_clipped():
    out = images.decode_image(imagegen.cases()["gray16_png"], target_size=None)
    gray = out.pixels[..., 0]
    assert gray.max() > 200 and len(np.unique(gray)) > 50  # clipping at 255 would flatten it


@pytest.mark.parametrize("name", sorted(imagegen.broken()))
def test_broken_inputs_raise_image_error(name):
    data, reason = imagegen.broken()[name]
    with pytest.raises(images.ImageError) as e:
        images.decode_image(data)
    assert e.value.reason == reason
    assert str(e.value)


def test_bomb_is_rejected_from_the_header_alone():
    with pytest.raises(images.ImageError, match="exceeds the limit") as e:
        images.decode_image(imagegen.png_bomb(12_000, 12_000), max_pixels=10_000_000)
    assert e.value.reason == "TooManyPixels"


def test_pixel_limit_is_configurable():
    data = imagegen.jpeg(100, 100)
    with pytest.raises(images.ImageError) as e:
        images.decode_image(data, max_pixels=9_999)
    assert e.value.reason == "TooManyPixels"
    assert images.decode_image(data, max_pixels=10_000).width == 100


def _left_is_dark(px: np.ndarray) -> bool:
    return px[:, : px.shape[1] // 4, 0].mean() < px[:, -px.shape[1] // 4:, 0].mean()


def test_exif_orientation_is_applied_and_size_is_after_orientation():
    # Stored 64x48 with orientation 6 (display = rotate 90 clockwise): shown as 48x64.
    out = images.decode_image(imagegen.jpeg(64, 48, exif_orientation=6), target_size=None)
    assert (out.width, out.height) == (48, 64)
    assert out.pixels.shape[:2] == (64, 48)
    # the stored left edge (dark red) ends up on top after a clockwise turn
    assert out.pixels[:8, :, 0].mean() < out.pixels[-8:, :, 0].mean()


def test_manifest_rotation_wins_over_exif_never_both():
    data = imagegen.jpeg(64, 48, exif_orientation=6)
    out = images.decode_image(data, rotation=0, target_size=None)
    assert (out.width, out.height) == (64, 48)  # EXIF ignored
    assert _left_is_dark(out.pixels)
    out = images.decode_image(data, rotation=180, target_size=None)
    assert (out.width, out.height) == (64, 48) and not _left_is_dark(out.pixels)
    out = images.decode_image(data, rotation=90, target_size=None)  # counter-clockwise
    assert (out.width, out.height) == (48, 64)
    assert out.pixels[-8:, :, 0].mean() < out.pixels[:8, :, 0].mean()  # left edge went to the bottom


def test_target_size_downscales_but_keeps_full_resolution_size():
    data = imagegen.jpeg(1600, 1200)
    out = images.decode_image(data, target_size=300)
    assert (out.width, out.height) == (1600, 1200)
    assert min(out.pixels.shape[:2]) == 300
    small = images.decode_image(imagegen.jpeg(100, 80), target_size=300)
    assert small.pixels.shape[:2] == (80, 100)  # never upscaled


def test_extreme_aspect_ratio_stays_bounded():
    data = imagegen.encode(Image.new("RGB", (20000, 400), "red"), "PNG")
    out = images.decode_image(data, target_size=100)
    assert max(out.pixels.shape[:2]) <= 400 and out.width == 20000


@pytest.mark.parametrize("value,expected", [(None, None), ("", None), ("  ", None), ("nan", None), ("0", 0),
                                            ("90.0", 90), (180, 180), ("270", 270), ("-90", 270), ("360", 0)])
def test_parse_rotation(value, expected):
    assert images.parse_rotation(value) == expected


@pytest.mark.parametrize("value", ["45", "abc", "90.5"])
def test_parse_rotation_rejects_bad_values(value):
    with pytest.raises(ValueError, match="Rotation"):
        images.parse_rotation(value)
