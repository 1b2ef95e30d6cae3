"""Raw sample -> (RGB PIL image, caption), rejecting every bad input with a counted reason.

``ImageDecoder(...)`` is the ``decode(sample, rng)`` callable that ``ImageTextStream`` calls in
its workers (picklable; any ``caption_fn`` must be a module-level function). It never lets a
bad sample through and never crashes on one: every problem raises ``BadSample(reason)``, which
the stream counts and skips. Checks run cheapest first, so the reason of a sample with several
problems is the first of:

1. structure: an error record from the source (``missing-file``, ``unreadable-file``,
   ``malformed-member``, ``truncated-tar``, ``duplicate-key``, ``unreadable-shard``),
   ``no-image``, ``zero-bytes``;
2. caption: ``non-utf8-caption``, ``malformed-json``, ``missing-caption``, ``empty-caption``;
3. image header: ``not-an-image`` (also any format outside ``formats``, by default the web's
   formats: JPEG, PNG, WebP, GIF, BMP, TIFF, PPM, ICO, AVIF), ``truncated-image`` (data ends
   inside the header),
   ``decompression-bomb`` (width x height above ``max_pixels``, read from the header before
   any pixel is decoded), ``bad-aspect-ratio``, ``too-small``;
4. pixels: ``truncated-image``, ``corrupt-image``.

Speed: when ``image_size`` is given, JPEGs are decoded in draft mode (libjpeg's DCT scaling by
1/2, 1/4 or 1/8, chosen so both sides stay >= ``image_size``: no detail the model could see is
lost) and then resized once, shortest side to ``image_size``. Transparent images are
composited onto ``background`` (white by default) rather than having their alpha dropped.
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import struct
import warnings
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence

from PIL import Image, UnidentifiedImageError

from cliplab.data.stream import BadSample, RawSample
from cliplab.transforms import resized_output_size, to_rgb

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_MAX_CAPTION_CHARS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIZE",
    "ERROR_MEMBER",
    "IMAGE_EXTS",
    "REASONS",
    "ImageDecoder",
    "decode_caption",
    "decode_image",
    "decode_sample",
    "error_sample",
    "image_member",
    "load_image",
    "probe_image",
    "read_image_file",
]

#: Member extensions read as the image, in order of preference (webdataset/img2dataset names;
#: ``img`` is what manifests use for a file whose type neither its suffix nor its bytes tell).
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "img")
#: A member that marks a raw sample as bad at the source (its value is the reason, UTF-8).
#: Sources emit such records instead of raising, so the loader counts them like any bad sample.
ERROR_MEMBER = "__error__"
#: Image formats the decoder opens (Pillow names; camera JPEGs that Pillow reports as ``MPO``
#: open through ``JPEG``). Web data needs no more, and formats with weak signatures (TGA,
#: PCX...) would let random bytes pass as images; ``formats=None`` allows all of Pillow's.
#: Formats this Pillow build lacks (AVIF in older builds) are left out of the default.
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "ICO", "AVIF")
#: Pillow's own warning threshold (about 9459 x 9459): far above any useful training image.
DEFAULT_MAX_PIXELS = 89_478_485
#: Longer side / shorter side; banners (728x90 is 8.1) pass, 1x20000 strips do not.
DEFAULT_MAX_ASPECT = 10.0
#: Shorter side in pixels; drops tracking pixels and spacer GIFs.
DEFAULT_MIN_SIZE = 8
#: Captions are cut (at a word boundary) to this many characters before tokenization: far
#: more than a 77-token context holds, and it keeps a 1 MB "caption" from costing seconds.
DEFAULT_MAX_CAPTION_CHARS = 1000

#: Every reason this module raises (sources add their own error-record reasons).
REASONS = (
    "no-image",
    "zero-bytes",
    "non-utf8-caption",
    "malformed-json",
    "missing-caption",
    "empty-caption",
    "not-an-image",
    "truncated-image",
    "decompression-bomb",
    "bad-aspect-ratio",
    "too-small",
    "corrupt-image",
)

#: What Pillow's decoders raise on hostile bytes. Deliberately not ``Exception``: a
#: MemoryError or a bug in our own code must surface, not be counted as a bad image.
_PIL_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,  # several plugins signal malformed headers this way
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    NotImplementedError,
    Image.DecompressionBombError,
)

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

CaptionFn = Callable[[RawSample, random.Random], str]


def error_sample(key: str, reason: str, source: str = "", detail: str = "") -> RawSample:
    """A raw record that the decoder rejects as ``reason``: how sources report bad input
    (a missing file, a malformed tar member) without raising inside ``iter_raw``."""
    text = f"{reason}\n{detail}" if detail else reason
    return RawSample(
        key=key, members={ERROR_MEMBER: text.encode("utf-8", "replace")}, source=source
    )


def image_member(members: Mapping[str, bytes]) -> str | None:
    """The extension of the member holding the image (first of ``IMAGE_EXTS``), or None."""
    for ext in IMAGE_EXTS:
        if ext in members:
            return ext
    return None


def _looks_truncated(error: BaseException) -> bool:
    return isinstance(error, EOFError) or "truncat" in str(error).lower()


def _check_size(
    width: int, height: int, max_pixels: int | None, max_aspect: float | None, min_size: int
) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise BadSample("decompression-bomb", f"{width}x{height} is over {max_pixels} pixels")
    short, long = min(width, height), max(width, height)
    if max_aspect is not None and short > 0 and long / short > max_aspect:
        raise BadSample("bad-aspect-ratio", f"{width}x{height}")
    if short < max(1, min_size):
        raise BadSample("too-small", f"{width}x{height}")


def decode_image(
    data: bytes,
    *,
    image_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
    min_size: int = DEFAULT_MIN_SIZE,
    background: tuple[int, int, int] | None = (255, 255, 255),
    exif_transpose: bool = True,
    formats: Sequence[str] | None = DEFAULT_FORMATS,
) -> Image.Image:
    """Image bytes -> RGB PIL image, or ``BadSample`` (see the module docstring for reasons).

    With ``image_size``, the result's shorter side is ``image_size`` (images already smaller
    are left as they are; the transform upsamples them). ``max_pixels`` is checked from the
    header, before decoding; Pillow's global ``Image.MAX_IMAGE_PIXELS`` still applies on top
    (raise it if you set ``max_pixels`` above twice its value).
    """
    if not data:
        raise BadSample("zero-bytes")
    with warnings.catch_warnings():
        # Broken files make Pillow warn (corrupt EXIF, odd TIFF tags, its own bomb warning):
        # the outcome is counted instead, and our pixel limit never relies on a warning.
        warnings.simplefilter("ignore")
        allowed = tuple(formats) if formats is not None else None
        return _decode_image(
            data, image_size, max_pixels, max_aspect, min_size, background, exif_transpose, allowed
        )


@functools.lru_cache(maxsize=16)
def _usable_formats(formats: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``formats`` checked against Pillow's plugins, once: a typo must fail loudly, not turn
    every image into ``not-an-image``. The default set drops what this build lacks."""
    if formats is None:
        return None
    Image.init()
    upper = tuple(f.upper() for f in formats)
    if formats == DEFAULT_FORMATS:
        return tuple(f for f in upper if f in Image.OPEN)
    unknown = [f for f in upper if f not in Image.OPEN]
    if unknown:
        raise ValueError(
            f"Pillow cannot open image formats {unknown}; it knows {sorted(Image.OPEN)}"
        )
    return upper


def _open_checked(
    data: bytes,
    max_pixels: int | None,
    max_aspect: float | None,
    min_size: int,
    formats: tuple[str, ...] | None,
) -> Image.Image:
    """Open (header only) and check the size; BadSample for anything unusable."""
    if not data:
        raise BadSample("zero-bytes")
    allowed = _usable_formats(formats)  # outside the try: a bad name is our error, not the data's
    try:
        image = Image.open(io.BytesIO(data), formats=allowed)
    except Image.DecompressionBombError as e:
        raise BadSample("decompression-bomb", str(e)) from None
    except UnidentifiedImageError:
        raise BadSample("not-an-image") from None
    except _PIL_ERRORS as e:
        raise BadSample(
            "truncated-image" if _looks_truncated(e) else "not-an-image", str(e)
        ) from None
    try:
        _check_size(image.width, image.height, max_pixels, max_aspect, min_size)
    except BadSample:
        image.close()
        raise
    return image


def probe_image(
    data: bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
    min_size: int = DEFAULT_MIN_SIZE,
    formats: Sequence[str] | None = DEFAULT_FORMATS,
) -> tuple[str, int, int]:
    """``(format, width, height)`` from the header alone (no pixel is decoded), or the
    header-level ``BadSample``: cheap enough to survey a whole dataset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        allowed = tuple(formats) if formats is not None else None
        image = _open_checked(data, max_pixels, max_aspect, min_size, allowed)
    image.close()
    return str(image.format), image.width, image.height


def load_image(
    data: bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] | None = DEFAULT_FORMATS,
) -> Image.Image:
    """Image bytes -> a loaded PIL image in its own mode (no conversion, no resizing), or
    ``BadSample`` with the same reasons as :func:`decode_image` (no aspect or minimum-size
    rule: for images a user asks about, not training data). For callers whose own transform
    handles the modes, such as the evaluation and classification preprocessing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        allowed = tuple(formats) if formats is not None else None
        image = _open_checked(data, max_pixels, None, 1, allowed)
        try:
            image.load()
        except _PIL_ERRORS as e:
            image.close()
            raise BadSample(
                "truncated-image" if _looks_truncated(e) else "corrupt-image", str(e)
            ) from None
    return image


def read_image_file(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """A loaded image from a file (a local path or a URL: ``cliplab.data.storage``), or
    ``BadSample``: ``missing-file``, ``unreadable-file`` (a directory, no permission, a
    connection that failed every retry) or any reason of :func:`load_image`."""
    from cliplab.data import storage

    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise BadSample("missing-file", str(path)) from None
    except (OSError, ImportError) as e:
        raise BadSample("unreadable-file", f"{path}: {getattr(e, 'strerror', None) or e}") from None
    return load_image(data, max_pixels=max_pixels)


def _decode_image(
    data: bytes,
    image_size: int | None,
    max_pixels: int | None,
    max_aspect: float | None,
    min_size: int,
    background: tuple[int, int, int] | None,
    exif_transpose: bool,
    formats: tuple[str, ...] | None,
) -> Image.Image:
    opened = image = _open_checked(data, max_pixels, max_aspect, min_size, formats)
    try:
        if image_size is not None and image.format == "JPEG":
            # DCT-domain downscaling by a power of two; keeps both sides >= image_size
            image.draft("RGB", (image_size, image_size))
        image.load()
        if exif_transpose:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            if orientation in _TRANSPOSE:
                image = image.transpose(_TRANSPOSE[orientation])
        rgb = to_rgb(image, background, rescale_high_bit_depth=True)
        if image_size is not None and min(rgb.size) > image_size:
            new_h, new_w = resized_output_size(rgb.height, rgb.width, image_size)
            rgb = rgb.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    except _PIL_ERRORS as e:
        opened.close()
        raise BadSample(
            "truncated-image" if _looks_truncated(e) else "corrupt-image", str(e)
        ) from None
    if rgb is not opened:
        opened.close()  # frees the decoded pixels now rather than at garbage collection
    return rgb


def _clean_caption(text: str, max_chars: int | None) -> str:
    text = text.strip().lstrip("\ufeff").strip()
    if not text:
        raise BadSample("empty-caption")
    if max_chars is not None and len(text) > max_chars:
        cut = text[:max_chars]
        space = cut.rfind(" ")
        text = cut[:space] if space > max_chars // 2 else cut
    return text


def decode_caption(
    sample: RawSample,
    rng: random.Random,
    *,
    caption_fn: CaptionFn | None = None,
    max_chars: int | None = DEFAULT_MAX_CAPTION_CHARS,
) -> str:
    """The sample's caption: ``caption_fn(sample, rng)`` if given, else the ``txt`` member
    (UTF-8), else the ``json`` member's ``"caption"`` string or one of its ``"captions"``
    (drawn with ``rng``, so afresh each epoch). Stripped, cut to ``max_chars``."""
    members = sample.members
    if caption_fn is not None:
        text = caption_fn(sample, rng)
        if not isinstance(text, str):
            raise TypeError(f"caption_fn must return a str, got {type(text).__name__}")
        return _clean_caption(text, max_chars)
    if "txt" in members:
        try:
            text = members["txt"].decode("utf-8")
        except UnicodeDecodeError:
            raise BadSample("non-utf8-caption") from None
        return _clean_caption(text, max_chars)
    if "json" in members:
        try:
            meta = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise BadSample("malformed-json") from None
        if isinstance(meta, dict):
            caption = meta.get("caption")
            if isinstance(caption, str):
                return _clean_caption(caption, max_chars)
            captions = meta.get("captions")
            if isinstance(captions, list) and captions:
                texts = [c for c in captions if isinstance(c, str) and c.strip()]
                if not texts:
                    raise BadSample("empty-caption")
                return _clean_caption(rng.choice(texts), max_chars)
    raise BadSample("missing-caption")


def _source_error(sample: RawSample) -> None:
    marker = sample.members.get(ERROR_MEMBER)
    if marker is not None:
        reason, _, detail = marker.decode("utf-8", "replace").partition("\n")
        raise BadSample(reason or "malformed-member", detail)


class ImageDecoder:
    """The stream's ``decode(sample, rng)``: an RGB image (shorter side ``image_size`` when
    given) and a caption, or ``BadSample``. Picklable, so it runs in data-loader workers."""

    def __init__(
        self,
        image_size: int | None = None,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_aspect: float | None = DEFAULT_MAX_ASPECT,
        min_size: int = DEFAULT_MIN_SIZE,
        background: tuple[int, int, int] | None = (255, 255, 255),
        caption_fn: CaptionFn | None = None,
        max_caption_chars: int | None = DEFAULT_MAX_CAPTION_CHARS,
        exif_transpose: bool = True,
        formats: Sequence[str] | None = DEFAULT_FORMATS,
        exclude_labels: Collection[str] = (),
    ) -> None:
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if max_aspect is not None and max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
        if max_caption_chars is not None and max_caption_chars < 1:
            raise ValueError(f"max_caption_chars must be positive, got {max_caption_chars}")
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.max_aspect = max_aspect
        self.min_size = min_size
        self.background = background
        self.caption_fn = caption_fn
        self.max_caption_chars = max_caption_chars
        self.exif_transpose = exif_transpose
        self.formats = tuple(formats) if formats is not None else None
        _usable_formats(self.formats)  # fail here on an unknown format name
        self.exclude_labels = frozenset(str(label).casefold() for label in exclude_labels)

    def _check_label(self, sample: RawSample) -> None:
        """``BadSample("excluded-label")`` when the sample's ``json`` ``"label"`` is excluded."""
        if not self.exclude_labels or "json" not in sample.members:
            return
        try:
            meta = json.loads(sample.members["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise BadSample("malformed-json") from None
        label = meta.get("label") if isinstance(meta, dict) else None
        if isinstance(label, str) and label.strip().casefold() in self.exclude_labels:
            raise BadSample("excluded-label", label)

    def caption(self, sample: RawSample, rng: random.Random) -> str:
        """The caption alone (checks the same things as a full decode, minus the image)."""
        _source_error(sample)
        self._check_label(sample)
        return decode_caption(
            sample, rng, caption_fn=self.caption_fn, max_chars=self.max_caption_chars
        )

    def __call__(self, sample: RawSample, rng: random.Random) -> tuple[Image.Image, str]:
        _source_error(sample)
        self._check_label(sample)
        ext = image_member(sample.members)
        if ext is None:
            raise BadSample("no-image", f"members: {sorted(sample.members)}")
        data = sample.members[ext]
        if not data:
            raise BadSample("zero-bytes")
        caption = decode_caption(
            sample, rng, caption_fn=self.caption_fn, max_chars=self.max_caption_chars
        )
        image = decode_image(
            data,
            image_size=self.image_size,
            max_pixels=self.max_pixels,
            max_aspect=self.max_aspect,
            min_size=self.min_size,
            background=self.background,
            exif_transpose=self.exif_transpose,
            formats=self.formats,
        )
        return image, caption

    def __repr__(self) -> str:
        return (
            f"ImageDecoder(image_size={self.image_size}, max_pixels={self.max_pixels}, "
            f"max_aspect={self.max_aspect}, min_size={self.min_size}, background={self.background}, "
            f"caption_fn={getattr(self.caption_fn, '__name__', self.caption_fn)}, "
            f"max_caption_chars={self.max_caption_chars})"
        )


def decode_sample(
    sample: RawSample,
    rng: random.Random,
    *,
    image_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
    min_size: int = DEFAULT_MIN_SIZE,
    background: tuple[int, int, int] | None = (255, 255, 255),
    caption_fn: CaptionFn | None = None,
    max_caption_chars: int | None = DEFAULT_MAX_CAPTION_CHARS,
    exif_transpose: bool = True,
    formats: Sequence[str] | None = DEFAULT_FORMATS,
) -> tuple[Image.Image, str]:
    """Decode one sample to (RGB image, caption) or raise ``BadSample``; the one-call form of
    ``ImageDecoder(...)(sample, rng)`` (use the class where a picklable callable is needed)."""
    decoder = ImageDecoder(
        image_size,
        max_pixels=max_pixels,
        max_aspect=max_aspect,
        min_size=min_size,
        background=background,
        caption_fn=caption_fn,
        max_caption_chars=max_caption_chars,
        exif_transpose=exif_transpose,
        formats=formats,
    )
    return decoder(sample, rng)
