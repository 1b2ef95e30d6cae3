"""Tokenizers that ship as files with a checkpoint: SigLIP's SentencePiece model
(``spiece.model``), SigLIP 2's Gemma tokenizer and XLM-R's (``tokenizer.json``), with the
ids transformers gives for the same files, padded to the context length as SigLIP was
trained (``padding="max_length"``).

A model names its tokenizer in ``config.text.tokenizer``: ``"openai"`` is cliplab's own BPE
(:mod:`cliplab.tokenizer.fast`); ``"files:<digest>"`` is a set of tokenizer files, found by
their content's digest among the directories read in this process (every checkpoint reader
registers the files it finds: :func:`register`), so the encode layer
(:func:`tokenizer_for`) and ``cliplab.save`` find them from the model alone.

Two paths, as transformers has:

- ``spiece.model`` read by ``sentencepiece`` with transformers' ``SiglipTokenizer`` steps:
  split out special tokens (stripping the spaces around them), canonicalise each piece
  (lowercase, ASCII punctuation removed, spaces collapsed), encode, append ``</s>``;
- ``tokenizer.json`` run by ``tokenizers`` with the file's own post-processor (as
  transformers 5 does; it ignores ``add_bos_token``/``add_eos_token`` of
  ``tokenizer_config.json``), lowercased for SigLIP 2 (transformers' ``Siglip2Tokenizer``,
  which pads on the left unless the config says otherwise).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from cliplab.tokenizer.fast import ContextLengthError

#: The files a tokenizer may consist of (all that exist are part of it).
TOKENIZER_FILES = (
    "tokenizer.json",
    "spiece.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
#: ``config.text.tokenizer`` of cliplab's own BPE tokenizer (OpenAI's).
OPENAI = "openai"
_PREFIX = "files:"
#: ``config.text.tokenizer`` of a model whose checkpoint carried no tokenizer files.
UNKNOWN = "files:unknown"
#: Written next to copied tokenizer files: the options they were registered with.
OPTIONS_FILE = "cliplab_tokenizer.json"
_SPIECE_UNDERLINE = "\u2581"
_PUNCTUATION = str.maketrans("", "", string.punctuation)
#: tokenizer files read in this process, by their spec (``files:<digest>``)
_REGISTRY: dict[str, tuple[Path, dict[str, Any]]] = {}


class TokenizerFilesError(ValueError):
    """Tokenizer files that are missing, unreadable or of an unsupported kind."""


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_config(directory: Path) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            try:
                config.update(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise TokenizerFilesError(f"{path}: unreadable JSON ({e})") from e
    return config


def has_tokenizer_files(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / "tokenizer.json").is_file() or (directory / "spiece.model").is_file()


def tokenizer_spec(directory: str | Path, **options: Any) -> str:
    """``files:<digest>`` of the tokenizer files in ``directory`` (and ``options``)."""
    directory = Path(directory)
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for name in TOKENIZER_FILES:
        if (directory / name).is_file():
            h.update(name.encode() + b"\0" + (directory / name).read_bytes())
    return _PREFIX + h.hexdigest()[:20]


def register(directory: str | Path, **options: Any) -> str:
    """Remember the tokenizer files of ``directory`` under their spec, which is returned
    (the value of ``config.text.tokenizer`` for a model that uses them). ``options``:
    :class:`FileTokenizer`'s (``lowercase``, ``padding_side``)."""
    directory = Path(directory).resolve()
    if not has_tokenizer_files(directory):
        raise TokenizerFilesError(f"{directory}: no tokenizer.json or spiece.model")
    spec = tokenizer_spec(directory, **options)
    _REGISTRY.setdefault(spec, (directory, options))
    return spec


def registered(spec: str) -> tuple[Path, dict[str, Any]] | None:
    """The directory and options of a registered spec (None if unknown in this process)."""
    return _REGISTRY.get(spec)


def copy_files(spec: str, destination: str | Path) -> bool:
    """Copy the tokenizer files of ``spec`` into ``destination`` (False if it is not one
    of this process's registered file tokenizers)."""
    found = registered(spec)
    if found is None:
        return False
    destination = Path(destination)
    directory, options = found
    if directory != destination.resolve():
        for name in TOKENIZER_FILES:
            if (directory / name).is_file():
                (destination / name).write_bytes((directory / name).read_bytes())
    (destination / OPTIONS_FILE).write_text(json.dumps(options, sort_keys=True))
    return True


def saved_options(directory: str | Path) -> dict[str, Any]:
    """The options :func:`copy_files` wrote next to tokenizer files ({} if none)."""
    path = Path(directory) / OPTIONS_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise TokenizerFilesError(f"{path}: unreadable ({e})") from e


class FileTokenizer:
    """Texts -> token ids (N, context_length), padded with the pad token, truncated keeping
    the end-of-sequence token: ``clip.tokenize``'s contract, for the tokenizer files in
    ``directory`` (see the module docstring).
    ``lowercase`` adds SigLIP 2's lowercasing;
    ``padding_side`` overrides the file's (transformers' class default otherwise); ``clean``
    is OpenCLIP's text cleaning before its transformers tokenizer (``"canonicalize"``,
    ``"whitespace"``; None: none, as transformers)."""

    def __init__(
        self,
        directory: str | Path,
        context_length: int | None = None,
        *,
        lowercase: bool = False,
        padding_side: str | None = None,
        clean: str | None = None,
    ) -> None:
        if clean not in (None, "canonicalize", "whitespace"):
            raise TokenizerFilesError(f"unknown text cleaning {clean!r}")
        self.clean = clean
        self.directory = Path(directory)
        config = _read_config(self.directory)
        self.config = config
        limit = config.get("model_max_length")
        self.context_length = context_length or (
            int(limit) if isinstance(limit, int) and limit < 100_000 else 64
        )
        spiece = self.directory / "spiece.model"
        fast = self.directory / "tokenizer.json"
        kind = config.get("tokenizer_class", "")
        if spiece.is_file() and (kind.startswith("Siglip") or not fast.is_file()):
            self._impl: _SiglipSentencePiece | _FastTokenizer = _SiglipSentencePiece(spiece, config)
        elif fast.is_file():
            side = padding_side or config.get("padding_side") or ("left" if lowercase else "right")
            self._impl = _FastTokenizer(fast, config, lowercase=lowercase, padding_side=side)
        else:
            raise TokenizerFilesError(f"{self.directory}: no tokenizer.json or spiece.model")

    @property
    def pad_id(self) -> int:
        return self._impl.pad_id

    def encode(self, text: str) -> list[int]:
        """The ids of one text with its special tokens, neither truncated nor padded."""
        return self._impl.encode(text)

    def __call__(
        self,
        texts: str | Sequence[str],
        context_length: int | None = None,
        truncate: bool = True,
    ) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        return self._impl.batch([self._clean(t) for t in texts], length, truncate)

    def _clean(self, text: str) -> str:
        """OpenCLIP's ``canonicalize_text`` / ``whitespace_clean(basic_clean(text))``."""
        if self.clean == "canonicalize":
            text = text.replace("_", " ").translate(_PUNCTUATION).lower()
            return " ".join(text.split())
        if self.clean == "whitespace":
            import html

            import ftfy

            text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
            return re.sub(r"\s+", " ", text).strip()
        return text

    def __repr__(self) -> str:
        return f"FileTokenizer({str(self.directory)!r}, context_length={self.context_length})"


def _require(package: str, path: Path) -> Any:
    """An optional package the tokenizer files need, or an error saying how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as e:  # pragma: no cover - an install problem
        raise TokenizerFilesError(
            f"{path}: this tokenizer needs the {package} package (pip install 'cliplab[tokenizers]')"
        ) from e


def _too_long(text: str, count: int, length: int) -> ContextLengthError:
    short = text if len(text) <= 60 else text[:57] + "..."
    return ContextLengthError(
        f"text {short!r} has {count} tokens, more than the context length {length}; "
        f"pass truncate=True to keep the first ones"
    )


class _SiglipSentencePiece:
    """transformers' ``SiglipTokenizer`` on an ``spiece.model``, step for step."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        spm = _require("sentencepiece", path)
        self.sp = spm.SentencePieceProcessor()
        self.sp.Load(str(path))
        self.lower = bool(config.get("do_lower_case", True))
        self.eos = _token_text(config.get("eos_token")) or "</s>"
        self.unk = _token_text(config.get("unk_token")) or "<unk>"
        pad = _token_text(config.get("pad_token")) or "</s>"
        # special tokens: text -> (id, lstrip, rstrip); SiglipTokenizer strips both sides
        self.special: dict[str, tuple[int, bool, bool]] = {}
        extra = [_token_text(t) for t in config.get("additional_special_tokens") or []]
        for token in (self.eos, self.unk, pad, *extra):
            if token:
                self.special[token] = (self.sp.piece_to_id(token), True, True)
        for index, entry in (config.get("added_tokens_decoder") or {}).items():
            content = entry.get("content")
            if content:
                self.special[content] = (
                    int(index),
                    bool(entry.get("lstrip", False)),
                    bool(entry.get("rstrip", False)),
                )
        self.eos_id = self.special[self.eos][0]
        self.pad_id = self.special[pad][0]
        alternatives = sorted(self.special, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")
        self._unk_length = len(self.sp.encode(self.unk, out_type=str))

    def _canonicalize(self, text: str) -> str:
        if self.lower:
            text = text.lower()
        text = text.translate(_PUNCTUATION)
        return re.sub(r"\s+", " ", text).strip()

    def _pieces(self, text: str) -> list[str]:
        text = self._canonicalize(text)
        pieces = self.sp.encode(self.unk + text, out_type=str)
        return pieces[self._unk_length :] if len(pieces) >= self._unk_length else pieces

    def encode(self, text: str) -> list[int]:
        parts = self._split.split(_SPIECE_UNDERLINE + text.replace(_SPIECE_UNDERLINE, " "))
        for i, part in enumerate(parts):
            if i % 2 and part in self.special:  # the separators: special tokens
                _, lstrip, rstrip = self.special[part]
                if rstrip and i + 1 < len(parts) and parts[i + 1]:
                    parts[i + 1] = parts[i + 1].lstrip()
                if lstrip and parts[i - 1]:
                    parts[i - 1] = parts[i - 1].rstrip()
        tokens: list[str] = []
        for i, part in enumerate(parts):
            if not part:
                continue
            tokens.extend([part] if i % 2 else self._pieces(part))
        if len(tokens) > 1 and tokens[0] == _SPIECE_UNDERLINE and tokens[1] in self.special:
            tokens = tokens[1:]
        return [self.special[t][0] if t in self.special else self.sp.piece_to_id(t) for t in tokens]

    def _finish(self, ids: list[int], length: int) -> list[int]:
        """Truncate (the content, then ``</s>`` unless it ends the text already)."""
        ids = ids[: length - 1]
        return ids if ids and ids[-1] == self.eos_id else [*ids, self.eos_id]

    def batch(self, texts: list[str], length: int, truncate: bool) -> torch.Tensor:
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            full = ids if ids and ids[-1] == self.eos_id else [*ids, self.eos_id]
            if len(full) > length and not truncate:
                raise _too_long(text, len(full), length)
            ids = self._finish(ids, length)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class _FastTokenizer:
    """A ``tokenizer.json`` run by the ``tokenizers`` package, as transformers' tokenizers
    backend runs it: the pad token from tokenizer_config.json, truncation keeping the
    post-processor's tokens, padding to the length."""

    def __init__(
        self, path: Path, config: dict[str, Any], *, lowercase: bool, padding_side: str
    ) -> None:
        tokenizers = _require("tokenizers", path)
        normalizers = tokenizers.normalizers
        try:
            self.tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own exception type
            raise TokenizerFilesError(f"{path}: not a readable tokenizer.json ({e})") from e
        if lowercase:  # SigLIP 2 (transformers' Siglip2Tokenizer)
            steps = [normalizers.Lowercase()]
            if self.tok.normalizer is not None:
                steps.append(self.tok.normalizer)
            self.tok.normalizer = normalizers.Sequence(steps)
        pad = _token_text(config.get("pad_token"))
        pad_id = self.tok.token_to_id(pad) if pad else None
        self.pad_id = int(pad_id) if pad_id is not None else 0
        self.pad_token = pad or ""
        self.padding_side = padding_side
        self.tok.no_truncation()
        self.tok.no_padding()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def batch(self, texts: list[str], length: int, truncate: bool) -> torch.Tensor:
        if not truncate:
            for text, ids in zip(texts, _ids(self.tok.encode_batch(texts)), strict=True):
                if len(ids) > length:
                    raise _too_long(text, len(ids), length)
        self.tok.enable_truncation(max_length=length)
        self.tok.enable_padding(
            direction=self.padding_side, pad_id=self.pad_id, pad_token=self.pad_token, length=length
        )
        try:
            encoded = self.tok.encode_batch(texts)
        finally:
            self.tok.no_truncation()
            self.tok.no_padding()
        return torch.tensor(list(_ids(encoded)), dtype=torch.long).reshape(len(texts), length)


def _ids(encodings: Iterable[Any]) -> Iterable[list[int]]:
    return (e.ids for e in encodings)


# -- the model's tokenizer -------------------------------------------------------------------


def attach_tokenizer(
    config: Any, directory: str | Path, needs_files: bool, options: dict[str, Any] | None = None
) -> Any:
    """``config`` (a ``CLIPConfig``) naming the tokenizer files of a checkpoint ``directory``
    (registered, with ``options`` or the directory's own), :data:`UNKNOWN` when it has none
    and ``needs_files``, else unchanged."""
    if has_tokenizer_files(directory):
        spec = register(directory, **(directory_options(directory) if options is None else options))
    elif needs_files:
        spec = UNKNOWN if config.text.tokenizer == OPENAI else config.text.tokenizer
    else:
        return config
    return config.replace(**{"text.tokenizer": spec})


def load_tokenizer(spec: str, context_length: int) -> FileTokenizer:
    """The tokenizer a ``config.text.tokenizer`` spec names (registered in this process)."""
    found = registered(spec)
    if spec == UNKNOWN:
        raise TokenizerFilesError(
            "this model's checkpoint carried no tokenizer files (tokenizer.json or "
            "spiece.model): copy its publisher's tokenizer files into the checkpoint directory, "
            "or pass cliplab.get_tokenizer(DIRECTORY WITH THEM)"
        )
    if found is None:
        raise TokenizerFilesError(
            f"this model's tokenizer ({spec}) is a set of files that no checkpoint read in "
            f"this process carried: load the model from its checkpoint directory (which holds "
            f"tokenizer.json or spiece.model), or call cliplab.get_tokenizer(DIRECTORY)"
        )
    directory, options = found
    return _cached(str(directory), context_length, tuple(sorted(options.items())))


_CACHE: dict[tuple[Any, ...], FileTokenizer] = {}


def _cached(directory: str, context_length: int, options: tuple[Any, ...]) -> FileTokenizer:
    key = (directory, context_length, options)
    if key not in _CACHE:
        _CACHE[key] = FileTokenizer(directory, context_length, **dict(options))
    return _CACHE[key]


def tokenizer_for(model: Any) -> Any:
    """The tokenizer of a model (its ``config.text.tokenizer``): cliplab's own BPE for
    OpenAI's vocabulary, else its registered tokenizer files."""
    from cliplab.tokenizer.fast import default_tokenizer

    config = getattr(model, "config", None)
    text = getattr(config, "text", None)
    spec = getattr(text, "tokenizer", OPENAI)
    if spec == OPENAI:
        return default_tokenizer()
    return load_tokenizer(spec, int(text.context_length))


def get_tokenizer(model_or_path: Any, context_length: int | None = None) -> Any:
    """The tokenizer that matches a model: ``texts -> (N, context_length)`` token ids.

    ``model_or_path`` is a loaded model (its ``config.text.tokenizer``) or a checkpoint
    directory; a directory with tokenizer files (``tokenizer.json``, ``spiece.model``) gives
    them, read as transformers reads them (SigLIP's SentencePiece, SigLIP 2's Gemma
    tokenizer, XLM-R's); one without them, cliplab's own BPE (OpenAI's)."""
    from cliplab.tokenizer.fast import default_tokenizer

    if isinstance(model_or_path, (str, Path)):
        directory = Path(model_or_path).expanduser()
        if directory.is_dir() and has_tokenizer_files(directory):
            return FileTokenizer(directory, context_length, **directory_options(directory))
        return default_tokenizer()
    return tokenizer_for(model_or_path)


def directory_options(directory: str | Path) -> dict[str, Any]:
    """How the tokenizer files of a checkpoint directory are run: the options a cliplab save
    wrote; SigLIP 2's lowercasing for a transformers Siglip2Model; OpenCLIP's text cleaning
    (``tokenizer_kwargs.clean``) for an OpenCLIP hub directory."""
    directory = Path(directory)
    if (directory / OPTIONS_FILE).is_file():
        return saved_options(directory)
    for name in ("config.json", "open_clip_config.json"):
        path = directory / name
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = {}
        if data.get("model_type") == "siglip2":
            return {"lowercase": True}
        text_cfg = (data.get("model_cfg") or {}).get("text_cfg") or {}
        clean = (text_cfg.get("tokenizer_kwargs") or {}).get("clean")
        if name == "open_clip_config.json" and data:
            return {"clean": clean or "whitespace"}
    return {}
