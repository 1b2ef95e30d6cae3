"""Reference implementations for parity tests, loaded without their heavy side effects.

- OpenAI's ``clip/model.py`` and ``clip/simple_tokenizer.py`` ship in the PyPI package
  clip-anytorch; they import only torch/numpy (ftfy/regex for the tokenizer), so we load the
  files by path instead of importing ``clip`` (whose ``__init__`` needs torchvision).
- torchvision's PyPI wheel is a CUDA build whose compiled ops cannot load against the CPU
  torch used here. Its transforms are pure Python, so we register ``torchvision`` as a bare
  package (skipping its ``__init__``, which registers the compiled ops) and import
  ``torchvision.transforms`` from it. OpenCLIP then imports on top of that.

A missing reference package fails the tests that need it, naming the package and the
install command: parity is never silently skipped. ``make test`` installs all of them
(requirements/reference.txt).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import torch

INSTALL = "pip install --no-deps -r requirements/reference.txt (make test does)"


def missing(what: str) -> None:
    """Fail (not skip) the test: a parity test without its reference proves nothing."""
    pytest.fail(f"reference package {what} is not installed; {INSTALL}", pytrace=False)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        missing(repr(name))
    return Path(next(iter(spec.submodule_search_locations)))


def _load_file(module_name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def openai_model_module() -> ModuleType:
    """OpenAI's ``clip/model.py`` (CLIP, ModifiedResNet, VisionTransformer, build_model)."""
    return _load_file("_ref_openai_clip_model", _package_dir("clip") / "model.py")


@cache
def openai_tokenizer_module() -> ModuleType:
    """OpenAI's ``clip/simple_tokenizer.py`` (SimpleTokenizer)."""
    return _load_file("_ref_openai_simple_tokenizer", _package_dir("clip") / "simple_tokenizer.py")


def install_torchvision_shim() -> bool:
    """Register ``torchvision`` as a bare package so its pure-Python parts import.

    Called by conftest before any test runs: transformers and OpenCLIP import torchvision
    themselves, and the real ``torchvision/__init__`` fails on the CPU build of torch.
    Returns False when torchvision is not installed.
    """
    if "torchvision" in sys.modules:
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        return False
    shim = types.ModuleType("torchvision")
    shim.__path__ = list(spec.submodule_search_locations or [])
    shim.__spec__ = spec
    shim.__version__ = "0.28.0"
    sys.modules["torchvision"] = shim
    return True


@cache
def torchvision_transforms() -> ModuleType:
    """``torchvision.transforms`` imported without torchvision's compiled extension."""
    if not install_torchvision_shim():
        missing("torchvision")
    import torchvision.transforms as T

    return T


@cache
def open_clip() -> ModuleType:
    """The ``open_clip`` package, imported on top of the torchvision shim."""
    torchvision_transforms()
    if importlib.util.find_spec("open_clip") is None:
        missing("open_clip_torch")
    import open_clip as oc

    return oc


@cache
def openai_clip() -> ModuleType:
    """OpenAI's ``clip`` package itself (``clip.load``, ``clip.clip._transform``).

    ``clip/clip.py`` imports ``packaging`` through ``pkg_resources``, which setuptools >= 81
    no longer ships; a stand-in module that exposes ``packaging`` is enough for it.
    """
    torchvision_transforms()
    if importlib.util.find_spec("pkg_resources") is None:
        import packaging.version

        shim = types.ModuleType("pkg_resources")
        shim.packaging = packaging
        sys.modules["pkg_resources"] = shim
    _package_dir("clip")
    import clip

    return clip


def openai_preprocess(n_px: int):
    """OpenAI's eval preprocessing: the real ``clip.clip._transform(n_px)``."""
    return openai_clip().clip._transform(n_px)


@cache
def transformers() -> ModuleType:
    """Hugging Face ``transformers`` (imported after the torchvision shim)."""
    install_torchvision_shim()
    if importlib.util.find_spec("transformers") is None:
        missing("transformers")
    import transformers as tf

    return tf


@torch.no_grad()
def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every weight of ``model`` off its initial value, in place, and return it.

    At initialisation every LayerNorm is 1/0 and every attention and MLP bias 0, so a model
    with swapped LayerNorms or a dropped bias computes the same features as the reference
    and passes a parity test. Here each floating tensor of the state dict gets noise of half
    its own spread (0.2 for constant tensors: LayerNorm weights and biases, zero biases),
    BatchNorm statistics become non-trivial, and the logit scale moves.
    """
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith("running_mean"):
            t.copy_(0.1 * torch.randn(t.shape, generator=g))
        elif t.numel() == 1:
            t.add_(0.3)
        else:
            spread = float(t.float().std())
            scale = 0.5 * spread if spread > 1e-6 else 0.2
            t.add_(scale * torch.randn(t.shape, generator=g).to(t.dtype))
    return model


def require(module: str) -> ModuleType:
    """A reference module (scikit-learn for the metrics and probes), or fail naming it."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.fail(
            f"reference package {module!r} is not installed; pip install '.[eval]'", pytrace=False
        )
    return importlib.import_module(module)
