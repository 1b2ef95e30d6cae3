"""Fast inference: one option, ``runtime``, for every command that encodes.

Torch's float32 matrix multiply is the bottleneck of CLIP inference on a CPU, and the same
CPU usually does much better with other kernels. :func:`accelerate` wraps a model so that
``encode_image``/``encode_text`` run on one of:

- ``torch``: the model as it is (float32 on CPU; the encode layer autocasts on GPU);
- ``bf16``: torch with bfloat16 autocast, for CPUs with bf16 instructions (AVX512-BF16,
  AMX) where it is several times faster; weights stay float32;
- ``bf16-compile``: a bfloat16 copy of the towers compiled by inductor with frozen weights
  (oneDNN's packed kernels): the fastest images/s on such CPUs for long jobs, after 10-20 s
  of compiling; smaller final batches are padded to the first batch's size so one graph
  serves them all (texts run eagerly in bfloat16: trimming the padding wins there);
- ``int8``: torch's dynamic int8 quantisation of the linear layers (a quantised copy; the
  model itself is untouched), for CPUs without bf16;
- ``onnx`` / ``onnx-int8``: ONNX Runtime sessions of both towers, exported once per model
  (cached by fingerprint) with :func:`export_onnx`, int8 by ONNX Runtime's dynamic
  quantisation (every matrix multiply, attention projections included);
- ``auto``: ``torch`` on GPU; on CPU the fastest of ``torch``, ``int8``, ``bf16`` (where the
  CPU has bf16 instructions) and ``onnx-int8`` (where ONNX Runtime is installed), measured
  once on this machine for this model size (images/s of a small batch; about a second per
  runtime for a small model, plus the one-off ONNX export) and cached per CPU model and
  model architecture in ``runtime-auto.json`` of the cache directory
  (:func:`auto_runtime`). CPU flags alone choose badly: an AMD EPYC with AVX512-BF16 but no
  AMX runs ViT-B/32 faster in ``onnx-int8`` than in ``bf16``.

The wrapper keeps the model as ``.module``, so :func:`cliplab.encode.unwrap_model` and the
fingerprint see the original weights; feature caches add the runtime to their keys.
Outputs are float32 on CPU like the model's. Accuracy against float32 is measured in
``tests/test_runtime.py`` and ``benchmarks/bench_inference.py``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cliplab.fileio import AtomicDirectory, write_json

__all__ = [
    "RUNTIMES",
    "FastCLIP",
    "OnnxCLIP",
    "accelerate",
    "auto_runtime",
    "cpu_has_bf16",
    "cpu_name",
    "measure_runtimes",
    "reuse_freed_memory",
    "export_onnx",
    "resolve_runtime",
]

RUNTIMES = ("auto", "torch", "bf16", "bf16-compile", "int8", "onnx", "onnx-int8")
ONNX_OPSET = 17
log = logging.getLogger("cliplab.runtime")


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16), where
    bf16 autocast pays. Read from ``/proc/cpuinfo`` on Linux, else asked of oneDNN."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
#: Freed blocks below this many bytes are kept (both malloc thresholds); benchmarks give a
#: peer the same setting through ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``.
MALLOC_LIMIT = 2**30


@functools.cache
def reuse_freed_memory(limit: int = MALLOC_LIMIT) -> bool:
    """Let glibc's malloc reuse freed blocks below ``limit`` bytes instead of returning
    them to the kernel; True when the setting took.

    A CLIP forward pass on a CPU allocates and frees the same large activations batch after
    batch (ViT-B/32, batch 64: 39 MB per MLP activation). glibc serves any block over
    32 MB with a fresh ``mmap`` and unmaps it on ``free``, so every batch page-faults the
    memory in again, zeroed by the kernel: for 384 images, 2.2 million page faults and 8 s
    of system time; with this, 8,400 faults and 1.16x the images/s on a 2-core AMD EPYC
    (``benchmarks/bench_malloc.py``). With both thresholds at ``limit`` the blocks come
    from the heap and stay mapped, at the price of keeping up to ``limit`` of freed memory
    in the process. The command line
    calls this at start; library users may too. Not applied elsewhere than glibc, when
    the environment already tunes malloc (``MALLOC_*_``, ``GLIBC_TUNABLES``, an
    ``LD_PRELOAD``-ed allocator) or with ``CLIPLAB_MALLOC=system``.
    """
    import ctypes
    import platform

    if os.environ.get("CLIPLAB_MALLOC", "") == "system" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _MALLOC_ENV) or os.environ.get("LD_PRELOAD"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    value = ctypes.c_int(min(int(limit), 2**31 - 1))
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir or os.environ.get("CLIPLAB_CACHE") or Path.home() / ".cache" / "cliplab")


def auto_candidates() -> list[str]:
    """The CPU runtimes ``auto`` measures here."""
    return (
        ["torch", "int8"]
        + (["bf16"] if cpu_has_bf16() else [])
        + (["onnx-int8"] if _has_onnxruntime() else [])
    )


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def measure_runtimes(
    model: nn.Module,
    candidates: list[str] | None = None,
    *,
    batch: int = 8,
    repeats: int = 3,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """Images per second of ``model.encode_image`` on each CPU runtime (a random batch at
    the model's size, after one warm-up call; the best of ``repeats``). The runtimes take
    turns, round by round, so other work on the machine slows each of them alike instead
    of whichever happened to be timed while it ran."""
    import time

    from cliplab.encode import unwrap_model

    base = unwrap_model(model)
    size = int(getattr(base, "image_size", 224))
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    names = list(candidates or auto_candidates())
    fast = {name: accelerate(base, name, cache_dir=cache_dir) for name in names}
    best = dict.fromkeys(names, float("inf"))
    with torch.inference_mode():
        for name in names:
            fast[name].encode_image(pixels)  # warm-up
        for _ in range(repeats):
            for name in names:
                start = time.perf_counter()
                fast[name].encode_image(pixels)
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: batch / best[name] for name in names}


def auto_runtime(model: nn.Module, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The fastest CPU runtime for ``model``'s architecture on this machine, measured once
    (:func:`measure_runtimes`) and remembered in ``<cache>/runtime-auto.json`` under the CPU
    model, the CPU's bf16 support, torch's version and the architecture."""
    from cliplab.encode import unwrap_model

    base = unwrap_model(model)
    config = getattr(base, "config", None)
    arch = json.dumps(config.to_dict() if config is not None else repr(base), sort_keys=True)
    parts = [cpu_name(), str(cpu_has_bf16()), torch.__version__, ",".join(auto_candidates())]
    key = hashlib.sha256("\n".join([*parts, arch]).encode()).hexdigest()[:32]
    path = _cache_root(cache_dir) / "runtime-auto.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    entry = known.get(key) if isinstance(known, dict) else None
    if isinstance(entry, dict) and entry.get("choice") in RUNTIMES:
        return str(entry["choice"])
    rates = measure_runtimes(base, cache_dir=cache_dir)
    choice = max(rates, key=rates.__getitem__)
    log.info(
        "runtime auto: %s (images/s: %s; measured once, cached in %s)",
        choice,
        ", ".join(f"{k} {v:.1f}" for k, v in rates.items()),
        path,
    )
    known = known if isinstance(known, dict) else {}
    known[key] = {"choice": choice, "images_per_s": rates, "cpu": parts[0], "torch": parts[2]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, known)
    return choice


def resolve_runtime(
    runtime: str,
    device: torch.device | str = "cpu",
    model: nn.Module | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> str:
    """The concrete runtime ``runtime`` means on ``device``; clear errors for unknown names
    and for CPU-only runtimes asked for on a GPU. ``auto`` on a CPU is measured for
    ``model`` (:func:`auto_runtime`); without a model it is the usual winner by CPU flags
    (``bf16`` with bf16 instructions, else ``onnx-int8`` / ``int8``)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    device = torch.device(device)
    if runtime == "auto":
        if device.type != "cpu":
            return "torch"
        if model is not None:
            return auto_runtime(model, cache_dir)
        if cpu_has_bf16():
            return "bf16"
        return "onnx-int8" if _has_onnxruntime() else "int8"
    if runtime in ("int8", "onnx", "onnx-int8", "bf16-compile") and device.type != "cpu":
        raise ValueError(f"runtime {runtime!r} runs on the CPU only; use torch or bf16 on {device}")
    if runtime.startswith("onnx") and not _has_onnxruntime():
        raise ValueError(
            f"runtime {runtime!r} needs ONNX Runtime: pip install 'cliplab[onnx]' "
            "(onnx, onnxruntime)"
        )
    return runtime


def _quantized_copy(model: nn.Module) -> nn.Module:
    """A copy with every ``nn.Linear`` dynamically quantised to int8 (torch's kernels)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch points eager quantisation users to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model).float().cpu(), {nn.Linear}, torch.qint8)


class _CompiledTowers:
    """A bfloat16 copy of the model: the image tower compiled by inductor with frozen
    weights, each call's batch padded to the first batch size seen so the graph is built
    once; the text tower eager, where trimming the padding beats a static-length graph."""

    def __init__(self, model: nn.Module) -> None:
        self._copy = copy.deepcopy(model).eval().to(torch.bfloat16)
        self._image = torch.compile(self._copy.visual, options={"freezing": True})
        self._sizes: dict[str, int] = {}

    def _call(self, name: str, fn: Any, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        size = self._sizes.setdefault(name, n)
        if n < size:
            x = torch.cat([x, x[-1:].expand(size - n, *x.shape[1:])])
        parts = [fn(chunk) for chunk in x.split(size)] if x.shape[0] > size else [fn(x)]
        return torch.cat(parts)[:n]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._call("image", self._image, images.to(torch.bfloat16))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._copy.encode_text(tokens)


class FastCLIP(nn.Module):
    """A CLIP model's ``encode_image``/``encode_text`` on another runtime (see the module
    docstring). ``module`` is the original model; ``runtime`` the concrete runtime."""

    def __init__(self, model: nn.Module, runtime: str, engine: Any = None) -> None:
        super().__init__()
        self.module = model
        self.runtime = runtime
        self.config = model.config
        self._engine = engine  # the int8 copy, or an OnnxCLIP

    @property
    def image_size(self) -> int:
        return self.module.image_size

    @property
    def context_length(self) -> int:
        return self.module.context_length

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.module.logit_scale

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's bias (None for a CLIP model): zero-shot scores are sigmoids with it."""
        return getattr(self.module, "logit_bias", None)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.runtime == "bf16":
            device = x.device.type
            with torch.autocast(device, dtype=torch.bfloat16):
                out = getattr(self.module, name)(x)
        elif self.runtime == "torch":
            out = getattr(self.module, name)(x)
        else:
            out = getattr(self._engine, name)(x.cpu())
        return out.float()

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images (B, 3, S, S) -> features (B, embed_dim), float32."""
        features = self._run("encode_image", images)
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids (B, L) -> features (B, embed_dim), float32."""
        features = self._run("encode_text", text)
        return F.normalize(features, dim=-1) if normalize else features

    def extra_repr(self) -> str:
        return f"runtime={self.runtime!r}"


def accelerate(
    model: nn.Module,
    runtime: str = "auto",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """``model`` on ``runtime`` (one of :data:`RUNTIMES`): the model itself for ``torch``,
    else a :class:`FastCLIP`. ONNX exports are cached under ``cache_dir`` (default
    ``$CLIPLAB_CACHE`` or ``~/.cache/cliplab``) by the model's fingerprint."""
    from cliplab.encode import model_device, model_fingerprint, unwrap_model

    base = unwrap_model(model)
    concrete = resolve_runtime(runtime, model_device(base), base, cache_dir)
    if concrete == "torch":
        return base
    base.eval()
    if concrete == "bf16":
        return FastCLIP(base, "bf16")
    if concrete == "int8":
        return FastCLIP(base, "int8", _quantized_copy(base))
    if concrete == "bf16-compile":
        return FastCLIP(base, concrete, _CompiledTowers(base))
    int8 = concrete == "onnx-int8"
    root = _cache_root(cache_dir)
    key = hashlib.sha256(f"{model_fingerprint(base)}:{ONNX_OPSET}:{int8}".encode()).hexdigest()
    directory = root / "onnx" / key[:24]
    if not (directory / "onnx.json").is_file():
        export_onnx(base, directory, int8=int8)
    return FastCLIP(base, concrete, OnnxCLIP(directory))


# --------------------------------------------------------------------------------------- ONNX


class _ImageTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class _TextTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def export_onnx(model: nn.Module, out: str | os.PathLike[str], int8: bool = False) -> Path:
    """Write ``image.onnx`` and ``text.onnx`` (both towers, dynamic batch; text also dynamic
    length) and ``onnx.json`` (config, fingerprint, logit scale) to the directory ``out``,
    atomically. ``int8``: ONNX Runtime's dynamic int8 quantisation of the weights of every
    matrix multiply. Returns ``out``."""
    try:
        import onnx  # noqa: F401
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ValueError(
            "ONNX export needs onnx and onnxruntime: pip install 'cliplab[onnx]'"
        ) from e
    from cliplab.encode import model_fingerprint, unwrap_model

    model = copy.deepcopy(unwrap_model(model)).float().cpu().eval()
    model.text.length_groups = 0  # the host trims padding instead (OnnxCLIP.encode_text)
    size, length = model.image_size, model.context_length
    pixels = torch.zeros(2, 3, size, size)
    tokens = torch.zeros(2, length, dtype=torch.long)
    tokens[:, 3] = model.config.text.vocab_size - 1  # an EOT at position 3
    out = Path(out)
    with AtomicDirectory(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes
        for name, tower, example, axes in (
            ("image", _ImageTower(model), pixels, {0: "batch"}),
            ("text", _TextTower(model), tokens, {0: "batch", 1: "length"}),
        ):
            target = tmp / (f"{name}-fp32.onnx" if int8 else f"{name}.onnx")
            torch.onnx.export(
                tower,
                (example,),
                str(target),
                input_names=["input"],
                output_names=["features"],
                dynamic_axes={"input": axes, "features": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
            if int8:
                logging.disable(logging.WARNING)  # "consider pre-processing" on the root logger
                try:
                    quantize_dynamic(
                        str(target), str(tmp / f"{name}.onnx"), weight_type=QuantType.QInt8
                    )
                finally:
                    logging.disable(logging.NOTSET)
                target.unlink()
        write_json(
            tmp / "onnx.json",
            {
                "format": "cliplab-onnx",
                "int8": int8,
                "opset": ONNX_OPSET,
                "fingerprint": model_fingerprint(model),
                "logit_scale": float(model.logit_scale.detach()),
                "config": model.config.to_dict(),
            },
        )
    return out


class OnnxCLIP:
    """ONNX Runtime sessions of a directory written by :func:`export_onnx`, with the model's
    ``encode_image``/``encode_text`` signatures (float32 CPU tensors in and out)."""

    def __init__(self, directory: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        directory = Path(directory)
        info_path = directory / "onnx.json"
        if not info_path.is_file():
            raise ValueError(f"{directory}: not an ONNX export of cliplab (no onnx.json)")
        self.info = json.loads(info_path.read_text())
        text = self.info.get("config", {}).get("text", {})
        self.trim = text.get("causal", True) and text.get("pool", "argmax") == "argmax"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        # idle ONNX Runtime threads would spin and slow down torch work in this process
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(name: str) -> Any:
            return ort.InferenceSession(
                str(directory / name), options, providers=["CPUExecutionProvider"]
            )

        self.image = session("image.onnx")
        self.text = session("text.onnx")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().contiguous().numpy()
        return torch.from_numpy(self.image.run(None, {"input": array})[0])

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[0] == 0:
            raise ValueError("no texts to encode")
        # causal attention: positions after the last EOT never matter, so they are not sent
        # (a bidirectional tower, SigLIP's, sees them all)
        last = int(tokens.argmax(dim=-1).max()) + 1 if self.trim else tokens.shape[1]
        array = tokens[:, :last].detach().long().contiguous().numpy()
        return torch.from_numpy(self.text.run(None, {"input": array})[0])
