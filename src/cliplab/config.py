"""Model configurations: frozen dataclasses with explicit kinds, and the named presets.

A CLIP model is an image tower (``kind="vit"`` or ``kind="resnet"``), a text tower
(``kind="transformer"``) and a shared embedding size. The presets reproduce OpenAI's released
models exactly (dimensions from OpenAI's ``build_model``); the tiny and small presets are for
tests and CPU training.

SigLIP / SigLIP 2 and OpenCLIP's ViT variants are the same two towers with switches
(``ViTConfig.pool``, ``class_token``, ``TextConfig.causal``...), each explicit, never
guessed from weight shapes.

Why one module of ~600 lines: the configs, the presets built from them and the one grammar
of settings by path (``replace``, ``setting_paths``, ``--set``) are one vocabulary; a preset
is a config, a setting is a path into one, and splitting them would split every change.
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

Activation = Literal["quick_gelu", "gelu", "gelu_tanh"]
#: QuickGELU (OpenAI's), exact GELU (OpenCLIP's), GELU's tanh approximation (SigLIP's)
ACTIVATIONS: tuple[str, ...] = ("quick_gelu", "gelu", "gelu_tanh")


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _check_positive(owner: str, **values: int | float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{owner}.{name} must be positive, got {value!r}")


def _check_choice(owner: str, name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class TextConfig:
    """GPT-2 style causal text transformer; the feature is taken at the EOT token.

    SigLIP's text tower is the same transformer with switches: bidirectional
    (``causal=False``), read out at the last position (``pool="last"``, padding or not), a
    projection with a bias (``projection="linear"``), LayerNorm eps 1e-6 and GELU-tanh.
    """

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
    # False: every position attends to every other (SigLIP's bidirectional tower)
    causal: bool = True
    # the feature's position: "argmax" the EOT token (the highest id, OpenAI's), "last" the
    # last position (SigLIP's, whose texts are padded to the context length), "first"
    pool: Literal["argmax", "last", "first"] = "argmax"
    # "matrix": x @ text_projection (OpenAI's); "linear": nn.Linear with a bias (SigLIP's);
    # "none": the pooled width is the embedding (width == embed_dim)
    projection: Literal["matrix", "linear", "none"] = "matrix"
    layer_norm_eps: float = 1e-5
    # the tokenizer the tower reads: "openai" (cliplab's BPE, OpenAI's vocabulary) or
    # "files:<digest>", tokenizer files read with the checkpoint (cliplab.tokenizer.files)
    tokenizer: str = "openai"

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
        _check_choice("TextConfig", "pool", self.pool, ("argmax", "last", "first"))
        _check_choice("TextConfig", "projection", self.projection, ("matrix", "linear", "none"))
        _check_positive("TextConfig", layer_norm_eps=self.layer_norm_eps)
        if not (self.tokenizer == "openai" or self.tokenizer.startswith("files:")):
            raise ValueError(
                f"TextConfig.tokenizer must be 'openai' or 'files:<digest>', got {self.tokenizer!r}"
            )
        if self.length_groups and not (self.causal and self.pool == "argmax"):
            raise ValueError(
                "TextConfig.length_groups must be 0 for a bidirectional tower or one not read at "
                "the EOT token (padding changes its features); got "
                f"length_groups={self.length_groups}, causal={self.causal}, pool={self.pool!r}"
            )

    @property
    def mlp_width(self) -> int:
        return round(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class ViTConfig:
    """Vision Transformer with the paper's extra LayerNorm (``ln_pre``) before the blocks.

    The switches after ``patch_dropout`` describe the other ViTs in wide use; their defaults
    are CLIP's. SigLIP's image tower: ``class_token=False, patch_bias=True, ln_pre=False,
    pool="map", projection="none", layer_norm_eps=1e-6, activation="gelu_tanh"``. OpenCLIP's
    ``no_ln_pre``, ``pool_type`` and ``final_ln_after_pool`` are ``ln_pre``, ``pool`` and
    ``final_ln_after_pool`` here.
    """

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
    # a learnt class token before the patches (CLIP's); SigLIP has none
    class_token: bool = True
    # the patch embedding (a strided convolution) has a bias (SigLIP's)
    patch_bias: bool = False
    # the paper's LayerNorm before the blocks (OpenCLIP's no_ln_pre = False)
    ln_pre: bool = True
    # the feature: "tok" the class token, "avg" the mean of the patch tokens, "map" SigLIP's
    # attention pooling head (a learnt probe attends to every token, then LayerNorm + MLP)
    pool: Literal["tok", "avg", "map"] = "tok"
    # ln_post after pooling instead of on every token before it (differs only for "avg")
    final_ln_after_pool: bool = False
    # "matrix": pooled @ proj (CLIP's); "none": the pooled width is the embedding (SigLIP's)
    projection: Literal["matrix", "none"] = "matrix"
    layer_norm_eps: float = 1e-5
    # how positional embeddings are resampled for an input of another size: bicubic (OpenAI,
    # OpenCLIP) or bilinear (SigLIP 2's NaFlex models), both antialiased
    pos_interpolation: Literal["bicubic", "bilinear"] = "bicubic"

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
        _check_choice("ViTConfig", "pool", self.pool, ("tok", "avg", "map"))
        _check_choice("ViTConfig", "projection", self.projection, ("matrix", "none"))
        _check_choice(
            "ViTConfig", "pos_interpolation", self.pos_interpolation, ("bicubic", "bilinear")
        )
        _check_positive("ViTConfig", layer_norm_eps=self.layer_norm_eps)
        if self.pool == "tok" and not self.class_token:
            raise ValueError('ViTConfig.pool "tok" needs a class token (class_token=True)')
        if self.pool == "map" and self.final_ln_after_pool:
            raise ValueError('ViTConfig.final_ln_after_pool does not apply to pool "map"')

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Rows of the positional embedding: the patches and the class token, if any."""
        return self.grid_size**2 + int(self.class_token)

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

#: OpenCLIP's poolers of a Hugging Face text tower (open_clip/hf_model.py)
HF_POOLERS = ("mean_pooler", "cls_pooler", "cls_last_hidden_state_pooler")


@dataclass(frozen=True)
class HFTextConfig:
    """A text tower from Hugging Face ``transformers`` (``kind="hf"``), as OpenCLIP builds it
    for its multilingual models (``xlm-roberta-base-ViT-B-32``...): ``AutoModel.from_config``
    of ``hf_config`` (the transformers config dict, as JSON, with its ``model_type``), pooled
    by ``pooler`` over the non-padding tokens, projected by ``proj`` ("mlp": Linear, GELU,
    Linear, no biases; "linear"; "none" when the width is the embedding)."""

    kind: Literal["hf"] = "hf"
    hf_config: str = "{}"
    pooler: Literal["mean_pooler", "cls_pooler", "cls_last_hidden_state_pooler"] = "mean_pooler"
    proj: Literal["mlp", "linear", "none"] = "mlp"
    # the length texts are padded to (OpenCLIP's text_cfg.context_length)
    context_length: int = 77
    tokenizer: str = "files:unknown"

    def __post_init__(self) -> None:
        if self.kind != "hf":
            raise ValueError(f"HFTextConfig.kind must be 'hf', got {self.kind!r}")
        import json

        try:
            data = json.loads(self.hf_config)
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"HFTextConfig.hf_config must be a JSON object ({e})") from e
        if not isinstance(data, dict) or "model_type" not in data:
            raise ValueError("HFTextConfig.hf_config needs the transformers config's model_type")
        if data.get("is_encoder_decoder"):
            raise ValueError(
                f"HFTextConfig: encoder-decoder text towers ({data['model_type']}) are not supported"
            )
        if self.width <= 0:
            raise ValueError("HFTextConfig.hf_config has no hidden_size (or d_model)")
        _check_choice("HFTextConfig", "pooler", self.pooler, HF_POOLERS)
        _check_choice("HFTextConfig", "proj", self.proj, ("mlp", "linear", "none"))
        _check_positive("HFTextConfig", context_length=self.context_length)
        if not self.tokenizer.startswith("files:"):
            raise ValueError(
                f"HFTextConfig.tokenizer must be 'files:<digest>', got {self.tokenizer!r}"
            )

    @property
    def settings(self) -> dict[str, Any]:
        """The transformers config dict."""
        import json

        return json.loads(self.hf_config)

    @property
    def width(self) -> int:
        settings = self.settings
        return int(settings.get("hidden_size") or settings.get("d_model") or 0)

    @property
    def projection(self) -> str:
        return "none" if self.proj == "none" else "linear"


#: SigLIP's image tower among the ViT switches (Google's models: big_vision, transformers)
SIGLIP_VISION: dict[str, Any] = {
    "class_token": False,
    "patch_bias": True,
    "ln_pre": False,
    "pool": "map",
    "projection": "none",
    "layer_norm_eps": 1e-6,
}
#: SigLIP's text tower among the text switches
SIGLIP_TEXT: dict[str, Any] = {
    "length_groups": 0,
    "causal": False,
    "pool": "last",
    "projection": "linear",
    "layer_norm_eps": 1e-6,
}


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP model: two towers projected into a shared ``embed_dim`` space."""

    embed_dim: int
    vision: VisionConfig
    text: TextConfig | HFTextConfig = field(default_factory=TextConfig)
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
        if not isinstance(self.text, TextConfig | HFTextConfig):
            raise TypeError(
                f"CLIPConfig.text must be a TextConfig or HFTextConfig, got {self.text!r}"
            )
        for name, tower in (("vision", self.vision), ("text", self.text)):
            if getattr(tower, "projection", None) == "none" and tower.width != self.embed_dim:
                raise ValueError(
                    f"CLIPConfig: {name}.projection 'none' needs {name}.width "
                    f"({tower.width}) == embed_dim ({self.embed_dim})"
                )

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
        text = dict(d.pop("text", {}))
        text_cls = HFTextConfig if text.get("kind") == "hf" else TextConfig
        text_cfg = _build(text_cls, text, "text")
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
                if "text.activation" in valid:
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
