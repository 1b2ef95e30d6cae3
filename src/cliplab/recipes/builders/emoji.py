"""Emoji: Twitter-style shards for training, other styles as zero-shot evaluation sets.

What an emoji *concept* is here: one entry of emoji-datasource's ``emoji.json`` (1,911 in
16.0.0): a fully-qualified emoji with its skin-tone variants folded into it. Its id is the
hexcode without the FE0F variation selector (the join key with emojibase-data, 1,911 of 1,911
match), its name the emojibase CLDR label ("cat face"), its words the emojibase tags
("animal, cat, face, kitten, kitty, pet").

Outputs (``out`` is the data directory, ``data/`` by default):
- ``shards/emoji-twitter``: 1,911 base emoji, 64 px RGBA PNG + ``json`` metadata (captions
  drawn per epoch by :func:`cliplab.recipes.captions.draw_caption`);
- ``shards/emoji-twitter-skins``: the 1,875 skin-tone variants (same concepts, more images);
- ``eval/emoji-google``: the held-out style, 1,911 images, one class per concept (chance 1/1911);
- ``eval/emoji-google-pictorial``: the 1,412 concepts outside the Flags, Symbols and Component
  categories (the subset a reference trainer used: pictures rather than signs);
- ``eval/emoji-twitter``: the training style, as a sanity check (in-distribution accuracy);
- ``eval/emoji-twitter-skins``: every skin-tone variant of the 323 concepts that have them,
  labelled with the base concept: the training style on images a model has not seen when
  the skins shards stay out of training (the robustness study's in-distribution test);
- ``eval/emoji-facebook``, ``eval/emoji-apple``: more held-out styles, for local evaluation only
  (their licenses do not allow redistribution; nothing here is ever committed).
Google emoji never go into shards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cliplab.data.evalsets import EvalSetWriter
from cliplab.recipes.builders import common
from cliplab.recipes.captions import EVAL_LANGUAGES, sample_captions
from cliplab.recipes.install import source_path

BUILDER_VERSION = 4  # 2: templates chosen on validation styles; 3: caption_fn moved; 4: i18n
#: emojibase-data's locales besides English: labels and tags in each go into the metadata
#: (``i18n``) for multilingual captions (``captions.draw_caption_multilingual``).
LOCALES = (
    "bn", "da", "de", "es", "et", "fi", "fr", "hi", "hu", "it", "ja", "ko", "lt", "ms", "nb",
    "nl", "pl", "pt", "ru", "sv", "th", "uk", "vi", "zh", "zh-hant",
)  # fmt: skip
STYLES = ("twitter", "google", "facebook", "apple")
TRAIN_STYLE = "twitter"
EVAL_STYLES = ("google", "twitter", "facebook", "apple")
LICENSES = {
    "twitter": "CC-BY-4.0 (Twemoji graphics, Twitter Inc. and contributors); emoji-datasource MIT",
    "google": "Apache-2.0 (Noto Emoji); emoji-datasource MIT",
    "facebook": "Facebook emoji graphics: terms unclear; local evaluation only, never redistribute",
    "apple": "Apple emoji graphics: not licensed for redistribution or commercial use; local evaluation only",
}
METADATA_LICENSE = "emojibase-data: MIT; CLDR annotations: Unicode License"
#: Categories that are signs rather than pictures; the "pictorial" subset leaves them out.
NON_PICTORIAL = ("Flags", "Symbols", "Component")
#: Same wording as the bundled ``emoji`` template set (cliplab/assets/templates/emoji.json).
#: First chosen on the Apple and Facebook styles (2026-11-22, when they were validation styles;
#: they are test styles now); re-checked on the validation style, Emoji One, with the two
#: batch-512 recipe models (``python benchmarks/select_templates.py``,
#: benchmarks/results/select_templates.json): it ties with the bare label for the best top-1
#: (22.3%), so it stays. Without final periods: training captions have none.
TEMPLATES = (
    "{}",
    "an emoji of a {}",
    "{} emoji",
    "emoji: {}",
    "{} icon",
    "image of a {}",
    "a {}",
    "an icon of a {}",
    "a cartoon {}",
)
IMAGE_SIZE = 64
SHARD_SIZE = 500  # samples per shard: several shards, so loader workers split them


def strip_fe0f(hexcode: str) -> str:
    """``"2764-FE0F"`` -> ``"2764"``: the join key between emoji-datasource and emojibase."""
    return "-".join(p for p in hexcode.upper().split("-") if p != "FE0F")


@dataclass(frozen=True)
class Concept:
    """A base emoji with its emojibase label and tags, and its image file names."""

    hexcode: str  # without FE0F
    label: str
    tags: tuple[str, ...]
    name: str
    short_names: tuple[str, ...]
    category: str
    subcategory: str
    image: str  # file name in img/<style>/64/
    has_image: dict[str, bool]
    sort_order: int
    emoji: str = ""
    skins: tuple[dict[str, Any], ...] = field(
        default=()
    )  # {"hexcode", "image", "label", "has_image"}
    i18n: dict[str, dict[str, Any]] = field(default_factory=dict)  # locale -> label, tags

    def meta(self, style: str) -> dict[str, Any]:
        return {
            "kind": "emoji",
            "hexcode": self.hexcode,
            "emoji": self.emoji,
            "label": self.label,
            "tags": list(self.tags),
            "name": self.name,
            "short_names": list(self.short_names),
            "category": self.category,
            "subcategory": self.subcategory,
            "style": style,
            "i18n": self.i18n,
        }


def package_root(style: str, sources: Path) -> Path:
    return source_path(f"emoji-datasource-{style}", sources)


def emojibase_root(sources: Path) -> Path:
    return source_path("emojibase-data", sources)


def load_concepts(sources: Path, style: str = TRAIN_STYLE) -> list[Concept]:
    """The 1,911 concepts, in emoji-datasource's sort order, joined with emojibase English."""
    datasource = json.loads(
        (package_root(style, sources) / "emoji.json").read_text(encoding="utf-8")
    )
    base = json.loads((emojibase_root(sources) / "en" / "data.json").read_text(encoding="utf-8"))
    by_hex = {strip_fe0f(e["hexcode"]): e for e in base}
    translations = load_translations(sources)
    skins_by_hex = {strip_fe0f(s["hexcode"]): s for e in base for s in e.get("skins", [])}
    concepts = []
    missing = []
    for entry in sorted(datasource, key=lambda e: e["sort_order"]):
        key = strip_fe0f(entry["unified"])
        info = by_hex.get(key)
        if info is None:
            missing.append(entry["unified"])
            continue
        skins = []
        for variation in (entry.get("skin_variations") or {}).values():
            skin_key = strip_fe0f(variation["unified"])
            skin_info = skins_by_hex.get(skin_key)
            skins.append(
                {
                    "hexcode": skin_key,
                    "image": variation["image"],
                    "label": skin_info["label"] if skin_info else info["label"],
                    "has_image": {s: bool(variation.get(f"has_img_{s}")) for s in STYLES},
                }
            )
        concepts.append(
            Concept(
                hexcode=key,
                label=info["label"],
                tags=tuple(info.get("tags") or ()),
                name=entry.get("name") or "",
                short_names=tuple(entry.get("short_names") or ()),
                category=entry.get("category") or "",
                subcategory=entry.get("subcategory") or "",
                image=entry["image"],
                has_image={s: bool(entry.get(f"has_img_{s}")) for s in STYLES},
                sort_order=int(entry["sort_order"]),
                emoji=info.get("emoji", ""),
                skins=tuple(skins),
                i18n={loc: by[key] for loc, by in translations.items() if key in by},
            )
        )
    if missing:
        raise ValueError(f"{len(missing)} emoji have no emojibase entry (first: {missing[:5]})")
    labels = [c.label for c in concepts]
    if len(set(labels)) != len(labels):
        raise ValueError("emojibase labels are not unique; concepts would be ambiguous")
    return concepts


def load_translations(sources: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{locale: {hexcode: {"label", "tags"}}}`` from emojibase-data's other locales (those
    present in the package)."""
    root = emojibase_root(sources)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for loc in LOCALES:
        path = root / loc / "data.json"
        if not path.is_file():
            continue
        entries = json.loads(path.read_text(encoding="utf-8"))
        out[loc] = {
            strip_fe0f(e["hexcode"]): {"label": e["label"], "tags": list(e.get("tags") or [])}
            for e in entries
            if e.get("label")
        }
    return out


def _inputs(style: str, sources: Path) -> tuple[Path, list[tuple[str, int]]]:
    root = package_root(style, sources)
    images = root / "img" / style / "64"
    files = [
        root / "emoji.json",
        emojibase_root(sources) / "en" / "data.json",
        *(emojibase_root(sources) / loc / "data.json" for loc in LOCALES),
        *images.glob("*.png"),
    ]
    files = [f for f in files if f.is_file()]
    return images, [(p.name, p.stat().st_size) for p in sorted(files)]


def build_shards(
    name: str,
    style: str,
    concepts: list[Concept],
    sources: Path,
    out: Path,
    *,
    skins: bool,
    force: bool,
    log: common.Log,
) -> common.Output:
    from cliplab.data.shardwriter import ShardWriter

    images, listing = _inputs(style, sources)
    fp = common.fingerprint(
        builder="emoji-shards",
        version=BUILDER_VERSION,
        style=style,
        skins=skins,
        shard_size=SHARD_SIZE,
        inputs=listing,
    )
    path = out / "shards" / name
    hit = common.cached(path, fp, force)
    if hit:
        return hit
    start = time.perf_counter()
    log(f"  building shards/{name} ({style}{', skin tones' if skins else ''})")
    with common.staging(path) as tmp:
        writer = ShardWriter(tmp, prefix="shard", max_samples=SHARD_SIZE)
        with writer:
            for c in concepts:
                variants = (
                    [(s["hexcode"], s["image"], s["label"], s["has_image"][style]) for s in c.skins]
                    if skins
                    else [(c.hexcode, c.image, None, c.has_image[style])]
                )
                for hexcode, image, tone_label, has_image in variants:
                    file = images / image
                    if not has_image or not file.is_file():
                        writer.fail("no-image-in-style")
                        continue
                    meta = c.meta(style)
                    if tone_label:
                        meta.update(hexcode=hexcode, base_hexcode=c.hexcode, tone_label=tone_label)
                    meta["captions"] = sample_captions(meta, seed=(style, hexcode))
                    writer.write(common.safe_key(hexcode), {"png": file.read_bytes(), "json": meta})
        stats = writer.close()
    output = common.Output(
        name,
        "shards",
        str(path),
        stats["samples"],
        seconds=time.perf_counter() - start,
        details={"failures": stats["failures"], "style": style, "license": LICENSES[style]},
    )
    return common.record(
        path,
        fp,
        output,
        {
            "caption_fn": "cliplab.recipes.captions:draw_caption",
            "shards": [Path(s).name for s in stats["shards"]],
        },
    )


def class_names(
    classes: list[Concept], language: str | None = None
) -> tuple[list[str], tuple[str, ...], int]:
    """(class names, templates, names left in English) of an evaluation set of ``classes``:
    English labels and the emoji templates, or ``language``'s labels (English where emojibase
    has none, counted) and the name alone as prompt."""
    if not language:
        return [c.label for c in classes], TEMPLATES, 0
    names = [c.i18n.get(language, {}).get("label") or c.label for c in classes]
    return names, ("{}",), sum(language not in c.i18n for c in classes)


def build_eval(
    name: str,
    style: str,
    concepts: list[Concept],
    classes: list[Concept],
    sources: Path,
    out: Path,
    *,
    force: bool,
    log: common.Log,
    description: str,
    skins: bool = False,
    language: str | None = None,
) -> common.Output:
    """One classification set: an image per concept of ``classes``, or with ``skins`` every
    skin-tone variant of them (labelled with the base concept). With ``language`` the class
    names are emojibase's labels in that locale (English where a label is missing, counted)
    and the only template is ``"{}"``: the name alone, in that language."""
    images, listing = _inputs(style, sources)
    classnames, templates, untranslated = class_names(classes, language)
    fp = common.fingerprint(
        builder="emoji-eval",
        version=BUILDER_VERSION,
        name=name,
        style=style,
        skins=skins,
        language=language,
        classes=[c.hexcode for c in classes],
        templates=templates,
        inputs=listing,
    )
    path = out / "eval" / name
    hit = common.cached(path, fp, force)
    if hit:
        return hit
    start = time.perf_counter()
    log(f"  building eval/{name} ({style}, {len(classes)} classes)")
    index = {c.hexcode: i for i, c in enumerate(classes)}
    missing = 0
    writer = EvalSetWriter(
        path,
        "classification",
        name=name,
        description=description,
        source=f"emoji-datasource-{style} 16.0.0 (img/{style}/64), labels from emojibase-data 17.0.0 (en)",
        license=f"{LICENSES[style]}; labels: {METADATA_LICENSE}",
        classnames=classnames,
        templates=templates,
        class_info=[
            {
                "hexcode": c.hexcode,
                "emoji": c.emoji,
                "category": c.category,
                "subcategory": c.subcategory,
            }
            for c in classes
        ],
        meta={
            "style": style,
            "language": language or "en",
            "concept": "base emoji (skin tones folded in), hexcode without FE0F",
        },
    )
    with writer:
        for c in concepts:
            if c.hexcode not in index:
                continue
            variants = (
                [(s["hexcode"], s["image"], s["has_image"][style]) for s in c.skins]
                if skins
                else [(c.hexcode, c.image, c.has_image[style])]
            )
            for hexcode, image, has_image in variants:
                file = images / image
                if not has_image or not file.is_file():
                    missing += 1
                    continue
                writer.add(
                    common.open_image(file),
                    label=index[c.hexcode],
                    extra={"hexcode": hexcode, "base_hexcode": c.hexcode},
                )
    output = common.Output(
        name,
        "classification",
        str(path),
        len(writer),
        seconds=time.perf_counter() - start,
        details={
            "classes": len(classes),
            "concepts_without_image": missing,
            **({"untranslated_labels": untranslated} if language else {}),
        },
    )
    return common.record(path, fp, output)


def build(
    sources: Path,
    out: Path,
    *,
    force: bool = False,
    log: common.Log = print,
    only: Collection[str] | None = None,
    styles: tuple[str, ...] = EVAL_STYLES,
) -> list[common.Output]:
    """The emoji outputs whose sources are installed, or those in ``only`` (see the module
    docstring)."""
    concepts = load_concepts(sources)
    outputs = []
    for name, skins in (("emoji-twitter", False), ("emoji-twitter-skins", True)):
        if common.wanted(only, "shards", name):
            outputs.append(
                build_shards(
                    name, TRAIN_STYLE, concepts, sources, out, skins=skins, force=force, log=log
                )
            )
    pictorial = [c for c in concepts if c.category not in NON_PICTORIAL]
    for style in styles:
        names = [f"emoji-{style}"]
        names += [f"emoji-{style}-skins"] if style == TRAIN_STYLE else []
        names += ["emoji-google-pictorial"] if style == "google" else []
        names += [f"emoji-google-{lang}" for lang in EVAL_LANGUAGES] if style == "google" else []
        if not any(common.wanted(only, "eval", n) for n in names):
            continue
        try:
            package_root(style, sources)
        except FileNotFoundError as e:
            log(f"  skip eval/emoji-{style}: {e}")
            continue
        role = (
            "the training style (in-distribution check)"
            if style == TRAIN_STYLE
            else "a held-out drawing style"
        )
        if common.wanted(only, "eval", f"emoji-{style}"):
            outputs.append(
                build_eval(
                    f"emoji-{style}",
                    style,
                    concepts,
                    concepts,
                    sources,
                    out,
                    force=force,
                    log=log,
                    description=f"Zero-shot emoji classification, {style} style ({role}): one image per concept, all {len(concepts)} concepts.",
                )
            )
        if style == TRAIN_STYLE and common.wanted(only, "eval", f"emoji-{style}-skins"):
            toned = [c for c in concepts if c.skins]
            outputs.append(
                build_eval(
                    f"emoji-{style}-skins",
                    style,
                    concepts,
                    toned,
                    sources,
                    out,
                    force=force,
                    log=log,
                    skins=True,
                    description=f"The {len(toned)} concepts with skin tones, {style} style: every skin-tone variant, labelled with its base concept. Same style as training, unseen images when the emoji-{style}-skins shards are left out of training (the robustness study's in-distribution test).",
                )
            )
        if style == "google" and common.wanted(only, "eval", "emoji-google-pictorial"):
            outputs.append(
                build_eval(
                    "emoji-google-pictorial",
                    style,
                    concepts,
                    pictorial,
                    sources,
                    out,
                    force=force,
                    log=log,
                    description=f"Google-style emoji of the {len(pictorial)} concepts outside the {', '.join(NON_PICTORIAL)} categories.",
                )
            )
        for lang in EVAL_LANGUAGES if style == "google" else ():
            if common.wanted(only, "eval", f"emoji-google-{lang}"):
                outputs.append(
                    build_eval(
                        f"emoji-google-{lang}",
                        style,
                        concepts,
                        concepts,
                        sources,
                        out,
                        force=force,
                        log=log,
                        language=lang,
                        description=f"emoji-google with class names in {lang} (emojibase's CLDR labels), the name alone as prompt: zero-shot beyond English.",
                    )
                )
    return outputs


BUILDER = common.Builder(
    "emoji",
    build,
    packages=("emojibase-data", "emoji-datasource-twitter"),
    shards=("emoji-twitter", "emoji-twitter-skins"),
    evalsets=(
        *(f"emoji-{style}" for style in EVAL_STYLES),
        "emoji-twitter-skins",
        "emoji-google-pictorial",
        *(f"emoji-google-{lang}" for lang in EVAL_LANGUAGES),
    ),
    extra_packages={
        f"eval/{name}": (f"emoji-datasource-{style}",)
        for style in EVAL_STYLES
        if style != TRAIN_STYLE
        for name in (
            f"emoji-{style}",
            "emoji-google-pictorial",
            *(f"emoji-google-{lang}" for lang in EVAL_LANGUAGES),
        )
        if style == "google" or name == f"emoji-{style}"
    },
)
