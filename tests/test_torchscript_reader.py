"""The TorchScript reader: same state dict as ``torch.jit.load``, without executing anything.

Archives are made the way OpenAI made theirs (OpenAI's own ``clip/model.py``, fp16 weights,
``torch.jit.trace_module`` of ``forward``/``encode_image``/``encode_text``, ``torch.jit.save``)
plus a scripted module and hand-written archives for the error paths. ``torch.jit.load`` is
only called on files these tests wrote themselves.
"""

from __future__ import annotations

import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import refs
from cliplab.checkpoints.errors import CheckpointError
from cliplab.checkpoints.torchscript import is_torchscript_archive, read_torchscript_state_dict

# torch.jit.script/save/load are deprecated in this torch; they are the reference here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")

# ---------------------------------------------------------------------------------------
# Archives made with torch


def _openai_clip_archive(path: Path, kind: str) -> Path:
    """A tiny CLIP built with OpenAI's code, in fp16, traced and saved like OpenAI's files."""
    M = refs.openai_model_module()
    torch.manual_seed(0)
    if kind == "vit":
        resolution = 32
        model = M.CLIP(32, resolution, 2, 64, 8, 77, 1000, 64, 4, 2)
    else:
        resolution = 64
        model = M.CLIP(32, resolution, (1, 1, 1, 1), 16, None, 77, 1000, 64, 4, 2)
    # OpenAI's archives hold these three as int64 0-dim buffers (clip.build_model drops them).
    del model.context_length, model.vocab_size
    model.register_buffer("input_resolution", torch.tensor(resolution))
    model.register_buffer("context_length", torch.tensor(77))
    model.register_buffer("vocab_size", torch.tensor(1000))
    M.convert_weights(model)
    model.eval()
    image = torch.randn(2, 3, resolution, resolution, dtype=torch.float16)
    text = torch.randint(0, 1000, (2, 77))
    inputs = {"forward": (image, text), "encode_image": image, "encode_text": text}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings from OpenAI's and torch's code
        traced = torch.jit.trace_module(model, inputs, check_trace=False)
    torch.jit.save(traced, str(path))
    return path


class _Scripted(nn.Module):
    """BatchNorm, a Sequential, views sharing one storage, odd dtypes and non-state tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.seq = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 4).to(torch.bfloat16))
        base = torch.arange(24.0).reshape(4, 6)
        self.register_buffer("base", base)
        self.register_buffer("view", base[1:, ::2])  # offset 6, strides (6, 2)
        self.register_buffer("flag", torch.tensor([True, False]))
        self.register_buffer("nothing", None)
        self.w_t = nn.Parameter(torch.randn(5, 3).t())  # non-contiguous parameter
        self.attn_mask = torch.full((3, 3), float("-inf")).triu(1)  # plain attribute, not state
        self.bn.running_mean.uniform_()
        self.bn.num_batches_tracked += 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.seq[0](x @ self.w_t))
        return y + self.view.sum() + self.attn_mask.sum()


@pytest.fixture(scope="module")
def vit_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _openai_clip_archive(tmp_path_factory.mktemp("ts") / "ViT-tiny.pt", "vit")


@pytest.fixture(scope="module")
def rn_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _openai_clip_archive(tmp_path_factory.mktemp("ts") / "RN-tiny.pt", "rn")


@pytest.fixture(scope="module")
def scripted_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ts") / "scripted.pt"
    torch.jit.save(torch.jit.script(_Scripted()), str(path))
    return path


def _jit_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.jit.load(str(path), map_location="cpu").state_dict()


def _assert_same(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(ref)
    for key, expected in ref.items():
        got = ours[key]
        assert isinstance(got, torch.Tensor), key
        assert got.dtype == expected.dtype, key
        assert got.shape == expected.shape, key
        assert got.stride() == expected.stride(), key
        assert got.storage_offset() == expected.storage_offset(), key
        assert torch.equal(got, expected), key


def _rezip(
    src: Path,
    dst: Path,
    *,
    prefix: str | None = None,
    drop: tuple[str, ...] = (),
    replace: dict[str, bytes] | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """Copy a zip, renaming its top folder to ``prefix`` and dropping/replacing members."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            folder, _, rest = info.filename.partition("/")
            if rest in drop:
                continue
            data = replace.get(rest, zin.read(info))
            name = info.filename if prefix is None else (f"{prefix}/{rest}" if prefix else rest)
            zout.writestr(name, data)
    return dst


def _top_folder(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()[0].split("/")[0]


# ---------------------------------------------------------------------------------------
# Same state dict as torch.jit.load


def test_openai_style_vit_archive_matches_jit_load(vit_archive: Path) -> None:
    ours = read_torchscript_state_dict(vit_archive)
    _assert_same(ours, _jit_state_dict(vit_archive))
    assert ours["visual.conv1.weight"].dtype == torch.float16
    assert ours["transformer.resblocks.0.attn.in_proj_weight"].dtype == torch.float16
    assert ours["logit_scale"].dtype == torch.float32
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 1000)):
        assert (
            ours[name].dtype == torch.int64 and ours[name].dim() == 0 and ours[name].item() == value
        )
    assert not [k for k in ours if "attn_mask" in k]
    # The traced text attention mask is a code constant, not state.
    with zipfile.ZipFile(vit_archive) as zf:
        assert f"{_top_folder(vit_archive)}/constants.pkl" in zf.namelist()


def test_openai_style_resnet_archive_matches_jit_load(rn_archive: Path) -> None:
    ours = read_torchscript_state_dict(rn_archive)
    _assert_same(ours, _jit_state_dict(rn_archive))
    assert ours["visual.layer1.0.bn1.running_mean"].dtype == torch.float32
    assert ours["visual.layer1.0.bn1.num_batches_tracked"].dtype == torch.int64
    assert ours["visual.attnpool.q_proj.weight"].dtype == torch.float16
    assert ours["input_resolution"].item() == 64


def test_scripted_module_matches_jit_load(scripted_archive: Path) -> None:
    ours = read_torchscript_state_dict(scripted_archive)
    _assert_same(ours, _jit_state_dict(scripted_archive))
    assert "attn_mask" not in ours and "nothing" not in ours
    assert ours["seq.2.weight"].dtype == torch.bfloat16 and ours["flag"].dtype == torch.bool
    assert ours["bn.num_batches_tracked"].item() == 3
    # Views of one storage stay views of one storage.
    assert ours["view"].storage_offset() == 6 and ours["view"].stride() == (6, 2)
    assert ours["view"].untyped_storage().data_ptr() == ours["base"].untyped_storage().data_ptr()
    assert ours["w_t"].stride() == (1, 3)


@pytest.mark.parametrize("prefix", ["ViT-B-32", "archive", ""])
def test_any_top_folder_and_deflate(scripted_archive: Path, tmp_path: Path, prefix: str) -> None:
    renamed = _rezip(
        scripted_archive, tmp_path / "renamed.pt", prefix=prefix, compression=zipfile.ZIP_DEFLATED
    )
    assert is_torchscript_archive(renamed)
    _assert_same(read_torchscript_state_dict(renamed), _jit_state_dict(scripted_archive))


def test_archive_without_buffer_declarations(vit_archive: Path, tmp_path: Path) -> None:
    """torch <= 1.5 wrote no ``__buffers__`` lines; Tensor attributes were the buffers."""
    replace = {}
    with zipfile.ZipFile(vit_archive) as zf:
        for info in zf.infolist():
            rest = info.filename.partition("/")[2]
            if rest.startswith("code/") and rest.endswith(".py"):
                text = zf.read(info).decode()
                lines = [ln for ln in text.splitlines() if not ln.strip().startswith("__buffers__")]
                replace[rest] = "\n".join(lines).encode()
    old = _rezip(vit_archive, tmp_path / "old.pt", replace=replace)
    _assert_same(read_torchscript_state_dict(old), _jit_state_dict(vit_archive))


def test_big_endian_archive(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "linear.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(src))  # float32 records only
    replace = {"byteorder": b"little" if sys.byteorder == "big" else b"big"}
    with zipfile.ZipFile(src) as zf:
        for info in zf.infolist():
            rest = info.filename.partition("/")[2]
            if rest.startswith("data/"):
                raw = zf.read(info)
                n = len(raw) // 4
                replace[rest] = struct.pack(f">{n}f", *struct.unpack(f"<{n}f", raw))
    swapped = _rezip(src, tmp_path / "big.pt", replace=replace)
    _assert_same(read_torchscript_state_dict(swapped), _jit_state_dict(src))


def test_is_torchscript_archive(scripted_archive: Path, tmp_path: Path) -> None:
    assert is_torchscript_archive(scripted_archive)
    assert is_torchscript_archive(str(scripted_archive))
    saved = tmp_path / "state_dict.pt"
    torch.save({"w": torch.ones(2)}, saved)  # a zip with data.pkl but no code
    assert not is_torchscript_archive(saved)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02not a zip at all" * 10)
    assert not is_torchscript_archive(junk)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(scripted_archive.read_bytes()[:-100])
    assert not is_torchscript_archive(truncated)


# ---------------------------------------------------------------------------------------
# Broken files: CheckpointError naming the file and what was expected


def _error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        read_torchscript_state_dict(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert str(path) in message
    return message


def test_truncated_file(scripted_archive: Path, tmp_path: Path) -> None:
    data = scripted_archive.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 10):
        path = tmp_path / f"truncated{cut}.pt"
        path.write_bytes(data[:cut])
        assert "zip" in _error(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    assert "not a readable zip" in _error(path)


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/code/__torch__.py", "")
        zf.writestr("archive/version", "3")
    assert "data.pkl" in _error(path)


def test_legacy_model_json_format(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/model.json", "{}")
        zf.writestr("model/tensors/0", b"\0" * 4)
    assert "model.json" in _error(path)


def test_torch_save_file_is_not_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "state_dict.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert "not a TorchScript archive" in _error(path)


def test_corrupt_record(scripted_archive: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(scripted_archive) as zf:
        raw = zf.read(f"{_top_folder(scripted_archive)}/data/0")
    flipped = bytes([raw[0] ^ 0xFF]) + raw[1:]
    # Keep the original CRC in the directory so that the change is only caught on reading.
    data = bytearray(scripted_archive.read_bytes())
    pos = data.find(raw)
    assert pos > 0
    data[pos : pos + len(raw)] = flipped
    path = tmp_path / "corrupt.pt"
    path.write_bytes(bytes(data))
    assert "corrupt" in _error(path)


def test_missing_storage_record(scripted_archive: Path, tmp_path: Path) -> None:
    path = _rezip(scripted_archive, tmp_path / "missing.pt", drop=("data/0",))
    message = _error(path)
    assert f"{_top_folder(scripted_archive)}/data/0" in message and "missing" in message


def test_wrong_record_size(scripted_archive: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(scripted_archive) as zf:
        raw = zf.read(f"{_top_folder(scripted_archive)}/data/0")
    path = _rezip(scripted_archive, tmp_path / "short.pt", replace={"data/0": raw[:-4]})
    message = _error(path)
    assert (
        "data/0" in message and f"holds {len(raw) - 4} bytes" in message and "expected" in message
    )


# ---------------------------------------------------------------------------------------
# Hand-written pickles: nothing outside the allow-list is ever called


@dataclass
class G:
    """A GLOBAL opcode."""

    module: str
    name: str


@dataclass
class Call:
    """``fn(*args)``: a REDUCE opcode."""

    fn: Any
    args: tuple


@dataclass
class Obj:
    """A TorchScript object: NEWOBJ of ``cls`` then BUILD with ``state``."""

    cls: G
    state: Any


@dataclass
class Build:
    """BUILD: set the state of ``target`` (a plain Python unpickler would call its __setstate__)."""

    target: Any
    state: Any


@dataclass
class Pid:
    """A persistent id (BINPERSID)."""

    value: tuple


def _emit(x: Any, out: bytearray) -> None:
    if isinstance(x, G):
        out += b"c" + f"{x.module}\n{x.name}\n".encode()
    elif isinstance(x, Call):
        _emit(x.fn, out)
        _emit(x.args, out)
        out += b"R"
    elif isinstance(x, Obj):
        _emit(x.cls, out)
        out += b")\x81"
        _emit(x.state, out)
        out += b"b"
    elif isinstance(x, Build):
        _emit(x.target, out)
        _emit(x.state, out)
        out += b"b"
    elif isinstance(x, Pid):
        _emit(x.value, out)
        out += b"Q"
    elif x is None:
        out += b"N"
    elif isinstance(x, bool):
        out += b"\x88" if x else b"\x89"
    elif isinstance(x, int):
        out += b"J" + struct.pack("<i", x)
    elif isinstance(x, str):
        raw = x.encode()
        out += b"X" + struct.pack("<I", len(raw)) + raw
    elif isinstance(x, tuple):
        out += b"("
        for item in x:
            _emit(item, out)
        out += b"t"
    elif isinstance(x, dict):
        out += b"}("
        for key, value in x.items():
            _emit(key, out)
            _emit(value, out)
        out += b"u"
    else:
        raise TypeError(type(x))


def _dumps(x: Any) -> bytes:
    out = bytearray(b"\x80\x02")
    _emit(x, out)
    return bytes(out + b".")


def _tensor(key: str, numel: int, offset: int, size: tuple, stride: tuple) -> Call:
    storage = Pid(("storage", G("torch", "FloatStorage"), key, "cuda:0", numel))
    hooks = Call(G("collections", "OrderedDict"), ())
    return Call(
        G("torch._utils", "_rebuild_tensor_v2"), (storage, offset, size, stride, False, hooks)
    )


_MODULE_SOURCE = """\
class M(Module):
  __parameters__ = ["w", ]
  __buffers__ = []
  w : Tensor
  t : Tensor
  training : bool
  def forward(self: __torch__.M) -> Tensor:
    return self.w
"""


def _handmade(
    path: Path, data_pkl: bytes, source: str = _MODULE_SOURCE, records: dict | None = None
) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/code/__torch__.py", source)
        zf.writestr("archive/constants.pkl", _dumps(()))
        zf.writestr("archive/version", "3\n")
        for key, raw in (records or {}).items():
            zf.writestr(f"archive/data/{key}", raw)
    return path


def _module(**attributes: Any) -> Obj:
    return Obj(G("__torch__", "M"), {"training": False, **attributes})


def test_handmade_archive_reads(tmp_path: Path) -> None:
    values = torch.arange(6, dtype=torch.float32)
    data = _dumps(_module(w=_tensor("0", 6, 1, (2, 2), (1, 2)), t=_tensor("0", 6, 0, (6,), (1,))))
    path = _handmade(tmp_path / "ok.pt", data, records={"0": values.numpy().tobytes()})
    assert is_torchscript_archive(path)
    state = read_torchscript_state_dict(path)
    assert list(state) == ["w"]  # t is an attribute, not a parameter or buffer
    assert torch.equal(state["w"], values.as_strided((2, 2), (1, 2), 1))


@pytest.mark.parametrize(
    "fn",
    [
        G("os", "system"),
        G("posix", "system"),
        G("builtins", "eval"),
        G("builtins", "exec"),
        G("builtins", "open"),
        G("subprocess", "call"),
        G("torch", "load"),
        G("torch.jit", "load"),
        G("torch._utils", "_rebuild_qtensor"),
    ],
)
def test_disallowed_globals_are_named_and_never_called(tmp_path: Path, fn: G) -> None:
    marker = tmp_path / "pwned"
    if fn.name in ("eval", "exec"):
        args: tuple = (f"open({str(marker)!r}, 'w').close()",)
    elif fn.name == "open":
        args = (str(marker), "w")
    elif fn.name in ("system", "call"):
        args = (f"touch {marker}",)
    else:
        args = (str(marker),)
    # Once at the top, once nested inside a module attribute.
    for i, payload in enumerate([Call(fn, args), _module(w=Call(fn, args))]):
        path = _handmade(tmp_path / f"evil{i}.pt", _dumps(payload))
        message = _error(path)
        assert f"{fn.module}.{fn.name}" in message
        assert not marker.exists()


def test_code_files_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    source = (
        f"import os\nos.system('touch {marker}')\nopen({str(marker)!r}, 'w')\n" + _MODULE_SOURCE
    )
    data = _dumps(_module(w=_tensor("0", 1, 0, (), ())))
    path = _handmade(tmp_path / "code.pt", data, source, {"0": struct.pack("<f", 2.5)})
    assert read_torchscript_state_dict(path)["w"].item() == 2.5
    assert not marker.exists()


def test_view_outside_its_storage(tmp_path: Path) -> None:
    data = _dumps(_module(w=_tensor("0", 4, 2, (2, 2), (2, 1))))
    path = _handmade(tmp_path / "oob.pt", data, records={"0": b"\0" * 16})
    assert "does not fit" in _error(path)


def test_undeclared_class(tmp_path: Path) -> None:
    data = _dumps(Obj(G("__torch__.somewhere", "Unknown"), {"training": False}))
    message = _error(_handmade(tmp_path / "undeclared.pt", data))
    assert "__torch__.somewhere.Unknown" in message and "code/__torch__/somewhere.py" in message


def test_malformed_persistent_id(tmp_path: Path) -> None:
    data = _dumps(
        _module(w=Call(G("torch._utils", "_rebuild_tensor_v2"), (Pid(("storage", "x")), 0, (), ())))
    )
    assert "persistent id" in _error(_handmade(tmp_path / "pid.pt", data))


def test_state_of_tensors_and_globals_cannot_be_set(tmp_path: Path) -> None:
    """``Tensor.__setstate__`` would ``set_`` storage or hooks; BUILD is refused on non-objects."""
    records = {"0": b"\0" * 16}
    tensor = _tensor("0", 4, 0, (4,), (1,))
    for i, payload in enumerate(
        [Build(tensor, (False, None, {})), Build(G("torch", "FloatStorage"), {"x": 1})]
    ):
        path = _handmade(tmp_path / f"build{i}.pt", _dumps(_module(w=payload)), records=records)
        assert "refusing to set the state" in _error(path)
