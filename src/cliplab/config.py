"""Model configurations: frozen dataclasses with explicit kinds, and the named presets.

A CLIP model is an image tower (``kind="vit"`` or ``kind="resnet"``), a text tower
(``kind="transformer"``) and a shared embedding size. The presets reproduce OpenAI's released
models exactly (dimensions from OpenAI's ``build_model``); the tiny and small presets are for
tests and CPU training.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

Activation = Literal["quick_gelu", "gelu"]
ACTIVATIONS: tuple[str, ...] = ("quick_gelu", "gelu")


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _check_positive(owner: str, **values: int | float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{owner}.{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class TextConfig:
    """GPT-2 style causal text transformer; the feature is taken at the EOT token."""

    kind: Literal["transformer"] = "transformer"
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    activation: Activation = "quick_gelu"
    # padding cut before the (causal, so exact) tower: the batch split into at most this many
    # groups by caption length, each cut to its own longest (models.text.length_groups);
    # 1: the whole batch cut to its longest caption; 0: no cut (static shapes)
    length_groups: int = 4

    def __post_init__(self) -> None:
        if self.kind != "transformer":
            raise ValueError(f"TextConfig.kind must be 'transformer', got {self.kind!r}")
        _check_positive(
            "TextConfig",
            context_length=self.context_length,
            vocab_size=self.vocab_size,
            width=self.width,
            heads=self.heads,
            layers=self.layers,
            mlp_ratio=self.mlp_ratio,
        )
        if self.width % self.heads:
            raise ValueError(f"TextConfig.width {self.width} not divisible by heads {self.heads}")
        _check_activation(self.activation)
        if isinstance(self.length_groups, bool) or not (
            isinstance(self.length_groups, int) and self.length_groups >= 0
        ):
            raise ValueError(
                f"TextConfig.length_groups must be an int >= 0, got {self.length_groups!r}"
            )

    @property
    def mlp_width(self) -> int:
        return round(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class ViTConfig:
    """Vision Transformer with the paper's extra LayerNorm (``ln_pre``) before the blocks."""

    kind: Literal["vit"] = "vit"
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    activation: Activation = "quick_gelu"
    # FLIP: the fraction of image patches dropped at random in training mode (never in eval)
    patch_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.kind != "vit":
            raise ValueError(f"ViTConfig.kind must be 'vit', got {self.kind!r}")
        _check_positive(
            "ViTConfig",
            image_size=self.image_size,
            patch_size=self.patch_size,
            width=self.width,
            layers=self.layers,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
        )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTConfig.image_size {self.image_size} is not a multiple of "
                f"patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"ViTConfig.width {self.width} not divisible by heads {self.heads}")
        _check_activation(self.activation)
        if not 0 <= self.patch_dropout < 1:
            raise ValueError(f"ViTConfig.patch_dropout must be in [0, 1), got {self.patch_dropout}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_width(self) -> int:
        return round(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class ResNetConfig:
    """OpenAI's ModifiedResNet: 3-conv stem, anti-aliased strides, attention pooling.

    ``heads`` are the attention-pool heads (OpenAI uses ``width * 32 // 64``).
    """

    kind: Literal["resnet"] = "resnet"
    image_size: int = 224
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    heads: int = 32

    def __post_init__(self) -> None:
        if self.kind != "resnet":
            raise ValueError(f"ResNetConfig.kind must be 'resnet', got {self.kind!r}")
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"ResNetConfig.layers must be 4 positive ints, got {self.layers}")
        _check_positive(
            "ResNetConfig", image_size=self.image_size, width=self.width, heads=self.heads
        )
        if self.image_size % 32:
            raise ValueError(
                f"ResNetConfig.image_size must be a multiple of 32 (the stride), got {self.image_size}"
            )
        if self.width % 2:
            raise ValueError(
                f"ResNetConfig.width must be even (stem uses width/2), got {self.width}"
            )
        if (self.width * 32) % self.heads:
            raise ValueError(
                f"ResNetConfig: feature width {self.width * 32} not divisible by heads {self.heads}"
            )

    @property
    def feature_width(self) -> int:
        """Channels entering the attention pool: ``width * 8`` planes times expansion 4."""
        return self.width * 32


VisionConfig = ViTConfig | ResNetConfig


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP model: two towers projected into a shared ``embed_dim`` space."""

    embed_dim: int
    vision: VisionConfig
    text: TextConfig = field(default_factory=TextConfig)
    logit_scale_init: float = math.log(1 / 0.07)
    # SigLIP's learnable bias b in sigmoid(exp(t) * cos + b): None for no bias (CLIP);
    # ``train.loss = "siglip"`` sets it (-10, with logit_scale_init log 10, as the paper)
    logit_bias_init: float | None = None

    def __post_init__(self) -> None:
        _check_positive("CLIPConfig", embed_dim=self.embed_dim)
        if not isinstance(self.vision, ViTConfig | ResNetConfig):
            raise TypeError(
                f"CLIPConfig.vision must be a ViTConfig or ResNetConfig, got {self.vision!r}"
            )
        if not isinstance(self.text, TextConfig):
            raise TypeError(f"CLIPConfig.text must be a TextConfig, got {self.text!r}")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict`` inverts it (the vision ``kind`` picks the class)."""
        d = dataclasses.asdict(self)
        if isinstance(self.vision, ResNetConfig):
            d["vision"]["layers"] = list(self.vision.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPConfig:
        d = dict(d)
        vision = dict(d.pop("vision"))
        kind = vision.get("kind")
        if kind == "vit":
            vision_cfg: VisionConfig = _build(ViTConfig, vision, "vision")
        elif kind == "resnet":
            vision_cfg = _build(ResNetConfig, vision, "vision")
        else:
            raise ValueError(f"vision.kind must be 'vit' or 'resnet', got {kind!r}")
        text_cfg = _build(TextConfig, dict(d.pop("text", {})), "text")
        return _build(cls, {**d, "vision": vision_cfg, "text": text_cfg}, "config")

    # -- settings ------------------------------------------------------------------------
    def replace(self, **settings: Any) -> CLIPConfig:
        """A copy with settings changed, each named by its path (:func:`setting_paths`):
        ``embed_dim``, ``logit_scale_init``, ``logit_bias_init``, ``vision.<field>`` and
        ``text.<field>`` (or nested: ``vision={"width": 96}``), and the shortcuts
        ``activation`` (both towers), ``image_size`` (``vision.image_size``),
        ``context_length`` and ``vocab_size`` (``text.``). The same paths as every command's
        ``--set`` and a training config's ``[model]`` table."""
        top: dict[str, Any] = {}
        towers: dict[str, dict[str, Any]] = {"vision": {}, "text": {}}
        valid = setting_paths(self)
        for path, value in flatten_settings(settings).items():
            path = SHORTCUTS.get(path, path)
            if path == "activation":
                towers["text"]["activation"] = value
                if "vision.activation" in valid:
                    towers["vision"]["activation"] = value
                continue
            if path not in valid:
                old = path.replace("_", ".", 1) if path.startswith(("vision_", "text_")) else None
                if old in valid:
                    raise ValueError(f"model setting {path!r} is now {old!r}")
                raise ValueError(unknown_message("model setting", path, sorted(valid)))
            tower, _, name = path.partition(".")
            if name:
                towers[tower][name] = value
            else:
                top[path] = value
        return dataclasses.replace(
            self,
            vision=dataclasses.replace(self.vision, **towers["vision"]),
            text=dataclasses.replace(self.text, **towers["text"]),
            **top,
        )


#: Model settings that stand for a path (``image_size`` is ``vision.image_size``).
SHORTCUTS = {
    "image_size": "vision.image_size",
    "context_length": "text.context_length",
    "vocab_size": "text.vocab_size",
}


def setting_paths(config: CLIPConfig) -> set[str]:
    """Every model setting's path for this config's towers (``vision.patch_dropout`` exists
    only for a ViT), with the shortcuts."""
    tops = {"embed_dim", "logit_scale_init", "logit_bias_init", "activation", *SHORTCUTS}
    vision = {f"vision.{f.name}" for f in dataclasses.fields(config.vision) if f.name != "kind"}
    text = {f"text.{f.name}" for f in dataclasses.fields(config.text) if f.name != "kind"}
    return tops | vision | text


def flatten_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"vision": {"width": 96}, "text.layers": 2}`` -> ``{"vision.width": 96,
    "text.layers": 2}``: settings by path, however they were nested."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_settings(value, path + "."))
        else:
            flat[path] = value
    return flat


def nest_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_settings`: ``{"vision.width": 96}`` -> ``{"vision": {"width": 96}}``."""
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        node = nested
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {where} field(s) {unknown}; expected some of {sorted(names)}")
    return cls(**values)


# ---------------------------------------------------------------------------------------
# Presets. OpenAI's models use 64-wide attention heads in both towers (heads = width // 64)
# and the text tower's width grows with the image tower (its depth stays at 12).
# ---------------------------------------------------------------------------------------


def _openai_text(width: int) -> TextConfig:
    return TextConfig(width=width, heads=width // 64, layers=12)


def _openai_vit(
    embed_dim: int, image: int, patch: int, width: int, layers: int, text: int
) -> CLIPConfig:
    vision = ViTConfig(
        image_size=image, patch_size=patch, width=width, layers=layers, heads=width // 64
    )
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=_openai_text(text))


def _openai_rn(
    embed_dim: int, image: int, layers: tuple[int, int, int, int], width: int, text: int
) -> CLIPConfig:
    vision = ResNetConfig(image_size=image, layers=layers, width=width, heads=width * 32 // 64)
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=_openai_text(text))


_TINY_TEXT = TextConfig(width=64, heads=2, layers=2)

PRESETS: dict[str, CLIPConfig] = {
    # OpenAI's released models (Radford et al. 2021, Table 19/20; OpenAI's build_model).
    "RN50": _openai_rn(1024, 224, (3, 4, 6, 3), 64, 512),
    "RN101": _openai_rn(512, 224, (3, 4, 23, 3), 64, 512),
    "RN50x4": _openai_rn(640, 288, (4, 6, 10, 6), 80, 640),
    "RN50x16": _openai_rn(768, 384, (6, 8, 18, 8), 96, 768),
    "RN50x64": _openai_rn(1024, 448, (3, 15, 36, 10), 128, 1024),
    "ViT-B-32": _openai_vit(512, 224, 32, 768, 12, 512),
    "ViT-B-16": _openai_vit(512, 224, 16, 768, 12, 512),
    "ViT-L-14": _openai_vit(768, 224, 14, 1024, 24, 768),
    "ViT-L-14-336": _openai_vit(768, 336, 14, 1024, 24, 768),
    # Tiny models for tests: seconds on a CPU.
    "tiny-vit": CLIPConfig(
        embed_dim=32,
        vision=ViTConfig(image_size=32, patch_size=8, width=64, layers=2, heads=2),
        text=_TINY_TEXT,
    ),
    "tiny-rn": CLIPConfig(
        embed_dim=32,
        vision=ResNetConfig(image_size=64, layers=(1, 1, 1, 1), width=16, heads=8),
        text=_TINY_TEXT,
    ),
    # Small models for CPU training (minutes on 2 cores).
    "small-vit": CLIPConfig(
        embed_dim=256,
        vision=ViTConfig(image_size=64, patch_size=8, width=256, layers=6, heads=4),
        text=TextConfig(width=256, heads=4, layers=4),
    ),
    "small-rn": CLIPConfig(
        embed_dim=256,
        vision=ResNetConfig(image_size=64, layers=(1, 1, 1, 1), width=32, heads=8),
        text=TextConfig(width=256, heads=4, layers=4),
    ),
}

_ALIASES = {
    "vit-b/32": "ViT-B-32",
    "vit-b/16": "ViT-B-16",
    "vit-l/14": "ViT-L-14",
    "vit-l/14@336px": "ViT-L-14-336",
    "vit-l/14-336": "ViT-L-14-336",
    "vit-l-14@336px": "ViT-L-14-336",
    "vit-l-14-336px": "ViT-L-14-336",
}


def canonical_name(name: str) -> str:
    """Map ``ViT-B/32``, ``vit-b-32``, ``ViT-L/14@336px``... to the preset key."""
    key = name.strip()
    lowered = key.lower()
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    for preset in PRESETS:
        if preset.lower() == lowered or preset.lower() == lowered.replace("/", "-"):
            return preset
    raise ValueError(f"unknown model {name!r}; available: {', '.join(PRESETS)}")


def list_models() -> list[str]:
    """Names of the presets, OpenAI's models first."""
    return list(PRESETS)


def get_config(name: str, **overrides: Any) -> CLIPConfig:
    """The preset's config, with overrides applied (see ``CLIPConfig.replace``)."""
    config = PRESETS[canonical_name(name)]
    return config.replace(**overrides) if overrides else config


def parse_value(text: str) -> Any:
    """A ``--set`` value, the same in every command: a TOML value (``3``, ``1e-3``, ``true``,
    ``[1, 2]``, ``"x"``) or, failing that, the bare text as a string (``gelu``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[str, Any]:
    """One ``--set KEY=VALUE``, the same in every command: ``(path, value)`` with the path's
    dots kept (``vision.width=96`` -> ``("vision.width", 96)``) and the value parsed by
    :func:`parse_value`."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set expects KEY=VALUE (KEY a dotted path), got {item!r}")
    return key, parse_value(value.strip())


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """Model settings from ``--set`` items: ``["activation=gelu", "vision.heads=16"]`` ->
    ``{"activation": "gelu", "vision.heads": 16}`` (paths of :meth:`CLIPConfig.replace`)."""
    return dict(parse_override(item) for item in items)


def unknown_message(what: str, key: str, valid: Sequence[str]) -> str:
    """The one wording of a name that is not one of ``valid``, with the nearest guess:
    ``unknown option 'templtes' (did you mean 'templates'?); valid: ...``."""
    import difflib

    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {key!r}{hint}; valid: {', '.join(sorted(valid)) or 'none'}"
