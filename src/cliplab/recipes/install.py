"""Install the real image-text sources (see docs/data.md) into a data directory.

Everything comes from ordinary package registries: npm tarballs (``npm pack``) and Debian
packages (``apt-get download`` + ``dpkg-deb -x``, which needs no root and leaves the system
untouched). Each source lands in its own folder with an ``.installed.json`` marker, so a
re-run only checks markers and costs well under a second. Nothing here runs at import time;
the project's set-up calls ``cliplab data install``.

Layout under the data directory (default ``data/sources``)::

    npm/<package>-<version>/package/...        e.g. npm/emojibase-data-17.0.0/package/en/data.json
    apt/<package>/usr/share/...                e.g. apt/tuxpaint-stamps-default/usr/share/tuxpaint/stamps
    <folder>/.installed.json                   what was installed, its version, how long it took

Builders find a source with :func:`source_path`, which also accepts a system-wide install
(``/usr/share/tuxpaint/stamps`` after ``apt-get install``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cliplab.fileio import AtomicDirectory, write_json

DEFAULT_DATA_DIR = Path("data/sources")
MARKER = ".installed.json"


@dataclass(frozen=True)
class Package:
    """One installable package: ``kind`` is "npm", "apt" or "pip"."""

    name: str
    kind: str
    version: str = ""  # npm and pip: pinned; apt: whatever the distribution has
    what: str = ""  # one line for the log

    @property
    def folder(self) -> str:
        if self.kind == "npm":
            return f"npm/{self.name}-{self.version}"
        return f"{self.kind}/{self.name}"


PACKAGES: tuple[Package, ...] = (
    Package("emoji-datasource-twitter", "npm", "16.0.0", "Twitter emoji, 64 px RGBA (train)"),
    Package("emoji-datasource-google", "npm", "16.0.0", "Google emoji (held-out style, eval)"),
    Package("emoji-datasource-facebook", "npm", "16.0.0", "Facebook emoji (local eval only)"),
    Package("emoji-datasource-apple", "npm", "16.0.0", "Apple emoji (local eval only)"),
    Package("emojibase-data", "npm", "17.0.0", "CLDR emoji labels and tags"),
    Package("@iconify-json/noto-v1", "npm", "1.2.5", "Noto v1 emoji, SVG (train style)"),
    Package("@iconify-json/emojione", "npm", "1.2.3", "Emoji One emoji, SVG (train style)"),
    Package("@iconify-json/emojione-v1", "npm", "1.2.3", "Emoji One v1 emoji, SVG (train style)"),
    Package(
        "@iconify-json/emojione-monotone", "npm", "1.2.1", "Emoji One monotone, SVG (train style)"
    ),
    Package("@iconify-json/fxemoji", "npm", "1.2.2", "Firefox OS emoji, SVG (train style)"),
    Package(
        "@iconify-json/streamline-emojis", "npm", "1.2.4", "Streamline emoji, SVG (train style)"
    ),
    Package("tuxpaint-stamps-default", "apt", what="Tux Paint stamps with descriptions"),
    Package("openclipart-png", "apt", what="OpenClipart PNG renderings"),
    Package("openclipart-svg", "apt", what="OpenClipart SVG (titles, keywords)"),
    Package("dataset-fashion-mnist", "apt", what="Fashion-MNIST"),
    Package("oxygen-icon-theme", "apt", what="Oxygen icons (PNG)"),
    Package("adwaita-icon-theme", "apt", what="Adwaita icons (PNG + symbolic SVG)"),
    Package("papirus-icon-theme", "apt", what="Papirus icons (SVG only)"),
    Package("wordnet-base", "apt", what="WordNet 3.0 database files"),
    Package("wordfreq", "pip", "3.1.1", "English word frequencies (curation query list)"),
)

#: Where each source's files are, relative to its folder, and where a system install puts them.
LOCATIONS: dict[str, tuple[str, str]] = {
    "emoji-datasource-twitter": ("package", ""),
    "emoji-datasource-google": ("package", ""),
    "emoji-datasource-facebook": ("package", ""),
    "emoji-datasource-apple": ("package", ""),
    "emojibase-data": ("package", ""),
    **{
        f"@iconify-json/{name}": ("package", "")
        for name in (
            "noto-v1",
            "emojione",
            "emojione-v1",
            "emojione-monotone",
            "fxemoji",
            "streamline-emojis",
        )
    },
    "tuxpaint-stamps-default": ("usr/share/tuxpaint/stamps", "/usr/share/tuxpaint/stamps"),
    "openclipart-png": ("usr/share/openclipart/png", "/usr/share/openclipart/png"),
    "openclipart-svg": ("usr/share/openclipart/svg", "/usr/share/openclipart/svg"),
    "dataset-fashion-mnist": (
        "usr/share/datasets/fashion-mnist",
        "/usr/share/datasets/fashion-mnist",
    ),
    "oxygen-icon-theme": ("usr/share/icons/oxygen", "/usr/share/icons/oxygen"),
    "adwaita-icon-theme": ("usr/share/icons/Adwaita", "/usr/share/icons/Adwaita"),
    "papirus-icon-theme": ("usr/share/icons/Papirus", "/usr/share/icons/Papirus"),
    "wordnet-base": ("usr/share/wordnet", "/usr/share/wordnet"),
}

GROUPS: dict[str, tuple[str, ...]] = {
    "emoji": (
        "emoji-datasource-twitter",
        "emoji-datasource-google",
        "emoji-datasource-facebook",
        "emoji-datasource-apple",
        "emojibase-data",
    ),
    "emoji-styles": tuple(p.name for p in PACKAGES if p.name.startswith("@iconify-json/")),
    "tuxpaint": ("tuxpaint-stamps-default",),
    "openclipart": ("openclipart-png", "openclipart-svg"),
    "fashion-mnist": ("dataset-fashion-mnist",),
    "icons": ("oxygen-icon-theme", "adwaita-icon-theme", "papirus-icon-theme"),
    "curation": ("wordnet-base", "wordfreq"),
}


class InstallError(RuntimeError):
    """A package could not be installed (missing tool, no network, no apt lists)."""


def package(name: str) -> Package:
    for p in PACKAGES:
        if p.name == name:
            return p
    raise KeyError(f"unknown source package {name!r}; known: {', '.join(p.name for p in PACKAGES)}")


def source_path(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where an installed source's files are: the data directory first, then a system install.

    Raises ``FileNotFoundError`` naming the install command when neither exists.
    """
    p = package(name)
    inner, system = LOCATIONS[name]
    local = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR) / p.folder / inner
    if local.exists():
        return local
    if system and Path(system).exists():
        return Path(system)
    raise FileNotFoundError(
        f"source {name!r} is not installed at {local}"
        + (f" or {system}" if system else "")
        + f"; run `cliplab data install --only {name}`"
    )


def _run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(list(cmd), cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise InstallError(f"`{cmd[0]}` is not available: {e}") from e
    except subprocess.CalledProcessError as e:
        raise InstallError(
            f"`{' '.join(cmd)}` failed ({e.returncode}): {e.stderr.strip()[-800:]}"
        ) from e
    return out.stdout


def _untar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # refuses absolute paths, links out of dest...
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(dest)  # noqa: S202


def _install_npm(p: Package, dest: Path) -> str:
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        _run(["npm", "pack", "--silent", f"{p.name}@{p.version}", "--pack-destination", tmp])
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise InstallError(f"npm pack {p.name}@{p.version} produced {tarballs}")
        with AtomicDirectory(dest) as staging:
            _untar(tarballs[0], staging)
    return p.version


def _apt_download(name: str, tmp: Path) -> Path:
    try:
        _run(["apt-get", "download", "-q", name], cwd=tmp)
    except InstallError as first:
        # no package lists yet (a fresh container): they need root to fetch
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            _run(["apt-get", "update", "-q"])
            _run(["apt-get", "download", "-q", name], cwd=tmp)
        else:
            raise InstallError(
                f"{first}\n`apt-get download {name}` failed and fetching the package lists needs "
                f"root: run `sudo apt-get update` once (or `sudo apt-get install --no-install-recommends "
                f"{name}`, which the builders also find), then re-run"
            ) from first
    debs = list(tmp.glob(f"{name}_*.deb"))
    if len(debs) != 1:
        raise InstallError(f"apt-get download {name} produced {debs}")
    return debs[0]


def _install_apt(p: Package, dest: Path) -> str:
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        deb = _apt_download(p.name, Path(tmp))
        version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
        with AtomicDirectory(dest) as staging:
            _run(["dpkg-deb", "-x", str(deb), str(staging)])
    return version


def _install_pip(p: Package, dest: Path) -> str:
    if importlib.util.find_spec(p.name) is None:
        _run([sys.executable, "-m", "pip", "install", "-q", f"{p.name}=={p.version}"])
    dest.mkdir(parents=True)
    return p.version


def install(
    names: Sequence[str] | None = None,
    data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Install ``names`` (all packages by default) into ``data_dir``; returns each marker.

    Idempotent: a package whose marker exists is skipped unless ``force``. Failures are
    logged and collected (``{"error": ...}``) so one missing tool does not stop the rest.
    """
    root = Path(data_dir)
    selected = [package(n) for n in names] if names else list(PACKAGES)
    results: dict[str, dict] = {}
    for p in selected:
        dest = root / p.folder
        marker = dest / MARKER
        # a pip package lives in the environment, not the data directory: ask the environment
        present = (
            importlib.util.find_spec(p.name) is not None if p.kind == "pip" else marker.exists()
        )
        if present and marker.exists() and not force:
            results[p.name] = json.loads(marker.read_text())
            log(f"  ok      {p.name:<28} {results[p.name].get('version', '')} (installed)")
            continue
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        log(f"  install {p.name:<28} ({p.kind}) {p.what}")
        start = time.perf_counter()
        try:
            version = {"npm": _install_npm, "apt": _install_apt, "pip": _install_pip}[p.kind](
                p, dest
            )
        except InstallError as e:
            log(f"  FAILED  {p.name}: {e}")
            results[p.name] = {"name": p.name, "error": str(e)}
            continue
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        info = {
            "name": p.name,
            "kind": p.kind,
            "version": version,
            "seconds": round(seconds, 1),
            "bytes": size,
        }
        write_json(marker, info, indent=1)
        results[p.name] = info
        log(f"          {p.name:<28} {version} in {seconds:.1f} s, {size / 1e6:.1f} MB")
    return results


def expand_names(items: Sequence[str]) -> list[str]:
    """Package names from a mix of package names and group names ("emoji", "icons"...)."""
    names: list[str] = []
    for item in items:
        for name in GROUPS.get(item, (item,)):
            package(name)  # validates
            if name not in names:
                names.append(name)
    return names
