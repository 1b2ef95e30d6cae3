"""Typed source specs: the one way to describe and open a data source.

A spec is a frozen dataclass per kind, built from a TOML table (``[[data.sources]]``) or a
command-line path, that owns everything about the source: its fields, its ``name``, its
mixing ``weight`` and its ``caption_fn``. Kinds:

- ``synthetic``: procedural shapes, no download (:class:`SyntheticSource`);
- ``webdataset``: tar shards, ``urls`` a brace pattern or a list (:class:`WebDatasetSource`);
- ``shards``: a shard set built by ``cliplab data build`` (``set`` under ``<dir>/shards``,
  whose ``build.json`` lists the shards and names the caption function);
- ``csv``: a CSV/TSV manifest, ``path`` plus image and caption columns (:class:`CsvSource`);
- ``parquet``: Parquet manifests, needs pyarrow (:class:`ParquetSource`);
- ``folder``: images with sidecar ``.txt`` captions under ``root`` (:class:`FolderSource`);
- ``classes``: labelled images (class folders or a ``path,label`` table), captioned by
  their class names in prompt templates (:mod:`cliplab.data.classes`: fine-tuning, FLYP).

``caption_fn`` is ``"auto"`` (the function a shard set's ``build.json`` names, else the
stored captions), ``"none"`` (the stored captions) or ``"package.module:function"``, called
as ``fn(sample, rng) -> str``. A function named by a data file must live in ``cliplab``.

``exclude_labels`` names a UTF-8 text file of labels, one per line: samples whose
``json`` member's ``"label"`` is among them are skipped and counted (``excluded-label``).
It keeps concepts out of training: a held-out slice of concepts to choose recipes on, or
the classes of an evaluation set (the paper's overlap concern, removed at the source).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cliplab.config import unknown_message
from cliplab.data import storage
from cliplab.data.images import IMAGE_EXTS
from cliplab.data.manifest import CsvSource, FolderSource, ParquetSource
from cliplab.data.stream import Source
from cliplab.data.synthetic import SyntheticSource
from cliplab.data.webdataset import WebDatasetSource, expand_urls

__all__ = [
    "KINDS",
    "ClassesSpec",
    "CsvSpec",
    "FolderSpec",
    "ParquetSpec",
    "ShardsSpec",
    "SourceSpec",
    "SyntheticSpec",
    "WebDatasetSpec",
    "build_source",
    "read_label_file",
    "read_shard_set",
    "resolve_caption_fn",
    "source_weights",
    "spec_for_path",
    "spec_from_dict",
]

CaptionFn = Callable[..., str]
#: The file a built shard set carries (``cliplab data build`` writes it last).
BUILD_FILE = "build.json"


def resolve_caption_fn(name: str, trusted: bool = True) -> CaptionFn:
    """``"package.module:function"`` -> the function. Names read from data files (a shard
    set's ``build.json``) are ``trusted=False`` and must live in ``cliplab``: a data file must
    not choose code to import."""
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"caption_fn must look like 'package.module:function', got {name!r}")
    if module_name.startswith("cliplab.datasets."):  # shard sets built before the rename
        module_name = "cliplab.recipes." + module_name.removeprefix("cliplab.datasets.")
    if not trusted and not (module_name == "cliplab" or module_name.startswith("cliplab.")):
        raise ValueError(f"refusing caption_fn {name!r} from a data file: not in cliplab")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"caption_fn {name!r} cannot be imported: {e}") from e
    if not callable(fn):
        raise ValueError(f"caption_fn {name!r} is not callable")
    return fn


def read_shard_set(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``build.json`` of a built shard set, or ``FileNotFoundError`` naming the fix."""
    record = Path(path) / BUILD_FILE
    try:
        info = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no built shard set at {Path(path)} (build it with `cliplab data build`)"
        ) from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{record}: unreadable ({e})") from None
    if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
        raise ValueError(f"{record}: not a shard set's build record (no 'shards' list)")
    return info


def read_label_file(path: str | os.PathLike[str]) -> frozenset[str]:
    """Labels listed in a UTF-8 text file, one per line (blank lines ignored; no comment
    syntax: emoji labels such as "keycap: #" use every character), case-folded: what
    ``exclude_labels`` names."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"exclude_labels: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"exclude_labels: {path}: unreadable ({e})") from None
    return frozenset(line.strip().casefold() for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class SourceSpec:
    """What every kind has: a ``name`` (samples are routed to their source's decoder by it;
    empty: the kind's default), a mixing ``weight`` (None: mix by size, unless another
    source has a weight, then 1.0), a ``caption_fn`` and ``exclude_labels`` (a file of
    labels whose samples are skipped; empty: none)."""

    kind: ClassVar[str] = ""

    name: str = ""
    weight: float | None = None
    caption_fn: str = "auto"
    exclude_labels: str = ""

    def __post_init__(self) -> None:
        if self.weight is not None and not self.weight > 0:
            raise ValueError(f"{self.kind} source: weight must be positive, got {self.weight}")
        if not isinstance(self.caption_fn, str) or not self.caption_fn:
            raise ValueError(f"{self.kind} source: caption_fn must be a string")
        if not isinstance(self.exclude_labels, str):
            raise ValueError(f"{self.kind} source: exclude_labels must be a file path (a string)")

    @property
    def display_name(self) -> str:
        return self.name or self.kind

    def open(self) -> Source:
        """The source itself (reads what it needs to count its samples)."""
        raise NotImplementedError

    def recorded_caption_fn(self) -> str | None:
        """The caption function a data file beside the source names (``auto``)."""
        return None

    def caption_function(self) -> CaptionFn | None:
        """The caption function for this source's samples (None: the stored captions)."""
        name = self.caption_fn
        if name == "none":
            return None
        if name != "auto":
            return resolve_caption_fn(name)
        recorded = self.recorded_caption_fn()
        return resolve_caption_fn(recorded, trusted=False) if recorded else None

    def excluded_labels(self) -> frozenset[str]:
        """The labels of ``exclude_labels`` (case-folded; empty when no file is named)."""
        return read_label_file(self.exclude_labels) if self.exclude_labels else frozenset()

    def to_dict(self) -> dict[str, Any]:
        """The TOML table of this spec (every field, ``kind`` first)."""
        fields = dataclasses.asdict(self)
        return {
            "kind": self.kind,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()},
        }


@dataclass(frozen=True)
class SyntheticSpec(SourceSpec):
    kind: ClassVar[str] = "synthetic"
    num_samples: int = 20000
    split: str = "train"
    image_size: int = 64

    def open(self) -> Source:
        return SyntheticSource(self.num_samples, self.split, self.image_size, self.display_name)


@dataclass(frozen=True)
class WebDatasetSpec(SourceSpec):
    kind: ClassVar[str] = "webdataset"
    urls: str | tuple[str, ...] = ""
    num_samples: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.urls, list):
            object.__setattr__(self, "urls", tuple(self.urls))
        if not self.urls:
            raise ValueError("webdataset source: urls is empty")

    def open(self) -> Source:
        return WebDatasetSource(self.urls, self.display_name, self.num_samples)

    def recorded_caption_fn(self) -> str | None:
        try:
            first = expand_urls(self.urls)[0]
            if first.startswith("pipe:"):
                return None
            info = json.loads(storage.read_text(storage.join(storage.parent(first), BUILD_FILE)))
        except (ValueError, OSError, IndexError, ImportError):
            return None
        name = info.get("caption_fn") if isinstance(info, dict) else None
        return name if isinstance(name, str) else None


@dataclass(frozen=True)
class ShardsSpec(SourceSpec):
    """A built shard set: ``<dir>/shards/<set>`` (``dir`` empty: the data section's ``dir``).
    ``fraction`` < 1 keeps that share of its samples (the data-scaling study)."""

    kind: ClassVar[str] = "shards"
    set: str = ""
    dir: str = ""
    fraction: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.set or "/" in self.set or self.set.startswith("."):
            raise ValueError(f"shards source: set must be a shard set's name, got {self.set!r}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"shards source: fraction must be in (0, 1], got {self.fraction}")

    @property
    def display_name(self) -> str:
        return self.name or self.set

    @property
    def path(self) -> Path:
        return Path(self.dir or "data") / "shards" / self.set

    def open(self) -> Source:
        info = read_shard_set(self.path)
        urls = [str(self.path / s) for s in info["shards"]]
        if not urls:
            raise ValueError(f"shard set {self.path} has no shards")
        count = None
        if self.fraction < 1:
            count = max(1, int(int(info["output"]["count"]) * self.fraction))
        return WebDatasetSource(urls, self.display_name, count)

    def recorded_caption_fn(self) -> str | None:
        name = read_shard_set(self.path).get("caption_fn")
        return name if isinstance(name, str) else None


@dataclass(frozen=True)
class _TableSpec(SourceSpec):
    """A table of images and captions (a manifest): the columns to read and the folder its
    relative paths start from."""

    path: str = ""
    image_column: str = "image"
    caption_column: str | None = "caption"
    root: str | None = None


@dataclass(frozen=True)
class CsvSpec(_TableSpec):
    kind: ClassVar[str] = "csv"
    delimiter: str | None = None

    def open(self) -> Source:
        return CsvSource(
            self.path,
            self.image_column,
            self.caption_column,
            self.root,
            self.display_name,
            self.delimiter,
        )


@dataclass(frozen=True)
class ParquetSpec(_TableSpec):
    kind: ClassVar[str] = "parquet"

    def open(self) -> Source:
        try:
            return ParquetSource(
                self.path, self.image_column, self.caption_column, self.root, self.display_name
            )
        except ImportError as e:  # an optional extra that is not installed
            raise ValueError(str(e)) from e


@dataclass(frozen=True)
class FolderSpec(SourceSpec):
    kind: ClassVar[str] = "folder"
    root: str = ""
    extensions: tuple[str, ...] = IMAGE_EXTS
    #: only these files (paths relative to root), when given: what a sync re-embeds
    only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.only, list):
            object.__setattr__(self, "only", tuple(self.only))

    def open(self) -> Source:
        return FolderSource(self.root, self.display_name, self.extensions, self.only or None)

    def to_dict(self) -> dict[str, Any]:
        table = super().to_dict()
        if not self.only:
            table.pop("only")  # the whole folder: as collections recorded it before subsets
        return table


@dataclass(frozen=True)
class ClassesSpec(SourceSpec):
    """Labelled images (a folder of class folders, or a ``path,label`` table) as pairs whose
    captions are class names in prompt templates (:mod:`cliplab.data.classes`)."""

    kind: ClassVar[str] = "classes"
    path: str = ""
    classnames: str = ""  # a JSON object or CSV of label -> name; empty: the labels
    templates: str = "imagenet80"  # a bundled template set or a JSON file
    split: str = "all"  # "train": all but a held-out validation split; "val": that split
    val_fraction: float = 0.1
    split_seed: int = 0
    path_column: str = "path"
    label_column: str = "label"
    # "train": the held-out split is classified zero-shot whenever the run evaluates
    evaluate: bool = True

    def open(self) -> Source:
        from cliplab.data.classes import LabelledImages

        return LabelledImages(
            self.path,
            name=self.name or "classes",
            classnames=self.classnames,
            templates=self.templates,
            split=self.split,
            val_fraction=self.val_fraction,
            split_seed=self.split_seed,
            path_column=self.path_column,
            label_column=self.label_column,
        )

    def recorded_caption_fn(self) -> str | None:
        from cliplab.data.classes import CAPTION_FN

        return CAPTION_FN


SPECS: dict[str, type[SourceSpec]] = {
    cls.kind: cls
    for cls in (
        SyntheticSpec,
        WebDatasetSpec,
        ShardsSpec,
        CsvSpec,
        ParquetSpec,
        FolderSpec,
        ClassesSpec,
    )
}
KINDS = tuple(SPECS)


def spec_from_dict(table: Mapping[str, Any]) -> SourceSpec:
    """The spec a TOML table describes, e.g. ``{"kind": "shards", "set": "emoji-twitter"}``;
    an unknown kind or field is a ``ValueError`` that lists the valid ones."""
    if isinstance(table, SourceSpec):
        return table
    values = dict(table)
    kind = values.pop("kind", None)
    if kind not in SPECS:
        raise ValueError(
            f"unknown data source kind {kind!r}; expected one of {', '.join(KINDS)}"
            + ("" if kind is not None else " (every source table needs a 'kind')")
        )
    cls = SPECS[kind]
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in valid:
            raise ValueError(unknown_message(f"field of a {kind} source:", key, valid))
    if isinstance(values.get("extensions"), list):
        values["extensions"] = tuple(values["extensions"])
    try:
        return cls(**values)
    except TypeError as e:
        raise ValueError(f"bad fields for a {kind} source: {e}") from e


def build_source(spec: SourceSpec | Mapping[str, Any]) -> Source:
    """The source a spec (or its table) describes."""
    return spec_from_dict(spec).open()


def infer_kind(path: str) -> str:
    """The source kind a command-line path names: by suffix, a folder of shards or images,
    or the word ``synthetic``."""
    lower = path.lower()
    if lower == "synthetic":
        return "synthetic"
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    if lower.endswith(".parquet"):
        return "parquet"
    if ".tar" in lower or "{" in path:
        return "webdataset"
    if storage.is_dir(path):
        if storage.list_files(path, ".tar"):
            return "webdataset"
        if storage.list_files(path, ".parquet"):
            return "parquet"
        return "folder"
    if not storage.exists(path):
        raise FileNotFoundError(f"no such source: {path}")
    raise ValueError(f"cannot tell what kind of source {path!r} is; give its kind")


def spec_for_path(path: str, kind: str | None = None, **options: Any) -> SourceSpec:
    """The spec for a source given as a path on the command line (``kind`` inferred when
    None). ``options`` are the kind's fields (``image_column``...); those a kind does not
    have are ignored, so one set of command-line options serves every kind."""
    kind = kind or infer_kind(path)
    if kind not in SPECS:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {', '.join(KINDS)}")
    cls = SPECS[kind]
    valid = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in options.items() if k in valid and v is not None}
    if kind == "webdataset":
        if storage.is_dir(path):
            tars = tuple(storage.list_files(path, ".tar"))
            if not tars:
                raise ValueError(f"no .tar shards in {path}")
            values["urls"] = tars
        else:
            values["urls"] = path
    elif kind in ("csv", "parquet"):
        values["path"] = path
    elif kind == "folder":
        values["root"] = path
    elif kind == "shards":
        values["set"] = path
    return spec_from_dict({"kind": kind, **values})


def source_weights(specs: Sequence[SourceSpec]) -> list[float] | None:
    """Mixing weights (1.0 where a spec has none); None when no spec gives one (the stream
    then mixes by source size)."""
    if all(s.weight is None for s in specs):
        return None
    return [float(s.weight) if s.weight is not None else 1.0 for s in specs]
