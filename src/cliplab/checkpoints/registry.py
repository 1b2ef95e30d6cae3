"""Pretrained weights by name: the registry, and the one grammar every command's ``--model``
takes.

A name is one of (tried in this order):

- a path to a checkpoint file or directory (any format :mod:`cliplab.checkpoints.api` reads);
- ``random:<preset>``: an untrained model of a preset (read by ``cliplab.load``);
- ``hf-hub:ORG/REPO[@REVISION]``: an OpenCLIP model in its hub layout on Hugging Face
  (``open_clip_config.json`` + weights), as OpenCLIP writes it;
- ``hf:ORG/REPO[@REVISION]``: a Hugging Face repository in transformers' layout;
- a registry entry: ``ARCH/TAG`` (``ViT-B-32/laion2b_s34b_b79k``), or a repository id the
  registry knows (``openai/clip-vit-base-patch32``); OpenAI's own names (``ViT-B/32``,
  ``ViT-L/14@336px``, ``RN50``) are ``<arch>/openai``;
- any other ``ORG/REPO``: a Hugging Face repository in transformers' layout
  (``google/siglip-base-patch16-224``), unless it is a near miss of a registry name.

The registry is data: ``assets/pretrained.toml`` (shipped with the package) and, on top, the
TOML file ``CLIPLAB_REGISTRY`` names (a private model zoo, a mirror: ``[pretrained."ARCH/TAG"]``
tables with at least ``url`` and ``sha256``, or ``repo``). A misspelt name gets the closest
names, never a traceback. Nothing here touches the network: :mod:`cliplab.checkpoints.fetch`
turns a resolved name into files.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from cliplab.checkpoints.errors import CheckpointError
from cliplab.presets import PRESETS, canonical_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["LAYOUTS", "Pretrained", "Resolved", "registry", "resolve_name"]

#: What a registry entry's files are.
LAYOUTS = ("openai", "open_clip", "transformers")
SOURCES = ("url", "hf")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Pretrained:
    """One registry entry: where the weights are, what they are, what they score."""

    name: str
    source: str  # "url" or "hf"
    layout: str  # one of LAYOUTS
    url: str = ""
    sha256: str = ""
    repo: str = ""
    revision: str = "main"
    size: int | None = None  # bytes, where the publisher states it
    params_m: float | None = None
    imagenet_top1: float | None = None
    top1_source: str = ""
    license: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)
    origin: str = "cliplab"  # the file the entry came from

    def __post_init__(self) -> None:
        where = f"registry entry {self.name!r} ({self.origin})"
        if self.source not in SOURCES:
            raise ValueError(f"{where}: source must be one of {SOURCES}, got {self.source!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"{where}: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.source == "url":
            if not self.url.startswith(("https://", "http://")):
                raise ValueError(f"{where}: needs an http(s) url")
            if self.sha256 and not _HEX64.match(self.sha256):
                raise ValueError(f"{where}: sha256 must be 64 lowercase hex digits")
        elif not _REPO.match(self.repo):
            raise ValueError(f"{where}: repo must be ORG/NAME, got {self.repo!r}")

    @property
    def arch(self) -> str | None:
        """cliplab's preset for ``ARCH/TAG`` names whose ARCH is one, else None."""
        head = self.name.partition("/")[0]
        try:
            return canonical_name(head)
        except ValueError:
            return None

    def download_bytes(self) -> int | None:
        """The size the publisher states, else an estimate from the parameter count (fp32;
        OpenAI's archives hold fp16), else None."""
        if self.size:
            return self.size
        if self.params_m:
            return int(self.params_m * 1e6 * (2 if self.layout == "openai" else 4))
        return None


@dataclass(frozen=True)
class Resolved:
    """What a name stands for: a local ``path``, or a registry ``entry`` to fetch, or a
    Hugging Face ``repo`` (``layout`` "open_clip" or "transformers") at ``revision``."""

    name: str
    path: Path | None = None
    entry: Pretrained | None = None


def _entries(data: dict[str, Any], origin: str) -> dict[str, Pretrained]:
    tables = data.get("pretrained", {})
    if not isinstance(tables, dict):
        raise ValueError(f"{origin}: [pretrained] must hold tables")
    out = {}
    names = {f.name for f in Pretrained.__dataclass_fields__.values()} - {"name", "origin"}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ValueError(f"{origin}: [pretrained.{name!r}] must be a table")
        unknown = sorted(set(table) - names)
        if unknown:
            raise ValueError(f"{origin}: [pretrained.{name!r}]: unknown keys {unknown}")
        table = dict(table)
        table.setdefault("source", "url" if "url" in table else "hf")
        table.setdefault("layout", _guess_layout(table))
        out[name] = Pretrained(name=name, origin=origin, **table)
    return out


def _guess_layout(table: dict[str, Any]) -> str:
    """A user entry may leave ``layout`` out: a ``.pt`` URL is OpenAI's, a repo OpenCLIP's hub
    layout unless it says otherwise."""
    if table.get("source") == "url":
        return "openai" if str(table.get("url", "")).endswith(".pt") else "open_clip"
    return "open_clip"


@cache
def _builtin() -> dict[str, Pretrained]:
    text = resources.files("cliplab").joinpath("assets", "pretrained.toml").read_text("utf-8")
    return _entries(tomllib.loads(text), "cliplab")


def registry() -> dict[str, Pretrained]:
    """Every known name: the shipped registry, then ``CLIPLAB_REGISTRY``'s entries (which
    replace shipped ones of the same name)."""
    entries = dict(_builtin())
    user = os.environ.get("CLIPLAB_REGISTRY")
    if user:
        path = Path(user).expanduser()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"CLIPLAB_REGISTRY={user}: no such file") from None
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"CLIPLAB_REGISTRY={user}: unreadable ({e})") from None
        try:
            entries.update(_entries(data, str(path)))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"CLIPLAB_REGISTRY={user}: {e}") from None
    return entries


#: OpenAI's model names (``clip.available_models()``) and cliplab's preset spellings of them.
_OPENAI_NAMES = {
    "rn50": "RN50",
    "rn101": "RN101",
    "rn50x4": "RN50x4",
    "rn50x16": "RN50x16",
    "rn50x64": "RN50x64",
    "vit-b/32": "ViT-B-32",
    "vit-b/16": "ViT-B-16",
    "vit-l/14": "ViT-L-14",
    "vit-l/14@336px": "ViT-L-14-336",
}


def _split_revision(text: str) -> tuple[str, str]:
    repo, _, revision = text.partition("@")
    return repo, revision or "main"


def _hf(name: str, repo: str, revision: str, layout: str) -> Resolved:
    if not _REPO.match(repo):
        raise CheckpointError(f"{name!r}: a Hugging Face repository is ORG/NAME, got {repo!r}")
    return Resolved(name, entry=Pretrained(name, "hf", layout, repo=repo, revision=revision))


def resolve_name(name: str | os.PathLike[str]) -> Resolved:
    """What ``name`` stands for (see the module docstring); ``CheckpointError`` with the
    closest names for a name that is none of them."""
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.exists():
        return Resolved(text, path=path)
    if "://" in text or text.startswith(("file:", "pipe:")):
        raise CheckpointError(
            f"{text!r}: a model name is a path, ARCH/TAG or a repository id, not a URL "
            "(add a URL to your own registry: CLIPLAB_REGISTRY)"
        )
    if any(part == ".." for part in re.split(r"[\\/]", text)):
        raise CheckpointError(f"{text!r}: no such file, and a model name never contains '..'")
    if text.startswith("hf-hub:"):
        return _hf(text, *_split_revision(text[len("hf-hub:") :]), "open_clip")
    if text.startswith("hf:"):
        return _hf(text, *_split_revision(text[len("hf:") :]), "transformers")
    entries = registry()
    key = _OPENAI_NAMES.get(text.strip().lower())
    if key is not None:
        return Resolved(text, entry=entries[f"{key}/openai"])
    if text in entries:
        return Resolved(text, entry=entries[text])
    if _looks_like_a_path(text):
        raise CheckpointError(f"no such checkpoint file or directory: {path}")
    head, sep, tag = text.partition("/")
    arch = _canonical(head)
    if not sep:  # a bare architecture: OpenAI's weights where they exist
        if arch is not None and f"{arch}/openai" in entries:
            return Resolved(text, entry=entries[f"{arch}/openai"])
        if arch is not None:
            tags = sorted(n for n in entries if n.startswith(arch + "/"))
            hint = f"; its weights: {', '.join(tags)}" if tags else ""
            raise CheckpointError(
                f"{text!r} is an architecture: name its weights as ARCH/TAG{hint}, or build it "
                f"untrained with cliplab.create_model({arch!r}) or --model random:{arch}"
            )
        raise CheckpointError(_unknown(text, entries))
    same = [n for n in entries if n.lower() == f"{arch}/{tag}".lower()] if arch else []
    if len(same) == 1:  # the tag in another case
        return Resolved(text, entry=entries[same[0]])
    if arch is not None:  # a known architecture with a tag nobody published
        tags = sorted(n.partition("/")[2] for n in entries if n.startswith(arch + "/"))
        close = _close(tag, tags, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(f'{arch}/{t}' for t in close)}?)" if close else ""
        raise CheckpointError(
            f"no pretrained weights {text!r}{hint}; {arch}'s: {', '.join(tags) or 'none'} "
            "(cliplab list-models --pretrained)"
        )
    close = _close(text, list(entries), n=1, cutoff=0.85)
    repo, revision = _split_revision(text)
    if close or not _REPO.match(repo):
        raise CheckpointError(_unknown(text, entries))
    return _hf(text, repo, revision, "transformers")


def _looks_like_a_path(text: str) -> bool:
    """A name no registry or hub has: absolute, home- or dot-relative, a weights file name."""
    return (
        text.startswith(("/", "./", "~", "\\"))
        or text.count("/") > 2
        or text.lower().endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz"))
    )


def _canonical(head: str) -> str | None:
    try:
        return canonical_name(head)
    except ValueError:
        pass
    lowered = head.lower()  # architectures the registry names but cliplab has no preset of
    for name, entry in registry().items():
        arch = name.partition("/")[0]
        # transformers entries are named by their repository: ORG is not an architecture
        if entry.layout != "transformers" and arch.lower() == lowered and arch not in PRESETS:
            return arch
    return None


def _close(text: str, names: list[str], n: int, cutoff: float) -> list[str]:
    """The names nearest to ``text``, ignoring case."""
    lowered = {name.lower(): name for name in names}
    return [lowered[m] for m in difflib.get_close_matches(text.lower(), list(lowered), n, cutoff)]


def _unknown(text: str, entries: dict[str, Pretrained]) -> str:
    close = _close(text, list(entries), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (
        f"unknown model {text!r}: not a file, not a registry name{hint} "
        "(cliplab list-models --pretrained lists them; hf:ORG/REPO names any Hugging Face "
        "repository)"
    )
