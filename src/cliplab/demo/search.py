"""The demo's last step: its image collections embedded with the trained model and indexed,
ready for ``cliplab search`` and ``cliplab serve``.

Three collections, merged into one: the Twitter emoji of the training pool (their stored
captions), the held-out Google emoji (their class names as captions) and the held-out Tux
Paint photos (their descriptions). Each is embedded once; a re-run reuses them.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from cliplab.data.evalsets import load_classification, load_retrieval
from cliplab.data.sources import ShardsSpec, spec_for_path
from cliplab.demo.plan import Log
from cliplab.fileio import AtomicFile

#: (collection name, how to read it): a built shard set, or an evaluation set.
COLLECTIONS = (
    ("emoji-twitter", "shards"),
    ("emoji-google", "classification"),
    ("tuxpaint-photos", "retrieval"),
)


def _manifest(data_dir: Path, name: str, kind: str, out: Path) -> Path:
    """A CSV manifest (image, caption) of an evaluation set."""
    path = out / "manifests" / f"{name}.csv"
    if kind == "classification":
        ds = load_classification(data_dir / "eval" / name)
        rows = [(str(p), ds.classnames[y]) for p, y in zip(ds.images, ds.labels)]
    else:
        rs = load_retrieval(data_dir / "eval" / name)
        rows = [(str(p), caps[0]) for p, caps in zip(rs.images, rs.captions)]
    with AtomicFile(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    return path


def embed_collections(model_dir: Path, data_dir: Path, out: Path, log: Log = print) -> Path:
    """Embed, merge and index the demo's collections under ``out``; returns the merged one."""
    import cliplab
    from cliplab.search.collection import Collection
    from cliplab.search.embed import embed
    from cliplab.search.index import build_index, merge_collections

    model, preprocess = cliplab.load(model_dir)
    parts = []
    for name, kind in COLLECTIONS:
        if kind == "shards":
            spec = ShardsSpec(set=name, dir=str(data_dir))
        elif (data_dir / "eval" / name).is_dir():
            spec = spec_for_path(str(_manifest(data_dir, name, kind, out)))
        else:
            log(f"   {name}: not built, not embedded")
            continue
        target = out / name
        try:
            done = Collection(target).info.get("complete")
        except FileNotFoundError:
            done = False
        if not done:
            result = embed(
                spec, target, model, preprocess, model_spec=str(model_dir.resolve()),
                batch_size=256, progress=False, log=log,
            )  # fmt: skip
            log(f"   {name}: {result.embedded} images embedded ({result.images_per_s:.0f}/s)")
        parts.append(Collection(target))
    merged = out / "all"
    if merged.exists():
        shutil.rmtree(merged)
    collection = merge_collections(parts, merged)
    info = build_index(collection)
    log(f"   all: {len(collection)} images, {info['plan']['kind']} index")
    return merged
