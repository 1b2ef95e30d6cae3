"""What every builder shares: cached outputs keyed by a fingerprint, image preparation, splits.

An *output* is one directory: a shard set (``<out>/shards/<name>/shard-000000.tar`` ... as
``ShardWriter`` writes them) or an evaluation set (``<out>/eval/<name>/``, see
:mod:`cliplab.data.evalsets`). Each carries a ``build.json`` written last, holding the
fingerprint of everything the output was made from (the builder's version and options, the
input files' names and sizes). A builder skips an output whose ``build.json`` has the
fingerprint it would produce, so re-running a build costs a directory listing.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from cliplab.fileio import AtomicDirectory, write_json

BUILD_FILE = "build.json"
Log = Callable[[str], None]


class MissingExtra(ImportError):
    """An optional dependency is needed; the message names the pip extra that provides it."""


@dataclass
class Output:
    """One product of a builder, as reported to the user and stored in ``build.json``."""

    name: str
    kind: str  # "shards", "classification" or "retrieval"
    path: str
    count: int = 0
    bytes: int = 0
    seconds: float = 0.0
    cached: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        state = "cached" if self.cached else f"built in {self.seconds:.1f} s"
        return f"  {self.kind:<14} {self.name:<26} {self.count:>7} items {self.bytes / 1e6:>8.1f} MB  ({state})"


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def file_listing(root: Path, paths: Iterable[Path]) -> list[tuple[str, int]]:
    """``(path relative to root, size)`` for each file: the part of a fingerprint that says
    which inputs were read (sizes, not contents: hashing every image would cost seconds)."""
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in paths)


def fingerprint(**parts: Any) -> str:
    """A hex digest of any JSON-able parts (builder name, version, options, input listing)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def read_build(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return None


def cached(path: Path, fp: str, force: bool = False) -> Output | None:
    """The recorded output at ``path`` when it was built from the same fingerprint."""
    build = read_build(path)
    if force or build is None or build.get("fingerprint") != fp:
        return None
    out = Output(**build["output"])
    out.cached = True
    return out


def record(path: Path, fp: str, output: Output, extra: dict[str, Any] | None = None) -> Output:
    """Write ``build.json`` (last, so its presence means the output is complete)."""
    output.bytes = dir_bytes(path)
    data = {
        "fingerprint": fp,
        "output": asdict(output),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra or {}),
    }
    write_json(path / BUILD_FILE, data, indent=1)
    return output


def staging(path: Path) -> AtomicDirectory:
    """A fresh temporary directory beside ``path`` that replaces ``path`` on success."""
    return AtomicDirectory(path)


@dataclass(frozen=True)
class Builder:
    """One builder: what it reads and what it makes, so a plan can pick builders and
    packages from the outputs a run needs.

    ``packages`` are the :data:`cliplab.recipes.install.PACKAGES` it cannot run without;
    ``extra_packages`` those that one output needs besides (``"eval/emoji-google"`` needs
    Google's emoji). Outputs are named ``shards/<name>`` and ``eval/<name>``. Its
    ``build(sources, out, *, force, log, only)`` makes every output whose packages are
    installed, or exactly those named in ``only``.
    """

    name: str
    build: Callable[..., list[Output]]
    packages: tuple[str, ...]
    shards: tuple[str, ...] = ()
    evalsets: tuple[str, ...] = ()
    extra_packages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (*(f"shards/{n}" for n in self.shards), *(f"eval/{n}" for n in self.evalsets))

    def packages_for(self, outputs: Iterable[str]) -> list[str]:
        """The packages that making ``outputs`` (some of this builder's) needs."""
        names = list(self.packages)
        for output in outputs:
            names += [p for p in self.extra_packages.get(output, ()) if p not in names]
        return names


def wanted(only: Collection[str] | None, kind: str, name: str) -> bool:
    """Whether a builder called with ``only`` should make ``<kind>/<name>`` (``None``: all)."""
    return only is None or f"{kind}/{name}" in only


def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``: deterministic train/test splits by key."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def safe_key(text: str) -> str:
    """A ShardWriter key from any identifier: no '/', '.' or spaces. Where characters had to
    be replaced, a short hash of the original keeps distinct identifiers distinct."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in text)
    if out == text and out:
        return out
    digest = hashlib.blake2b(text.encode(), digest_size=4).hexdigest()
    return f"{out.strip('_')[:80]}_{digest}"


# --------------------------------------------------------------------------- images


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def fit(image: Image.Image, max_side: int | None) -> Image.Image:
    """``image`` shrunk (aspect kept, Lanczos) so its longer side is at most ``max_side``."""
    if max_side is None or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.resize(size, Image.Resampling.LANCZOS)


#: Larger source images are refused (``ImageTooLarge``) before their pixels are decoded.
MAX_PIXELS = 40_000_000


class ImageTooLarge(ValueError):
    """A source image above ``MAX_PIXELS`` (OpenClipart has a 231-megapixel PNG)."""


@contextmanager
def _open_checked(source: Path | bytes) -> Iterator[Image.Image]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(str(e)) from None
    with im:
        if im.width * im.height > MAX_PIXELS:
            raise ImageTooLarge(f"{im.width}x{im.height} is over {MAX_PIXELS} pixels")
        yield im


def prepare_png(path: Path, max_side: int | None) -> bytes:
    """The file's PNG bytes, untouched when already small enough, else shrunk (alpha kept)."""
    data = path.read_bytes()
    with _open_checked(data) as im:
        if im.format == "PNG" and (max_side is None or max(im.size) <= max_side):
            return data
        im.load()
        return png_bytes(fit(im, max_side))


def open_image(path: Path, max_side: int | None = None) -> Image.Image:
    """A loaded PIL image (mode kept), shrunk to ``max_side``."""
    with _open_checked(path) as im:
        im.load()
        return fit(im, max_side)


def render_svg(path: Path, max_side: int) -> Image.Image:
    """An SVG rendered to RGBA with its longer side ``max_side`` (needs cairosvg)."""
    try:
        import cairosvg
    except (ImportError, OSError) as e:  # OSError: cairosvg present but libcairo missing
        raise MissingExtra(
            f"rendering SVG needs cairosvg and the cairo library: pip install 'cliplab[svg]' ({e})"
        ) from e
    data = path.read_bytes()
    png = cairosvg.svg2png(bytestring=data, output_width=max_side, unsafe=False)
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        rgba = im.convert("RGBA")
    # output_width fixes the width; a tall drawing may come out taller than max_side
    return fit(rgba, max_side)


def svg_available() -> bool:
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError):
        return False
    return True
