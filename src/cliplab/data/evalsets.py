"""Evaluation sets on disk: a small, documented directory format, its writer and its readers.

A set is a directory; it is complete once ``meta.json`` exists (the writer builds the set
under a temporary name and renames it at the end, so a reader never sees half a set)::

    <set>/
      meta.json        {"format": "cliplab-evalset", "version": 1, "task": "classification"
                        | "retrieval", "name", "description", "source", "license",
                        "num_images", ... ; classification adds "num_classes", "chance",
                        "majority"; retrieval adds "num_captions"}
      index.jsonl      one JSON object per image, in order:
                        classification: {"file": "images/000000.png", "label": 3, ...}
                        retrieval:      {"file": "images/000000.png", "captions": ["..."], ...}
                        (extra keys are free-form facts: the source path, a concept id...)
      images/          the images, RGB (transparent sources already composited on white)
      classes.json     classification: the class names, a JSON list; label i is classes[i]
      class_info.json  classification, optional: one object per class (ids, categories...)
      class_members.json classification, optional: one list of names per class (its members
                       or sub-labels); zero-shot then scores a class by the best of its name
                       and these (cliplab.evaluation.datasets.ClassificationSet)
      templates.json   classification: {"templates": ["a photo of a {}.", ...]}, one "{}" each

Readers return plain objects whose fields match :mod:`cliplab.evaluation.datasets`
(``images``, ``labels``, ``classnames``, ``templates``, ``name``, ``meta``, ``captions``), so
the evaluators can wrap them without this module importing theirs.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from cliplab.data import storage
from cliplab.fileio import AtomicDirectory, write_json

__all__ = [
    "FORMAT",
    "VERSION",
    "ClassificationFiles",
    "EvalSetWriter",
    "RetrievalFiles",
    "is_evalset",
    "load_classification_set",
    "load_retrieval_set",
    "read_meta",
    "write_classification_set",
    "write_retrieval_set",
]

FORMAT = "cliplab-evalset"
VERSION = 1
PLACEHOLDER = "{}"


@dataclass(frozen=True)
class ClassificationFiles:
    """A classification set as read from disk: image paths, labels, names, templates."""

    images: list[Path | str]  # local paths, or URLs for a set in object storage
    labels: list[int]
    classnames: list[str]
    templates: list[str]
    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # index.jsonl, extra keys included
    class_info: list[dict[str, Any]] | None = None
    class_members: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def image(self, i: int) -> Image.Image:
        """Image ``i`` as RGB (loaded now; the file is closed)."""
        return _open_rgb(self.images[i])


@dataclass(frozen=True)
class RetrievalFiles:
    """A retrieval set as read from disk: image paths, each with one or more captions."""

    images: list[Path | str]  # local paths, or URLs for a set in object storage
    captions: list[list[str]]
    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def texts(self) -> list[str]:
        """Every caption, image by image."""
        return [c for caps in self.captions for c in caps]

    @property
    def text_to_image(self) -> list[int]:
        """For each caption of :attr:`texts`, the index of its image."""
        return [i for i, caps in enumerate(self.captions) for _ in caps]

    def image(self, i: int) -> Image.Image:
        return _open_rgb(self.images[i])


def _open_rgb(path: Path | str) -> Image.Image:
    source = io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else path
    with Image.open(source) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            background.alpha_composite(rgba)
            return background.convert("RGB")
        return im.convert("RGB")


# --------------------------------------------------------------------------- reading


def is_evalset(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a complete evaluation set (has a ``meta.json`` of this format)."""
    try:
        return read_meta(path).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The set's ``meta.json``."""
    meta = json.loads(storage.read_text(storage.join(path, "meta.json")))
    if not isinstance(meta, dict):
        raise ValueError(f"{path}/meta.json is not a JSON object")
    return meta


def _read_index(root: Path | str) -> list[dict[str, Any]]:
    rows = []
    with storage.open_text(storage.join(root, "index.jsonl"), errors="strict") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("file"), str):
                raise ValueError(f"{root}/index.jsonl line {n}: expected an object with a 'file'")
            rows.append(row)
    return rows


def _check_file(root: Path | str, rel: str) -> Path | str:
    if isinstance(root, str):  # object storage: a plain relative path, never up or out
        parts = rel.replace("\\", "/").split("/")
        if rel.startswith("/") or "://" in rel or ".." in parts:
            raise ValueError(f"{root}: image path {rel!r} leaves the set's directory")
        return storage.join(root, rel)
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise ValueError(f"{root}: image path {rel!r} leaves the set's directory")
    return path


def _load(
    path: str | os.PathLike[str], task: str
) -> tuple[Path | str, dict[str, Any], list[dict[str, Any]]]:
    text = os.fspath(path)
    root: Path | str = text.rstrip("/") if storage.is_remote(text) else Path(text)
    if not storage.exists(storage.join(root, "meta.json")):
        raise FileNotFoundError(f"{root} is not an evaluation set (no meta.json)")
    meta = read_meta(root)
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise ValueError(
            f"{root}: format {meta.get('format')!r} v{meta.get('version')} is not {FORMAT} v<={VERSION}"
        )
    if meta.get("task") != task:
        raise ValueError(f"{root} is a {meta.get('task')!r} set, not {task!r}")
    return root, meta, _read_index(root)


def load_classification_set(path: str | os.PathLike[str]) -> ClassificationFiles:
    """Read a classification set directory (see the module docstring); checks labels."""
    root, meta, rows = _load(path, "classification")
    classnames = json.loads(storage.read_text(storage.join(root, "classes.json")))
    if not isinstance(classnames, list) or not all(isinstance(c, str) for c in classnames):
        raise ValueError(f"{root}/classes.json must be a list of strings")
    templates_data = json.loads(storage.read_text(storage.join(root, "templates.json")))
    templates = (
        templates_data.get("templates") if isinstance(templates_data, dict) else templates_data
    )
    if not templates or not all(
        isinstance(t, str) and t.count(PLACEHOLDER) == 1 for t in templates
    ):
        raise ValueError(f"{root}/templates.json: each template needs exactly one '{{}}'")
    labels = [int(r["label"]) for r in rows]
    bad = [y for y in labels if not 0 <= y < len(classnames)]
    if bad:
        raise ValueError(f"{root}: labels outside 0..{len(classnames) - 1}: {bad[:5]}")
    info_path = storage.join(root, "class_info.json")
    class_info = json.loads(storage.read_text(info_path)) if storage.exists(info_path) else None
    members_path = storage.join(root, "class_members.json")
    members = None
    if storage.exists(members_path):
        members = json.loads(storage.read_text(members_path))
        if (
            not isinstance(members, list)
            or len(members) != len(classnames)
            or not all(isinstance(m, list) and all(isinstance(n, str) for n in m) for m in members)
        ):
            raise ValueError(
                f"{root}/class_members.json must hold one list of names per class "
                f"({len(classnames)} lists)"
            )
    return ClassificationFiles(
        images=[_check_file(root, r["file"]) for r in rows],
        labels=labels,
        classnames=classnames,
        templates=list(templates),
        name=str(meta.get("name", posixpath.basename(os.fspath(root)))),
        meta=meta,
        rows=rows,
        class_info=class_info,
        class_members=members,
    )


def load_retrieval_set(path: str | os.PathLike[str]) -> RetrievalFiles:
    """Read a retrieval set directory (see the module docstring)."""
    root, meta, rows = _load(path, "retrieval")
    captions = []
    for r in rows:
        caps = r.get("captions")
        if (
            not isinstance(caps, list)
            or not caps
            or not all(isinstance(c, str) and c for c in caps)
        ):
            raise ValueError(f"{root}: {r['file']} needs a non-empty list of captions")
        captions.append(list(caps))
    return RetrievalFiles(
        images=[_check_file(root, r["file"]) for r in rows],
        captions=captions,
        name=str(meta.get("name", posixpath.basename(os.fspath(root)))),
        meta=meta,
        rows=rows,
    )


# --------------------------------------------------------------------------- writing


def _png_bytes(image: Image.Image | bytes) -> tuple[bytes, str]:
    """Encode as PNG (RGB, alpha composited on white); bytes are stored as given."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image), "png"
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        image = background.convert("RGB")
    elif image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue(), "png"


class EvalSetWriter:
    """Writes one evaluation set; use as a context manager::

        with EvalSetWriter(out / "fashion-mnist-test", "classification", name=..., classnames=...,
                           templates=..., license=..., source=...) as w:
            w.add(image, label=3, extra={"index": 17})

    Images are PIL images (stored as RGB PNG, transparency composited on white) or PNG bytes
    (stored as they are: the caller vouches they are RGB PNG). The set appears at ``path``
    only when the block ends without an error.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        task: str,
        *,
        name: str,
        description: str = "",
        source: str = "",
        license: str = "",
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
        class_info: Sequence[Mapping[str, Any]] | None = None,
        class_members: Sequence[Sequence[str]] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if task not in ("classification", "retrieval"):
            raise ValueError(f"task must be 'classification' or 'retrieval', got {task!r}")
        if task == "classification":
            if not classnames:
                raise ValueError("a classification set needs class names")
            if len(set(classnames)) != len(classnames):
                dupes = [c for c, n in Counter(classnames).items() if n > 1]
                raise ValueError(f"duplicate class names: {dupes[:5]}")
            if not templates or not all(t.count(PLACEHOLDER) == 1 for t in templates):
                raise ValueError("a classification set needs templates, each with exactly one '{}'")
            if class_info is not None and len(class_info) != len(classnames):
                raise ValueError("class_info needs one entry per class")
            if class_members is not None and len(class_members) != len(classnames):
                raise ValueError("class_members needs one list of names per class")
        self.path = Path(path)
        self.task = task
        self.classnames = list(classnames or [])
        self.templates = list(templates or [])
        self.class_info = [dict(c) for c in class_info] if class_info is not None else None
        self.class_members = (
            [[str(n) for n in m] for m in class_members] if class_members is not None else None
        )
        self.meta = {
            "format": FORMAT,
            "version": VERSION,
            "task": task,
            "name": name,
            "description": description,
            "source": source,
            "license": license,
            **dict(meta or {}),
        }
        self._staging: AtomicDirectory | None = None
        self._tmp = self.path
        self._index: io.TextIOWrapper | None = None
        self._count = 0
        self._captions = 0
        self._labels: Counter[int] = Counter()

    def __enter__(self) -> EvalSetWriter:
        self._staging = AtomicDirectory(self.path)
        self._tmp = self._staging.tmp
        (self._tmp / "images").mkdir(parents=True)
        self._index = open(self._tmp / "index.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        return self

    def add(
        self,
        image: Image.Image | bytes,
        *,
        label: int | None = None,
        captions: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """Add one image with its label (classification) or captions (retrieval); returns its file."""
        if self._index is None:
            raise ValueError("use EvalSetWriter as a context manager")
        row: dict[str, Any] = {}
        if self.task == "classification":
            if label is None or not 0 <= int(label) < len(self.classnames):
                raise ValueError(f"label {label!r} is not in 0..{len(self.classnames) - 1}")
            row["label"] = int(label)
            self._labels[int(label)] += 1
        else:
            caps = [c.strip() for c in (captions or []) if c and c.strip()]
            if not caps:
                raise ValueError("a retrieval image needs at least one non-empty caption")
            row["captions"] = caps
            self._captions += len(caps)
        data, ext = _png_bytes(image)
        rel = f"images/{self._count:06d}.{ext}"
        (self._tmp / rel).write_bytes(data)
        self._index.write(
            json.dumps({"file": rel, **row, **dict(extra or {})}, ensure_ascii=False) + "\n"
        )
        self._count += 1
        return rel

    def __len__(self) -> int:
        return self._count

    def close(self) -> dict[str, Any]:
        """Finish the set (write the JSON files, move it into place); returns its meta."""
        if self._index is None:
            raise ValueError("the set is not open")
        self._index.close()
        self._index = None
        assert self._staging is not None
        if self._count == 0:
            self._staging.discard()
            raise ValueError(f"evaluation set {self.meta['name']!r} has no images")
        meta = dict(self.meta, num_images=self._count)
        if self.task == "classification":
            k = len(self.classnames)
            meta.update(
                num_classes=k,
                classes_present=len(self._labels),
                chance=1.0 / k,  # top-1 accuracy of a uniform random guess
                majority=max(self._labels.values())
                / self._count,  # always guessing the largest class
            )
            _write_json(self._tmp / "classes.json", self.classnames)
            _write_json(self._tmp / "templates.json", {"templates": self.templates})
            if self.class_info is not None:
                _write_json(self._tmp / "class_info.json", self.class_info)
            if self.class_members is not None:
                _write_json(self._tmp / "class_members.json", self.class_members)
        else:
            meta["num_captions"] = self._captions
        _write_json(self._tmp / "meta.json", meta)
        self._staging.commit()
        return meta

    def abort(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._staging is not None:
            self._staging.discard()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _write_json(path: Path, data: Any) -> None:
    write_json(path, data, indent=1)


def write_classification_set(
    path: str | os.PathLike[str],
    items: Iterable[
        tuple[Image.Image | bytes, int] | tuple[Image.Image | bytes, int, Mapping[str, Any]]
    ],
    *,
    name: str,
    classnames: Sequence[str],
    templates: Sequence[str],
    **meta: Any,
) -> dict[str, Any]:
    """Write a classification set from ``(image, label[, extra])`` items; returns its meta."""
    writer = EvalSetWriter(
        path, "classification", name=name, classnames=classnames, templates=templates, **meta
    )
    with writer:
        for item in items:
            writer.add(item[0], label=item[1], extra=item[2] if len(item) > 2 else None)
    return read_meta(path)


def write_retrieval_set(
    path: str | os.PathLike[str],
    items: Iterable[
        tuple[Image.Image | bytes, Sequence[str]]
        | tuple[Image.Image | bytes, Sequence[str], Mapping[str, Any]]
    ],
    *,
    name: str,
    **meta: Any,
) -> dict[str, Any]:
    """Write a retrieval set from ``(image, captions[, extra])`` items; returns its meta."""
    writer = EvalSetWriter(path, "retrieval", name=name, **meta)
    with writer:
        for item in items:
            writer.add(item[0], captions=item[1], extra=item[2] if len(item) > 2 else None)
    return read_meta(path)
