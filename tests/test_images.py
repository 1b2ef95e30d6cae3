"""The one RGB conversion of stored images (``cliplab.data.images.rgb`` / ``open_rgb``), on
real files built here: palettes with and without transparency, every alpha mode, CMYK JPEG,
other colour spaces, 16-bit and float images, EXIF orientation; and bad input as a reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliplab.data.images import WHITE, open_image, open_rgb, rgb
from cliplab.data.stream import BadSample


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def reopened(image: Image.Image, fmt: str, **options) -> Image.Image:
    """``image`` written as ``fmt`` and opened again: the mode Pillow gives a real file."""
    return Image.open(io.BytesIO(encode(image, fmt, **options)))


def half_transparent(mode: str) -> Image.Image:
    """8x8, blue on the left half, fully transparent red on the right half."""
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 4, 8))
    if mode == "LA":
        return rgba.convert("LA")
    if mode == "La":
        return rgba.convert("LA").convert("La")
    return rgba.convert(mode)


def test_palette_png_with_a_transparent_index() -> None:
    palette = half_transparent("RGBA").convert("RGB").quantize(2)
    transparent = palette.getpixel((6, 6))
    image = reopened(palette, "PNG", transparency=transparent)
    assert image.mode == "P" and image.info["transparency"] == transparent
    out = open_rgb(encode(palette, "PNG", transparency=transparent))
    assert (
        out.mode == "RGB" and out.getpixel((6, 6)) == WHITE and out.getpixel((1, 1)) == (0, 0, 255)
    )
    # without transparency a palette image is its colours
    plain = open_rgb(encode(palette, "PNG"))
    assert np.array_equal(np.asarray(plain), np.asarray(palette.convert("RGB")))


def test_palette_png_with_alpha_per_entry_and_an_rgba_palette() -> None:
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 0, 0, 255, 255], rawmode="RGBA")  # entry 0: clear
    palette.paste(1, (0, 0, 4, 8))
    assert palette.palette.mode == "RGBA" and "transparency" not in palette.info
    for image in (palette, reopened(palette, "PNG")):  # in memory, and as a PNG's tRNS bytes
        out = rgb(image)
        assert out.getpixel((6, 6)) == WHITE and out.getpixel((1, 1)) == (0, 0, 255)


@pytest.mark.parametrize("mode", ["RGBA", "RGBa", "LA", "La", "PA"])
def test_alpha_modes_are_composited_on_the_background(mode: str) -> None:
    image = half_transparent(mode)
    assert image.mode == mode
    out = rgb(image)
    assert out.mode == "RGB" and out.getpixel((6, 6)) == WHITE
    left = out.getpixel((1, 1))
    assert left == ((0, 0, 255) if mode in ("RGBA", "RGBa", "PA") else left[:1] * 3)
    assert rgb(image, (10, 20, 30)).getpixel((6, 6)) == (10, 20, 30)
    if mode in ("RGBA", "LA"):  # and as they come out of a real PNG
        assert open_rgb(encode(image, "PNG")).getpixel((6, 6)) == WHITE


def test_background_none_drops_the_alpha() -> None:
    out = rgb(half_transparent("RGBA"), None)
    assert out.getpixel((6, 6)) == (255, 0, 0)


def test_cmyk_jpeg_and_other_colour_spaces() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in ink
    image = reopened(cmyk, "JPEG", quality=95)
    assert image.mode == "CMYK"
    red = np.asarray(open_rgb(encode(cmyk, "JPEG", quality=95))).reshape(-1, 3).mean(0)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    source = Image.new("RGB", (4, 4), (200, 120, 40))
    for mode in ("YCbCr", "LAB", "HSV"):
        converted = (
            source.convert(mode) if mode != "LAB" else Image.new("LAB", (4, 4), (60, 150, 170))
        )
        out = rgb(converted)
        assert out.mode == "RGB"
        assert np.array_equal(np.asarray(out), np.asarray(converted.convert("RGB"))), mode
    assert np.abs(np.asarray(rgb(source.convert("HSV")), np.int16) - (200, 120, 40)).max() <= 3


def test_sixteen_bit_png_is_rescaled_not_clipped_to_white() -> None:
    levels = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    data = encode(Image.fromarray(levels), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert np.asarray(open_rgb(data))[0, :, 0].tolist() == [0, 1, 128, 255]
    # a tRNS value in a 16-bit gray PNG marks transparent pixels
    keyed = encode(Image.fromarray(levels), "PNG", transparency=257)
    assert Image.open(io.BytesIO(keyed)).info["transparency"] == 257
    assert np.asarray(open_rgb(keyed))[0, :, 0].tolist() == [0, 255, 128, 255]


def test_int_and_float_images_are_rescaled() -> None:
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0, 3.0]], dtype=np.float32))
    assert np.asarray(open_rgb(encode(floats, "TIFF")))[0, :, 0].tolist() == [0, 128, 255, 255]
    ints = Image.fromarray(np.array([[0, 32768, 65535, 90000]], dtype=np.int32))
    assert np.asarray(rgb(ints))[0, :, 0].tolist() == [0, 128, 255, 255]


def test_exif_orientation_is_applied_once() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 8, 8))  # a white mark top left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: show it rotated 90 degrees clockwise
    data = encode(image, "JPEG", quality=95, exif=exif.tobytes())
    upright = open_rgb(data)
    assert upright.size == (20, 40)
    assert upright.getpixel((16, 3))[0] > 200 and upright.getpixel((3, 3))[0] < 50  # top right
    assert rgb(upright).size == (20, 40)  # the tag is gone: a second pass turns nothing
    assert rgb(open_image(data), exif_transpose=False).size == (40, 20)


def test_opens_bytes_files_and_images_or_says_why_not(tmp_path: Path) -> None:
    data = encode(half_transparent("RGBA"), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    (tmp_path / "notes.png").write_text("not an image")
    for item in (data, tmp_path / "a.png", str(tmp_path / "a.png"), Image.open(io.BytesIO(data))):
        assert open_rgb(item).getpixel((6, 6)) == WHITE
    assert open_image(tmp_path / "a.png").mode == "RGBA"  # the model's preprocessing converts
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    photo = encode(Image.fromarray(noise), "PNG")
    for item, reason in (
        (tmp_path / "missing.png", "missing-file"),
        (tmp_path, "unreadable-file"),
        (tmp_path / "notes.png", "not-an-image"),
        (photo[: len(photo) // 2], "truncated-image"),
        (b"", "zero-bytes"),
    ):
        with pytest.raises(BadSample) as info:
            open_rgb(item)
        assert info.value.reason == reason, item
