"""Captions drawn afresh each epoch from the raw metadata that the builders store in shards.

The builders write each sample's facts (an emoji's CLDR label and tags, a stamp's
description, a clip-art title and keywords...) into its ``json`` member with an explicit
``"kind"``, plus a ``"captions"`` list drawn once at build time. :func:`draw_caption` is a
``caption_fn`` for :class:`cliplab.data.decode.ImageDecoder`: given the per-sample, per-epoch
``random.Random`` of the stream, it picks a template for the sample's kind, so the same image
is seen with a different wording every epoch (like the many alt texts one image has on the
web). Without it, the decoder picks one of the stored ``"captions"``: still varied, from a
fixed pool.

    decoder = ImageDecoder(image_size=64, caption_fn=draw_caption)
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from typing import Any

from cliplab.data.stream import BadSample, RawSample

__all__ = [
    "CAPTIONERS",
    "draw_caption",
    "draw_caption_no_bare_label",
    "caption_for",
    "sample_captions",
    "article",
]


def article(phrase: str) -> str:
    """``"an"`` before a vowel sound (roughly: a vowel letter), else ``"a"``."""
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _pick_tags(tags: list[str], rng: random.Random, label: str, most: int = 4) -> list[str]:
    words = set(label.lower().split())
    pool = [t for t in tags if t.lower() not in words] or list(tags)
    k = rng.randint(1, min(most, len(pool))) if pool else 0
    return rng.sample(pool, k)


#: The emoji caption templates; the first two say the label alone.
EMOJI_TEMPLATES = (
    "{label}",
    "{Label}",
    "{a} {label}",
    "an emoji of {a} {label}",
    "{label} emoji",
    "{label}: {tags}",
    "{label} ({tags})",
    "emoji: {label}",
    "{tags}, {label}",
    "{label} icon",
    "{a} {label} emoji, {tags}",
    "{label} - {category}",
    "{label}, {sub}",
    "image of {a} {label}",
    ":{short}: {label}",
    "{tags} emoji",
)
#: Without the label alone: every caption says more than the class name, as web alt texts do
#: (``draw_caption_no_bare_label``; the prompt-engineering study's model).
EMOJI_TEMPLATES_NO_BARE = EMOJI_TEMPLATES[2:]


def _emoji(
    meta: dict[str, Any], rng: random.Random, templates: tuple[str, ...] = EMOJI_TEMPLATES
) -> str:
    base = meta["label"]
    # skin-tone variants: "waving hand: light skin tone"; the base concept is said too
    label = meta.get("tone_label") or base
    if meta.get("tone_label") and rng.random() < 0.5:
        label = base
    tags = _pick_tags(list(meta.get("tags") or []), rng, base)
    tag_text = ", ".join(tags) if tags else base
    short = rng.choice(meta.get("short_names") or [base.replace(" ", "_")])
    category = str(meta.get("category", "")).lower()
    sub = str(meta.get("subcategory", "")).replace("-", " ")
    template = rng.choice(templates)
    return template.format(
        label=label,
        Label=label[:1].upper() + label[1:],
        a=article(label),
        tags=tag_text,
        short=short,
        category=category or "emoji",
        sub=sub or "emoji",
    )


def _strip_description(text: str) -> str:
    """``"A zebra."`` -> ``"zebra"``: the object phrase without article and full stop."""
    t = text.strip().rstrip(".!").strip()
    for art in ("a ", "an ", "the ", "some "):
        if t.lower().startswith(art):
            return t[len(art) :]
    return t


def _tuxpaint(meta: dict[str, Any], rng: random.Random) -> str:
    desc = meta["description"]
    obj = _strip_description(desc)
    name = str(meta.get("name", "")).replace("_", " ").replace("-", " ")
    kind = meta.get("stamp_kind", "drawing")
    medium = {"cartoon": "cartoon", "symbol": "symbol", "photo": "photo"}.get(kind, "drawing")
    templates = (
        "{desc}",
        "{desc}",
        "{obj}",
        "{a} {medium} of {a2} {obj}",
        "{obj}, {medium}",
        "clip art: {desc}",
        "{name}",
        "{desc} ({category})",
    )
    return rng.choice(templates).format(
        desc=desc,
        obj=obj,
        a=article(medium),
        a2=article(obj),
        medium=medium,
        name=name or obj,
        category=str(meta.get("category", "")).replace("/", ", ") or medium,
    )


def _openclipart(meta: dict[str, Any], rng: random.Random) -> str:
    title = (meta.get("title") or "").strip()
    keywords = [k for k in meta.get("keywords") or [] if k]
    name = str(meta.get("name", "")).replace("_", " ").replace("-", " ").strip()
    category = str(meta.get("category", "")).replace("_", " ").split("/")
    kws = ", ".join(rng.sample(keywords, rng.randint(1, min(5, len(keywords))))) if keywords else ""
    text = title or name
    options = [
        text,
        text,
        f"{text}: {kws}" if kws else text,
        f"clip art of {text}" if text else kws,
        kws or text,
        f"{text} ({category[-1]})" if text else category[-1],
        name or text,
        f"{text} - {', '.join(reversed(category))}",
    ]
    if meta.get("description"):
        options.append(meta["description"])
    choice = rng.choice([o for o in options if o and o.strip()] or [category[-1]])
    return choice


def _icon(meta: dict[str, Any], rng: random.Random) -> str:
    words = meta["name"].replace("-", " ").replace("_", " ")
    context = str(meta.get("context", "")).rstrip("s") or "icon"
    theme = meta.get("theme", "")
    templates = (
        "{words}",
        "{words} icon",
        "an icon of {words}",
        "{name}",
        "{words} ({context})",
        "{theme} {words} icon",
        "{a} {words} icon",
        "{context} icon: {words}",
    )
    return rng.choice(templates).format(
        words=words, name=meta["name"], context=context, theme=theme, a=article(words)
    )


def _class_photo(meta: dict[str, Any], rng: random.Random) -> str:
    label = meta["label"]
    templates = (
        "{label}",
        "a photo of {a} {label}",
        "a black and white photo of {a} {label}",
        "a small photo of {a} {label}",
        "{a} {label}",
        "{label}, product photo",
        "a low resolution photo of {a} {label}",
        "{a} {label}, a type of {group}",
    )
    return rng.choice(templates).format(
        label=label, a=article(label), group=meta.get("group", "clothing")
    )


#: Caption generators by the explicit ``kind`` the builders write into the ``json`` member.
CAPTIONERS: dict[str, Callable[[dict[str, Any], random.Random], str]] = {
    "emoji": _emoji,
    "tuxpaint": _tuxpaint,
    "openclipart": _openclipart,
    "icon": _icon,
    "fashion-mnist": _class_photo,
}


def caption_for(meta: dict[str, Any], rng: random.Random) -> str:
    """One caption for a sample's metadata: its kind's templates, else a stored caption."""
    kind = meta.get("kind")
    if kind in CAPTIONERS:
        return CAPTIONERS[kind](meta, rng)
    captions = [c for c in meta.get("captions") or [] if isinstance(c, str) and c.strip()]
    if captions:
        return rng.choice(captions)
    if isinstance(meta.get("caption"), str):
        return meta["caption"]
    raise BadSample("missing-caption", f"no captioner for kind {kind!r} and no stored captions")


def sample_captions(meta: dict[str, Any], seed: object, count: int = 8) -> list[str]:
    """``count`` distinct-if-possible captions drawn at build time (the stored ``"captions"``)."""
    rng = random.Random(str(seed))
    out: list[str] = []
    for _ in range(count * 4):
        text = caption_for(meta, rng).strip()
        if text and text not in out:
            out.append(text)
        if len(out) == count:
            break
    return out


def _json_meta(sample: RawSample) -> dict[str, Any] | None:
    """The ``json`` member's metadata (None without one); malformed JSON is a bad sample.
    Shared between calls (see ``_parse_meta``): captioners read it, never change it."""
    raw = sample.members.get("json")
    if raw is None:
        return None
    meta = _parse_meta(raw)
    if isinstance(meta, BadSample):
        raise BadSample(meta.reason, meta.detail)
    return meta


@functools.lru_cache(maxsize=1 << 14)
def _parse_meta(raw: bytes) -> dict[str, Any] | BadSample:
    """Parsed metadata, cached by its bytes: an in-memory run draws a caption for every
    sample every epoch, and parsing was a sixth of its batch time (the multilingual
    metadata, with 26 locales, is 5-10 KB). At most 16,384 samples are kept (a streamed
    corpus larger than that only cycles through it; the demo's 8,949 all stay)."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return BadSample("malformed-json")
    if not isinstance(meta, dict):
        return BadSample("malformed-json", "not an object")
    return meta


def _stored_text(sample: RawSample) -> str:
    text = sample.members.get("txt")
    if text is None:
        raise BadSample("missing-caption")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise BadSample("non-utf8-caption") from None


def _draw(sample: RawSample, rng: random.Random, captioner: Any) -> str:
    meta = _json_meta(sample)
    if meta is None:
        return _stored_text(sample)
    try:
        return captioner(meta, rng)
    except (KeyError, TypeError, ValueError) as e:
        raise BadSample("missing-caption", f"{type(e).__name__}: {e}") from None


def draw_caption(sample: RawSample, rng: random.Random) -> str:
    """``caption_fn`` for ``ImageDecoder``: a fresh caption from the ``json`` member's facts."""
    return _draw(sample, rng, caption_for)


def _caption_no_bare_label(meta: dict[str, Any], rng: random.Random) -> str:
    if meta.get("kind") == "emoji":
        return _emoji(meta, rng, EMOJI_TEMPLATES_NO_BARE)
    return caption_for(meta, rng)


def draw_caption_no_bare_label(sample: RawSample, rng: random.Random) -> str:
    """:func:`draw_caption`, but an emoji's caption never is its label alone ("cat face"
    becomes "cat face emoji", "an emoji of a cat face", "cat face: pet, kitten", ...). The
    paper's web alt texts seldom are a bare class name, which is why a prompt template helps
    it; the demo's captions say the bare label one time in eight, so a prompt has no gap to
    close there. ``cliplab reproduce`` trains a model with this caption function to measure
    prompt engineering where the gap exists."""
    return _draw(sample, rng, _caption_no_bare_label)


#: Share of multilingual captions in English (the rest: one of the sample's other locales).
ENGLISH_SHARE = 0.4
#: The languages besides English that zero-shot is reported in (``eval/emoji-*-<lang>``),
#: and the only ones :func:`draw_caption_five_languages` draws from.
EVAL_LANGUAGES = ("ko", "ja", "de", "es")
_LOCALE_TEMPLATES = (
    "{label}",
    "{label}: {tags}",
    "{tags}, {label}",
    "{label} ({tags})",
    "{label} emoji",
)


def caption_multilingual(
    meta: dict[str, Any],
    rng: random.Random,
    languages: tuple[str, ...] | None = None,
    english_share: float = ENGLISH_SHARE,
) -> str:
    """A caption in English (``english_share`` of the time) or in one of the languages of the
    sample's ``i18n`` metadata (emojibase's CLDR labels and tags, e.g. "고양이 얼굴: 동물,
    애완동물"; only those in ``languages`` when given), drawn afresh each call."""
    i18n = meta.get("i18n") or {}
    pool = sorted(i18n) if isinstance(i18n, dict) else []
    if languages is not None:
        pool = [lang for lang in pool if lang in languages]
    if not pool or rng.random() < english_share:
        return caption_for(meta, rng)
    entry = i18n[rng.choice(pool)]
    label = str(entry.get("label") or meta["label"])
    tags = _pick_tags([str(t) for t in entry.get("tags") or []], rng, label)
    return rng.choice(_LOCALE_TEMPLATES).format(label=label, tags=", ".join(tags) or label)


class MultilingualCaptioner:
    """A ``caption_fn``: :func:`caption_multilingual` with these settings on the ``json``
    member (picklable, for loader workers; a module-level instance is what a recipe's
    ``caption_fn`` names)."""

    def __init__(
        self, languages: tuple[str, ...] | None = None, english_share: float = ENGLISH_SHARE
    ) -> None:
        self.languages = languages
        self.english_share = english_share

    def caption(self, meta: dict[str, Any], rng: random.Random) -> str:
        return caption_multilingual(meta, rng, self.languages, self.english_share)

    def __call__(self, sample: RawSample, rng: random.Random) -> str:
        return _draw(sample, rng, self.caption)


#: ``caption_fn`` across all of emojibase's locales (40% English, 2.4% each of 25 others).
draw_caption_multilingual = MultilingualCaptioner()
#: ``caption_fn`` in English and ``EVAL_LANGUAGES`` only (Korean, Japanese, German, Spanish:
#: 15% of captions each instead of 2.4%).
draw_caption_five_languages = MultilingualCaptioner(EVAL_LANGUAGES)
