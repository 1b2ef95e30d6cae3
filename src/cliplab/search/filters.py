"""Which images a search may return, and in which order: dates, folders, camera, place.

A :class:`Filter` is parsed from the strings a person types (the CLI's ``--after``,
``--before``, ``--path``, ``--camera``, ``--bbox``, ``--near``; the same names in the JSON
API) and turned into a boolean mask over a collection's metadata
(:mod:`cliplab.search.collection`) with :meth:`Filter.mask`. The searcher applies the mask
*inside* the search (:meth:`cliplab.search.query.Searcher.nearest`): a filtered query
returns k results whenever k images pass, instead of cutting the top k afterwards.

- dates compare against ``taken``: the EXIF capture time, else the file's mtime (as local
  time), else the image has no date and no date filter passes it; ``--after D`` keeps
  images taken on or after day D, ``--before D`` those taken before day D;
- ``--path`` is a prefix of the image's key (its path in the folder) or its full path, or a
  glob (``*``, ``?``, ``[``) matched against either;
- ``--camera`` matches words of ``make model`` (``"canon"``, ``"iphone 15"``), any case;
- ``--bbox S,W,N,E`` (degrees) and ``--near LAT,LON,KM`` (great-circle distance) keep
  images whose EXIF places them there; images without a position never pass.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

__all__ = ["SORTS", "Filter", "dates", "sort_order"]

#: Orders of results: by score (best first), by date (newest first) or oldest first.
SORTS = ("score", "date", "oldest")
EARTH_KM = 6371.0088


def _day(text: str, name: str) -> str:
    try:
        return dt.date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise ValueError(f"{name} must be a date YYYY-MM-DD, got {text!r}") from None


def _numbers(text: str, count: int, name: str, form: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be {form}, got {text!r}")
    return values


@dataclass(frozen=True)
class Filter:
    """The conditions an image must meet (None: no condition); all must hold."""

    after: str | None = None  # YYYY-MM-DD, inclusive
    before: str | None = None  # YYYY-MM-DD, exclusive
    path: str | None = None  # a prefix or a glob
    camera: str | None = None  # words of "make model"
    bbox: tuple[float, float, float, float] | None = None  # south, west, north, east
    near: tuple[float, float, float] | None = None  # lat, lon, km

    @classmethod
    def parse(
        cls,
        *,
        after: str | None = None,
        before: str | None = None,
        path: str | None = None,
        camera: str | None = None,
        bbox: str | None = None,
        near: str | None = None,
    ) -> Filter:
        """A filter from typed strings (empty ones ignored); ``ValueError`` says what is wrong."""
        box = at = None
        if bbox and bbox.strip():
            s, w, n, e = _numbers(bbox, 4, "bbox", "SOUTH,WEST,NORTH,EAST in degrees")
            if not (-90 <= s <= n <= 90 and -180 <= w <= 180 and -180 <= e <= 180):
                raise ValueError(
                    f"bbox {bbox!r}: latitudes in [-90, 90] with south <= north, longitudes "
                    "in [-180, 180] (west > east crosses the antimeridian)"
                )
            box = (s, w, n, e)
        if near and near.strip():
            lat, lon, km = _numbers(near, 3, "near", "LAT,LON,KM")
            if not (-90 <= lat <= 90 and -180 <= lon <= 180 and km > 0):
                raise ValueError(f"near {near!r}: a latitude, a longitude and a radius > 0 km")
            at = (lat, lon, km)
        out = cls(
            after=_day(after, "after") if after and after.strip() else None,
            before=_day(before, "before") if before and before.strip() else None,
            path=path.strip() if path and path.strip() else None,
            camera=camera.strip() if camera and camera.strip() else None,
            bbox=box,
            near=at,
        )
        if out.after and out.before and out.after >= out.before:
            raise ValueError(f"after ({out.after}) must be before before ({out.before})")
        return out

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def mask(self, metadata: Any) -> np.ndarray:
        """(N,) bool over a collection's metadata table: which rows pass."""
        n = metadata.num_rows
        keep = np.ones(n, dtype=bool)
        if self.after or self.before:
            when = dates(metadata)
            known = np.array([d is not None for d in when], dtype=bool)
            keep &= known
            if self.after:
                keep &= np.array([d is not None and d >= self.after for d in when], dtype=bool)
            if self.before:
                keep &= np.array([d is not None and d < self.before for d in when], dtype=bool)
        if self.path:
            keep &= self._paths(metadata)
        if self.camera:
            words = self.camera.lower().split()
            makes = _column(metadata, "make")
            models = _column(metadata, "model")
            keep &= np.array(
                [
                    all(w in f"{a or ''} {b or ''}".lower() for w in words)
                    for a, b in zip(makes, models)
                ],
                dtype=bool,
            )
        if self.bbox or self.near:
            lat = np.array([np.nan if v is None else v for v in _column(metadata, "lat")], float)
            lon = np.array([np.nan if v is None else v for v in _column(metadata, "lon")], float)
            keep &= np.isfinite(lat) & np.isfinite(lon)
            with np.errstate(invalid="ignore"):
                if self.bbox:
                    s, w, north, e = self.bbox
                    inside_lon = (lon >= w) & (lon <= e) if w <= e else (lon >= w) | (lon <= e)
                    keep &= (lat >= s) & (lat <= north) & inside_lon
                if self.near:
                    keep &= _haversine(lat, lon, self.near[0], self.near[1]) <= self.near[2]
        return keep

    def _paths(self, metadata: Any) -> np.ndarray:
        pattern = self.path or ""
        keys, paths = _column(metadata, "key"), _column(metadata, "path")
        if any(c in pattern for c in "*?["):
            match = fnmatch.fnmatchcase
            return np.array(
                [match(k or "", pattern) or match(p or "", pattern) for k, p in zip(keys, paths)],
                dtype=bool,
            )
        return np.array(
            [(k or "").startswith(pattern) or (p or "").startswith(pattern)
             for k, p in zip(keys, paths)],
            dtype=bool,
        )  # fmt: skip


def _column(metadata: Any, name: str) -> list[Any]:
    if name not in metadata.column_names:
        return [None] * metadata.num_rows
    return metadata.column(name).to_pylist()


def dates(metadata: Any) -> list[str | None]:
    """Each row's date as ISO text: its EXIF capture time, else its file's mtime (local
    time), else None."""
    out = []
    for taken, mtime in zip(_column(metadata, "taken"), _column(metadata, "mtime")):
        if taken:
            out.append(taken)
        elif mtime is not None and math.isfinite(mtime):
            out.append(dt.datetime.fromtimestamp(mtime).isoformat(timespec="seconds"))
        else:
            out.append(None)
    return out


def sort_order(ids: list[int], when: list[str | None], sort: str) -> list[int]:
    """Positions of ``ids`` in ``sort`` order (``score``: as given; ``date``: newest first;
    ``oldest``); images without a date go last, in their given order."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    positions = list(range(len(ids)))
    if sort == "score":
        return positions
    dated = [p for p in positions if when[p] is not None]
    undated = [p for p in positions if when[p] is None]
    dated.sort(key=lambda p: when[p] or "", reverse=sort == "date")
    return dated + undated


def _haversine(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    """Great-circle distances in km from (lat0, lon0)."""
    p1, p2 = np.radians(lat), math.radians(lat0)
    dp, dl = p1 - p2, np.radians(lon - lon0)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
