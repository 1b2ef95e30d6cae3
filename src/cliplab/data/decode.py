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
3. image header: ``not-an-image`` (also any format outside ``formats``, by default the web's:
   ``cliplab.data.images.DEFAULT_FORMATS``), ``truncated-image`` (data ends inside the
   header), ``decompression-bomb`` (width x height above ``max_pixels``, read from the header
   before any pixel is decoded), ``bad-aspect-ratio``, ``too-small``;
4. pixels: ``truncated-image``, ``corrupt-image``.

The image itself is :func:`cliplab.data.images.decode_image`, the one place that knows image
formats and the one RGB conversion: transparency composited onto ``background`` (white by
default) rather than dropped, EXIF orientation applied, 16-bit images rescaled. With
``image_size``, JPEGs are decoded in draft mode and every image is resized once, shortest
side to ``image_size``. :meth:`ImageDecoder.image` runs the same checks without the caption:
``cliplab embed`` decodes through it, so a record is rejected for the same reason in search
as in training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Collection, Mapping, Sequence

from PIL import Image

from cliplab.data.images import (
    DEFAULT_FORMATS,
    DEFAULT_MAX_ASPECT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIZE,
    IMAGE_EXTS,
    IMAGE_REASONS,
    WHITE,
    check_formats,
    decode_image,
)
from cliplab.data.stream import BadSample, RawSample

__all__ = [
    "DEFAULT_MAX_CAPTION_CHARS",
    "ERROR_MEMBER",
    "REASONS",
    "ImageDecoder",
    "decode_caption",
    "error_sample",
    "image_member",
]

#: A member that marks a raw sample as bad at the source (its value is the reason, UTF-8).
#: Sources emit such records instead of raising, so the loader counts them like any bad sample.
ERROR_MEMBER = "__error__"
#: Captions are cut (at a word boundary) to this many characters before tokenization: far
#: more than a 77-token context holds, and it keeps a 1 MB "caption" from costing seconds.
DEFAULT_MAX_CAPTION_CHARS = 1000

#: Every reason this module raises (sources add their own error-record reasons).
REASONS = (
    "no-image",
    "non-utf8-caption",
    "malformed-json",
    "missing-caption",
    "empty-caption",
    "excluded-label",
    *IMAGE_REASONS,
)

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
        background: tuple[int, int, int] | None = WHITE,
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
        check_formats(self.formats)  # fail here on an unknown format name
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

    def _image_bytes(self, sample: RawSample) -> bytes:
        """The structure checks: the source's error record, ``no-image``, ``zero-bytes``."""
        _source_error(sample)
        self._check_label(sample)
        ext = image_member(sample.members)
        if ext is None:
            raise BadSample("no-image", f"members: {sorted(sample.members)}")
        data = sample.members[ext]
        if not data:
            raise BadSample("zero-bytes")
        return data

    def _decode(self, data: bytes) -> Image.Image:
        return decode_image(
            data,
            image_size=self.image_size,
            max_pixels=self.max_pixels,
            max_aspect=self.max_aspect,
            min_size=self.min_size,
            background=self.background,
            exif_transpose=self.exif_transpose,
            formats=self.formats,
        )

    def image(self, sample: RawSample) -> Image.Image:
        """The image alone (checks the same things as a full decode, minus the caption)."""
        return self._decode(self._image_bytes(sample))

    def __call__(self, sample: RawSample, rng: random.Random) -> tuple[Image.Image, str]:
        data = self._image_bytes(sample)
        caption = decode_caption(
            sample, rng, caption_fn=self.caption_fn, max_chars=self.max_caption_chars
        )
        return self._decode(data), caption

    def __repr__(self) -> str:
        return (
            f"ImageDecoder(image_size={self.image_size}, max_pixels={self.max_pixels}, "
            f"max_aspect={self.max_aspect}, min_size={self.min_size}, background={self.background}, "
            f"caption_fn={getattr(self.caption_fn, '__name__', self.caption_fn)}, "
            f"max_caption_chars={self.max_caption_chars})"
        )
