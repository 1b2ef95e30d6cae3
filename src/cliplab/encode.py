"""The encode layer: a model's features of images, texts and prompted class names, batched,
cached and with progress. Zero-shot classification, evaluation and training-time evaluation
all build on it; it imports nothing of theirs.

- device, dtype and autocast helpers (:func:`model_device`, :func:`autocast_for`...), and
  :func:`model_fingerprint`, a cheap digest that names a model's weights in caches;
- :func:`encode_images` (paths, PIL images or already preprocessed pixels),
  :func:`encode_texts` and :func:`encode_prompts` (the paper's prompt ensemble: every
  template filled with every class name, embedded, averaged per class);
- :class:`FeatureStore`: one model's features of each dataset, text list and class list,
  computed once per store and, with a ``cache_dir``, once per model across runs
  (safetensors files keyed by the model's fingerprint and the inputs);
- progress on stderr for every long loop here (:mod:`cliplab.progress`).

Why one module of ~550 lines: it is the one place where inputs become features. Zero-shot,
every evaluation protocol, evaluation during training and search all encode through it, so
they share one device and autocast rule, one way to skip unreadable images, one cache key
and one fingerprint; split, those would drift apart again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from cliplab.data.images import ImageLike, open_image
from cliplab.fileio import atomic_write
from cliplab.progress import progress_bar
from cliplab.templates import check_templates, fill_template

__all__ = [
    "FeatureStore",
    "BadImages",
    "Tokenizer",
    "autocast_for",
    "encode_images",
    "encode_prompts",
    "encode_texts",
    "load_cached",
    "logit_scale_of",
    "model_device",
    "model_dtype",
    "model_fingerprint",
    "save_cached",
    "tokenize_texts",
    "unwrap_model",
]

#: Anything with ``clip.tokenize``'s contract: texts -> (N, L) token ids.
Tokenizer = Callable[..., torch.Tensor]
#: The paper's clip of ``exp(logit_scale)``; also the scale used when a model has none.
#: Bumped when feature or classifier computation changes, which invalidates cached files.
CACHE_VERSION = 1

T = TypeVar("T")


# --------------------------------------------------------------------------- progress


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


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def logit_scale_of(model: torch.nn.Module) -> float:
    """``exp(logit_scale)`` capped at ``MAX_LOGIT_SCALE`` as in training; the cap for a
    model without one. A model with a logit bias (SigLIP's) gets its own scale uncapped: its
    sigmoid probabilities are ``sigmoid(exp(t) * cos + b)`` as it computes them."""
    from cliplab.models import MAX_LOGIT_SCALE

    scale = getattr(model, "logit_scale", None)
    if scale is None:
        return MAX_LOGIT_SCALE
    scale = math.exp(float(torch.as_tensor(scale).detach()))
    if getattr(model, "logit_bias", None) is not None:
        return float(scale)
    return float(min(scale, MAX_LOGIT_SCALE))


def autocast_for(device: torch.device) -> Any:
    """Mixed precision on GPU (as the paper evaluated), exact float32 elsewhere."""
    return torch.autocast(device_type=device.type, enabled=device.type == "cuda")


def model_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 256) -> str:
    """A cheap hex digest that changes whenever the model's weights or config change.

    It hashes the class name, the config (``model.config.to_dict()`` if present), the number
    of tensors and elements, and per tensor of the state dict its name, dtype, shape,
    ``samples_per_tensor`` evenly spaced elements and its float64 sum. Training changes
    essentially every element, so the samples catch it; the sums catch sparse edits the
    samples miss. One read pass over the weights (well under a second for ViT-L/14 on a CPU).
    """
    model = unwrap_model(model)  # DDP, torch.compile, a fast runtime: the same weights
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
        if flat.numel() > samples_per_tensor:  # integer steps: float32 rounds past 2**24
            steps = torch.arange(samples_per_tensor, dtype=torch.int64, device=flat.device)
            flat = flat[steps * (flat.numel() - 1) // (samples_per_tensor - 1)]
        if t.is_floating_point() or t.is_complex():
            h.update(flat.to(torch.float64).cpu().numpy().tobytes())
            h.update(repr(torch.sum(t, dtype=torch.float64).item()).encode())
        else:
            h.update(flat.to(torch.int64).cpu().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- images


class BadImages(ValueError):
    """Some images could not be read. ``failures``: ``(index, name, reason)`` per bad image;
    ``good``: the indices that were encoded, ``features`` their features (so a caller can
    carry on with the good ones, as every command that reads images does)."""

    def __init__(
        self,
        failures: list[tuple[int, str, str]],
        good: list[int] | None = None,
        features: torch.Tensor | None = None,
    ) -> None:
        self.failures = failures
        self.good = good or []
        self.features = features
        self.dataset: Any = None  # the set they belong to, where the caller knows it
        shown = "; ".join(f"{name}: {reason}" for _, name, reason in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} image(s) could not be read: {shown}{more}")


def _image_name(item: Any) -> str:
    return str(item) if isinstance(item, str | os.PathLike) else f"<{type(item).__name__}>"


class _Images(torch.utils.data.Dataset):
    """(index, pixels or None, reason or None): a bad image never raises in a worker."""

    def __init__(self, images: Sequence[ImageLike], preprocess: Callable[[Any], torch.Tensor]):
        self.images = images
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        from cliplab.data.stream import BadSample

        try:
            return index, self.preprocess(open_image(self.images[index])), None
        except BadSample as e:
            return index, None, e.reason


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Any:
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, reason) for i, x, reason in items if x is None]
    pixels = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], pixels, bad


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    images: Sequence[ImageLike] | torch.Tensor,
    preprocess: Callable[[Any], torch.Tensor] | None,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "images",
) -> torch.Tensor:
    """Image features (N, D) as ``model.encode_image`` gives them (not normalised), float32 on
    CPU. ``images`` are paths or PIL images (put through ``preprocess``, in ``num_workers``
    loader processes), or a (N, 3, S, S) tensor already preprocessed. ``device`` defaults to
    the model's; the model must already be there. Images that cannot be read are all
    reported at the end in one :class:`BadImages`, which carries the others' features."""
    if len(images) == 0:
        raise ValueError("no images to encode")
    device = torch.device(device) if device is not None else model_device(model)
    dtype = model_dtype(model)

    def run(pixels: torch.Tensor) -> torch.Tensor:
        with autocast_for(device):
            features = model.encode_image(pixels.to(device, dtype=dtype, non_blocking=True))
        return features.float().cpu()

    if isinstance(images, torch.Tensor):
        total = math.ceil(images.shape[0] / batch_size)
        batches = progress_bar(images.split(batch_size), total=total, desc=desc, enabled=progress)
        return torch.cat([run(b) for b in batches])
    if preprocess is None:
        raise ValueError("images that are not preprocessed tensors need a preprocess")
    loader = torch.utils.data.DataLoader(
        _Images(images, preprocess),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=_collate,
    )
    out, good, failures = [], [], []
    for indices, pixels, bad in progress_bar(
        loader, total=len(loader), desc=desc, enabled=progress
    ):
        failures += [(i, _image_name(images[i]), reason) for i, reason in bad]
        if pixels is not None:
            out.append(run(pixels))
            good += indices
    features = torch.cat(out) if out else torch.empty(0)
    if failures:
        raise BadImages(failures, good, features)
    return features


# --------------------------------------------------------------------------- texts


def tokenize_texts(
    tokenizer: Tokenizer | None, texts: Sequence[str], context_length: int
) -> torch.Tensor:
    """Token ids (N, L) of ``texts``: ``tokenizer`` is ``cliplab.tokenize``, a
    ``cliplab.Tokenizer``, an OpenCLIP tokenizer or anything with ``clip.tokenize``'s
    contract; when it takes ``context_length`` and ``truncate`` (cliplab's do) it gets the
    model's context length and truncation. ``None`` is cliplab's tokenizer."""
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
    sort: bool = True,
) -> torch.Tensor:
    """L2-normalised text features (N, D), float32 on CPU; batched, no grad, autocast on GPU.

    Texts are batched by length (``sort``) so each batch is cut to less padding; with
    ``sort=False`` they go in the order given, for callers that ordered them themselves."""
    if len(texts) == 0:
        raise ValueError("no texts to encode")
    device = torch.device(device) if device is not None else model_device(model)
    context_length = int(getattr(model, "context_length", 77))
    if tokenizer is None:  # the model's own: OpenAI's BPE, or its checkpoint's files (SigLIP)
        from cliplab.tokenizer.files import tokenizer_for

        tokenizer = tokenizer_for(model)
    # texts of similar length go through together (by characters, a proxy for tokens): the
    # tower cuts each batch to its longest text, so less padding is computed; rows are
    # independent, so the order changes no feature
    order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if sort else range(len(texts))
    out: torch.Tensor | None = None
    starts = range(0, len(texts), batch_size)
    for start in progress_bar(starts, total=len(starts), desc=desc, enabled=progress):
        rows = order[start : start + batch_size]
        tokens = tokenize_texts(tokenizer, [texts[i] for i in rows], context_length)
        with autocast_for(device):
            features = model.encode_text(tokens.to(device))
        features = F.normalize(features.float(), dim=-1).cpu()
        if out is None:
            out = torch.empty(len(texts), features.shape[1])
        out[torch.tensor(rows)] = features
    assert out is not None
    return out


@torch.no_grad()
def encode_prompts(
    model: torch.nn.Module,
    tokenizer: Tokenizer | None,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """One unit-norm row per class (C, D), float32 on CPU: the paper's prompt ensemble.

    Every template is filled with the class name, embedded and L2-normalised; a class's
    embeddings are averaged over its templates and re-normalised. Texts are encoded in
    batches of ``batch_size``, one template after another and by length within a template:
    a batch's prompts then share the template's words before the class name, which the
    text tower computes once (``TextTransformer._shared_prefix``), and little padding.
    """
    classnames = list(classnames)
    templates = check_templates(list(templates))
    if not classnames:
        raise ValueError("no class names")
    filled = [[fill_template(t, c) for c in classnames] for t in templates]
    pairs = sorted(
        ((t, c) for t in range(len(templates)) for c in range(len(classnames))),
        key=lambda tc: (tc[0], len(filled[tc[0]][tc[1]])),
    )  # template-major, short to long within each
    texts = [filled[t][c] for t, c in pairs]
    owner = torch.tensor([c for _, c in pairs])  # (C*T,): each text's class
    sums: torch.Tensor | None = None
    step = max(1, batch_size) * 64  # chunks of whole batches, for the progress bar
    for start in range(0, len(texts), step):
        features = encode_texts(
            model,
            tokenizer,
            texts[start : start + step],
            batch_size=max(1, batch_size),
            device=device,
            progress=progress,
            desc="class prompts",
            sort=False,
        )  # (b, D), unit norm
        if sums is None:
            sums = torch.zeros(len(classnames), features.shape[1], dtype=torch.float64)
        sums.index_add_(0, owner[start : start + step], features.double())
    assert sums is not None
    return F.normalize((sums / len(templates)).float(), dim=-1)


def _tokenizer_name(tokenizer: Tokenizer | None) -> str:
    """What tokenizer features came from, for cache keys (cliplab's own count as one)."""
    if tokenizer is None:
        return "cliplab"
    from cliplab.tokenizer import Tokenizer as CliplabTokenizer
    from cliplab.tokenizer import tokenize

    if tokenizer is tokenize or isinstance(tokenizer, CliplabTokenizer):
        return "cliplab"
    return f"{type(tokenizer).__module__}.{getattr(tokenizer, '__qualname__', type(tokenizer).__qualname__)}"


# --------------------------------------------------------------------------- cache


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
    from safetensors.torch import save_file

    tensors = {"weights": tensor.detach().cpu().contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"key": key, **metadata}))


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode()).hexdigest()


# Texts per batch at least: prompts are a few tokens long, so a batch of 64 makes matrix
# products of a few hundred rows, which run a CPU's cores at half speed or less (an emoji
# classifier of 1,911 x 3 prompts: 39 s in batches of 64, 25 s of 256, ViT-B/32, 2 cores)
TEXT_BATCH = 256


class FeatureStore:
    """One model's features: image features per dataset, text features, class prompts.

    Each is computed at most once per store (memory) and, with ``cache_dir``, once per model
    and input across runs (disk). The model's fingerprint names the weights in disk keys; it
    is taken when first needed (or given as ``model_key``): do not change the weights while
    a store is in use. ``preprocess`` may be None when only texts are encoded.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Any], torch.Tensor] | None = None,
        tokenizer: Tokenizer | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        num_workers: int = 0,
        progress: bool = True,
        model_key: str | None = None,
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.progress = progress
        self._model_key = model_key
        self._memory: dict[str, torch.Tensor] = {}
        #: How many feature sets were computed (not found in memory or on disk): for tests.
        self.computed = 0

    @property
    def model_key(self) -> str:
        """The model's fingerprint (computed once), with the runtime when it is not torch's
        (bf16 or int8 features differ slightly from float32 ones)."""
        if self._model_key is None:
            runtime = getattr(self.model, "runtime", None)
            suffix = f"-{runtime}" if runtime else ""
            self._model_key = model_fingerprint(self.model) + suffix
        return self._model_key

    @property
    def logit_scale(self) -> float:
        """The model's temperature, ``exp(t)`` clipped at 100."""
        return logit_scale_of(self.model)

    @property
    def logit_bias(self) -> float | None:
        """The model's logit bias ``b`` (SigLIP's), None for a model without one."""
        bias = getattr(unwrap_model(self.model), "logit_bias", None)
        return None if bias is None else float(torch.as_tensor(bias).detach())

    def _cached(
        self, parts: tuple[Any, ...], prefix: str, compute: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        memory_key = _key(*parts)
        if memory_key in self._memory:
            return self._memory[memory_key]
        value = path = key = None
        if self.cache_dir is not None:
            key = _key(CACHE_VERSION, self.model_key, _tokenizer_name(self.tokenizer), *parts)
            path = self.cache_dir / f"{prefix}-{key[:40]}.safetensors"
            value = load_cached(path, key)
        if value is None:
            value = compute()
            self.computed += 1
            if path is not None and key is not None:
                save_cached(path, key, value)
        self._memory[memory_key] = value
        return value

    def images(
        self, images: Sequence[ImageLike] | torch.Tensor, dataset_key: str, desc: str = "images"
    ) -> torch.Tensor:
        """Unnormalised image features (N, D) of ``images``, named by ``dataset_key``."""
        return self._cached(
            ("images", dataset_key, repr(self.preprocess)),
            "features",
            lambda: encode_images(
                self.model,
                images,
                self.preprocess,
                batch_size=self.batch_size,
                device=self.device,
                num_workers=self.num_workers,
                progress=self.progress,
                desc=desc,
            ),
        )

    def dataset(self, dataset: Any) -> torch.Tensor:
        """Unnormalised image features (N, D) of a dataset's ``images`` (anything with
        ``images``, ``fingerprint`` and ``name``, as the evaluation sets).

        When some images cannot be read, :class:`BadImages` names them (``.dataset`` is the
        set) and the features of the others are kept for ``dataset.subset(good)``: a caller
        that reports the bad ones and carries on with the subset encodes nothing twice."""
        try:
            return self.images(dataset.images, dataset.fingerprint, desc=f"{dataset.name} images")
        except BadImages as e:
            e.dataset = dataset
            if e.good and e.features is not None and hasattr(dataset, "subset"):
                subset = dataset.subset(e.good)
                key = ("images", subset.fingerprint, repr(self.preprocess))
                self._memory[_key(*key)] = e.features
            raise

    def texts(self, texts: Sequence[str], desc: str = "texts") -> torch.Tensor:
        """L2-normalised text features (N, D)."""
        return self._cached(
            ("texts", list(texts)),
            "texts",
            lambda: encode_texts(
                self.model,
                self.tokenizer,
                list(texts),
                batch_size=max(self.batch_size, TEXT_BATCH),
                device=self.device,
                progress=self.progress,
                desc=desc,
            ),
        )

    def classifier(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Zero-shot weights (C, D): the prompt ensemble of :func:`encode_prompts`."""
        return self._cached(
            ("classifier", list(classnames), list(templates)),
            "zeroshot",
            lambda: encode_prompts(
                self.model,
                self.tokenizer,
                classnames,
                templates,
                batch_size=max(self.batch_size, TEXT_BATCH),
                device=self.device,
                progress=self.progress,
            ),
        )
