"""Evaluation sets: the in-memory types the evaluators take, the directory format on disk,
its readers and its writer.

:class:`ClassificationSet` is images (PIL images, files, or a tensor of preprocessed pixels),
integer labels, class names and optionally the set's own prompt templates;
:class:`RetrievalSet` is images with one or more captions each. Both carry a ``fingerprint``
that names their content for the feature caches. :func:`load_classification` and
:func:`load_retrieval` read a set directory straight into them.

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
      images/          the images, RGB or gray (transparent sources composited on white)
      classes.json     classification: the class names, a JSON list; label i is classes[i]
      class_info.json  classification, optional: one object per class (ids, categories...)
      class_members.json classification, optional: one list of names per class (its members
                       or sub-labels); zero-shot then scores a class by the best of its name
                       and these (:class:`ClassificationSet`)
      templates.json   classification: {"templates": ["a photo of a {}.", ...]}, one "{}" each

Why one module of ~630 lines: the types, the format and its writer are one contract. What
the writer stores is exactly what the readers check and what the types hold (labels in
range, one list of members per class, captions per image); apart, the three drift apart.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cliplab.data import storage
from cliplab.data.images import ImageLike, open_rgb, rgb
from cliplab.fileio import AtomicDirectory, write_json

__all__ = [
    "FORMAT",
    "VERSION",
    "ClassificationSet",
    "EvalSetWriter",
    "RetrievalSet",
    "images_fingerprint",
    "is_evalset",
    "load_classification",
    "load_retrieval",
    "read_meta",
    "write_classification_set",
    "write_retrieval_set",
]

FORMAT = "cliplab-evalset"
VERSION = 1
PLACEHOLDER = "{}"

Images = Sequence[ImageLike] | torch.Tensor


# --------------------------------------------------------------------------- the types


def images_fingerprint(images: Images) -> str:
    """Hex digest of a list of images: paths by (absolute path, size, mtime), URLs by URL, PIL
    images by mode, size and pixel bytes, a tensor of preprocessed pixels by its bytes. Cheap
    for files (no reads), exact for in-memory images."""
    h = hashlib.sha256()
    if isinstance(getattr(images, "fingerprint", None), str):  # members of shards
        h.update(f"members:{images.fingerprint}".encode())  # type: ignore[union-attr]
        return h.hexdigest()
    if isinstance(images, torch.Tensor):
        h.update(f"pixels:{tuple(images.shape)}:{images.dtype}".encode())
        h.update(images.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
    for item in images:
        if isinstance(item, Image.Image):
            h.update(f"pil:{item.mode}:{item.size}:".encode())
            h.update(item.tobytes())
        elif isinstance(item, (bytes, bytearray)):
            h.update(f"bytes:{len(item)}:".encode())
            h.update(item)
        elif storage.is_remote(item):  # object storage: by URL (no request per image)
            h.update(f"url:{item}".encode())
        else:
            path = Path(item).resolve()
            try:
                st = path.stat()
                h.update(f"file:{path}:{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"missing:{path}".encode())
    return h.hexdigest()


def _take(images: Images, indices: list[int]) -> Any:
    if isinstance(images, torch.Tensor):
        return images[indices]
    members = getattr(images, "members", None)
    if members is not None:  # shard members stay unread
        return type(images)([members[i] for i in indices], _digest(images.fingerprint, indices))
    return [images[i] for i in indices]


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode()).hexdigest()


def _rgb_image(images: Images, i: int) -> Image.Image:
    if isinstance(images, torch.Tensor):
        raise TypeError("this set holds preprocessed pixels, not images")
    return open_rgb(images[i])


def _check_rows(name: str, rows: Sequence[Mapping[str, Any]], n: int) -> None:
    if rows and len(rows) != n:
        raise ValueError(f"{name}: {len(rows)} index rows but {n} images")


@dataclass(frozen=True)
class ClassificationSet:
    """Images with one label each, the class names and (optionally) the set's own templates.

    ``fingerprint`` is computed from the images, labels and class names when not given.
    ``meta`` carries free-form facts from the set's source (its ``meta.json``), ``rows`` the
    set's ``index.jsonl`` lines (one per image, extra keys included); ``class_info`` one
    mapping per class where the set has them (``class_info.json``: an emoji's category and
    subcategory, ...), which :mod:`cliplab.evaluation.groups` regroups by.
    ``class_members``, where given, lists more names for each class (its members or sub-labels:
    "cat face", "dog", ... for "animals & nature"): zero-shot then scores a class by the best of
    its own name and these (hierarchical label sets, as in CHiLS, Novack et al. 2023).
    """

    images: Images
    labels: Sequence[int]
    classnames: Sequence[str]
    templates: Sequence[str] | None = None
    name: str = "dataset"
    fingerprint: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    class_info: Sequence[Mapping[str, Any]] | None = field(default=None, compare=False)
    class_members: Sequence[Sequence[str]] | None = None
    rows: Sequence[Mapping[str, Any]] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{self.name}: {len(self.images)} images but {len(self.labels)} labels"
            )
        _check_rows(self.name, self.rows, len(self.labels))
        n = len(self.classnames)
        bad = [y for y in self.labels if not 0 <= int(y) < n]
        if bad:
            raise ValueError(f"{self.name}: labels outside 0..{n - 1}: {bad[:5]}")
        object.__setattr__(self, "labels", [int(y) for y in self.labels])
        object.__setattr__(self, "classnames", list(self.classnames))
        if self.templates is not None:
            object.__setattr__(self, "templates", list(self.templates))
        if self.class_info is not None and len(self.class_info) != n:
            raise ValueError(f"{self.name}: {len(self.class_info)} class_info entries, {n} classes")
        if self.class_members is not None:
            if len(self.class_members) != n:
                raise ValueError(
                    f"{self.name}: {len(self.class_members)} class_members lists, {n} classes"
                )
            members = tuple(tuple(str(m) for m in ms) for ms in self.class_members)
            object.__setattr__(self, "class_members", members)
        if not self.fingerprint:
            fp = _digest(images_fingerprint(self.images), self.labels, self.classnames)
            object.__setattr__(self, "fingerprint", fp)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def image(self, i: int) -> Image.Image:
        """Image ``i`` as RGB, transparency on white (loaded now; the file is closed)."""
        return _rgb_image(self.images, i)

    def with_images(self, images: Images) -> ClassificationSet:
        """The same set (same fingerprint) with its images replaced, e.g. by their pixels."""
        return replace(self, images=images)

    def subset(self, indices: Sequence[int], name: str | None = None) -> ClassificationSet:
        """The examples at ``indices`` (same classes and templates)."""
        indices = [int(i) for i in indices]
        return replace(
            self,
            images=_take(self.images, indices),
            labels=[self.labels[i] for i in indices],
            rows=[self.rows[i] for i in indices] if self.rows else (),
            name=name or self.name,
            fingerprint=_digest(self.fingerprint, indices),
        )

    def only_classes(self, names: Collection[str], name: str | None = None) -> ClassificationSet:
        """The examples of the classes named in ``names`` (case-insensitive), classified among
        those classes alone: class indices renumbered in this set's order, templates kept
        (a held-out slice of concepts, scored as its own task). A name this set lacks is
        an error, not a silently smaller task."""
        wanted = {n.strip().casefold() for n in names}
        keep = [c for c, n in enumerate(self.classnames) if n.strip().casefold() in wanted]
        missing = wanted - {self.classnames[c].strip().casefold() for c in keep}
        if missing:
            raise ValueError(f"{self.name}: no class named {sorted(missing)[:5]}")
        new = {c: i for i, c in enumerate(keep)}
        indices = [i for i, y in enumerate(self.labels) if y in new]
        info = self.class_info
        members = self.class_members
        return replace(
            self,
            images=_take(self.images, indices),
            labels=[new[self.labels[i]] for i in indices],
            rows=[self.rows[i] for i in indices] if self.rows else (),
            classnames=[self.classnames[c] for c in keep],
            class_info=None if info is None else [info[c] for c in keep],
            class_members=None if members is None else [members[c] for c in keep],
            name=name or self.name,
            fingerprint=_digest(self.fingerprint, "classes", keep),
        )


@dataclass(frozen=True)
class RetrievalSet:
    """Images, each with one or more captions (a hit is any of its captions); ``meta`` and
    ``rows`` as in :class:`ClassificationSet`."""

    images: Images
    captions: Sequence[Sequence[str]]
    name: str = "retrieval"
    fingerprint: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    rows: Sequence[Mapping[str, Any]] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.captions):
            raise ValueError(
                f"{self.name}: {len(self.images)} images but {len(self.captions)} caption lists"
            )
        _check_rows(self.name, self.rows, len(self.captions))
        empty = [i for i, c in enumerate(self.captions) if not c]
        if empty:
            raise ValueError(f"{self.name}: images without captions at {empty[:5]}")
        object.__setattr__(self, "captions", [list(c) for c in self.captions])
        if not self.fingerprint:
            fp = _digest(images_fingerprint(self.images), self.captions)
            object.__setattr__(self, "fingerprint", fp)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Image.Image:
        """Image ``i`` as RGB, transparency on white (loaded now; the file is closed)."""
        return _rgb_image(self.images, i)

    def subset(self, indices: Sequence[int], name: str | None = None) -> RetrievalSet:
        """The images at ``indices`` with their captions."""
        indices = [int(i) for i in indices]
        return replace(
            self,
            images=_take(self.images, indices),
            captions=[self.captions[i] for i in indices],
            rows=[self.rows[i] for i in indices] if self.rows else (),
            name=name or self.name,
            fingerprint=_digest(self.fingerprint, indices),
        )

    def with_images(self, images: Images) -> RetrievalSet:
        """The same set (same fingerprint) with its images replaced, e.g. by their pixels."""
        return replace(self, images=images)

    @property
    def texts(self) -> list[str]:
        """Every caption, image by image."""
        return [c for caps in self.captions for c in caps]

    @property
    def text_to_image(self) -> list[int]:
        """For each caption of :attr:`texts`, the index of its image."""
        return [i for i, caps in enumerate(self.captions) for _ in caps]


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


def _own_layout(path: str | os.PathLike[str]) -> bool:
    text = os.fspath(path).rstrip("/")
    if storage.exists(storage.join(text, "meta.json")):
        return True
    if not storage.exists(text):
        raise FileNotFoundError(f"{text}: no such evaluation set")
    return False


def load_classification(
    path: str | os.PathLike[str], *, dataset_name: str | None = None, split: str = "test"
) -> ClassificationSet:
    """A classification set from its directory (local or a URL; see the module docstring),
    or from any other layout people keep sets in (CLIP_benchmark's WebDataset layout, an
    ImageFolder tree, a CSV/Parquet of path,label: :mod:`cliplab.data.layouts`), with
    ``dataset_name``'s bundled class names and templates where the set has none."""
    if not _own_layout(path):
        from cliplab.data.layouts import open_classification

        return ClassificationSet(
            **open_classification(path, dataset_name=dataset_name, split=split)
        )
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
    labels = [int(r["label"]) for r in rows]  # the set checks they are in range
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
    return ClassificationSet(
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


def load_retrieval(path: str | os.PathLike[str], *, split: str = "test") -> RetrievalSet:
    """A retrieval set from its directory (local or a URL; see the module docstring), or
    from CLIP_benchmark's WebDataset layout or a Karpathy-split JSON (MSCOCO, Flickr30k:
    :mod:`cliplab.data.layouts`)."""
    if not _own_layout(path):
        from cliplab.data.layouts import open_retrieval

        return RetrievalSet(**open_retrieval(path, split=split))
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
    return RetrievalSet(
        images=[_check_file(root, r["file"]) for r in rows],
        captions=captions,
        name=str(meta.get("name", posixpath.basename(os.fspath(root)))),
        meta=meta,
        rows=rows,
    )


# --------------------------------------------------------------------------- writing


def _png_bytes(image: Image.Image | bytes) -> tuple[bytes, str]:
    """Encode as PNG: gray stays gray, anything else becomes :func:`~cliplab.data.images.rgb`
    (alpha composited on white, upright); bytes are stored as given."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image), "png"
    if image.mode != "L" or "transparency" in image.info:
        image = rgb(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue(), "png"


class EvalSetWriter:
    """Writes one evaluation set; use as a context manager::

        with EvalSetWriter(out / "fashion-mnist-test", "classification", name=..., classnames=...,
                           templates=..., license=..., source=...) as w:
            w.add(image, label=3, extra={"index": 17})

    Images are PIL images of any mode (stored as PNG after :func:`cliplab.data.images.rgb`:
    upright, transparency composited on white; gray stays gray) or PNG bytes (stored as they
    are: the caller vouches they are RGB PNG). The set appears at ``path`` only when the block
    ends without an error.
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
