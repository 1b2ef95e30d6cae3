"""Image bytes -> pixels: the one module that knows image formats, opens them safely and
turns them into RGB. Adding an image format, or changing how stored images become pixels,
touches this file only (docs/extending-data.md).

- **Formats**: which sample members hold images (``IMAGE_EXTS``), which Pillow formats are
  opened (``DEFAULT_FORMATS``: the web's; formats with weak signatures such as TGA would let
  random bytes pass as images) and what media type each is served as (``MEDIA_TYPES``).
- **Opening hostile bytes**: :func:`probe_image` reads the header only (size limits are
  checked before any pixel is decoded), :func:`load_image` / :func:`read_image_file` /
  :func:`open_image` load an image in its own mode, :func:`decode_image` decodes for
  training (JPEG draft mode). Every problem is a ``BadSample`` with a reason
  (``IMAGE_REASONS``), never a traceback.
- **The one RGB conversion** of a stored image, :func:`rgb`: EXIF orientation applied,
  palettes with or without transparency, every alpha mode (``RGBA``, ``RGBa``, ``LA``,
  ``La``, ``PA``, a ``transparency`` entry) composited on a background (white), ``CMYK`` /
  ``YCbCr`` / ``LAB`` / ``HSV`` converted, 16-bit / ``I`` / ``F`` rescaled to 8 bits instead
  of clipped. :func:`open_rgb` is opening plus that conversion. Its pixel work is
  :func:`cliplab.transforms.to_rgb`, whose defaults stay OpenAI's plain ``convert("RGB")``
  for the model's own preprocessing (bit-for-bit parity).
"""

from __future__ import annotations

import functools
import io
import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import Union

from PIL import Image, ImageOps, UnidentifiedImageError

from cliplab.data.samples import BadSample
from cliplab.transforms import resized_output_size, to_rgb

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIZE",
    "IMAGE_EXTS",
    "IMAGE_REASONS",
    "MEDIA_TYPES",
    "WHITE",
    "ImageLike",
    "check_formats",
    "decode_image",
    "load_image",
    "open_image",
    "open_rgb",
    "probe_image",
    "read_image_file",
    "rgb",
]

#: An image as the encoders and evaluation sets hold it: a PIL image or a file (path or URL).
ImageLike = Union[Image.Image, str, os.PathLike]  # noqa: UP007 (a runtime alias)
#: Member extensions read as the image, in order of preference (webdataset/img2dataset names;
#: ``img`` is what manifests use for a file whose type neither its suffix nor its bytes tell).
IMAGE_EXTS = (
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "heic", "heif", "avif", "img",
)  # fmt: skip
#: Image formats opened (Pillow names; camera JPEGs that Pillow reports as ``MPO`` open
#: through ``JPEG``); ``formats=None`` allows all of Pillow's. Formats this Pillow build
#: lacks (AVIF in older builds; HEIF without ``pillow-heif``) are left out of the default.
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "ICO", "AVIF", "HEIF")
#: The media type each format is served as (``cliplab serve``'s ``/image/{id}``).
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "PPM": "image/x-portable-pixmap",
    "ICO": "image/x-icon",
    "AVIF": "image/avif",
    "HEIF": "image/heic",
}
#: Pillow's own warning threshold (about 9459 x 9459): far above any useful training image.
DEFAULT_MAX_PIXELS = 89_478_485
#: Longer side / shorter side; banners (728x90 is 8.1) pass, 1x20000 strips do not.
DEFAULT_MAX_ASPECT = 10.0
#: Shorter side in pixels; drops tracking pixels and spacer GIFs.
DEFAULT_MIN_SIZE = 8
#: Where transparent images are composited: white, how emoji, icons and stamps are shown.
WHITE = (255, 255, 255)
#: Every reason this module raises (``missing-file`` and ``unreadable-file``: files only).
IMAGE_REASONS = (
    "zero-bytes",
    "not-an-image",
    "truncated-image",
    "decompression-bomb",
    "bad-aspect-ratio",
    "too-small",
    "corrupt-image",
    "missing-file",
    "unreadable-file",
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
_ROTATED = range(2, 9)  # orientations 2..8: flipped and/or turned


# --------------------------------------------------------------------------- RGB


def rgb(
    image: Image.Image,
    background: tuple[int, int, int] | None = WHITE,
    *,
    exif_transpose: bool = True,
) -> Image.Image:
    """A stored image of any mode as the RGB picture it shows: turned upright by its EXIF
    orientation, transparency composited onto ``background`` (None drops the alpha), colour
    spaces converted, high bit depths rescaled to 8 bits. May return ``image`` itself."""
    if exif_transpose and image.getexif().get(_EXIF_ORIENTATION, 1) in _ROTATED:
        # Pillow's transpose also drops the tag, so a second rgb() does not turn it again
        image = ImageOps.exif_transpose(image)
    return to_rgb(image, background, rescale_high_bit_depth=True)


# --------------------------------------------------------------------------- opening


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


@functools.cache
def _register_heif() -> None:
    """Phones' HEIC/HEIF photos open through ``pillow-heif`` when it is installed (``cliplab
    [search]``); imported on first use, not at import (it takes 0.1 s)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


@functools.lru_cache(maxsize=16)
def _usable_formats(formats: tuple[str, ...] | None) -> tuple[str, ...] | None:
    _register_heif()
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


def check_formats(formats: Sequence[str] | None) -> tuple[str, ...] | None:
    """``formats`` checked against Pillow's plugins (upper-cased; None: all of them): a typo
    must fail loudly, not turn every image into ``not-an-image``. The default set drops what
    this Pillow build lacks."""
    return _usable_formats(tuple(formats) if formats is not None else None)


def _open_checked(
    data: bytes,
    max_pixels: int | None,
    max_aspect: float | None,
    min_size: int,
    formats: Sequence[str] | None,
) -> Image.Image:
    """Open (header only) and check the size; BadSample for anything unusable."""
    if not data:
        raise BadSample("zero-bytes")
    allowed = check_formats(formats)  # outside the try: a bad name is our error, not the data's
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
        image = _open_checked(data, max_pixels, max_aspect, min_size, formats)
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
    rule: for images a user asks about, not training data). For the model's preprocessing,
    which converts the mode itself; :func:`open_rgb` gives the picture as RGB."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = _open_checked(data, max_pixels, None, 1, formats)
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


def open_image(
    item: ImageLike | bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """A loaded PIL image, its mode kept, from a PIL image (returned as it is), image bytes or
    a file (path or URL), or ``BadSample`` with the reason (``missing-file``,
    ``not-an-image``, ``truncated-image``, ``decompression-bomb``...). For the model's
    preprocessing, which converts the mode the way the model was evaluated."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return load_image(bytes(item), max_pixels=max_pixels)
    return read_image_file(item, max_pixels=max_pixels)


def open_rgb(
    item: ImageLike | bytes,
    *,
    background: tuple[int, int, int] | None = WHITE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """:func:`open_image` then :func:`rgb`: the RGB picture of a PIL image, image bytes or a
    file (path or URL), transparency on ``background``; ``BadSample`` when unusable."""
    image = open_image(item, max_pixels=max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rgb(image, background)
    except _PIL_ERRORS as e:
        raise BadSample("corrupt-image", str(e)) from None


# --------------------------------------------------------------------------- decoding


def decode_image(
    data: bytes,
    *,
    image_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
    min_size: int = DEFAULT_MIN_SIZE,
    background: tuple[int, int, int] | None = WHITE,
    exif_transpose: bool = True,
    formats: Sequence[str] | None = DEFAULT_FORMATS,
) -> Image.Image:
    """Image bytes -> RGB PIL image (:func:`rgb`), or ``BadSample``: ``zero-bytes``,
    ``not-an-image``, ``truncated-image``, ``decompression-bomb``, ``bad-aspect-ratio``,
    ``too-small`` (all from the header, before any pixel is decoded), ``corrupt-image``.

    With ``image_size``, the result's shorter side is ``image_size`` (images already smaller
    are left as they are; the transform upsamples them): JPEGs are decoded in draft mode
    (libjpeg's DCT scaling by 1/2, 1/4 or 1/8, keeping both sides >= ``image_size``), then
    resized once. Pillow's global ``Image.MAX_IMAGE_PIXELS`` still applies on top of
    ``max_pixels`` (raise it if you set ``max_pixels`` above twice its value).
    """
    if not data:
        raise BadSample("zero-bytes")
    with warnings.catch_warnings():
        # Broken files make Pillow warn (corrupt EXIF, odd TIFF tags, its own bomb warning):
        # the outcome is counted instead, and our pixel limit never relies on a warning.
        warnings.simplefilter("ignore")
        opened = _open_checked(data, max_pixels, max_aspect, min_size, formats)
        try:
            if image_size is not None and opened.format == "JPEG":
                # DCT-domain downscaling by a power of two; keeps both sides >= image_size
                opened.draft("RGB", (image_size, image_size))
            opened.load()
            out = rgb(opened, background, exif_transpose=exif_transpose)
            if image_size is not None and min(out.size) > image_size:
                new_h, new_w = resized_output_size(out.height, out.width, image_size)
                out = out.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
        except _PIL_ERRORS as e:
            opened.close()
            raise BadSample(
                "truncated-image" if _looks_truncated(e) else "corrupt-image", str(e)
            ) from None
    if out is not opened:
        opened.close()  # frees the decoded pixels now rather than at garbage collection
    return out
