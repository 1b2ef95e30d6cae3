"""Zero-shot classification (Radford et al. 2021, section 3.1): class names become a classifier.

Each class name is put into every prompt template ("a photo of a {}."), embedded by the text
tower and L2-normalised; the class's embeddings are averaged (prompt ensembling) and
re-normalised. The (C, D) result is the weight matrix of a linear classifier on normalised
image features: ``logits = exp(t) * normalize(image_features) @ weights.T``::

    model, preprocess = cliplab.load("ViT-B-32.pt")
    weights = build_zero_shot_classifier(model, cliplab.tokenize, ["cat", "dog"],
                                         load_templates("imagenet80"))
    probs = zero_shot_logits(model.encode_image(images), weights).softmax(-1)

Template sets are JSON files under ``cliplab/assets/templates`` (``load_templates("photo")``)
or any JSON file: a list of strings, or an object with a ``"templates"`` list. ``{}`` marks
where the class name goes.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import inspect
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "PLACEHOLDER",
    "build_zero_shot_classifier",
    "classifier_cache_key",
    "classify_images",
    "encode_texts",
    "fill_template",
    "list_templates",
    "load_templates",
    "logit_scale_of",
    "model_device",
    "model_fingerprint",
    "tokenize_texts",
    "zero_shot_logits",
]

#: Where a template puts the class name.
PLACEHOLDER = "{}"
#: Bumped when the classifier's computation changes, which invalidates every cached file.
CACHE_VERSION = 1
#: The paper's clip of ``exp(logit_scale)``; also the scale used when a model has none.
MAX_LOGIT_SCALE = 100.0

Tokenizer = Callable[..., torch.Tensor]


# --------------------------------------------------------------------------- templates


def _template_files() -> dict[str, Any]:
    root = importlib.resources.files("cliplab").joinpath("assets", "templates")
    return {p.name[: -len(".json")]: p for p in root.iterdir() if p.name.endswith(".json")}


def list_templates() -> list[str]:
    """Names of the bundled template sets (``bare``, ``photo``, ``imagenet80``, ...)."""
    return sorted(_template_files())


def _check_templates(templates: Sequence[str], source: str) -> list[str]:
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise ValueError(f"{source}: templates must be a non-empty list of strings")
    for t in templates:
        if not isinstance(t, str) or t.count(PLACEHOLDER) != 1:
            raise ValueError(f"{source}: each template needs exactly one '{{}}', got {t!r}")
    return list(templates)


def load_templates(name_or_path: str | os.PathLike[str]) -> list[str]:
    """A template set: a bundled name (see :func:`list_templates`) or a JSON file's path.

    The file holds a list of strings or an object with a ``"templates"`` list (as the
    bundled files and the evaluation sets' ``templates.json``); each has one ``{}``.
    """
    files = _template_files()
    key = str(name_or_path)
    if key in files:
        data = json.loads(files[key].read_text(encoding="utf-8"))
        source = f"template set {key!r}"
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"no template set {key!r}: not a bundled name ({', '.join(sorted(files))}) "
                "nor a JSON file"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        source = str(path)
    if isinstance(data, dict):
        data = data.get("templates")
    return _check_templates(data, source)


def fill_template(template: str, classname: str) -> str:
    """``template`` with its ``{}`` replaced by ``classname`` (no ``str.format``: names may hold
    braces)."""
    return template.replace(PLACEHOLDER, classname)


# --------------------------------------------------------------------------- model helpers


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype the model computes in (its ``dtype`` property, else its first
    floating parameter's)."""
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def logit_scale_of(model: torch.nn.Module) -> float:
    """``exp(logit_scale)`` clipped at 100 as in training; 100 for a model without one."""
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        return MAX_LOGIT_SCALE
    return float(min(math.exp(float(torch.as_tensor(scale).detach())), MAX_LOGIT_SCALE))


def autocast_for(device: torch.device) -> Any:
    """Mixed precision on GPU (as the paper evaluated), exact float32 elsewhere."""
    return torch.autocast(device_type=device.type, enabled=device.type == "cuda")


def model_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 256) -> str:
    """A cheap hex digest that changes whenever the model's weights or config change.

    What it hashes: the class name; the config (``model.config.to_dict()`` if present); the
    number of tensors and elements in the state dict; and, for every tensor of the state
    dict (parameters and buffers), its name, dtype, shape, ``samples_per_tensor`` evenly
    spaced elements and its float64 sum. Training changes essentially every element, so the
    samples catch it; the sums catch sparse edits the samples miss. Costs one read pass over
    the weights (well under a second for ViT-L/14 on a CPU), not a full byte hash.
    """
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    config = getattr(model, "config", None)
    if config is not None:
        cfg = config.to_dict() if hasattr(config, "to_dict") else repr(config)
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    state = model.state_dict()
    total = sum(t.numel() for t in state.values())
    h.update(f"{len(state)}:{total}".encode())
    for name, tensor in state.items():
        t = tensor.detach()
        h.update(f"|{name}:{t.dtype}:{tuple(t.shape)}".encode())
        flat = t.reshape(-1)
        if flat.numel() > samples_per_tensor:
            index = torch.linspace(0, flat.numel() - 1, samples_per_tensor, device=flat.device)
            flat = flat[index.long()]
        if t.is_floating_point() or t.is_complex():
            h.update(flat.to(torch.float64).cpu().numpy().tobytes())
            h.update(repr(torch.sum(t, dtype=torch.float64).item()).encode())
        else:
            h.update(flat.to(torch.int64).cpu().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- text side


def tokenize_texts(
    tokenizer: Tokenizer | None, texts: Sequence[str], context_length: int
) -> torch.Tensor:
    """Token ids (N, L) of ``texts``.

    ``tokenizer`` is anything with ``clip.tokenize``'s contract: ``cliplab.tokenize``, a
    ``cliplab.Tokenizer``, or an OpenCLIP tokenizer. When it accepts ``context_length`` and
    ``truncate`` (cliplab's do), it gets the model's context length and truncation on; ``None``
    means cliplab's default tokenizer.
    """
    if tokenizer is None:
        from cliplab.tokenizer import default_tokenizer

        tokenizer = default_tokenizer()
    try:
        params = inspect.signature(tokenizer).parameters
    except (TypeError, ValueError):
        params = {}
    if "context_length" in params and "truncate" in params:
        return tokenizer(list(texts), context_length=context_length, truncate=True)
    return tokenizer(list(texts))


def _context_length(model: torch.nn.Module) -> int:
    return int(getattr(model, "context_length", 77))


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: Tokenizer | None,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
    desc: str = "texts",
) -> torch.Tensor:
    """L2-normalised text features (N, D), float32 on CPU; batched, no grad, autocast on GPU."""
    from cliplab.evaluation.progress import progress_bar

    device = torch.device(device) if device is not None else model_device(model)
    out = []
    starts = range(0, len(texts), batch_size)
    for start in progress_bar(starts, total=len(starts), desc=desc, enabled=progress):
        tokens = tokenize_texts(
            tokenizer, texts[start : start + batch_size], _context_length(model)
        )
        with autocast_for(device):
            features = model.encode_text(tokens.to(device))
        out.append(F.normalize(features.float(), dim=-1).cpu())
    if not out:
        raise ValueError("no texts to encode")
    return torch.cat(out)


def _tokenizer_name(tokenizer: Tokenizer | None) -> str:
    """What tokenizer a cached classifier came from (cliplab's own count as one)."""
    if tokenizer is None:
        return "cliplab"
    from cliplab.tokenizer import Tokenizer as CliplabTokenizer
    from cliplab.tokenizer import tokenize

    if tokenizer is tokenize or isinstance(tokenizer, CliplabTokenizer):
        return "cliplab"
    return f"{type(tokenizer).__module__}.{getattr(tokenizer, '__qualname__', type(tokenizer).__qualname__)}"


def classifier_cache_key(
    model_key: str, classnames: Sequence[str], templates: Sequence[str]
) -> str:
    """Hex digest naming a classifier: the model's fingerprint, the class names (in order) and
    the templates (in order)."""
    payload = json.dumps(
        {
            "version": CACHE_VERSION,
            "model": model_key,
            "classnames": list(classnames),
            "templates": list(templates),
        },
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _atomic_save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_cached(path: Path, key: str, name: str = "weights") -> torch.Tensor | None:
    """The tensor ``name`` of a cache file written for ``key``; None if absent or stale."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return f.get_tensor(name)
    except (OSError, ValueError, KeyError, RuntimeError):  # unreadable or partial: recompute
        return None


def save_cached(path: Path, key: str, tensor: torch.Tensor, **metadata: str) -> None:
    """Write ``tensor`` (as ``weights``) to ``path`` atomically, tagged with ``key``."""
    _atomic_save(path, {"weights": tensor.detach().cpu()}, {"key": key, **metadata})


@torch.no_grad()
def build_zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: Tokenizer | None,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    model_key: str | None = None,
) -> torch.Tensor:
    """The zero-shot classifier's weights (C, D): one unit-norm row per class, float32 on CPU.

    For each class, every template is filled with the class name, embedded, L2-normalised,
    averaged over templates and re-normalised (the paper's prompt ensembling). Texts are
    encoded in batches of ``batch_size`` across classes, without grad, under autocast on GPU,
    on ``device`` (default: the model's; the model must already be there).

    With ``cache_dir`` the result is stored as ``zeroshot-<key>.safetensors``, where the key
    hashes :func:`model_fingerprint` (or ``model_key`` when the caller has it already), the
    tokenizer's kind, the class names and the templates: changing any of them computes a new
    classifier.
    """
    classnames = list(classnames)
    templates = _check_templates(list(templates), "templates")
    if not classnames:
        raise ValueError("no class names")
    path = key = None
    if cache_dir is not None:
        model_part = f"{model_key or model_fingerprint(model)}|{_tokenizer_name(tokenizer)}"
        key = classifier_cache_key(model_part, classnames, templates)
        path = Path(cache_dir) / f"zeroshot-{key[:40]}.safetensors"
        cached = load_cached(path, key)
        if cached is not None and cached.shape[0] == len(classnames):
            return cached

    texts = [fill_template(t, c) for c in classnames for t in templates]  # class-major
    owner = torch.arange(len(classnames)).repeat_interleave(len(templates))  # (C*T,)
    sums: torch.Tensor | None = None
    step = max(1, batch_size)
    from cliplab.evaluation.progress import progress_bar

    starts = range(0, len(texts), step)
    for start in progress_bar(starts, total=len(starts), desc="class prompts", enabled=progress):
        features = encode_texts(
            model, tokenizer, texts[start : start + step], batch_size=step, device=device
        )  # (b, D), unit norm
        if sums is None:
            sums = torch.zeros(len(classnames), features.shape[1], dtype=torch.float64)
        sums.index_add_(0, owner[start : start + step], features.double())
    assert sums is not None
    weights = F.normalize((sums / len(templates)).float(), dim=-1)  # (C, D)

    if path is not None and key is not None:
        save_cached(path, key, weights, classes=str(len(classnames)), templates=str(len(templates)))
    return weights


def zero_shot_logits(
    image_features: torch.Tensor, classifier: torch.Tensor, logit_scale: float = MAX_LOGIT_SCALE
) -> torch.Tensor:
    """Logits (N, C): ``logit_scale * normalize(image_features) @ classifier.T``.

    The scale does not change the ranking; it sets how peaked the softmax probabilities are
    (pass :func:`logit_scale_of` for the model's own temperature).
    """
    image = F.normalize(image_features.float(), dim=-1)
    return logit_scale * image @ classifier.to(image.device, torch.float32).t()


@torch.no_grad()
def classify_images(
    model: torch.nn.Module,
    preprocess: Callable[[Any], torch.Tensor],
    images: Sequence[Any],
    labels: Sequence[str],
    *,
    templates: Sequence[str] = ("a photo of a {}.",),
    tokenizer: Tokenizer | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> torch.Tensor:
    """Class probabilities (N, len(labels)) of images (PIL images or paths): the everyday use.

    Softmax over ``exp(t) * cosine similarity``, with the model's own temperature.
    """
    from cliplab.evaluation.features import encode_images

    weights = build_zero_shot_classifier(
        model, tokenizer, labels, templates, device=device, cache_dir=cache_dir
    )
    features = encode_images(model, images, preprocess, batch_size=batch_size, device=device)
    return zero_shot_logits(features, weights, logit_scale_of(model)).softmax(dim=-1)
