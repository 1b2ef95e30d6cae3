"""Read the weights of a TorchScript archive without executing anything from it.

OpenAI released CLIP (``RN50.pt``, ``ViT-B-32.pt``...) as ``torch.jit.save`` archives of
traced models. ``torch.jit.load`` compiles and runs the TorchScript code stored in such a
file, and ``torch.load(weights_only=True)`` refuses it, so this module reads the archive by
hand:

- The file is a zip whose members all sit under one folder (``ViT-B-32/``, ``archive/``...):
  ``data.pkl`` (the pickled module tree), ``data/<key>`` (one raw record per tensor storage),
  ``code/__torch__/**.py`` (TorchScript source of every class; never executed here),
  ``constants.pkl`` + ``constants/<key>`` (tensor constants of the code, e.g. the traced text
  ``attn_mask``; not state-dict entries and not needed for ``data.pkl``), ``version``, and in
  newer torch ``byteorder``, ``.data/serialization_id``, ``traced_inputs.pkl``.
- ``data.pkl`` is unpickled with an allow-list: ``torch._utils._rebuild_tensor_v2`` and
  ``_rebuild_parameter``, ``torch.<Type>Storage`` dtype tags, ``collections.OrderedDict``,
  the ``torch.jit._pickle`` list/type-tag markers, ``torch.device`` and ``builtins.complex``.
  Every ``__torch__.*`` class becomes an inert attribute container, and BUILD (set state)
  is only allowed on those. Anything else raises ``CheckpointError`` naming the global. Persistent ids ``('storage', <Type>Storage, key,
  location, numel)`` resolve to the record ``data/<key>``, whose size must be
  ``numel * element_size``; tensors are views (offset/size/stride) of these storages, so
  shared storages stay shared as they do after ``torch.jit.load``.
- Which attributes are parameters and buffers is declared in the class source as
  ``__parameters__ = [...]`` / ``__buffers__ = [...]`` lines; they are read as text (the
  lists with ``ast.literal_eval``). Other tensor attributes (e.g. the ``attn_mask`` that
  OpenAI's blocks keep as a plain attribute, when scripted) are not state. Archives written before ``__buffers__`` existed
  (torch 1.4 and older) declare only parameters; for those, every non-parameter attribute
  declared ``Tensor`` counts as a buffer, as in the torch that wrote them (a current
  ``torch.jit.load`` would drop their BatchNorm statistics from ``state_dict()``).

Not supported (clear errors): the legacy ``model.json`` format of early torch 1.x, quantized and sparse tensors,
modules with a custom ``__getstate__``/``__setstate__``.

Why one module of ~700 lines: it is one security boundary. The restricted unpickler, the
storage records and the declared-state parser check each other's invariants (which globals
may appear, which sizes a record may have, which attributes are state); keeping them in one
file keeps that boundary reviewable in one reading.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import re
import struct
import sys
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cliplab.checkpoints.errors import CheckpointError

__all__ = ["CheckpointError", "is_torchscript_archive", "read_torchscript_state_dict"]

# ``torch.<Name>Storage`` globals name the dtype of a storage in TorchScript pickles.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexHalfStorage": torch.complex32,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}
for _name, _attr in [
    ("UInt16Storage", "uint16"),
    ("UInt32Storage", "uint32"),
    ("UInt64Storage", "uint64"),
    ("Float8_e5m2Storage", "float8_e5m2"),
    ("Float8_e4m3fnStorage", "float8_e4m3fn"),
    ("Float8_e5m2fnuzStorage", "float8_e5m2fnuz"),
    ("Float8_e4m3fnuzStorage", "float8_e4m3fnuz"),
]:
    if isinstance(getattr(torch, _attr, None), torch.dtype):
        _STORAGE_DTYPES[_name] = getattr(torch, _attr)

_STORAGE_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_QUALNAME = re.compile(r"__torch__(\.[A-Za-z_]\w*)*")
_CLASS_LINE = re.compile(r"class\s+([A-Za-z_]\w*)\s*(?:\(\s*([^)]*?)\s*\))?\s*:")
_NAME_LIST_LINE = re.compile(r"(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$")
_ANNOTATION_SUBSCRIPT_LINE = re.compile(
    r"__annotations__\[\s*(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')\s*\]\s*=\s*(.+?)\s*$"
)
_ANNOTATION_LINE = re.compile(r"([A-Za-z_]\w*)\s*:\s*([^=]+?)\s*(=.*)?$")


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """True for a zip holding ``<folder>/data.pkl`` next to ``code/`` or ``constants.pkl``.

    Only the zip directory is read; nothing is unpickled. Files that are not readable zip
    archives give False (``torch.save`` zips have ``data.pkl`` but no code or constants);
    a missing file raises ``OSError``.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, EOFError, ValueError):
        return False
    prefixes = _data_pkl_prefixes(names)
    if len(prefixes) != 1:
        return False
    return _looks_like_torchscript(prefixes[0], names)


def read_torchscript_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, read without executing anything.

    Same keys, order, dtypes and values as ``torch.jit.load(path, map_location="cpu")
    .state_dict()``; tensors sharing a storage in the file share it here too. Raises
    ``CheckpointError`` (a ``ValueError``) naming the file and what was expected.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable zip archive ({e}); expected a TorchScript archive "
            "written by torch.jit.save"
        ) from e
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    with zf:
        archive = _Archive(zf, path)
        root = archive.unpickle_data()
        return archive.state_dict(root)


# --------------------------------------------------------------------------------------
# Archive layout


def _data_pkl_prefixes(names: list[str]) -> list[str]:
    """Folders ('' or 'name/') that hold a ``data.pkl`` at the top of the archive."""
    prefixes = []
    for name in names:
        if name == "data.pkl":
            prefixes.append("")
        elif name.endswith("/data.pkl") and name.count("/") == 1:
            prefixes.append(name[: -len("data.pkl")])
    return sorted(set(prefixes))


def _looks_like_torchscript(prefix: str, names: list[str]) -> bool:
    code = prefix + "code/"
    return prefix + "constants.pkl" in names or any(n.startswith(code) for n in names)


@dataclass
class _ClassDecl:
    """What a ``code/**.py`` class body declares, read as text."""

    name: str
    base: str
    parameters: list[str] | None = None
    buffers: list[str] | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # declaration lines that did not parse

    @property
    def is_module(self) -> bool:
        return self.base == "Module"


def _parse_name_list(text: str) -> list[str] | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _parse_class_declarations(source: str) -> dict[str, _ClassDecl]:
    """Class declarations of one TorchScript source file.

    TorchScript prints each class as ``class Name(Module):`` at column 0, followed at one
    indentation level by ``__parameters__``/``__buffers__`` lists and ``name : Type`` (or
    ``__annotations__["0"] = Type``) attribute lines, then its methods. Only those lines are
    looked at; nothing is compiled or evaluated.
    """
    classes: dict[str, _ClassDecl] = {}
    current: _ClassDecl | None = None
    body_indent: int | None = None
    for line in source.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" \t"))
        if indent == 0:
            match = _CLASS_LINE.match(stripped)
            current = _ClassDecl(match.group(1), (match.group(2) or "").strip()) if match else None
            if current is not None:
                classes[current.name] = current
            body_indent = None
            continue
        if current is None:
            continue
        if body_indent is None:
            body_indent = indent
        if indent != body_indent or stripped.startswith(("def ", "@")):
            continue
        if match := _NAME_LIST_LINE.match(stripped):
            names = _parse_name_list(match.group(2))
            if names is None:
                current.unreadable.append(stripped)
            elif match.group(1) == "__parameters__":
                current.parameters = names
            else:
                current.buffers = names
        elif match := _ANNOTATION_SUBSCRIPT_LINE.match(stripped):
            try:
                name = ast.literal_eval(match.group(1))
            except (ValueError, SyntaxError):
                current.unreadable.append(stripped)
                continue
            current.annotations[str(name)] = match.group(2)
        elif (match := _ANNOTATION_LINE.match(stripped)) and match.group(3) is None:
            current.annotations[match.group(1)] = match.group(2)
    return classes


class _Archive:
    """One open TorchScript zip: its folder prefix, records and class declarations."""

    def __init__(self, zf: zipfile.ZipFile, path: Path) -> None:
        self.zf = zf
        self.path = path
        names = zf.namelist()
        self.infos = {info.filename: info for info in zf.infolist()}
        prefixes = _data_pkl_prefixes(names)
        if not prefixes:
            legacy = [n for n in names if n == "model.json" or n.endswith("/model.json")]
            if legacy:
                raise CheckpointError(
                    f"{path}: TorchScript archive in the legacy model.json format of early torch 1.x, "
                    "which is not supported; expected <folder>/data.pkl. Re-save it with a newer "
                    "torch (torch.jit.load + torch.save(model.state_dict()))"
                )
            raise CheckpointError(
                f"{path}: zip archive without data.pkl; expected a TorchScript archive written "
                "by torch.jit.save (<folder>/data.pkl, <folder>/code/, <folder>/data/)"
            )
        if len(prefixes) > 1:
            raise CheckpointError(
                f"{path}: zip archive with several data.pkl files ({', '.join(p + 'data.pkl' for p in prefixes)}); "
                "expected exactly one TorchScript archive folder"
            )
        self.prefix = prefixes[0]
        if not _looks_like_torchscript(self.prefix, names):
            raise CheckpointError(
                f"{path}: {self.prefix}data.pkl has no {self.prefix}code/ or {self.prefix}constants.pkl "
                "next to it, so this is not a TorchScript archive (a torch.save file? read those "
                "with torch.load(weights_only=True))"
            )
        self.byteorder = self._read_byteorder()
        self._decl_files: dict[str, dict[str, _ClassDecl]] = {}
        self._script_classes: dict[str, type[_ScriptObject]] = {}

    # ---- records

    def read_record(self, name: str, expected_size: int | None = None) -> bytearray:
        """The bytes of one zip member (CRC checked), optionally of a known size."""
        info = self.infos.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: the archive has no record {name!r}")
        if expected_size is not None and info.file_size != expected_size:
            raise CheckpointError(
                f"{self.path}: record {name!r} holds {info.file_size} bytes, expected {expected_size}"
            )
        buf = bytearray(info.file_size)
        view = memoryview(buf)
        pos = 0
        try:
            with self.zf.open(info) as f:
                while pos < len(buf):
                    chunk = f.read(min(1 << 24, len(buf) - pos))
                    if not chunk:
                        break
                    view[pos : pos + len(chunk)] = chunk
                    pos += len(chunk)
                extra = f.read(1)  # reaching the end makes zipfile check the CRC
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error, ValueError) as e:
            raise CheckpointError(
                f"{self.path}: record {name!r} is truncated or corrupt ({e})"
            ) from e
        if pos != len(buf) or extra:
            raise CheckpointError(
                f"{self.path}: record {name!r} is truncated or corrupt "
                f"(read {pos + len(extra)} bytes, its zip entry says {len(buf)})"
            )
        return buf

    def _read_byteorder(self) -> str:
        name = self.prefix + "byteorder"
        if name not in self.infos:
            return "little"  # older archives have no byteorder record; torch assumes little
        value = bytes(self.read_record(name)).decode("ascii", "replace").strip()
        if value not in ("little", "big"):
            raise CheckpointError(f"{self.path}: {name} says {value!r}; expected 'little' or 'big'")
        return value

    # ---- unpickling

    def unpickle_data(self) -> Any:
        """The object tree of ``data.pkl`` (tensors rebuilt, classes inert)."""
        name = self.prefix + "data.pkl"
        raw = self.read_record(name)
        unpickler = _RestrictedUnpickler(bytes(raw), self, tensor_dir=self.prefix + "data/")
        try:
            return unpickler.load()
        except CheckpointError:
            raise
        except (
            pickle.UnpicklingError,
            EOFError,
            TypeError,
            ValueError,
            AttributeError,
            IndexError,
            KeyError,
            RuntimeError,
            OverflowError,
            struct.error,
            MemoryError,
            RecursionError,
        ) as e:
            raise CheckpointError(
                f"{self.path}: cannot unpickle {name} ({type(e).__name__}: {e})"
            ) from e

    def script_class(self, qualname: str) -> type[_ScriptObject]:
        """An inert stand-in class for the TorchScript class ``qualname``."""
        cls = self._script_classes.get(qualname)
        if cls is None:
            cls = type("ScriptObject", (_ScriptObject,), {"qualname": qualname})
            self._script_classes[qualname] = cls
        return cls

    # ---- class declarations

    def class_decl(self, qualname: str) -> _ClassDecl | None:
        """The declaration of ``__torch__.a.b.Name`` from ``code/__torch__/a/b.py``, if any."""
        module, _, name = qualname.rpartition(".")
        if module not in self._decl_files:
            record = self.prefix + "code/" + module.replace(".", "/") + ".py"
            if record in self.infos:
                source = bytes(self.read_record(record)).decode("utf-8", "replace")
                self._decl_files[module] = _parse_class_declarations(source)
            else:
                self._decl_files[module] = {}
        return self._decl_files[module].get(name)

    def _module_decl(self, obj: _ScriptObject, where: str) -> _ClassDecl:
        decl = self.class_decl(obj.qualname)
        if decl is None:
            module = obj.qualname.rpartition(".")[0]
            raise CheckpointError(
                f"{self.path}: {where} is an object of class {obj.qualname!r}, but "
                f"{self.prefix}code/{module.replace('.', '/')}.py does not declare it"
            )
        if decl.unreadable:
            raise CheckpointError(
                f"{self.path}: cannot read the declaration of {obj.qualname!r}: expected lists of "
                f"names, found {decl.unreadable[0]!r}"
            )
        return decl

    def _is_module(self, obj: _ScriptObject) -> bool:
        if obj.qualname.startswith("__torch__.torch.classes."):
            return False  # C++ custom classes (e.g. packed quantized weights) have no source
        return self._module_decl(obj, "an attribute").is_module

    # ---- module tree -> state dict

    def state_dict(self, root: Any) -> dict[str, torch.Tensor]:
        """Parameters then buffers of each module, then its submodules, like ``Module.state_dict``."""
        if not isinstance(root, _ScriptObject) or not self._is_module(root):
            raise CheckpointError(
                f"{self.path}: {self.prefix}data.pkl does not hold a TorchScript module "
                f"(got {getattr(root, 'qualname', type(root).__name__)})"
            )
        out: dict[str, torch.Tensor] = {}
        self._collect(root, "", out, set())
        return out

    def _collect(
        self, obj: _ScriptObject, prefix: str, out: dict[str, torch.Tensor], path_ids: set[int]
    ) -> None:
        where = f"module {prefix[:-1] or '<root>'}"
        if id(obj) in path_ids:
            raise CheckpointError(f"{self.path}: {where} contains itself (cyclic module tree)")
        decl = self._module_decl(obj, where)
        state = obj.ts_state
        if not isinstance(state, dict):
            raise CheckpointError(
                f"{self.path}: {where} ({obj.qualname}) was saved through a custom __getstate__, "
                "so its parameters cannot be identified without running its code; not supported"
            )
        parameters = decl.parameters or []
        if decl.buffers is not None:
            buffers = decl.buffers
        else:  # old archives: buffers were the non-parameter attributes of type Tensor
            buffers = [
                n for n, t in decl.annotations.items() if t == "Tensor" and n not in parameters
            ]
        for kind, names in (("parameter", set(parameters)), ("buffer", set(buffers))):
            missing = sorted(names - state.keys())
            if missing:
                raise CheckpointError(
                    f"{self.path}: {where} declares {kind} {missing[0]!r} but data.pkl has no value for it"
                )
            for name, value in state.items():
                if name not in names or value is None:
                    continue
                if not isinstance(value, torch.Tensor):
                    raise CheckpointError(
                        f"{self.path}: {kind} {prefix + name!r} is a {type(value).__name__}, expected a tensor"
                    )
                out[prefix + name] = value
        path_ids.add(id(obj))
        for name, value in state.items():
            if isinstance(value, _ScriptObject) and self._is_module(value):
                self._collect(value, f"{prefix}{name}.", out, path_ids)
        path_ids.discard(id(obj))


# --------------------------------------------------------------------------------------
# Restricted unpickler


class _ScriptObject:
    """An instance of a TorchScript class from ``data.pkl``: its pickled state, nothing else."""

    qualname = "__torch__"
    ts_state: Any = None

    def __init__(self, *args: Any) -> None:  # only reached through REDUCE (e.g. enums)
        self.ts_state = args

    def __setstate__(self, state: Any) -> None:
        self.ts_state = state

    def __repr__(self) -> str:
        return f"<TorchScript object {self.qualname}>"


class _Global:
    """An allow-listed callable that a pickle may call but not modify."""

    __slots__ = ("fn", "name")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class _StorageType:
    """The ``torch.<Name>Storage`` tag of a persistent id: a dtype."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype


class _Storage:
    """One storage record as a flat tensor of its dtype."""

    __slots__ = ("flat", "name")

    def __init__(self, name: str, flat: torch.Tensor) -> None:
        self.name = name
        self.flat = flat


def _byteswap(flat: torch.Tensor) -> torch.Tensor:
    """``flat`` with the bytes of every element reversed (big <-> little endian)."""
    size = flat.element_size()
    if size == 1 or flat.numel() == 0:
        return flat
    raw = flat.view(torch.uint8).view(-1, size).flip(1).contiguous()
    return raw.view(-1).view(flat.dtype)


def _load_build(self: _RestrictedUnpickler) -> None:
    """BUILD (set an object's state) only on TorchScript objects, never on tensors or globals."""
    state = self.stack.pop()
    target = self.stack[-1]
    if not isinstance(target, _ScriptObject):
        raise self._error(f"refusing to set the state of a {type(target).__name__} (BUILD opcode)")
    target.__setstate__(state)


class _RestrictedUnpickler(
    pickle._Unpickler
):  # the Python implementation: its opcodes can be overridden
    """Unpickles ``data.pkl`` with an allow-list of globals; see the module docstring."""

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build

    def __init__(self, data: bytes, archive: _Archive, tensor_dir: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.tensor_dir = tensor_dir
        self.records: dict[str, bytearray] = {}
        self.storages: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self.globals: dict[str, _Global] = {
            "torch._utils._rebuild_tensor_v2": _Global(
                "torch._utils._rebuild_tensor_v2", self._rebuild_tensor_v2
            ),
            "torch._utils._rebuild_parameter": _Global(
                "torch._utils._rebuild_parameter", self._rebuild_parameter
            ),
            "collections.OrderedDict": _Global("collections.OrderedDict", self._ordered_dict),
            "torch.jit._pickle.restore_type_tag": _Global(
                "torch.jit._pickle.restore_type_tag", self._type_tag
            ),
            "torch.device": _Global("torch.device", self._device),
            "builtins.complex": _Global("builtins.complex", self._complex),
        }
        for kind in ("intlist", "tensorlist", "doublelist", "boollist"):
            name = f"torch.jit._pickle.build_{kind}"
            self.globals[name] = _Global(name, self._list)

    def _error(self, message: str) -> CheckpointError:
        return CheckpointError(f"{self.archive.path}: {self.archive.prefix}data.pkl: {message}")

    def _int(self, value: Any, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._error(f"{what} must be a non-negative int, got {value!r}")
        return value

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if module == "__torch__" or module.startswith("__torch__."):
            if not _QUALNAME.fullmatch(qualname):
                raise self._error(f"malformed TorchScript class name {qualname!r}")
            return self.archive.script_class(qualname)
        if qualname in self.globals:
            return self.globals[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise self._error(
            f"refusing the global {qualname!r}: only tensor rebuilding, storage types and "
            "TorchScript classes are allowed (cliplab never executes code from checkpoints)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise self._error(
                f"unsupported persistent id {pid!r}; expected ('storage', type, key, location, numel)"
            )
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise self._error(f"persistent id {pid!r} does not name a storage type")
        if (
            not isinstance(key, str)
            or not _STORAGE_KEY.fullmatch(key)
            or not isinstance(location, str)
        ):
            raise self._error(f"malformed storage key or location in persistent id {pid!r}")
        numel = self._int(numel, f"numel of storage {key!r}")
        dtype = storage_type.dtype
        record = self.tensor_dir + key
        cached = self.storages.get((key, dtype))
        if cached is not None:
            if cached.numel() != numel:
                raise self._error(
                    f"storage {record!r} is referenced with {cached.numel()} and {numel} elements"
                )
            return _Storage(record, cached)
        itemsize = torch.empty((), dtype=dtype).element_size()
        expected = numel * itemsize
        if numel == 0:
            flat = torch.empty(0, dtype=dtype)  # torch writes no bytes for empty storages
        else:
            raw = self.records.get(key)
            if raw is None:
                if record not in self.archive.infos:
                    raise self._error(
                        f"storage record {record!r} ({numel} x {dtype}) is missing from the archive"
                    )
                size = self.archive.infos[record].file_size
                if size != expected:
                    raise self._error(
                        f"storage record {record!r} holds {size} bytes, expected numel {numel} x "
                        f"{itemsize} bytes ({dtype}) = {expected}"
                    )
                raw = self.archive.read_record(record, expected)
                self.records[key] = raw
            elif len(raw) != expected:
                raise self._error(
                    f"storage record {record!r} holds {len(raw)} bytes, expected numel {numel} x "
                    f"{itemsize} bytes ({dtype}) = {expected}"
                )
            flat = torch.frombuffer(raw, dtype=dtype)
            if self.archive.byteorder != sys.byteorder:
                flat = _byteswap(flat)
        self.storages[(key, dtype)] = flat
        return _Storage(record, flat)

    # ---- allow-listed globals

    def _rebuild_tensor_v2(
        self,
        storage: Any,
        storage_offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any = False,
        backward_hooks: Any = None,
        metadata: Any = None,
    ) -> torch.Tensor:
        if not isinstance(storage, _Storage):
            raise self._error(
                f"_rebuild_tensor_v2 got {type(storage).__name__} instead of a storage"
            )
        if metadata:
            raise self._error(f"tensor with metadata {metadata!r} is not supported")
        offset = self._int(storage_offset, "storage offset")
        if (
            not isinstance(size, tuple | list)
            or not isinstance(stride, tuple | list)
            or len(size) != len(stride)
        ):
            raise self._error(f"malformed tensor size {size!r} / stride {stride!r}")
        size = [self._int(s, "tensor size") for s in size]
        stride = [self._int(s, "tensor stride") for s in stride]
        available = storage.flat.numel()
        numel = 1
        for s in size:
            numel *= s
        last = offset + sum((n - 1) * st for n, st in zip(size, stride)) if numel else offset - 1
        if offset > available or last >= available:
            raise self._error(
                f"tensor of size {tuple(size)}, stride {tuple(stride)} at offset {offset} does not fit "
                f"in storage {storage.name!r} of {available} elements"
            )
        return storage.flat.as_strided(size, stride, offset)

    def _rebuild_parameter(
        self, data: Any, requires_grad: Any = False, backward_hooks: Any = None
    ) -> torch.Tensor:
        if not isinstance(data, torch.Tensor):
            raise self._error(f"_rebuild_parameter got {type(data).__name__} instead of a tensor")
        return data

    @staticmethod
    def _ordered_dict(*args: Any) -> OrderedDict[Any, Any]:
        return OrderedDict(*args[:1])

    @staticmethod
    def _type_tag(value: Any, type_str: Any = None) -> Any:
        return value

    @staticmethod
    def _list(value: Any) -> Any:
        return value

    def _device(self, name: Any) -> str:
        if not isinstance(name, str):
            raise self._error(f"torch.device expects a string, got {name!r}")
        return name  # devices are kept as their names; all tensors are read to the CPU

    def _complex(self, real: Any, imag: Any = 0.0) -> complex:
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (real, imag)):
            raise self._error(f"builtins.complex expects numbers, got {real!r}, {imag!r}")
        return complex(real, imag)
