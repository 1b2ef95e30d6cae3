"""Labelled images as image-text pairs: the classification source of fine-tuning (FLYP).

A labelled collection is an image folder with one subfolder per class
(``root/<class>/<image>``), or a table (CSV, TSV, JSONL, Parquet) of ``path,label`` rows
(paths relative to the table's folder). Each image becomes a pair whose caption is its class
name inside a prompt template drawn afresh for every sample (:func:`template_caption`): the
contrastive loss of pre-training, with class names as captions (Goyal et al. 2022, "Finetune
like you pretrain"). ``classnames`` maps folder or label names to the names written into
the prompts (a JSON object, or a CSV/TSV of ``label,name``).

``split`` holds out a validation split the same way every time: per class, the
``val_fraction`` of images whose keys hash first under ``split_seed`` (at least one image
when a class has two or more). ``split = "train"`` trains on the rest, and
:meth:`LabelledImages.classification_set` returns the held-out images as an evaluation set,
zero-shot classified among all the class names with the same templates.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import posixpath
import random
from collections.abc import Sequence
from functools import lru_cache

from cliplab.data import storage
from cliplab.data.evalsets import ClassificationSet
from cliplab.data.images import IMAGE_EXTS
from cliplab.data.manifest import _RowSource, _sample, iter_rows, table_format
from cliplab.data.stream import RawSample
from cliplab.templates import fill_template, resolve_templates

__all__ = ["SPLITS", "LabelledImages", "read_classnames", "template_caption"]

SPLITS = ("all", "train", "val")
#: The caption function of a labelled source (named in its spec; lives in cliplab).
CAPTION_FN = "cliplab.data.classes:template_caption"


def read_classnames(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{label: class name}`` from a JSON object or a two-column CSV/TSV (``label,name``,
    an optional header naming ``label`` first)."""
    try:
        text = storage.read_bytes(os.fspath(path)).decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"classnames: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"classnames: {path}: unreadable ({e})") from None
    if str(path).lower().endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"classnames: {path}: invalid JSON ({e})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"classnames: {path} must be a JSON object of label -> name")
        return {str(k): v.strip() for k, v in data.items()}
    delimiter = "\t" if str(path).lower().endswith(".tsv") else ","
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r]
    if rows and rows[0][0].strip().lower() == "label":
        rows = rows[1:]
    bad = [r for r in rows if len(r) != 2 or not r[1].strip()]
    if bad:
        raise ValueError(f"classnames: {path}: rows must be 'label,name'; got {bad[0]}")
    return {r[0].strip(): r[1].strip() for r in rows}


@lru_cache(maxsize=16)
def _templates(spec: str) -> tuple[str, ...]:
    return tuple(resolve_templates(spec))


def template_caption(sample: RawSample, rng: random.Random) -> str:
    """The caption of a labelled sample: its class name in a template drawn with ``rng``
    from the template set its ``json`` member names (``{"label", "templates"}``)."""
    from cliplab.data.decode import BadSample

    try:
        meta = json.loads(sample.members["json"].decode("utf-8"))
        name, spec = meta["label"], meta["templates"]
    except (KeyError, ValueError, UnicodeDecodeError, TypeError):
        raise BadSample("missing-label") from None
    return fill_template(rng.choice(_templates(spec)), name)


def _hash(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()


def split_rows(
    rows: Sequence[tuple[str, str]], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """``(train, val)`` row indices: per label, the ``fraction`` of rows whose keys hash
    first (at least one of a label with two or more rows; none of a lone one)."""
    by_label: dict[str, list[int]] = {}
    for i, (_, label) in enumerate(rows):
        by_label.setdefault(label, []).append(i)
    val: set[int] = set()
    for indices in by_label.values():
        if fraction <= 0 or len(indices) < 2:
            continue
        take = min(len(indices) - 1, max(1, math.floor(fraction * len(indices))))
        ranked = sorted(indices, key=lambda i: _hash(seed, rows[i][0]))
        val.update(ranked[:take])
    train = [i for i in range(len(rows)) if i not in val]
    return train, sorted(val)


class LabelledImages(_RowSource):
    """A class folder or a ``path,label`` table as a training source (see the module
    docstring). Keys are the image paths relative to the root."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str = "classes",
        classnames: str = "",
        templates: str = "imagenet80",
        split: str = "all",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        path_column: str = "path",
        label_column: str = "label",
        extensions: Sequence[str] = IMAGE_EXTS,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.name = name
        self.templates = templates
        self.template_list = list(_templates(templates))  # an unknown set fails here
        location = os.fspath(path)
        if storage.is_dir(location):
            self.root, rows = location, _folder_rows(location, extensions)
        elif table_format(location):
            self.root = (
                posixpath.dirname(location)
                if storage.is_remote(location)
                else (os.path.dirname(os.path.abspath(location)))
            )
            rows = _table_rows(location, path_column, label_column)
        else:
            raise ValueError(
                f"{location}: neither a folder of class folders nor a table of path,label rows"
            )
        if not rows:
            raise ValueError(f"{location}: no labelled images found")
        mapping = read_classnames(classnames) if classnames else {}
        labels = sorted({label for _, label in rows})
        unnamed = [label for label in labels if mapping and label not in mapping]
        if unnamed:
            raise ValueError(f"classnames {classnames}: no name for label(s) {unnamed[:5]}")
        #: the class names, in label order (sorted folder or label names)
        self.classnames = [mapping.get(label, label.replace("_", " ")) for label in labels]
        index = {label: i for i, label in enumerate(labels)}
        train, val = split_rows(rows, val_fraction if split != "all" else 0.0, split_seed)
        self._val = [(rows[i][0], index[rows[i][1]]) for i in val]
        chosen = train if split != "val" else val
        self.rows = [(rows[i][0], index[rows[i][1]]) for i in chosen]
        if not self.rows:
            raise ValueError(f"{location}: the {split} split is empty")

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, index: int) -> RawSample:
        key, label = self.rows[index]
        meta = {"label": self.classnames[label], "templates": self.templates}
        return _sample(key, storage.join(self.root, key), None, meta, self.name)

    def counts(self) -> dict[str, int]:
        """Images per class name in this split."""
        out = dict.fromkeys(self.classnames, 0)
        for _, label in self.rows:
            out[self.classnames[label]] += 1
        return out

    def classification_set(self, split: str = "val") -> ClassificationSet:
        """The held-out (``"val"``) or chosen (``"this"``) images as an evaluation set among
        every class name, with this source's templates."""
        rows = self._val if split == "val" else self.rows
        if not rows:
            raise ValueError(f"{self.name}: no {split} images (is val_fraction 0?)")
        return ClassificationSet(
            images=[storage.join(self.root, key) for key, _ in rows],
            labels=[label for _, label in rows],
            classnames=self.classnames,
            templates=self.template_list,
            name=f"{self.name}-{split}",
        )


def _folder_rows(root: str, extensions: Sequence[str]) -> list[tuple[str, str]]:
    from cliplab.data.manifest import _find_files

    wanted = {e.lower().lstrip(".") for e in extensions}
    rows = []
    for rel in sorted(_find_files(root)):
        parts = rel.split("/")
        if len(parts) < 2 or any(p.startswith(".") for p in parts):
            continue  # images at the top have no class; hidden files are not images
        if os.path.splitext(rel)[1].lower().lstrip(".") in wanted:
            rows.append((rel, parts[0]))
    return rows


def _table_rows(path: str, path_column: str, label_column: str) -> list[tuple[str, str]]:
    rows = []
    for n, row in enumerate(iter_rows(path), start=1):
        image, label = row.get(path_column), row.get(label_column)
        if not isinstance(image, str) or not image or label in (None, ""):
            raise ValueError(
                f"{path}: row {n} lacks a {path_column!r} or {label_column!r} value "
                f"(columns: {', '.join(map(str, row))})"
            )
        if posixpath.isabs(image) or ".." in image.replace("\\", "/").split("/"):
            raise ValueError(f"{path}: row {n}: image paths must stay inside the table's folder")
        rows.append((image, str(label)))
    return rows
