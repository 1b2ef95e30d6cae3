"""Evaluation sets as people have them: every layout :func:`cliplab.data.evalsets.load_classification`
and :func:`~cliplab.data.evalsets.load_retrieval` read, with no conversion step.

- ``cliplab``: cliplab's own set directory (``meta.json``; :mod:`cliplab.data.evalsets`);
- ``clip_benchmark``: CLIP_benchmark's WebDataset layout: ``classnames.txt``,
  ``zeroshot_classification_templates.txt`` (``{c}`` placeholders), ``dataset_type.txt``
  (``retrieval`` for caption sets), and split folders (``test/``, ``train/``) of shards
  ``0.tar ... N-1.tar`` (``nshards.txt``) whose samples hold an image (``webp``, ``png``,
  ``jpg``, ``jpeg``) and a ``cls`` label or ``txt`` captions (one per line);
- ``imagefolder``: one folder per class (sorted names give the labels, as torchvision's
  ``ImageFolder``), optionally under a split folder, optionally with ``classnames.txt``
  (one display name per line, in folder order) and ``templates.txt``;
- ``table``: a CSV/TSV/Parquet/JSONL of image path and label (an integer, or a class name),
  paths relative to the table's folder; ``classnames.txt`` beside it where labels are
  integers;
- ``karpathy``: the Karpathy-split JSON of MSCOCO and Flickr30k (``dataset_coco.json``,
  ``dataset_flickr30k.json``): images of one split (``test`` by default) with their five
  captions, the image files found beside the JSON (``filepath/filename``).

Local paths and the storage URLs of :mod:`cliplab.data.storage` alike. Class names and
templates come from the set's own files first; what it lacks comes from the bundled
benchmark of ``dataset_name`` (or of the set's folder name when it names one:
:mod:`cliplab.data.benchmarks`), then from the folder names.

Images inside shards are read back member by member by byte range (:class:`TarMembers`),
never unpacked to disk. The readers return the fields of the set (:mod:`cliplab.data.evalsets`
builds it), so this module does not import the types it fills.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Sequence
from typing import Any

from cliplab.data import storage
from cliplab.data.benchmarks import benchmark
from cliplab.data.images import IMAGE_EXTS

__all__ = ["LAYOUTS", "TarMembers", "detect", "open_classification", "open_retrieval"]

LAYOUTS = ("cliplab", "clip_benchmark", "imagefolder", "table", "karpathy")
#: Files of a CLIP_benchmark set's root.
_MARKERS = ("classnames.txt", "dataset_type.txt", "zeroshot_classification_templates.txt")
#: Image members CLIP_benchmark's sets hold, in its order of preference.
WDS_IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl")
IMAGE_COLUMNS = ("path", "image", "filepath", "file", "filename", "image_path")
LABEL_COLUMNS = ("label", "class", "target", "cls", "class_name", "classname")


class TarMembers(Sequence[bytes]):
    """Images inside tar shards, each read by its byte range when asked for (bytes, which
    every image reader of cliplab opens). Picklable, for loader workers."""

    def __init__(self, members: Sequence[tuple[str, int, int]], fingerprint: str) -> None:
        self.members = list(members)  # (shard, offset, size)
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return TarMembers(self.members[index], f"{self.fingerprint}:{index}")
        url, offset, size = self.members[index]
        return storage.read_range(url, offset, size)


def _text(location: str) -> str | None:
    try:
        return storage.read_text(location) if storage.is_file(location) else None
    except OSError:
        return None


def _lines(location: str) -> list[str] | None:
    text = _text(location)
    if text is None:
        return None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _is_table(path: str) -> bool:
    return path.lower().endswith(TABLE_SUFFIXES)


def detect(path: str | os.PathLike[str], split: str = "test") -> str:
    """Which layout ``path`` is (one of :data:`LAYOUTS`); ``ValueError`` when none."""
    text = os.fspath(path).rstrip("/")
    if storage.is_file(text):
        if text.lower().endswith(".json"):
            return "karpathy"
        if _is_table(text):
            return "table"
        raise ValueError(f"{text}: a file that is neither a table nor a Karpathy-split JSON")
    if not storage.is_dir(text):
        raise FileNotFoundError(f"{text}: no such evaluation set")
    if storage.is_file(storage.join(text, "meta.json")):
        return "cliplab"
    for marker in _MARKERS:
        if storage.is_file(storage.join(text, marker)) and _shards(text, split, quiet=True):
            return "clip_benchmark"
    if _shards(text, split, quiet=True):
        return "clip_benchmark"
    if _class_folders(text, split):
        return "imagefolder"
    if any(storage.is_file(storage.join(text, m)) for m in _MARKERS):
        others = [s for s in ("train", "test", "val", "validation") if _shards(text, s, quiet=True)]
        raise ValueError(
            f"{text}: a CLIP_benchmark set with no shards in {split}/"
            + (f" (it has {', '.join(others)}: --split)" if others else "")
        )
    raise ValueError(
        f"{text}: not an evaluation set cliplab reads (a cliplab set with meta.json, "
        "CLIP_benchmark's WebDataset layout, an ImageFolder tree, a CSV/Parquet of path,label, "
        "or a Karpathy-split JSON)"
    )


# --------------------------------------------------------------------------- names


def _guess_name(path: str) -> str:
    base = posixpath.basename(path.rstrip("/"))
    return base.removeprefix("wds_").removeprefix("wds-")


def _resolve_names(
    own: list[str] | None,
    count: int | None,
    dataset_name: str | None,
    path: str,
    fallback: list[str] | None,
) -> tuple[list[str], Any]:
    """Class names: the set's own, else the bundled benchmark's (named, or guessed from the
    folder name) when their count fits, else ``fallback``; and the bundled info used."""
    info = benchmark(dataset_name) if dataset_name else benchmark(_guess_name(path))
    if dataset_name and info is None:
        raise ValueError(f"unknown dataset name {dataset_name!r}: not a bundled benchmark")
    if own:
        return own, info
    if info is not None and (count is None or len(info.classnames) == count):
        return list(info.classnames), info
    if info is not None and dataset_name:
        raise ValueError(
            f"{path}: {count} classes, but {info.name} has {len(info.classnames)}: "
            "give the set's own class names (classnames.txt)"
        )
    if fallback is None:
        raise ValueError(f"{path}: no class names (classnames.txt, or --dataset-name)")
    return fallback, None


def _templates(own: list[str] | None, info: Any) -> list[str] | None:
    if own:
        return [t.replace("{c}", "{}") for t in own]
    return list(info.templates) if info is not None else None


def _members(info: Any, names: list[str]) -> Any:
    if info is None or info.members is None or list(info.classnames) != names:
        return None
    return [list(m) for m in info.members]


# --------------------------------------------------------------------------- CLIP_benchmark


def _shards(root: str, split: str, quiet: bool = False) -> list[str]:
    folder = storage.join(root, split)
    count = _lines(storage.join(folder, "nshards.txt"))
    if count:
        try:
            n = int(count[0])
        except ValueError:
            raise ValueError(f"{folder}/nshards.txt must hold a number") from None
        return [storage.join(folder, f"{i}.tar") for i in range(n)]
    if not storage.is_dir(folder):
        return []
    try:
        return sorted(storage.list_files(folder, ".tar"), key=_shard_order)
    except OSError:
        if quiet:
            return []
        raise


def _shard_order(url: str) -> tuple[int, str]:
    stem = posixpath.basename(url).removesuffix(".tar")
    return (int(stem), "") if stem.isdigit() else (1 << 62, stem)


def _wds_samples(
    root: str, split: str, want: str
) -> tuple[list[tuple[str, int, int]], list[bytes], str]:
    """(image members, ``want`` member bytes, fingerprint) of every sample of the split's
    shards, in shard order then the shard's own order. A sample without an image or a
    ``want`` member is an error naming it: a benchmark must not silently shrink."""
    from cliplab.data.webdataset import _table_of_contents

    urls = _shards(root, split)
    if not urls:
        raise ValueError(f"{root}: no shards in {split}/ (CLIP_benchmark layout)")
    members: list[tuple[str, int, int]] = []
    values: list[bytes] = []
    digest = hashlib.sha256()
    for url in urls:
        try:
            table = _table_of_contents(url)
        except OSError as e:
            raise ValueError(f"{url}: unreadable shard ({e})") from None
        digest.update(f"{url}:{len(table)}".encode())
        if not storage.is_remote(url):
            st = os.stat(url)
            digest.update(f":{st.st_size}:{st.st_mtime_ns}".encode())
        for key, found in table.items():
            ext = next((e for e in WDS_IMAGE_EXTS if e in found), None)
            if ext is None or want not in found:
                missing = "image" if ext is None else f"{want} member"
                raise ValueError(f"{url}: sample {key!r} has no {missing}")
            members.append((url, *found[ext]))
            offset, size = found[want]
            values.append(storage.read_range(url, offset, size))
            digest.update(f"{key}:{found[ext][1]}:{values[-1][:64]!r}".encode())
    return members, values, digest.hexdigest()


def _clip_benchmark_classification(root: str, split: str, dataset_name: str | None) -> Any:
    members, raw, fingerprint = _wds_samples(root, split, "cls")
    try:
        labels = [int(v.decode("utf-8").strip()) for v in raw]
    except ValueError:
        raise ValueError(f"{root}: a cls member that is not an integer label") from None
    own = _lines(storage.join(root, "classnames.txt"))
    count = (max(labels) + 1) if labels else 0
    names, info = _resolve_names(own, None if own else count, dataset_name, root, None)
    templates = _templates(
        _lines(storage.join(root, "zeroshot_classification_templates.txt")), info
    )
    return dict(
        images=TarMembers(members, fingerprint),
        labels=labels,
        classnames=names,
        templates=templates,
        name=(info.name if info is not None else _guess_name(root)),
        meta={"layout": "clip_benchmark", "path": root, "split": split},
        class_members=_members(info, names),
    )


def _clip_benchmark_retrieval(root: str, split: str) -> Any:
    members, raw, fingerprint = _wds_samples(root, split, "txt")
    captions = [[c for c in v.decode("utf-8").splitlines() if c.strip()] for v in raw]
    return dict(
        images=TarMembers(members, fingerprint),
        captions=captions,
        name=_guess_name(root),
        meta={"layout": "clip_benchmark", "path": root, "split": split},
    )


# --------------------------------------------------------------------------- ImageFolder


def _listing(folder: str) -> tuple[list[str], list[str]]:
    """(sub-folders, files) of a folder, names sorted."""
    if storage.is_remote(folder):
        fs, path = storage.fs_and_path(folder)
        entries = fs.ls(path, detail=True)
        dirs = sorted(
            posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory"
        )
        files = sorted(posixpath.basename(e["name"]) for e in entries if e["type"] != "directory")
        return dirs, files
    with os.scandir(folder) as it:
        entries = list(it)
    dirs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    files = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
    return dirs, files


def _is_image_name(name: str) -> bool:
    return "." in name and name.rsplit(".", 1)[1].lower() in IMAGE_EXTS


def _images_under(folder: str) -> list[str]:
    """Image files under ``folder``, recursively, sorted (torchvision's ImageFolder order)."""
    dirs, files = _listing(folder)
    out = [storage.join(folder, f) for f in files if _is_image_name(f)]
    for d in dirs:
        out += _images_under(storage.join(folder, d))
    return out


def _class_folders(root: str, split: str) -> tuple[str, list[str]] | None:
    """(the folder holding the class folders, their names) or None."""
    for base in (storage.join(root, split), root):
        if not storage.is_dir(base):
            continue
        dirs, _ = _listing(base)
        if dirs and any(_images_under(storage.join(base, d)) for d in dirs[:3]):
            return base, dirs
    return None


def _imagefolder(root: str, split: str, dataset_name: str | None) -> Any:
    found = _class_folders(root, split)
    if found is None:
        raise ValueError(f"{root}: no class folders of images")
    base, folders = found
    images, labels = [], []
    for label, folder in enumerate(folders):
        files = _images_under(storage.join(base, folder))
        images += files
        labels += [label] * len(files)
    own = _lines(storage.join(base, "classnames.txt")) or _lines(
        storage.join(root, "classnames.txt")
    )
    if own and len(own) != len(folders):
        raise ValueError(f"{root}: classnames.txt has {len(own)} names for {len(folders)} folders")
    pretty = [f.replace("_", " ") for f in folders]
    names, info = _resolve_names(own, len(folders), dataset_name, root, pretty)
    own_templates = _lines(storage.join(base, "templates.txt")) or _lines(
        storage.join(root, "zeroshot_classification_templates.txt")
    ) or _lines(storage.join(root, "templates.txt"))  # fmt: skip
    return dict(
        images=images,
        labels=labels,
        classnames=names,
        templates=_templates(own_templates, info),
        name=(info.name if info is not None else _guess_name(root)),
        meta={"layout": "imagefolder", "path": root, "folders": folders},
        class_members=_members(info, names),
    )


# --------------------------------------------------------------------------- tables


def _column(row: dict[str, Any], names: Sequence[str], what: str, path: str) -> str:
    lower = {k.lower(): k for k in row}
    for name in names:
        if name in lower:
            return lower[name]
    raise ValueError(f"{path}: no {what} column (one of {', '.join(names)}); has {sorted(row)}")


def _table(path: str, dataset_name: str | None) -> Any:
    from cliplab.data.manifest import iter_rows

    rows = list(iter_rows(path))
    if not rows:
        raise ValueError(f"{path}: an empty table")
    image_col = _column(rows[0], IMAGE_COLUMNS, "image path", path)
    label_col = _column(rows[0], LABEL_COLUMNS, "label", path)
    folder = storage.parent(path)
    images = [
        p if storage.is_remote(p) or os.path.isabs(p) else storage.join(folder, p)
        for p in (str(r[image_col]) for r in rows)
    ]
    raw = [r[label_col] for r in rows]
    own = _lines(storage.join(folder, "classnames.txt"))
    if all(
        isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()) for v in raw
    ):
        labels = [int(v) for v in raw]
        names, info = _resolve_names(own, max(labels) + 1, dataset_name, path, None)
    else:  # class names as labels: the bundled (or own) order, else sorted
        given = [str(v).strip() for v in raw]
        names, info = _resolve_names(own, None, dataset_name, path, sorted(set(given)))
        index = {n.casefold(): i for i, n in enumerate(names)}
        unknown = sorted({g for g in given if g.casefold() not in index})
        if unknown:
            raise ValueError(f"{path}: labels that are not class names: {unknown[:5]}")
        labels = [index[g.casefold()] for g in given]
    return dict(
        images=images,
        labels=labels,
        classnames=names,
        templates=_templates(_lines(storage.join(folder, "templates.txt")), info),
        name=(info.name if info is not None else posixpath.splitext(posixpath.basename(path))[0]),
        meta={"layout": "table", "path": path},
        class_members=_members(info, names),
    )


# --------------------------------------------------------------------------- Karpathy


def _karpathy(path: str, split: str) -> Any:
    try:
        data = json.loads(storage.read_text(path))
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not a Karpathy-split JSON (no 'images' list)")
    folder = storage.parent(path)
    chosen = [im for im in data["images"] if isinstance(im, dict) and im.get("split") == split]
    if not chosen:
        raise ValueError(f"{path}: no images of split {split!r}")
    bases = _karpathy_base(folder, chosen[0], data.get("dataset"))
    images, captions = [], []
    for im in chosen:
        sentences = [
            s.get("raw", "").strip() for s in im.get("sentences", []) if isinstance(s, dict)
        ]
        sentences = [s for s in sentences if s]
        if not sentences:
            raise ValueError(f"{path}: image {im.get('filename')!r} has no sentences")
        images.append(storage.join(bases, posixpath.join(im.get("filepath") or "", im["filename"])))
        captions.append(sentences)
    return dict(
        images=images,
        captions=captions,
        name=f"{data.get('dataset', 'karpathy')}-{split}",
        meta={"layout": "karpathy", "path": path, "split": split},
    )


def _karpathy_base(folder: str, first: dict[str, Any], dataset: Any) -> str:
    """The folder the JSON's ``filepath/filename`` start from: beside the JSON, or in the
    usual image folders (``images/``, ``flickr30k-images/``, ``coco/``)."""
    relative = posixpath.join(first.get("filepath") or "", first["filename"])
    for sub in ("", "images", "flickr30k-images", "coco", str(dataset or "")):
        base = storage.join(folder, sub) if sub else folder
        if storage.is_file(storage.join(base, relative)):
            return base
    raise ValueError(
        f"{folder}: the Karpathy JSON's images ({relative}) are not beside it, nor under "
        "images/, flickr30k-images/ or coco/"
    )


# --------------------------------------------------------------------------- entry points


def _split_folder(text: str, split: str) -> tuple[str, str]:
    """A CLIP_benchmark split folder given itself (``.../wds_cars/train``): its set and
    split; anything else as it is."""
    parent, name = storage.parent(text), posixpath.basename(text)
    if (
        not storage.is_file(storage.join(text, "meta.json"))
        and (storage.is_file(storage.join(text, "nshards.txt")) or _tars(text))
        and any(storage.is_file(storage.join(parent, f)) for f in _MARKERS)
    ):
        return parent, name
    return text, split


def _tars(folder: str) -> bool:
    try:
        return storage.is_dir(folder) and bool(storage.list_files(folder, ".tar"))
    except OSError:
        return False


def open_classification(
    path: str | os.PathLike[str], *, dataset_name: str | None = None, split: str = "test"
) -> dict[str, Any]:
    """The fields of a :class:`~cliplab.data.evalsets.ClassificationSet` from any
    classification layout (a CLIP_benchmark split folder names its split)."""
    text, split = _split_folder(os.fspath(path).rstrip("/"), split)
    layout = detect(text, split)
    if layout == "clip_benchmark":
        kind = (_lines(storage.join(text, "dataset_type.txt")) or ["classification"])[0].lower()
        if kind != "classification":
            raise ValueError(f"{text} is a {kind} set (dataset_type.txt), not classification")
        return _clip_benchmark_classification(text, split, dataset_name)
    if layout == "imagefolder":
        return _imagefolder(text, split, dataset_name)
    if layout == "table":
        return _table(text, dataset_name)
    raise ValueError(f"{text}: a {layout} file holds a retrieval set, not a classification set")


def open_retrieval(path: str | os.PathLike[str], *, split: str = "test") -> Any:
    """The fields of a :class:`~cliplab.data.evalsets.RetrievalSet` from any retrieval
    layout."""
    text, split = _split_folder(os.fspath(path).rstrip("/"), split)
    layout = detect(text, split)
    if layout == "karpathy":
        return _karpathy(text, split)
    if layout == "clip_benchmark":
        kind = (_lines(storage.join(text, "dataset_type.txt")) or ["classification"])[0].lower()
        if kind != "retrieval":
            raise ValueError(f"{text}: dataset_type.txt says {kind!r}, not retrieval")
        return _clip_benchmark_retrieval(text, split)
    raise ValueError(f"{text}: a {layout} layout holds classification sets, not retrieval")
