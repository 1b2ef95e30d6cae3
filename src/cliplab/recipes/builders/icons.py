"""Desktop icon themes: the same named concept ("document-print", "user-trash") drawn in
several styles, with the freedesktop icon name as the only text.

Which themes, and why:
- Oxygen (LGPL-3+): about 2,000 full-colour PNG icons, the largest PNG theme;
- Adwaita (CC-BY-SA-3.0 or LGPL-3): 363 full-colour PNGs (its symbolic, monochrome icons are
  left out: one flat glyph per concept teaches little);
- Papirus (GPL-3): 11,500 SVG names, mostly application logos whose names say little
  ("org.gnome.Maps"); only the names another theme also has are rendered (``papirus="shared"``,
  about 600: the same concept in a third style), and only with cairosvg (``cliplab[svg]``).
Per icon, the size nearest 64 px is taken. Output: ``shards/icons``, training only.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path

from cliplab.recipes.builders import common
from cliplab.recipes.captions import sample_captions
from cliplab.recipes.install import source_path

BUILDER_VERSION = 2  # 2: caption_fn moved to cliplab.recipes.captions
LICENSES = {
    "oxygen": "LGPL-3.0-or-later (Oxygen icons)",
    "adwaita": "CC-BY-SA-3.0 or LGPL-3.0 (Adwaita icons)",
    "papirus": "GPL-3.0 (Papirus icons)",
}
PACKAGES = {
    "oxygen": "oxygen-icon-theme",
    "adwaita": "adwaita-icon-theme",
    "papirus": "papirus-icon-theme",
}
TARGET = 64
MAX_SIDE = 128
SHARD_SIZE = 1000


def _size_of(folder: str) -> int:
    head = folder.split("@")[0].split("x")[0]
    return int(head) if head.isdigit() else 0


def _preference(size: int) -> tuple[int, int]:
    """Sort key: sizes at least TARGET first (smallest of those), then the largest below."""
    return (0, size) if size >= TARGET else (1, -size)


def find_icons(root: Path, theme: str) -> dict[tuple[str, str], Path]:
    """``(context, name) -> file`` at the preferred size: PNGs for oxygen and adwaita (no
    symbolic icons), SVGs for papirus. Links count (Papirus aliases one drawing by many names)."""
    base = root / "base" if (root / "base").is_dir() else root
    suffix = ".svg" if theme == "papirus" else ".png"
    found: dict[tuple[str, str], tuple[tuple[int, int], Path]] = {}
    size_dirs = sorted(p for p in base.iterdir() if p.is_dir() and _size_of(p.name))
    if theme == "papirus":  # SVG: any size renders at any size; one folder is enough
        size_dirs = [p for p in size_dirs if p.name == f"{TARGET}x{TARGET}"] or size_dirs
    for size_dir in size_dirs:
        size = _size_of(size_dir.name)
        if "@" in size_dir.name:
            continue
        for file in size_dir.rglob(f"*{suffix}"):
            name = file.name[: -len(suffix)]
            if "symbolic" in name or not file.exists():  # dangling link
                continue
            context = file.parent.name
            key = (context, name)
            rank = _preference(size)
            if key not in found or rank < found[key][0]:
                found[key] = (rank, file)
    return {k: v[1] for k, v in sorted(found.items())}


def build(
    sources: Path,
    out: Path,
    *,
    force: bool = False,
    log: common.Log = print,
    only: Collection[str] | None = None,
    papirus: str = "shared",
) -> list[common.Output]:
    """``shards/icons`` from the installed themes (see the module docstring)."""
    if not common.wanted(only, "shards", "icons"):
        return []
    from cliplab.data.shardwriter import ShardWriter

    themes: dict[str, dict[tuple[str, str], Path]] = {}
    roots: dict[str, Path] = {}
    for theme, package in PACKAGES.items():
        if theme == "papirus" and papirus == "none":
            continue
        try:
            roots[theme] = source_path(package, sources)
        except FileNotFoundError as e:
            log(f"  skip {theme}: {e}")
            continue
        themes[theme] = find_icons(roots[theme], theme)
    if not themes:
        raise FileNotFoundError(
            "no icon theme is installed (oxygen-icon-theme, adwaita-icon-theme, papirus-icon-theme)"
        )
    svg = common.svg_available()
    if "papirus" in themes:
        if not svg:
            log(
                "  note: cairosvg is not installed; Papirus (SVG) is skipped (pip install 'cliplab[svg]')"
            )
            del themes["papirus"]
        elif papirus == "shared":
            others = {name for t, icons in themes.items() if t != "papirus" for _, name in icons}
            themes["papirus"] = {k: v for k, v in themes["papirus"].items() if k[1] in others}
    listing = sorted(
        (t, c, n, p.stat().st_size) for t, icons in themes.items() for (c, n), p in icons.items()
    )
    fp = common.fingerprint(
        builder="icons",
        version=BUILDER_VERSION,
        papirus=papirus,
        shard_size=SHARD_SIZE,
        svg=svg,
        max_side=MAX_SIDE,
        inputs=listing,
    )
    path = out / "shards" / "icons"
    hit = common.cached(path, fp, force)
    if hit is not None:
        return [hit]
    start = time.perf_counter()
    log(f"  building shards/icons ({', '.join(f'{t} {len(i)}' for t, i in themes.items())})")
    per_theme: dict[str, int] = {}
    with common.staging(path) as tmp:
        writer = ShardWriter(tmp, prefix="shard", max_samples=SHARD_SIZE)
        with writer:
            for theme, icons in themes.items():
                for (context, name), file in icons.items():
                    try:
                        if file.suffix == ".svg":
                            png = common.png_bytes(common.render_svg(file, TARGET))
                        else:
                            png = common.prepare_png(file, MAX_SIDE)
                    except (OSError, ValueError) as e:
                        log(f"  cannot read {file}: {e}")
                        writer.fail("unreadable-image")
                        continue
                    meta = {"kind": "icon", "name": name, "context": context, "theme": theme}
                    meta["captions"] = sample_captions(meta, seed=(theme, context, name), count=4)
                    writer.write(
                        common.safe_key(f"{theme}-{context}-{name}"), {"png": png, "json": meta}
                    )
                    per_theme[theme] = per_theme.get(theme, 0) + 1
        stats = writer.close()
    concepts = len({n for icons in themes.values() for _, n in icons})
    output = common.Output(
        "icons",
        "shards",
        str(path),
        stats["samples"],
        seconds=time.perf_counter() - start,
        details={
            "themes": per_theme,
            "concepts": concepts,
            "failures": stats["failures"],
            "licenses": {t: LICENSES[t] for t in per_theme},
        },
    )
    return [
        common.record(
            path,
            fp,
            output,
            {
                "caption_fn": "cliplab.recipes.captions:draw_caption",
                "shards": [Path(s).name for s in stats["shards"]],
            },
        )
    ]


BUILDER = common.Builder(
    "icons",
    build,
    packages=("oxygen-icon-theme", "adwaita-icon-theme", "papirus-icon-theme"),
    shards=("icons",),
)
