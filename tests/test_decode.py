"""The sample decoder: every reason it rejects for, captions (txt, json, lists drawn per epoch,
hooks, truncation), transparency, EXIF orientation, and draft-mode JPEG decoding that stays
close to a full decode."""

from __future__ import annotations

import io
import pickle
import random
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from cliplab.data.decode import (
    DEFAULT_MAX_CAPTION_CHARS,
    REASONS,
    ImageDecoder,
    error_sample,
)
from cliplab.data.images import decode_image, probe_image
from cliplab.data.stream import BadSample, RawSample


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: compresses and decodes like a photo, not like flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 200, y / height * 200, (x + y) / (width + height) * 255], axis=-1)
    noise = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` in its header and holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


JPEG = encode(photo(64, 48), "JPEG", quality=90)


def sample(**members: bytes) -> RawSample:
    return RawSample("k", dict(members), source="test")


def reason_of(raw: RawSample, **options) -> str:
    with pytest.raises(BadSample) as info:
        ImageDecoder(**options)(raw, random.Random(0))
    return info.value.reason


@pytest.mark.parametrize(
    ("raw", "options", "reason"),
    [
        (sample(txt=b"no image here"), {}, "no-image"),
        (sample(jpg=b"", txt=b"x"), {}, "zero-bytes"),
        (sample(png=b"just some text, renamed .png\n" * 4, txt=b"x"), {}, "not-an-image"),
        (sample(jpg=bytes(range(256)) * 4, txt=b"x"), {}, "not-an-image"),
        (sample(jpg=JPEG[: len(JPEG) // 2], txt=b"x"), {}, "truncated-image"),
        (sample(png=encode(photo(64, 48), "PNG")[:3000], txt=b"x"), {}, "truncated-image"),
        (sample(png=png_header(50_000, 50_000), txt=b"x"), {}, "decompression-bomb"),
        (sample(png=png_header(12_000, 12_000), txt=b"x"), {}, "decompression-bomb"),
        (sample(jpg=JPEG, txt=b"x"), {"max_pixels": 1000}, "decompression-bomb"),
        (sample(png=encode(Image.new("L", (1, 20_000)), "PNG"), txt=b"x"), {}, "bad-aspect-ratio"),
        (sample(png=encode(Image.new("L", (300, 20)), "PNG"), txt=b"x"), {}, "bad-aspect-ratio"),
        (sample(png=encode(Image.new("L", (4, 4)), "PNG"), txt=b"x"), {}, "too-small"),
        (sample(jpg=JPEG, txt=b"x"), {"min_size": 100}, "too-small"),
        (sample(jpg=JPEG), {}, "missing-caption"),
        (sample(jpg=JPEG, json=b'{"url": "http://x"}'), {}, "missing-caption"),
        (sample(jpg=JPEG, txt=b""), {}, "empty-caption"),
        (sample(jpg=JPEG, txt=b" \n\t "), {}, "empty-caption"),
        (sample(jpg=JPEG, json=b'{"captions": ["", "  "]}'), {}, "empty-caption"),
        (sample(jpg=JPEG, txt=b"caf\xe9 latt\xe9"), {}, "non-utf8-caption"),
        (sample(jpg=JPEG, json=b'{"caption": '), {}, "malformed-json"),
        (error_sample("k", "missing-file", "test", "/no/such.jpg"), {}, "missing-file"),
        (error_sample("k", "malformed-member"), {}, "malformed-member"),
    ],
)
def test_rejects_with_the_right_reason(raw: RawSample, options: dict, reason: str) -> None:
    assert reason_of(raw, **options) == reason


def test_reasons_are_listed() -> None:
    assert {
        "no-image",
        "zero-bytes",
        "not-an-image",
        "truncated-image",
        "decompression-bomb",
    } <= set(REASONS)


def test_corrupt_pixel_data() -> None:
    data = bytearray(encode(photo(64, 48), "PNG"))
    data[200:260] = bytes(60)  # inside the compressed IDAT stream
    assert reason_of(sample(png=bytes(data), txt=b"x")) in {"corrupt-image", "truncated-image"}


def test_bomb_is_caught_from_the_header_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any DecompressionBombWarning would fail the test
        assert reason_of(sample(png=png_header(12_000, 12_000), txt=b"x")) == "decompression-bomb"
        with pytest.raises(BadSample, match="decompression-bomb"):
            probe_image(png_header(50_000, 50_000))


def test_decodes_formats_to_rgb() -> None:
    image = photo(40, 30)
    for fmt, ext in [
        ("JPEG", "jpg"),
        ("PNG", "png"),
        ("WEBP", "webp"),
        ("GIF", "gif"),
        ("BMP", "bmp"),
        ("TIFF", "tif"),
    ]:
        decoded, caption = ImageDecoder()(
            sample(**{ext: encode(image, fmt), "txt": b" a cat \n"}), random.Random(0)
        )
        assert decoded.mode == "RGB" and decoded.size == (40, 30) and caption == "a cat", fmt
    assert probe_image(encode(image, "PNG")) == ("PNG", 40, 30)


def test_draft_mode_downscales_jpeg_close_to_a_full_decode() -> None:
    big = photo(1600, 1200, seed=1)
    data = encode(big, "JPEG", quality=92)
    fast = decode_image(data, image_size=224)
    assert fast.size == (298, 224)
    reference = (
        Image.open(io.BytesIO(data)).convert("RGB").resize((298, 224), Image.Resampling.BICUBIC)
    )
    diff = np.abs(np.asarray(fast, dtype=np.float32) - np.asarray(reference, dtype=np.float32))
    assert diff.mean() < 4.0  # same picture; draft (DCT scaling) differs from bicubic only slightly
    # draft really was used: Pillow decoded at a power-of-two reduction, not full size
    opened = Image.open(io.BytesIO(data))
    opened.draft("RGB", (224, 224))
    assert opened.size == (400, 300)


def test_small_images_are_not_upscaled_and_non_jpeg_is_resized_once() -> None:
    assert decode_image(encode(photo(100, 80), "JPEG"), image_size=224).size == (100, 80)
    assert decode_image(encode(photo(900, 600), "PNG"), image_size=224).size == (336, 224)


def test_transparency_is_composited_onto_the_background() -> None:
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 20))
    data = encode(rgba, "PNG")
    image = decode_image(data)
    assert image.getpixel((15, 5)) == (255, 255, 255) and image.getpixel((5, 5)) == (0, 0, 255)
    assert decode_image(data, background=(0, 0, 0)).getpixel((15, 5)) == (0, 0, 0)
    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((15, 5))
    assert decode_image(encode(palette, "PNG", transparency=palette.getpixel((15, 5)))).getpixel(
        (15, 5)
    ) == (255, 255, 255)
    la = Image.new("LA", (20, 20), (0, 0))
    assert decode_image(encode(la, "PNG")).getpixel((3, 3)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    image = photo(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(image, "JPEG", exif=exif.tobytes())
    assert decode_image(data).size == (20, 40)
    assert decode_image(data, exif_transpose=False).size == (40, 20)


def test_sixteen_bit_images_are_rescaled_not_clipped() -> None:
    array = np.full((16, 16), 32768, dtype=np.uint16)
    data = encode(Image.fromarray(array), "PNG")
    assert decode_image(data).getpixel((0, 0)) == (128, 128, 128)


def test_json_captions_are_drawn_afresh_per_rng() -> None:
    raw = sample(jpg=JPEG, json=b'{"captions": ["a dog", "a puppy", "", "a small dog", 3]}')
    picks = {ImageDecoder()(raw, random.Random(seed))[1] for seed in range(40)}
    assert picks == {"a dog", "a puppy", "a small dog"}
    assert ImageDecoder()(raw, random.Random(5))[1] == ImageDecoder()(raw, random.Random(5))[1]
    assert (
        ImageDecoder()(sample(jpg=JPEG, json='{"caption": " a café "}'.encode()), random.Random(0))[
            1
        ]
        == "a café"
    )


def test_txt_wins_over_json_and_bom_is_dropped() -> None:
    raw = sample(jpg=JPEG, txt="\ufeffhello".encode(), json=b'{"caption": "other"}')
    assert ImageDecoder()(raw, random.Random(0))[1] == "hello"


def template_caption(raw: RawSample, rng: random.Random) -> str:
    """A builder's hook: a caption from metadata through a template (module level: picklable)."""
    import json

    name = json.loads(raw.members["json"])["name"]
    return rng.choice(["a photo of a {}.", "a {} emoji."]).format(name)


def test_caption_fn_hook_and_pickling() -> None:
    decoder = pickle.loads(pickle.dumps(ImageDecoder(image_size=32, caption_fn=template_caption)))
    raw = sample(png=encode(photo(40, 40), "PNG"), json=b'{"name": "cat face"}')
    captions = {decoder(raw, random.Random(seed))[1] for seed in range(20)}
    assert captions == {"a photo of a cat face.", "a cat face emoji."}
    with pytest.raises(BadSample, match="empty-caption"):
        ImageDecoder(caption_fn=lambda s, r: "  ")(raw, random.Random(0))


def test_long_captions_are_cut_at_a_word_boundary() -> None:
    huge = ("word " * 250_000).encode()  # 1.25 MB
    image, caption = ImageDecoder()(sample(jpg=JPEG, txt=huge), random.Random(0))
    assert len(caption) <= DEFAULT_MAX_CAPTION_CHARS and caption.endswith("word")
    unbroken = b"x" * 5000
    assert (
        len(ImageDecoder(max_caption_chars=50)(sample(jpg=JPEG, txt=unbroken), random.Random(0))[1])
        == 50
    )
    assert (
        len(
            ImageDecoder(max_caption_chars=None)(sample(jpg=JPEG, txt=unbroken), random.Random(0))[
                1
            ]
        )
        == 5000
    )


def test_decoder_resizes_to_the_shorter_side() -> None:
    decoder = ImageDecoder(image_size=24, background=None)
    image, caption = decoder(sample(jpg=JPEG, txt=b"x"), random.Random(0))
    assert image.size == (32, 24) and caption == "x"


@pytest.mark.parametrize("error", [MemoryError, KeyboardInterrupt])
def test_fatal_errors_are_not_swallowed(
    monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    def boom(*args, **kwargs):
        raise error()

    monkeypatch.setattr(Image, "open", boom)
    with pytest.raises(error):
        ImageDecoder()(sample(jpg=JPEG, txt=b"x"), random.Random(0))


def test_bad_options() -> None:
    for options in ({"image_size": 0}, {"max_aspect": 0.5}, {"max_caption_chars": 0}):
        with pytest.raises(ValueError):
            ImageDecoder(**options)


def test_formats_are_restricted_to_web_formats_by_default() -> None:
    tga = encode(photo(16, 16), "TGA")  # TGA has no real signature: random bytes can pass as one
    assert reason_of(sample(img=tga, txt=b"x")) == "not-an-image"
    assert ImageDecoder(formats=None)(sample(img=tga, txt=b"x"), random.Random(0))[0].size == (
        16,
        16,
    )
    assert ImageDecoder(formats=["tga"])(sample(img=tga, txt=b"x"), random.Random(0))[0].size == (
        16,
        16,
    )
    with pytest.raises(ValueError, match="NOPE"):
        ImageDecoder(formats=["JPEG", "nope"])
