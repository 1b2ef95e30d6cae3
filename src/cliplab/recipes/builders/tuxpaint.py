"""Tux Paint stamps: drawings for training, photo cut-outs held out for evaluation.

Each stamp is an image (PNG, or SVG only) with a ``.txt`` beside it: an English description
on the first line ("A zebra.") and ``<lang>.utf8=<translation>`` lines after it. A stamp's
*kind* decides where it may go:

- ``cartoon``: under a ``cartoon/`` folder, or drawn as SVG (its PNG, if any, is a rendering);
- ``symbol``: under ``symbols/`` (letters, signs, money, chess);
- ``drawing``: a PNG-only stamp outside those folders that is not a photograph; listed by
  hand in :data:`NOT_PHOTOS` (reviewed by eye for tuxpaint-stamps-default 2022.06.04: flags,
  road signs, clothes outlines, seasonal cartoons; faint or unclear images are listed too,
  so that the photo sets stay clean);
- ``photo``: every other PNG stamp: photo cut-outs (animals, fruit, tools...).

Outputs:
- ``shards/tuxpaint-cartoons``: every cartoon and drawing; ``shards/tuxpaint-symbols``: the
  symbols (letters, signs, money, chess). Training data. SVG-only stamps are rendered when
  cairosvg is installed (``cliplab[svg]``) and skipped (counted) otherwise;
- ``eval/tuxpaint-photos-emoji``: photos whose English description names an emoji concept
  (whole words, longest label wins, a plural "s"/"es"/"ies" allowed, then the reviewed
  corrections of :data:`CONCEPT_OVERRIDES`), classified among those concepts: a domain-shift test for a model trained on emoji drawings;
- ``eval/tuxpaint-photos``: retrieval, every photo with its English description (mirrored
  duplicates and repeated descriptions dropped, so each caption names one image); the
  translations are kept in ``index.jsonl`` for multilingual work.
No photo ever goes into shards.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cliplab.data.evalsets import EvalSetWriter
from cliplab.recipes.builders import common
from cliplab.recipes.captions import sample_captions
from cliplab.recipes.install import source_path

BUILDER_VERSION = 2  # 2: caption_fn moved to cliplab.recipes.captions
LICENSE = "GPL-2.0-or-later (Tux Paint stamps, tuxpaint-stamps-default)"
MAX_SIDE = 256
SHARD_SIZE = 250
#: Training shard sets by stamp kind (photos are never among them).
SHARD_SETS = {"tuxpaint-cartoons": ("cartoon", "drawing"), "tuxpaint-symbols": ("symbol",)}
TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cut-out photo of a {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
)

#: PNG-only stamps outside cartoon/ and symbols/ that are drawings (or too faint to call
#: photos), by path under the stamps directory without extension. Reviewed by eye.
NOT_PHOTOS = frozenset(
    str.split(
        """
animals/fish/shrimp animals/mammals/echidna animals/mammals/hedgehog clothes/button
clothes/t_baseballcap clothes/t_glove clothes/t_jacket clothes/t_pants clothes/t_poloshirt
clothes/t_scarf clothes/t_shirt clothes/t_sock clothes/t_tshirt food/pizza
household/dishes/glass household/dishes/mug medical/tooth naturalforces/lightningbolt
people/body_parts/eye plants/flowers/appooppanthady seasonal/christmas/Santa
seasonal/christmas/bow seasonal/christmas/hard_candy seasonal/christmas/lamp
seasonal/christmas/santahat seasonal/christmas/star seasonal/christmas/stocking
seasonal/christmas/tree seasonal/christmas/xmas_tp_bulb seasonal/easter/bluebird
seasonal/easter/bunny seasonal/easter/bunny-egg seasonal/easter/bunny-head
seasonal/easter/butterfly seasonal/easter/chick seasonal/easter/chick-hatched
seasonal/easter/chick-in-egg seasonal/easter/wrapped_chocolate_easter_egg
seasonal/easter/wrapped_chocolate_easter_egg_2 seasonal/halloween/bat_left
seasonal/halloween/blackcat seasonal/halloween/ghost seasonal/halloween/skull
seasonal/halloween/spider seasonal/hanukkah/dreydl seasonal/hanukkah/dreydl-gimmel
 seasonal/hanukkah/dreydl-hay
 seasonal/hanukkah/dreydl-nun
 seasonal/hanukkah/dreydl-shin
 seasonal/hanukkah/holiday_candle
seasonal/hanukkah/menorah seasonal/newyears/confetti seasonal/newyears/fireworks
seasonal/newyears/fireworks2 seasonal/newyears/party-hat seasonal/newyears/party-horn-in
seasonal/newyears/party-horn-out space/planets/0_sun sports/rugby_goal_posts
town/flags/blue-and-yellowflag town/flags/checkeredflag town/flags/greenflag
town/flags/redflag town/flags/whiteflag town/flags/yellowflag
town/monuments/inukshuk-outline town/roadsigns/arrow town/roadsigns/crossroads
town/roadsigns/dead_end_sign town/roadsigns/hospital town/roadsigns/no_entry_sign
town/roadsigns/no_uturn town/roadsigns/railroad_crossing town/roadsigns/roundabout
town/roadsigns/school_sign town/roadsigns/stop town/roadsigns/stoplight_01_red
town/roadsigns/stoplight_02_yellow town/roadsigns/stoplight_03_green
town/roadsigns/t-junction town/roadsigns/toilets town/roadsigns/xing_ped
town/roadsigns/xing_school  town/roadsigns/yield
vehicles/7spoke256
"""
    )
)

#: Reviewed corrections to the automatic matching, by stamp: the right concept, or None when
#: the description names a label in another sense ("a sea lion" is not a lion, "a hot air
#: balloon" not the party balloon, "a VW Beetle" not the insect).
CONCEPT_OVERRIDES: dict[str, str | None] = {
    "animals/birds/rainbow-lorikeet": None,
    "animals/fish/coraltrout": None,
    "animals/insects/hoverfly": None,
    "animals/mammals/aquatic/sea_lion": None,
    "animals/mammals/bovines/gnu-baby": None,
    "animals/mammals/bovines/gnu-baby-stand": None,
    "animals/mammals/bovines/sheep_lamb": None,
    "animals/mammals/bears/toys/edward_bear": "teddy bear",
    "plants/flowers/adeenia": None,
    "plants/flowers/whitestar-petunia": None,
    "plants/trees/rambutan": None,
    "space/planets/1_mercury": None,
    "space/planets/6_saturn": "ringed planet",
    "sports/cricketball": "cricket game",
    "vehicles/auto/beetle": None,
    "vehicles/emergency/firetruck": "fire engine",
    "vehicles/emergency/sedan_police": None,
    "vehicles/flight/balloon360": None,
    "vehicles/wheel_tractor": None,
}


@dataclass(frozen=True)
class Stamp:
    rel: str  # path under the stamps directory, without extension
    png: Path | None
    svg: Path | None
    description: str
    translations: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        parts = self.rel.split("/")
        if "cartoon" in parts or self.svg is not None:
            return "cartoon"
        if parts[0] == "symbols":
            return "symbol"
        if self.rel in NOT_PHOTOS:
            return "drawing"
        return "photo"

    @property
    def mirrored(self) -> bool:
        return self.rel.endswith("_mirror")

    def meta(self) -> dict[str, Any]:
        parts = self.rel.split("/")
        return {
            "kind": "tuxpaint",
            "stamp": self.rel,
            "name": parts[-1],
            "category": "/".join(p for p in parts[:-1] if p != "cartoon"),
            "stamp_kind": self.kind,
            "description": self.description,
            "translations": self.translations,
        }


def parse_description(text: str) -> tuple[str, dict[str, str]]:
    """A stamp ``.txt``: the English first line, and ``{"de": "Ein Dachs.", ...}``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    english = lines[0] if lines else ""
    translations = {}
    for line in lines[1:]:
        key, sep, value = line.partition("=")
        if sep and key.endswith(".utf8") and value.strip():
            translations[key[: -len(".utf8")]] = value.strip()
    return english, translations


def stamps_root(sources: Path) -> Path:
    return source_path("tuxpaint-stamps-default", sources)


def load_stamps(root: Path) -> tuple[list[Stamp], dict[str, int]]:
    """Every stamp with a description, sorted by path; and counts of what was left out."""
    images: dict[str, dict[str, Path]] = {}
    for path in root.rglob("*"):
        if path.suffix in (".png", ".svg") and path.is_file():
            images.setdefault(str(path.relative_to(root).with_suffix("")), {})[path.suffix] = path
    stamps, skipped = [], {"no-description": 0}
    for rel in sorted(images):
        files = images[rel]
        txt = root / f"{rel}.txt"
        if not txt.is_file():
            skipped["no-description"] += 1
            continue
        english, translations = parse_description(txt.read_text(encoding="utf-8", errors="replace"))
        if not english:
            skipped["no-description"] += 1
            continue
        stamps.append(Stamp(rel, files.get(".png"), files.get(".svg"), english, translations))
    return stamps, skipped


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


class ConceptMatcher:
    """Finds the emoji concept a description names: whole-word, longest label first."""

    def __init__(self, labels: dict[str, Any]) -> None:
        self.variants: dict[tuple[str, ...], str] = {}
        for label in labels:
            if ":" in label:  # flags, keycaps, families: never named that way in prose
                continue
            words = tuple(_words(label))
            if not words:
                continue
            last = words[-1]
            forms = {last, last + "s", last + "es"}
            if last.endswith("y"):
                forms.add(last[:-1] + "ies")
            for form in forms:
                self.variants.setdefault((*words[:-1], form), label)
            self.variants[words] = label  # an exact label beats another label's plural
        self.longest = max((len(k) for k in self.variants), default=0)

    def __call__(self, text: str) -> str | None:
        words = _words(text)
        for n in range(min(self.longest, len(words)), 0, -1):
            for i in range(len(words) - n + 1):
                label = self.variants.get(tuple(words[i : i + n]))
                if label is not None:
                    return label
        return None


def _image(stamp: Stamp, max_side: int) -> Any:
    if stamp.png is not None:
        return common.open_image(stamp.png, max_side)
    assert stamp.svg is not None
    return common.render_svg(stamp.svg, max_side)


def build(
    sources: Path,
    out: Path,
    *,
    force: bool = False,
    log: common.Log = print,
    only: Collection[str] | None = None,
    max_side: int = MAX_SIDE,
) -> list[common.Output]:
    """The drawings' shards and the two photo evaluation sets, or those in ``only`` (see the
    module docstring)."""
    root = stamps_root(sources)
    stamps, skipped = load_stamps(root)
    listing = common.file_listing(
        root, [p for s in stamps for p in (s.png, s.svg, root / f"{s.rel}.txt") if p is not None]
    )
    svg = common.svg_available()
    outputs = []

    # -- training shards: everything but photos ------------------------------------------
    for name, kinds in SHARD_SETS.items():
        if not common.wanted(only, "shards", name):
            continue
        outputs.append(
            _build_shards(
                name, kinds, stamps, listing, out, force=force, log=log, max_side=max_side, svg=svg
            )
        )

    photos = [s for s in stamps if s.kind == "photo" and not s.mirrored]
    if common.wanted(only, "eval", "tuxpaint-photos"):
        outputs.append(
            _build_retrieval(photos, listing, out, force=force, log=log, max_side=max_side)
        )
    if not common.wanted(only, "eval", "tuxpaint-photos-emoji"):
        return outputs
    try:
        from cliplab.recipes.builders.emoji import load_concepts

        concepts = load_concepts(sources)
    except FileNotFoundError as e:
        log(f"  skip eval/tuxpaint-photos-emoji: {e}")
    else:
        outputs.append(
            _build_emoji_photos(
                photos, concepts, listing, out, force=force, log=log, max_side=max_side
            )
        )
    return outputs


def _build_shards(
    name: str,
    kinds: tuple[str, ...],
    stamps: list[Stamp],
    listing: Any,
    out: Path,
    *,
    force: bool,
    log: common.Log,
    max_side: int,
    svg: bool,
) -> common.Output:
    from cliplab.data.shardwriter import ShardWriter

    fp = common.fingerprint(
        builder="tuxpaint-shards",
        version=BUILDER_VERSION,
        kinds=kinds,
        max_side=max_side,
        shard_size=SHARD_SIZE,
        svg=svg,
        not_photos=sorted(NOT_PHOTOS),
        inputs=listing,
    )
    path = out / "shards" / name
    hit = common.cached(path, fp, force)
    if hit is not None:
        return hit
    start = time.perf_counter()
    log(f"  building shards/{name}")
    selected = [s for s in stamps if s.kind in kinds]
    if not svg and any(s.png is None for s in selected):
        log(
            "  note: cairosvg is not installed; SVG-only stamps are skipped (pip install 'cliplab[svg]')"
        )
    counts: dict[str, int] = {}
    with common.staging(path) as tmp:
        writer = ShardWriter(tmp, prefix="shard", max_samples=SHARD_SIZE)
        with writer:
            for stamp in selected:
                if stamp.png is None and not svg:
                    writer.fail("svg-renderer-missing")
                    continue
                try:
                    image = _image(stamp, max_side)
                except (OSError, ValueError) as e:
                    log(f"  cannot read {stamp.rel}: {e}")
                    writer.fail("unreadable-image")
                    continue
                meta = stamp.meta()
                meta["captions"] = sample_captions(meta, seed=stamp.rel)
                unchanged = stamp.png is not None and max(image.size) == max(_size(stamp.png))
                png = stamp.png.read_bytes() if unchanged else common.png_bytes(image)  # type: ignore[union-attr]
                writer.write(common.safe_key(stamp.rel), {"png": png, "json": meta})
                counts[stamp.kind] = counts.get(stamp.kind, 0) + 1
        stats = writer.close()
    output = common.Output(
        name,
        "shards",
        str(path),
        stats["samples"],
        seconds=time.perf_counter() - start,
        details={"kinds": counts, "failures": stats["failures"], "license": LICENSE},
    )
    extra = {
        "caption_fn": "cliplab.recipes.captions:draw_caption",
        "shards": [Path(s).name for s in stats["shards"]],
    }
    return common.record(path, fp, output, extra)


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _build_retrieval(
    photos: list[Stamp], listing: Any, out: Path, *, force: bool, log: common.Log, max_side: int
) -> common.Output:
    fp = common.fingerprint(
        builder="tuxpaint-retrieval",
        version=BUILDER_VERSION,
        max_side=max_side,
        not_photos=sorted(NOT_PHOTOS),
        inputs=listing,
    )
    path = out / "eval" / "tuxpaint-photos"
    hit = common.cached(path, fp, force)
    if hit:
        return hit
    start = time.perf_counter()
    log("  building eval/tuxpaint-photos (retrieval)")
    seen: set[str] = set()
    dropped = 0
    writer = EvalSetWriter(
        path,
        "retrieval",
        name="tuxpaint-photos",
        description="Tux Paint photo cut-outs with their English descriptions (text<->image retrieval); each caption names one image.",
        source="tuxpaint-stamps-default (Debian), /usr/share/tuxpaint/stamps",
        license=LICENSE,
    )
    with writer:
        for stamp in photos:
            key = stamp.description.strip().lower()
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            image = common.open_image(stamp.png, max_side)  # type: ignore[arg-type]
            writer.add(
                image,
                captions=[stamp.description],
                extra={"stamp": stamp.rel, "translations": stamp.translations},
            )
    output = common.Output(
        "tuxpaint-photos",
        "retrieval",
        str(path),
        len(writer),
        seconds=time.perf_counter() - start,
        details={"duplicate_descriptions_dropped": dropped},
    )
    return common.record(path, fp, output)


def _build_emoji_photos(
    photos: list[Stamp],
    concepts: list[Any],
    listing: Any,
    out: Path,
    *,
    force: bool,
    log: common.Log,
    max_side: int,
) -> common.Output:
    by_label = {c.label: c for c in concepts if c.category != "Component"}
    match = ConceptMatcher(by_label)
    matched = [(s, CONCEPT_OVERRIDES.get(s.rel, match(s.description))) for s in photos]
    matched = [(s, label) for s, label in matched if label is not None and label in by_label]
    labels = sorted({label for _, label in matched}, key=lambda lab: by_label[lab].sort_order)
    fp = common.fingerprint(
        builder="tuxpaint-emoji",
        version=BUILDER_VERSION,
        max_side=max_side,
        not_photos=sorted(NOT_PHOTOS),
        overrides=sorted(CONCEPT_OVERRIDES.items(), key=str),
        labels=labels,
        inputs=listing,
    )
    path = out / "eval" / "tuxpaint-photos-emoji"
    hit = common.cached(path, fp, force)
    if hit:
        return hit
    start = time.perf_counter()
    log(f"  building eval/tuxpaint-photos-emoji ({len(matched)} photos, {len(labels)} concepts)")
    index = {label: i for i, label in enumerate(labels)}
    writer = EvalSetWriter(
        path,
        "classification",
        name="tuxpaint-photos-emoji",
        description="Tux Paint photo cut-outs whose English description names an emoji concept, classified among those concepts (emoji labels as class names): drawings -> photos domain shift.",
        source="tuxpaint-stamps-default (Debian); class names: emojibase-data 17.0.0 labels",
        license=f"{LICENSE}; labels MIT",
        classnames=labels,
        templates=TEMPLATES,
        class_info=[
            {
                "hexcode": by_label[lab].hexcode,
                "emoji": by_label[lab].emoji,
                "category": by_label[lab].category,
            }
            for lab in labels
        ],
        meta={
            "matching": "whole words of the English description, longest emoji label first, plural -s/-es/-ies allowed"
        },
    )
    with writer:
        for stamp, label in matched:
            image = common.open_image(stamp.png, max_side)  # type: ignore[arg-type]
            writer.add(
                image,
                label=index[label],
                extra={
                    "stamp": stamp.rel,
                    "description": stamp.description,
                    "hexcode": by_label[label].hexcode,
                },
            )
    output = common.Output(
        "tuxpaint-photos-emoji",
        "classification",
        str(path),
        len(writer),
        seconds=time.perf_counter() - start,
        details={"classes": len(labels)},
    )
    return common.record(path, fp, output)


BUILDER = common.Builder(
    "tuxpaint",
    build,
    packages=("tuxpaint-stamps-default",),
    shards=tuple(SHARD_SETS),
    evalsets=("tuxpaint-photos", "tuxpaint-photos-emoji"),
    extra_packages={"eval/tuxpaint-photos-emoji": ("emoji-datasource-twitter", "emojibase-data")},
)
