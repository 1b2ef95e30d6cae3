"""What a photo's EXIF says: when it was taken, where, with which camera, which way up.

:func:`photo_metadata` reads the header of image bytes (no pixel is decoded) and returns the
fields a photo library filters and sorts by. Every field is None when the photo does not
say, or says something malformed (a date of ``0000:00:00``, a latitude of 200 degrees, a
rational with a zero denominator): hostile or broken EXIF gives no value, never an error.

Times are the camera's local wall-clock time as EXIF records it (``DateTimeOriginal``, else
``DateTimeDigitized``, else ``DateTime``), written ``YYYY-MM-DDTHH:MM:SS``: ISO strings sort
and compare as times, so date filters are string comparisons.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from typing import Any

from PIL import Image

from cliplab.data.images import _PIL_ERRORS, DEFAULT_FORMATS, check_formats

__all__ = ["PHOTO_FIELDS", "iso_time", "photo_metadata"]

#: The fields :func:`photo_metadata` returns.
PHOTO_FIELDS = ("taken", "lat", "lon", "make", "model", "orientation")

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_TIME_ORIGINAL, _DATE_TIME_DIGITIZED, _DATE_TIME = 0x9003, 0x9004, 0x0132
_MAKE, _MODEL, _ORIENTATION = 0x010F, 0x0110, 0x0112
_EXIF_TIME = re.compile(r"^\s*(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_MAX_TEXT = 64


def iso_time(text: Any) -> str | None:
    """An EXIF time (``"2024:05:01 12:30:00"``) as ``"2024-05-01T12:30:00"``, or None when
    it is not a plausible one."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str):
        return None
    m = _EXIF_TIME.match(text)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups())
    if not (1800 <= year <= 2200 and 1 <= month <= 12 and 1 <= day <= 31):
        return None
    if not (hour <= 23 and minute <= 59 and second <= 60):
        return None
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{min(second, 59):02d}"


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value[:_MAX_TEXT] or None


def _degrees(value: Any, ref: Any, limit: float) -> float | None:
    """(degrees, minutes, seconds) rationals and an N/S/E/W reference -> signed degrees."""
    try:
        d, m, s = (float(x) for x in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    out = d + m / 60.0 + s / 3600.0
    if not math.isfinite(out) or min(d, m, s) < 0 or out > limit:
        return None
    ref = _text(ref) or ""
    return round(-out if ref[:1].upper() in ("S", "W") else out, 7)


def photo_metadata(data: bytes) -> dict[str, Any]:
    """``taken``, ``lat``, ``lon``, ``make``, ``model``, ``orientation`` of an image's
    bytes (each None where the EXIF does not say or cannot be read)."""
    out: dict[str, Any] = dict.fromkeys(PHOTO_FIELDS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=check_formats(DEFAULT_FORMATS)) as image:
                exif = image.getexif()
                if not exif:
                    return out
                inner = exif.get_ifd(_EXIF_IFD)
                gps = exif.get_ifd(_GPS_IFD)
    except _PIL_ERRORS:  # hostile EXIF: no metadata (the image itself is judged elsewhere)
        return out
    for source, tag in ((inner, _DATE_TIME_ORIGINAL), (inner, _DATE_TIME_DIGITIZED),
                        (exif, _DATE_TIME)):  # fmt: skip
        out["taken"] = iso_time(source.get(tag))
        if out["taken"]:
            break
    out["make"], out["model"] = _text(exif.get(_MAKE)), _text(exif.get(_MODEL))
    orientation = exif.get(_ORIENTATION)
    out["orientation"] = (
        orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else None
    )
    if gps:
        lat = _degrees(gps.get(2), gps.get(1), 90.0)
        lon = _degrees(gps.get(4), gps.get(3), 180.0)
        if lat is not None and lon is not None:
            out["lat"], out["lon"] = lat, lon
    return out
