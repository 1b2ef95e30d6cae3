"""Six more emoji drawing styles for training, from Iconify's per-set npm packages.

Twitter is one style with about one picture per concept; the same concept drawn by other
hands is what teaches a model that a "cat face" is a cat face in any style. These six sets
(SVG, in ``@iconify-json/<set>``, pinned) are the only other emoji styles that may enter
training; Google, Apple and Facebook stay evaluation-only.

An icon is matched to an emoji concept (:func:`cliplab.recipes.builders.emoji.load_concepts`)
by name: the icon's name and the concept's CLDR label, emoji-datasource name and short names
are each reduced to lowercase letters and digits ("cat-face", "catface", "CAT FACE" all
become ``catface``), labels first; an icon goes to one concept at most. Skin-tone variants
("waving-hand-medium-skin-tone") are matched to their concept's variants and folded into it,
as the Twitter skins are. Icons are rendered from SVG to 64 px RGBA (``resvg-py`` when
installed, ~4x faster than ``cairosvg``, which is the fallback); captions are drawn from the
same facts as Twitter's (``cliplab.recipes.captions``).

Outputs: ``shards/emoji-<set>`` (training) and ``eval/emoji-<set>`` (the same images as a
classification set over the matched concepts: a held-out *validation* style when that set
stays out of training), for each set below. For the validation style (Emoji One,
``VALIDATION_STYLE``) also ``eval/emoji-emojione-<lang>`` for each language of
``EVAL_LANGUAGES``: the same images with emojibase's class names in that language and the
name alone as prompt, so that a multilingual recipe is chosen on them and the translated
Google sets stay test sets.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cliplab.data.evalsets import EvalSetWriter
from cliplab.recipes.builders import common
from cliplab.recipes.builders.emoji import (
    EVAL_LANGUAGES,
    IMAGE_SIZE,
    METADATA_LICENSE,
    SHARD_SIZE,
    TEMPLATES,
    Concept,
    class_names,
    load_concepts,
)
from cliplab.recipes.captions import sample_captions
from cliplab.recipes.install import source_path

BUILDER_VERSION = 2  # 2: concepts carry i18n (emoji builder v4): multilingual captions


@dataclass(frozen=True)
class IconSet:
    """One Iconify emoji set: its npm package (pinned) and the license of its drawings."""

    name: str  # the style's name here, e.g. "noto-v1"
    version: str
    license: str

    @property
    def package(self) -> str:
        return f"@iconify-json/{self.name}"


SETS = (
    IconSet("noto-v1", "1.2.5", "Apache-2.0 (Noto Emoji v1, Google)"),
    IconSet("emojione", "1.2.3", "CC-BY-4.0 (Emoji One)"),
    IconSet("emojione-v1", "1.2.3", "CC-BY-SA-4.0 (Emoji One v1)"),
    IconSet("emojione-monotone", "1.2.1", "CC-BY-4.0 (Emoji One monotone)"),
    IconSet("fxemoji", "1.2.2", "Apache-2.0 (Firefox OS Emoji, Mozilla)"),
    IconSet("streamline-emojis", "1.2.4", "CC-BY-4.0 (Streamline Emojis)"),
)
BY_NAME = {s.name: s for s in SETS}
#: The style recipes are chosen on (kept out of training); it also gets translated sets.
VALIDATION_STYLE = "emojione"


def language_sets(icon_set: IconSet) -> tuple[str, ...]:
    """The languages of ``icon_set``'s translated evaluation sets (none but for validation)."""
    return EVAL_LANGUAGES if icon_set.name == VALIDATION_STYLE else ()


def key(text: str) -> str:
    """The matching key: lowercase letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


@dataclass(frozen=True)
class Icon:
    name: str
    svg: str  # a standalone SVG document


def load_icons(root: Path) -> dict[str, Icon]:
    """Every icon of an Iconify JSON set (``icons.json``), plain aliases included, as
    standalone SVG documents. Aliases that flip or rotate their parent are left out."""
    data = json.loads((root / "icons.json").read_text(encoding="utf-8"))
    width, height = data.get("width", 16), data.get("height", 16)
    icons: dict[str, Icon] = {}

    def document(entry: dict) -> str:
        w, h = entry.get("width", width), entry.get("height", height)
        left, top = entry.get("left", 0), entry.get("top", 0)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {w} {h}" width="{w}" height="{h}">{entry["body"]}</svg>'
        )

    for name, entry in data.get("icons", {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("body"), str):
            icons[name] = Icon(name, document(entry))
    for name, alias in (data.get("aliases") or {}).items():
        parent = alias.get("parent") if isinstance(alias, dict) else None
        transforms = {"hFlip", "vFlip", "rotate"} & set(alias or {})
        if parent in icons and not transforms and name not in icons:
            icons[name] = Icon(name, icons[parent].svg)
    return icons


def match(
    concepts: list[Concept], icons: dict[str, Icon]
) -> list[tuple[Concept, str | None, Icon]]:
    """``(concept, skin-tone hexcode or None, icon)`` for every icon matched to a concept or
    to one of its skin-tone variants; labels are tried before names and short names, and
    an icon is used once."""
    by_key: dict[str, list[str]] = {}
    for name in sorted(icons):
        by_key.setdefault(key(name), []).append(name)
    used: set[str] = set()
    out: list[tuple[Concept, str | None, Icon]] = []

    def claim(candidates: list[str]) -> Icon | None:
        for text in candidates:
            for name in by_key.get(key(text), []):
                if name not in used:
                    used.add(name)
                    return icons[name]
        return None

    for c in concepts:  # base concepts first: they own the plain names
        icon = claim([c.label, c.name, *c.short_names])
        if icon is not None:
            out.append((c, None, icon))
    for c in concepts:
        for skin in c.skins:
            icon = claim([skin["label"]])
            if icon is not None:
                out.append((c, skin["hexcode"], icon))
    return out


def renderer() -> tuple[str, object]:
    """``(name, svg text -> RGBA image at IMAGE_SIZE)`` with resvg-py, else cairosvg."""
    try:
        import resvg_py

        def render(svg: str) -> Image.Image:
            png = resvg_py.svg_to_bytes(svg_string=svg, width=IMAGE_SIZE, height=IMAGE_SIZE)
            with Image.open(io.BytesIO(bytes(png))) as im:
                return im.convert("RGBA")

        return "resvg-py", render
    except ImportError:
        pass
    try:
        import cairosvg
    except (ImportError, OSError) as e:
        raise common.MissingExtra(
            f"rendering the Iconify emoji sets needs resvg-py or cairosvg: pip install 'cliplab[svg]' ({e})"
        ) from e

    def render_cairo(svg: str) -> Image.Image:
        png = cairosvg.svg2png(
            bytestring=svg.encode(), output_width=IMAGE_SIZE, output_height=IMAGE_SIZE, unsafe=False
        )
        with Image.open(io.BytesIO(png)) as im:
            return im.convert("RGBA")

    return "cairosvg", render_cairo


def _inputs(icon_set: IconSet, sources: Path) -> tuple[Path, list[tuple[str, int]]]:
    from cliplab.recipes.builders.emoji import emojibase_root, package_root

    root = source_path(icon_set.package, sources)
    files = [
        root / "icons.json",
        emojibase_root(sources) / "en" / "data.json",
        package_root("twitter", sources) / "emoji.json",
    ]
    return root, [(p.name, p.stat().st_size) for p in files]


def build_style(
    icon_set: IconSet,
    concepts: list[Concept],
    sources: Path,
    out: Path,
    *,
    force: bool,
    log: common.Log,
    only: Collection[str] | None,
) -> list[common.Output]:
    """``shards/emoji-<set>`` and ``eval/emoji-<set>`` for one icon set."""
    from cliplab.data.shardwriter import ShardWriter

    root, listing = _inputs(icon_set, sources)
    name = f"emoji-{icon_set.name}"
    fp = common.fingerprint(
        builder="emoji-styles",
        version=BUILDER_VERSION,
        set=icon_set.name,
        size=IMAGE_SIZE,
        shard_size=SHARD_SIZE,
        templates=TEMPLATES,
        inputs=listing,
    )
    shard_path = out / "shards" / name
    want_shards = common.wanted(only, "shards", name)
    # (language or None for English, path, fingerprint) of each evaluation set asked for
    wanted = [(None, name)] if common.wanted(only, "eval", name) else []
    wanted += [
        (lang, f"{name}-{lang}")
        for lang in language_sets(icon_set)
        if common.wanted(only, "eval", f"{name}-{lang}")
    ]
    evals = [(lang, out / "eval" / n, fp if lang is None else f"{fp}-{lang}") for lang, n in wanted]
    outputs = []
    shard_hit = common.cached(shard_path, fp, force) if want_shards else None
    eval_hits = [common.cached(path, print_, force) for _, path, print_ in evals]
    if (not want_shards or shard_hit) and all(eval_hits):
        return [h for h in (shard_hit, *eval_hits) if h]
    start = time.perf_counter()
    engine, render = renderer()
    icons = load_icons(root)
    matched = match(concepts, icons)
    log(f"  building {name}: {len(matched)} of {len(icons)} icons matched, rendered by {engine}")
    images: list[tuple[Concept, str | None, Image.Image]] = []
    failures: dict[str, int] = {}
    for concept, skin, icon in matched:
        try:
            images.append((concept, skin, render(icon.svg)))
        except (ValueError, OSError) as e:
            reason = f"render: {type(e).__name__}"
            failures[reason] = failures.get(reason, 0) + 1
    seconds = time.perf_counter() - start
    details = {"set": icon_set.name, "license": icon_set.license, "renderer": engine}
    details |= {"icons": len(icons), "matched": len(matched), "render_failures": failures}
    if want_shards and not shard_hit:
        with common.staging(shard_path) as tmp:
            writer = ShardWriter(tmp, prefix="shard", max_samples=SHARD_SIZE)
            with writer:
                for concept, skin, image in images:
                    meta = concept.meta(icon_set.name)
                    hexcode = skin or concept.hexcode
                    if skin:
                        tone = next(s["label"] for s in concept.skins if s["hexcode"] == skin)
                        meta.update(hexcode=skin, base_hexcode=concept.hexcode, tone_label=tone)
                    meta["captions"] = sample_captions(meta, seed=(icon_set.name, hexcode))
                    writer.write(
                        common.safe_key(hexcode), {"png": common.png_bytes(image), "json": meta}
                    )
            stats = writer.close()
        output = common.Output(
            name, "shards", str(shard_path), stats["samples"], seconds=seconds, details=details
        )
        outputs.append(
            common.record(
                shard_path,
                fp,
                output,
                {
                    "caption_fn": "cliplab.recipes.captions:draw_caption",
                    "shards": [Path(s).name for s in stats["shards"]],
                },
            )
        )
    elif shard_hit:
        outputs.append(shard_hit)
    for (language, path, print_), hit in zip(evals, eval_hits, strict=True):
        if hit:
            outputs.append(hit)
            continue
        output = _write_eval(icon_set, images, path, language)
        output.seconds = seconds
        output.details = {**details, **output.details}
        outputs.append(common.record(path, print_, output))
    return outputs


def _write_eval(
    icon_set: IconSet,
    images: list[tuple[Concept, str | None, Image.Image]],
    path: Path,
    language: str | None,
) -> common.Output:
    """One classification set of ``images`` (base concepts only, one image each), with
    English class names and the emoji templates, or with ``language``'s names (English where
    emojibase has none, counted) and the name alone as prompt."""
    bases = {c.hexcode: c for c, skin, _ in images if skin is None}  # one image each
    classes = sorted(bases.values(), key=lambda c: c.sort_order)
    index = {c.hexcode: i for i, c in enumerate(classes)}
    classnames, templates, untranslated = class_names(classes, language)
    name = path.name
    writer = EvalSetWriter(
        path,
        "classification",
        name=name,
        description=(
            f"Emoji in the {icon_set.name} style (Iconify), {len(classes)} matched concepts: "
            "a validation style when this set stays out of training"
            + (f"; class names in {language}, the name alone as prompt." if language else ".")
        ),
        source=(
            f"{icon_set.package} {icon_set.version}, labels from emojibase-data 17.0.0 "
            f"({language or 'en'})"
        ),
        license=f"{icon_set.license}; labels: {METADATA_LICENSE}",
        classnames=classnames,
        templates=templates,
        meta={"style": icon_set.name, "language": language or "en"},
    )
    with writer:
        for concept, skin, image in images:
            if skin is None:
                writer.add(image, label=index[concept.hexcode])
    details: dict = {"classes": len(classes)}
    if language:
        details["untranslated_labels"] = untranslated
    return common.Output(name, "classification", str(path), len(writer), details=details)


def build(
    sources: Path,
    out: Path,
    *,
    force: bool = False,
    log: common.Log = print,
    only: Collection[str] | None = None,
) -> list[common.Output]:
    """Each installed icon set's shards and evaluation set (see the module docstring)."""
    concepts = load_concepts(sources)
    outputs = []
    for icon_set in SETS:
        name = f"emoji-{icon_set.name}"
        names = [("shards", name), ("eval", name)]
        names += [("eval", f"{name}-{lang}") for lang in language_sets(icon_set)]
        if not any(common.wanted(only, kind, n) for kind, n in names):
            continue
        try:
            source_path(icon_set.package, sources)
        except FileNotFoundError as e:
            log(f"  skip {name}: {e}")
            continue
        outputs += build_style(icon_set, concepts, sources, out, force=force, log=log, only=only)
    return outputs


BUILDER = common.Builder(
    "emoji-styles",
    build,
    packages=("emojibase-data", "emoji-datasource-twitter"),
    shards=tuple(f"emoji-{s.name}" for s in SETS),
    evalsets=(
        *(f"emoji-{s.name}" for s in SETS),
        *(f"emoji-{VALIDATION_STYLE}-{lang}" for lang in EVAL_LANGUAGES),
    ),
    extra_packages={
        **{f"{kind}/emoji-{s.name}": (s.package,) for s in SETS for kind in ("shards", "eval")},
        **{
            f"eval/emoji-{VALIDATION_STYLE}-{lang}": (BY_NAME[VALIDATION_STYLE].package,)
            for lang in EVAL_LANGUAGES
        },
    },
)
