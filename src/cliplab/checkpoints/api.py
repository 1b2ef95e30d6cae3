"""``load``, ``save`` and ``convert``: every checkpoint format in and out of cliplab.

Recognised inputs (by content, not by file name):
- cliplab: a directory with ``config.json`` (``"format": "cliplab"``) and
  ``model.safetensors``, or one ``.safetensors`` file whose metadata holds the config;
- OpenAI: released TorchScript archives (``RN50.pt``, ``ViT-B-32.pt``...; read by a
  restricted reader that never runs TorchScript code) and plain state dicts;
- OpenCLIP: state dicts, training checkpoints (``{"state_dict": ...}``, ``module.``
  prefixes), and hub directories (``open_clip_config.json`` + weights);
- Hugging Face: ``CLIPModel`` directories (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``).
Pickled files are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from cliplab.checkpoints import hf, openai, openclip, siglip
from cliplab.checkpoints.errors import CheckpointError
from cliplab.checkpoints.io import (
    read_file,
    read_json,
    read_safetensors,
    read_torch_file,
    unwrap_state_dict,
)
from cliplab.config import CLIPConfig
from cliplab.fileio import atomic_write, write_json
from cliplab.models import CLIP
from cliplab.presets import PRESETS, get_config
from cliplab.tokenizer.files import OPENAI as OPENAI_TOKENIZER
from cliplab.tokenizer.files import (
    attach_tokenizer,
    copy_files,
    directory_options,
    has_tokenizer_files,
)

FORMAT_VERSION = 1
#: ``random:<preset>``: an untrained model of a preset, seeded (see :func:`load`).
RANDOM_PREFIX = "random:"


def resolve(
    name_or_path: str | os.PathLike[str], *, progress: bool = True
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """``(local path, model settings, preprocessing hints)`` of any model name
    (:func:`cliplab.checkpoints.registry.resolve_name`): a path as it is; a registry name or
    repository fetched into the cache if it is not there yet
    (:func:`cliplab.checkpoints.fetch.fetch`), with the settings and preprocessing its entry
    says the files cannot tell."""
    from cliplab.checkpoints.fetch import fetch
    from cliplab.checkpoints.registry import resolve_name

    resolved = resolve_name(name_or_path)
    if resolved.path is not None:
        return resolved.path, {}, {}
    entry = resolved.entry
    assert entry is not None
    path = fetch(entry, progress=progress)
    preprocess = {k: tuple(v) for k, v in entry.preprocess.items() if k in ("mean", "std")}
    return path, dict(entry.settings), preprocess


def load_weights(model: CLIP, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Copy cliplab-keyed weights into ``model``, with an error listing every mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                parts.append(f"{len(items)} {title}: {items[:6]}{' ...' if len(items) > 6 else ''}")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))
    for k, v in expected.items():
        if k not in state_dict:  # only num_batches_tracked can be absent
            state_dict[k] = torch.zeros_like(v)
    model.load_state_dict(state_dict, strict=True)


def _from_openai_layout(
    sd: dict[str, torch.Tensor], source: str, **overrides: Any
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    try:
        config = openai.infer_config(sd, **overrides)
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise CheckpointError(f"{source}: {e}") from e
        raise CheckpointError(f"{source}: cannot build a model from its shapes ({e})") from e
    return config, openai.from_openai(sd)


def _from_state_dict(
    sd: dict[str, torch.Tensor], source: str, config: CLIPConfig | None, **overrides: Any
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Config and cliplab-keyed weights from a state dict in any known layout."""
    sd = openai.strip_wrapper_prefixes(sd)
    if openai.is_openai_layout(sd):
        return _from_openai_layout(sd, source, **overrides)
    if hf.is_hf_layout(sd):
        converted = hf.from_hf(sd)
        return (
            _from_openai_layout(openai.to_openai(converted), source, **overrides)
            if config is None
            else (config.replace(**overrides), converted)
        )
    if openai.is_cliplab_layout(sd):
        if config is None:
            return _from_openai_layout(openai.to_openai(sd), source, **overrides)
        return config.replace(**overrides), sd
    raise CheckpointError(
        f"{source}: unrecognised weights: expected CLIP keys in cliplab, OpenAI/OpenCLIP or "
        f"Hugging Face layout (first keys: {list(sd)[:5]})"
    )


def _read_directory(
    path: Path, **overrides: Any
) -> tuple[CLIPConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Config, weights and preprocessing hints of a cliplab, HF or OpenCLIP directory."""
    preprocess: dict[str, Any] = {}
    if (path / "open_clip_config.json").exists():
        cfg = read_json(path / "open_clip_config.json")
        model_cfg = cfg.get("model_cfg", {})
        config, resize = openclip.config_from_openclip(model_cfg, str(path), path, **overrides)
        text_cfg = model_cfg.get("text_cfg") or {}
        needs_files = bool(text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name"))
        files = path if has_tokenizer_files(path) else openclip.text_directory(model_cfg, path)
        config = attach_tokenizer(config, files or path, needs_files, directory_options(path))
        weights = _first_existing(
            path, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        )
        sd = openclip.from_openclip(_read_weights(weights), bool(model_cfg.get("custom_text")))
        return config, sd, openclip.preprocess_from_openclip(cfg, resize)
    config_path = path / "config.json"
    if not config_path.exists():
        raise CheckpointError(
            f"{path}: a checkpoint directory needs config.json (cliplab or Hugging Face) or open_clip_config.json"
        )
    data = read_json(config_path)
    if data.get("format") == "cliplab":
        config = CLIPConfig.from_dict(data["config"])
        weights = _first_existing(path, ("model.safetensors",))
        sd = _read_weights(weights)
        from cliplab.transforms import preprocess_settings

        preprocess = preprocess_settings(data.get("preprocess", {}))
        config = attach_tokenizer(config, path, config.text.tokenizer != OPENAI_TOKENIZER)
        return config.replace(**overrides) if overrides else config, sd, preprocess
    if siglip.is_siglip_config(data):
        config = attach_tokenizer(siglip.config_from_hf(data, **overrides), path, True)
        weights = _first_existing(path, ("model.safetensors", "pytorch_model.bin"))
        sd = openai.strip_wrapper_prefixes(_read_weights(weights))
        sd = siglip.from_hf(sd, config.vision.patch_size)
        return config, sd, siglip.preprocess_from_hf(path, config)
    if data.get("model_type") == "clip" or "CLIPModel" in data.get("architectures", []):
        config = hf.config_from_hf(data, **overrides)
        weights = _first_existing(path, ("model.safetensors", "pytorch_model.bin"))
        sd = hf.from_hf(openai.strip_wrapper_prefixes(_read_weights(weights)))
        pp_path = path / "preprocessor_config.json"
        if pp_path.exists():
            pp = read_json(pp_path)
            preprocess = {k: tuple(pp[f"image_{k}"]) for k in ("mean", "std") if f"image_{k}" in pp}
        return config, sd, preprocess
    raise CheckpointError(
        f"{config_path}: neither a cliplab config (format: cliplab) nor a Hugging Face CLIPModel, "
        f"SiglipModel or Siglip2Model config (model_type: clip, siglip, siglip2)"
    )


def _first_existing(directory: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (directory / name).exists():
            return directory / name
    raise CheckpointError(f"{directory}: no weights file (expected one of {', '.join(names)})")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    obj, _, _ = read_file(path)
    return unwrap_state_dict(obj, path)


def load_checkpoint(
    name_or_path: str | os.PathLike[str], **overrides: Any
) -> tuple[CLIPConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, cliplab-keyed weights, preprocessing hints) of any supported checkpoint, by
    path or by name (fetched into the cache when missing: :func:`resolve`)."""
    path, settings, hints = resolve(name_or_path)
    if settings:
        overrides = {**settings, **overrides}
    if path.is_dir():
        config, sd, preprocess = _read_directory(path, **overrides)
        return config, sd, {**hints, **preprocess}
    obj, metadata, _ = read_file(path)
    config = None
    if metadata.get("format") == "cliplab" and "config" in metadata:
        try:
            config = CLIPConfig.from_dict(json.loads(metadata["config"]))
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: invalid cliplab config in metadata ({e})") from e
    sd = unwrap_state_dict(obj, path)
    config, sd = _from_state_dict(sd, str(path), config, **overrides)
    preprocess = json.loads(metadata["preprocess"]) if "preprocess" in metadata else {}
    return config, sd, {**hints, **preprocess}


def load(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> tuple[CLIP, Callable[[Any], torch.Tensor]]:
    """Load any supported checkpoint: ``model, preprocess = cliplab.load(path)``.

    ``name_or_path`` is a checkpoint file or directory in any supported format, a pretrained
    name (``ViT-B-32/laion2b_s34b_b79k``, ``ViT-B/32``, ``hf-hub:ORG/REPO``, a Hugging Face
    repository id: :mod:`cliplab.checkpoints.registry`; fetched and verified into the cache on
    first use, :mod:`cliplab.checkpoints.fetch`), or ``random:<preset>`` for an untrained model
    of a preset (seeded: the same weights every time; a chance-level reference). ``overrides``
    change what the file cannot say, by path as every command's ``--set`` (``activation="gelu"``
    for OpenCLIP's GELU models, ``vision={"heads": 16}``); the model is returned in eval mode, float32 unless ``dtype`` is
    given, with its eval preprocessing. Every command's ``--model`` accepts the same.
    """
    from cliplab.transforms import EvalTransform

    if isinstance(name_or_path, str) and name_or_path.startswith(RANDOM_PREFIX):
        preset = name_or_path[len(RANDOM_PREFIX) :]
        try:
            config = get_config(preset, **overrides)
        except ValueError as e:
            raise CheckpointError(f"{name_or_path}: {e}") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = CLIP(config)
        model = model.to(device=device, dtype=dtype) if (device or dtype) else model
        return model.eval(), EvalTransform(config.vision.image_size)
    config, sd, preprocess = load_checkpoint(name_or_path, **overrides)
    with torch.device("meta"):
        model = CLIP(config)
    model = model.to_empty(device="cpu")
    load_weights(model, sd, str(name_or_path))
    model = model.to(device=device, dtype=dtype) if (device or dtype) else model
    return model.eval(), EvalTransform(config.vision.image_size, **preprocess)


def _cpu_contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def write_safetensors(path: Path, sd: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``sd`` as one safetensors file at ``path``, written atomically (no pickle)."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(_cpu_contiguous(sd), str(tmp), metadata=metadata))


def save(
    model: CLIP, path: str | os.PathLike[str], preprocess: dict[str, Any] | None = None
) -> Path:
    """Save in cliplab's format: ``path.safetensors`` (one file) or a directory.

    A directory gets ``config.json`` and ``model.safetensors`` (and the tokenizer files of a
    model that reads them: SigLIP's); a ``.safetensors`` path gets one file with the config in
    its metadata. No pickle either way.
    """
    path = Path(path)
    config_json = json.dumps(model.config.to_dict())
    metadata = {"format": "cliplab", "version": str(FORMAT_VERSION), "config": config_json}
    if preprocess:
        metadata["preprocess"] = json.dumps(preprocess)
    sd = model.state_dict()
    if path.suffix == ".safetensors":
        write_safetensors(path, sd, metadata)
        return path
    if path.exists() and not path.is_dir():
        raise CheckpointError(
            f"{path} exists and is not a directory (use a .safetensors name for one file)"
        )
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(path / "model.safetensors", sd, metadata)
    doc = {"format": "cliplab", "version": FORMAT_VERSION, "config": model.config.to_dict()}
    if preprocess:
        doc["preprocess"] = preprocess
    copy_files(model.config.text.tokenizer, path)  # a SigLIP model's tokenizer files, if read
    write_json(path / "config.json", doc)
    return path


def export_openai(model: CLIP, path: str | os.PathLike[str]) -> Path:
    """OpenAI's layout as a ``torch.save`` state dict, readable by OpenAI's ``clip.load``."""
    path = Path(path)
    for note in openai.openai_compatibility_warnings(model.config):
        warnings.warn(f"OpenAI format: {note}", stacklevel=2)
    sd = _cpu_contiguous(openai.to_openai(model.state_dict()))
    atomic_write(path, lambda tmp: torch.save(sd, tmp))
    return path


def export_hf(model: CLIP, path: str | os.PathLike[str]) -> Path:
    """A Hugging Face ``CLIPModel`` directory (weights, config, tokenizer, preprocessor); a
    ``SiglipModel`` one for SigLIP's architecture (its tokenizer files copied when the model
    was read with them)."""
    from cliplab.transforms import OPENAI_MEAN, OPENAI_STD

    path = Path(path)
    if siglip.is_siglip_architecture(model.config):
        siglip_config = siglip.config_to_hf(model.config)
        path.mkdir(parents=True, exist_ok=True)
        sd = siglip.to_hf(model.state_dict())
        write_safetensors(path / "model.safetensors", sd, {"format": "pt"})
        write_json(path / "config.json", siglip_config)
        write_json(path / "preprocessor_config.json", siglip.preprocessor_config(model.config))
        copy_files(model.config.text.tokenizer, path)
        return path
    hf_config = hf.config_to_hf(model.config)
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(path / "model.safetensors", hf.to_hf(model.state_dict()), {"format": "pt"})
    write_json(path / "config.json", hf_config)
    hf.write_hf_tokenizer_files(path, model.config.text.context_length)
    hf.write_hf_preprocessor_config(path, model.config.vision.image_size, OPENAI_MEAN, OPENAI_STD)
    return path


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    to: Literal["cliplab", "openai", "hf", "open_clip"] = "cliplab",
    **overrides: Any,
) -> Path:
    """Read ``src`` in any supported format and write it as ``to``; the weights are unchanged."""
    config, sd, preprocess = load_checkpoint(src, **overrides)
    with torch.device("meta"):
        model = CLIP(config)
    model = model.to_empty(device="cpu")
    load_weights(model, sd, str(src))
    if to == "cliplab":
        return save(model, dst, preprocess=preprocess or None)
    if to == "openai":
        return export_openai(model, dst)
    if to == "hf":
        return export_hf(model, dst)
    if to == "open_clip":
        from cliplab.checkpoints.openclip import export_openclip

        return export_openclip(model, dst, preprocess or None)
    raise ValueError(
        f"unknown target format {to!r}; expected 'cliplab', 'openai', 'hf' or 'open_clip'"
    )


__all__ = [
    "PRESETS",
    "convert",
    "export_hf",
    "export_openai",
    "load",
    "load_checkpoint",
    "load_weights",
    "read_safetensors",
    "read_torch_file",
    "resolve",
    "save",
    "write_safetensors",
]
