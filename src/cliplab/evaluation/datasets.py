"""The evaluators' view of data: small in-memory protocols, independent of the storage format.

A classification set is images (PIL images, paths, or a tensor of preprocessed pixels), integer labels, class names and
optionally its own prompt templates; a retrieval set is images with one or more captions
each. Both carry a ``fingerprint`` that names their content for the feature caches.
:func:`load_classification` and :func:`load_retrieval` read the on-disk evaluation sets
(:mod:`cliplab.data.evalsets`) into these.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cliplab.data.storage import is_remote
from cliplab.encode import ImageLike

__all__ = [
    "ClassificationSet",
    "ImageLike",
    "RetrievalSet",
    "images_fingerprint",
    "load_classification",
    "load_retrieval",
]


def images_fingerprint(images: Sequence[ImageLike] | torch.Tensor) -> str:
    """Hex digest of a list of images: paths by (absolute path, size, mtime), PIL images by
    mode, size and pixel bytes, a tensor of preprocessed pixels by its bytes. Cheap for files
    (no reads), exact for in-memory images."""
    h = hashlib.sha256()
    if isinstance(images, torch.Tensor):
        h.update(f"pixels:{tuple(images.shape)}:{images.dtype}".encode())
        h.update(images.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
    for item in images:
        if isinstance(item, Image.Image):
            h.update(f"pil:{item.mode}:{item.size}:".encode())
            h.update(item.tobytes())
        elif is_remote(item):  # object storage: by URL (no request per image)
            h.update(f"url:{item}".encode())
        else:
            path = Path(item).resolve()
            try:
                st = path.stat()
                h.update(f"file:{path}:{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"missing:{path}".encode())
    return h.hexdigest()


def _take(images: Sequence[ImageLike] | torch.Tensor, indices: list[int]) -> Any:
    if isinstance(images, torch.Tensor):
        return images[indices]
    return [images[i] for i in indices]


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ClassificationSet:
    """Images with one label each, the class names and (optionally) the set's own templates.

    ``fingerprint`` is computed from the images, labels and class names when not given.
    ``meta`` carries free-form facts from the set's source (e.g. its ``meta.json``);
    ``class_info`` one mapping per class where the set has them (``class_info.json``: an
    emoji's category and subcategory, ...), which :mod:`cliplab.evaluation.groups` regroups by.
    ``class_members``, where given, lists more names for each class (its members or sub-labels:
    "cat face", "dog", ... for "animals & nature"): zero-shot then scores a class by the best of
    its own name and these (hierarchical label sets, as in CHiLS, Novack et al. 2023).
    """

    images: Sequence[ImageLike] | torch.Tensor
    labels: Sequence[int]
    classnames: Sequence[str]
    templates: Sequence[str] | None = None
    name: str = "dataset"
    fingerprint: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    class_info: Sequence[Mapping[str, Any]] | None = field(default=None, compare=False)
    class_members: Sequence[Sequence[str]] | None = None

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{self.name}: {len(self.images)} images but {len(self.labels)} labels"
            )
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

    def with_images(self, images: Sequence[ImageLike] | torch.Tensor) -> ClassificationSet:
        """The same set (same fingerprint) with its images replaced, e.g. by their pixels."""
        return replace(self, images=images)

    def subset(self, indices: Sequence[int], name: str | None = None) -> ClassificationSet:
        """The examples at ``indices`` (same classes and templates)."""
        indices = [int(i) for i in indices]
        return replace(
            self,
            images=_take(self.images, indices),
            labels=[self.labels[i] for i in indices],
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
            classnames=[self.classnames[c] for c in keep],
            class_info=None if info is None else [info[c] for c in keep],
            class_members=None if members is None else [members[c] for c in keep],
            name=name or self.name,
            fingerprint=_digest(self.fingerprint, "classes", keep),
        )


@dataclass(frozen=True)
class RetrievalSet:
    """Images, each with one or more captions (a hit is any of its captions)."""

    images: Sequence[ImageLike] | torch.Tensor
    captions: Sequence[Sequence[str]]
    name: str = "retrieval"
    fingerprint: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.captions):
            raise ValueError(
                f"{self.name}: {len(self.images)} images but {len(self.captions)} caption lists"
            )
        empty = [i for i, c in enumerate(self.captions) if not c]
        if empty:
            raise ValueError(f"{self.name}: images without captions at {empty[:5]}")
        object.__setattr__(self, "captions", [list(c) for c in self.captions])
        if not self.fingerprint:
            fp = _digest(images_fingerprint(self.images), self.captions)
            object.__setattr__(self, "fingerprint", fp)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int], name: str | None = None) -> RetrievalSet:
        """The images at ``indices`` with their captions."""
        indices = [int(i) for i in indices]
        return replace(
            self,
            images=_take(self.images, indices),
            captions=[self.captions[i] for i in indices],
            name=name or self.name,
            fingerprint=_digest(self.fingerprint, indices),
        )

    def with_images(self, images: Sequence[ImageLike] | torch.Tensor) -> RetrievalSet:
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


def load_classification(path: str | os.PathLike[str]) -> ClassificationSet:
    """A classification set from an evaluation-set directory (``cliplab.data.evalsets``)."""
    from cliplab.data.evalsets import load_classification_set

    files = load_classification_set(path)
    return ClassificationSet(
        images=list(files.images),
        labels=list(files.labels),
        classnames=list(files.classnames),
        templates=list(files.templates) or None,
        name=files.name,
        meta=dict(files.meta),
        class_info=files.class_info,
        class_members=files.class_members,
    )


def load_retrieval(path: str | os.PathLike[str]) -> RetrievalSet:
    """A retrieval set from an evaluation-set directory (``cliplab.data.evalsets``)."""
    from cliplab.data.evalsets import load_retrieval_set

    files = load_retrieval_set(path)
    return RetrievalSet(
        images=list(files.images),
        captions=[list(c) for c in files.captions],
        name=files.name,
        meta=dict(files.meta),
    )
