"""OpenClipart: clip art with noisy, web-like text (titles and keywords), public domain.

The Debian packages hold the same drawings twice: ``openclipart-png`` (renderings, in
category folders such as ``animals/mammals/dogs``) and ``openclipart-svg`` (the sources,
whose RDF metadata carry the title, keywords and sometimes a description). The text is
what the uploader typed: often good ("Soft Blue Couch"), sometimes a collection name ("Part
of the Flat Icon Collection (Wed Aug 25 23:31:12 2004)") or a language other than English:
the kind of alt text a web crawl finds, kept as it is.

A fixed 10% of the drawings (by a hash of their path) is held out:
- ``shards/openclipart``: the other 90%, PNG (longer side at most 256) + ``json`` metadata;
- ``eval/openclipart-categories``: the held-out drawings of the top-level categories with
  at least ``MIN_TEST_IMAGES`` of them (not "unsorted" nor "special"), classified by category.
"""

from __future__ import annotations

import html
import re
import time
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

from cliplab.data.evalsets import EvalSetWriter
from cliplab.recipes.builders import common
from cliplab.recipes.captions import sample_captions
from cliplab.recipes.install import source_path

BUILDER_VERSION = 2  # 2: caption_fn moved to cliplab.recipes.captions
LICENSE = "Public domain (Open Clip Art Library), Debian openclipart 0.18"
MAX_SIDE = 256
SHARD_SIZE = 1000
TEST_FRACTION = 0.1
MIN_TEST_IMAGES = 10
#: Same wording as the bundled ``clipart`` template set.
TEMPLATES = (
    "a clip-art drawing of a {}.",
    "a clip art of a {}.",
    "a drawing of a {}.",
    "an illustration of a {}.",
    "a cartoon {}.",
)
#: Folder -> a class name that reads well in a prompt; folders not here are not classes.
CLASS_NAMES = {
    "animals": "animal",
    "buildings": "building",
    "computer": "computer icon",
    "education": "school supply",
    "electronics": "electronic device",
    "food": "food",
    "geography": "map",
    "office": "office supply",
    "people": "person",
    "plants": "plant",
    "recreation": "toy or game",
    "shapes": "shape",
    "signs_and_symbols": "sign or symbol",
    "tools": "tool",
    "transportation": "vehicle",
}

_METADATA = re.compile(rb"<metadata.*?</metadata>", re.S)
_WORK_TITLE = re.compile(r"<cc:Work.*?<dc:title>(.*?)</dc:title>", re.S)
_SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.S)
_LI = re.compile(r"<rdf:li>(.*?)</rdf:li>", re.S)
_DESCRIPTION = re.compile(r"<dc:description>(.*?)</dc:description>", re.S)


def parse_svg_metadata(data: bytes) -> dict[str, Any]:
    """Title, keywords and description from an SVG's RDF metadata (empty when absent)."""
    m = _METADATA.search(data)
    block = m.group(0).decode("utf-8", "replace") if m else ""

    def clean(text: str) -> str:
        return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())

    title = _WORK_TITLE.search(block)
    subject = _SUBJECT.search(block)
    keywords = [clean(k) for k in _LI.findall(subject.group(1))] if subject else []
    description = _DESCRIPTION.search(block)
    return {
        "title": clean(title.group(1)) if title else "",
        "keywords": [k for k in dict.fromkeys(keywords) if k],
        "description": clean(description.group(1)) if description else "",
    }


def split_of(rel: str) -> str:
    return "test" if common.stable_fraction("openclipart", rel) < TEST_FRACTION else "train"


def load_items(sources: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Every PNG and its SVG: ``{"rel", "png", "svg", "split"}``, sorted (metadata not read)."""
    png_root = source_path("openclipart-png", sources)
    try:
        svg_root: Path | None = source_path("openclipart-svg", sources)
    except FileNotFoundError:
        svg_root = None
    items = []
    for png in sorted(png_root.rglob("*.png")):
        rel = str(png.relative_to(png_root).with_suffix(""))
        svg = svg_root / f"{rel}.svg" if svg_root is not None else None
        items.append(
            {
                "rel": rel,
                "png": png,
                "svg": svg if svg is not None and svg.is_file() else None,
                "split": split_of(rel),
            }
        )
    return png_root, items


def item_meta(item: dict[str, Any]) -> dict[str, Any]:
    """The sample metadata: the SVG's title, keywords and description, and the path's parts."""
    svg = item["svg"]
    meta = (
        parse_svg_metadata(svg.read_bytes())
        if svg is not None
        else {"title": "", "keywords": [], "description": ""}
    )
    parts = item["rel"].split("/")
    meta.update(kind="openclipart", name=parts[-1], category="/".join(parts[:-1]), path=item["rel"])
    return meta


def build(
    sources: Path,
    out: Path,
    *,
    force: bool = False,
    log: common.Log = print,
    only: Collection[str] | None = None,
    max_side: int = MAX_SIDE,
) -> list[common.Output]:
    """The training shards and the category evaluation set, or those in ``only`` (see the
    module docstring)."""
    from cliplab.data.shardwriter import ShardWriter

    png_root, items = load_items(sources)
    # names and sizes of both files of every item: the fingerprint's view of the inputs
    listing = [
        (i["rel"], i["png"].stat().st_size, i["svg"].stat().st_size if i["svg"] is not None else -1)
        for i in items
    ]
    base = {
        "version": BUILDER_VERSION,
        "max_side": max_side,
        "test_fraction": TEST_FRACTION,
        "inputs": listing,
    }
    outputs = []

    fp = common.fingerprint(builder="openclipart-shards", shard_size=SHARD_SIZE, **base)
    path = out / "shards" / "openclipart"
    hit = common.cached(path, fp, force)
    if hit is None and common.wanted(only, "shards", "openclipart"):
        start = time.perf_counter()
        log("  building shards/openclipart")
        with common.staging(path) as tmp:
            writer = ShardWriter(tmp, prefix="shard", max_samples=SHARD_SIZE)
            with writer:
                for item in items:
                    if item["split"] != "train":
                        continue
                    meta = item_meta(item)
                    if not (meta["title"] or meta["keywords"]):
                        meta["title"] = meta["name"].replace("_", " ")
                    meta["captions"] = sample_captions(meta, seed=item["rel"])
                    try:
                        png = common.prepare_png(item["png"], max_side)
                    except common.ImageTooLarge as e:
                        log(f"  too large, left out: {item['rel']}: {e}")
                        writer.fail("too-large")
                        continue
                    except (OSError, ValueError) as e:
                        log(f"  cannot read {item['rel']}: {e}")
                        writer.fail("unreadable-image")
                        continue
                    writer.write(common.safe_key(item["rel"]), {"png": png, "json": meta})
            stats = writer.close()
        hit = common.record(
            path,
            fp,
            common.Output(
                "openclipart",
                "shards",
                str(path),
                stats["samples"],
                seconds=time.perf_counter() - start,
                details={"failures": stats["failures"], "license": LICENSE},
            ),
            {
                "caption_fn": "cliplab.recipes.captions:draw_caption",
                "shards": [Path(s).name for s in stats["shards"]],
            },
        )
    if hit is not None:
        outputs.append(hit)

    test = [i for i in items if i["split"] == "test"]
    counts = Counter(i["rel"].split("/")[0] for i in test)
    folders = sorted(f for f in CLASS_NAMES if counts[f] >= MIN_TEST_IMAGES)
    fp = common.fingerprint(
        builder="openclipart-eval", folders=folders, names=CLASS_NAMES, templates=TEMPLATES, **base
    )
    path = out / "eval" / "openclipart-categories"
    hit = common.cached(path, fp, force)
    if hit is None and common.wanted(only, "eval", "openclipart-categories"):
        start = time.perf_counter()
        log(f"  building eval/openclipart-categories ({len(folders)} categories)")
        index = {f: k for k, f in enumerate(folders)}
        writer = EvalSetWriter(
            path,
            "classification",
            name="openclipart-categories",
            description=f"Held-out OpenClipart drawings ({TEST_FRACTION:.0%} by path hash, never in shards/openclipart) classified by top-level category.",
            source="openclipart-png 0.18 (Debian), categories = top-level folders",
            license=LICENSE,
            classnames=[CLASS_NAMES[f] for f in folders],
            templates=TEMPLATES,
            class_info=[{"folder": f, "test_images": counts[f]} for f in folders],
        )
        with writer:
            for item in test:
                folder = item["rel"].split("/")[0]
                if folder in index:
                    try:
                        image = common.open_image(item["png"], max_side)
                    except (OSError, ValueError) as e:
                        log(f"  cannot read {item['rel']}: {e}")
                        continue
                    writer.add(
                        image,
                        label=index[folder],
                        extra={"path": item["rel"], "title": item_meta(item)["title"]},
                    )
        hit = common.record(
            path,
            fp,
            common.Output(
                "openclipart-categories",
                "classification",
                str(path),
                len(writer),
                seconds=time.perf_counter() - start,
                details={"classes": len(folders)},
            ),
        )
    if hit is not None:
        outputs.append(hit)
    return outputs


BUILDER = common.Builder(
    "openclipart",
    build,
    packages=("openclipart-png", "openclipart-svg"),
    shards=("openclipart",),
    evalsets=("openclipart-categories",),
)
