"""Training configuration: frozen dataclasses, one per TOML table, loaded from a file plus
``--set section.key=value`` overrides.

A config file looks like ``configs/synthetic-tiny.toml``::

    output = "runs/synthetic-tiny"
    [model]
    name = "tiny-vit"
    [data]
    batch_size = 64                  # the global contrastive batch (all ranks, all micro-batches)
    [[data.sources]]                 # one table per source: cliplab.data.sources' kinds
    kind = "synthetic"
    num_samples = 20000
    [optim]
    lr = 5e-4
    [train]
    steps = 300

Every key is checked: an unknown section or key is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cliplab.augment import AugmentConfig
from cliplab.config import (
    CLIPConfig,
    flatten_settings,
    nest_settings,
    parse_override,
    unknown_message,
)
from cliplab.data.sources import ShardsSpec, SourceSpec, SyntheticSpec, spec_from_dict
from cliplab.presets import get_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
LOSSES = ("plain", "chunked", "siglip")
OPTIM_IMPLS = ("auto", "fused", "foreach", "loop")
STATE_DTYPES = ("float32", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")


def _choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {', '.join(choices)}; got {value!r}")


def _at_least(owner: str, minimum: float, **values: float) -> None:
    for name, value in values.items():
        if not value >= minimum:
            raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value!r}")


#: ``[model]`` keys that say how a run treats the model, not what the model is.
RUN_KEYS = (
    "pretrained",
    "lock_image",
    "lock_image_unlocked_groups",
    "lock_text",
    "lock_text_unlocked_layers",
)


@dataclass(frozen=True)
class ModelSection:
    """``[model]``: a preset from ``cliplab.list_models()`` (``name``) and model settings by
    path, the paths every command's ``--set`` takes (``cliplab.config.CLIPConfig.replace``)::

        [model]
        name = "tiny-vit"
        embed_dim = 96
        activation = "gelu"
        vision = { width = 96, layers = 3, patch_dropout = 0.5 }
        text = { width = 96, layers = 2 }

    ``settings`` holds them flat (``{"vision.width": 96}``); they are saved with the model.

    Fine-tuning: ``pretrained`` (a path or name ``cliplab.load`` reads) starts the run from
    those weights; the architecture, tokenizer and preprocessing then follow the checkpoint
    (``name`` is ignored) and only settings that keep every weight's shape may change
    (``vision.patch_dropout``...). ``lock_image`` / ``lock_text`` freeze a tower (no
    gradients, no optimiser state) except its last ``lock_image_unlocked_groups`` groups /
    ``lock_text_unlocked_layers`` layers, as OpenCLIP names them (:mod:`cliplab.train.finetune`).
    """

    name: str = "tiny-vit"
    settings: dict[str, Any] = field(default_factory=dict)
    pretrained: str = ""
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", flatten_settings(dict(self.settings)))
        _at_least(
            "model",
            0,
            lock_image_unlocked_groups=self.lock_image_unlocked_groups,
            lock_text_unlocked_layers=self.lock_text_unlocked_layers,
        )
        if not self.pretrained:
            self.model_config()  # unknown names and settings fail here (a checkpoint's: at start)

    def model_config(self) -> CLIPConfig:
        """The model this section describes (a ``pretrained`` run's comes from its
        checkpoint: :func:`cliplab.train.finetune.pretrained_model`)."""
        return get_config(self.name, **self.settings)

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> ModelSection:
        table = dict(table)
        if "overrides" in table:
            raise ValueError(
                "model.overrides is gone: write the settings in [model] itself "
                '(embed_dim = 96, vision = { width = 96 }, activation = "gelu")'
            )
        name = table.pop("name", cls.name)
        if not isinstance(name, str):
            raise ValueError(f"model.name must be a string, got {name!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        run = {k: _coerce(f"model.{k}", fields[k], table.pop(k)) for k in RUN_KEYS if k in table}
        return cls(name=name, settings=table, **run)

    def to_table(self) -> dict[str, Any]:
        fields = {f.name: f.default for f in dataclasses.fields(self)}
        run = {k: getattr(self, k) for k in RUN_KEYS if getattr(self, k) != fields[k]}
        return {"name": self.name, **run, **nest_settings(self.settings)}


@dataclass(frozen=True)
class DataSection:
    """Where batches come from. ``batch_size`` is the global contrastive batch N; ``dir`` is
    the data directory where built shard sets (``shards/<name>``, the ``shards`` kind) and
    evaluation sets (``eval/<name>``, named in ``[[eval.sets]]``) are found."""

    sources: tuple[SourceSpec, ...] = (SyntheticSpec(num_samples=20000),)
    dir: str = "data"
    batch_size: int = 64
    workers: int = 0
    shuffle_buffer: int = 1000
    # decode every image once and keep it in memory (cliplab.data.cache, a stage in front of
    # the stream): for small datasets on CPU, where decoding is the bottleneck
    in_memory: bool = False
    # what every training image goes through, cached or streamed ([data.augment])
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        specs = []
        for table in self.sources:
            spec = spec_from_dict(table)
            if isinstance(spec, ShardsSpec) and not spec.dir:
                spec = dataclasses.replace(spec, dir=self.dir)
            specs.append(spec)
        object.__setattr__(self, "sources", tuple(specs))
        if not self.sources:
            raise ValueError("data.sources must list at least one source")
        _at_least("data", 1, batch_size=self.batch_size, shuffle_buffer=self.shuffle_buffer)
        _at_least("data", 0, workers=self.workers)


@dataclass(frozen=True)
class OptimSection:
    """AdamW (decoupled decay on weights only), linear warm-up then cosine decay."""

    lr: float = 5e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip_norm: float = 0.0  # 0: no clipping (the norm is still logged)
    impl: str = "auto"  # fused / foreach where the device has them
    state_dtype: str = "float32"  # "bfloat16": half-precision Adam statistics, as the paper
    # layer-wise learning-rate decay (fine-tuning): block i of L in a tower trains at
    # lr * layer_decay ** (L + 1 - i), its embeddings at layer_decay ** (L + 1); 1: off
    layer_decay: float = 1.0
    # weight decay on the token, positional and class embeddings too (the paper decays every
    # weight matrix; fine-tuning recipes exempt them: false)
    embedding_decay: bool = True

    def __post_init__(self) -> None:
        _at_least(
            "optim", 0, lr=self.lr, warmup_steps=self.warmup_steps, weight_decay=self.weight_decay
        )
        _at_least("optim", 0, min_lr_ratio=self.min_lr_ratio, grad_clip_norm=self.grad_clip_norm)
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.eps > 0):
            raise ValueError("optim: need 0 <= beta1, beta2 < 1 and eps > 0")
        _choice("optim", "impl", self.impl, OPTIM_IMPLS)
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"optim.layer_decay must be in (0, 1], got {self.layer_decay}")
        _choice("optim", "state_dtype", self.state_dtype, STATE_DTYPES)


@dataclass(frozen=True)
class TrainSection:
    """The loop: length, precision, memory savers, reproducibility, failure policy."""

    steps: int = 1000  # optimizer steps
    epochs: float = 0.0  # when positive, replaces steps: epochs * batches per epoch
    # "auto": bf16 autocast where the device has bf16 instructions (CUDA, AVX512-BF16/AMX
    # CPUs), fp32 elsewhere; master weights and the loss stay fp32 either way
    precision: str = "fp32"
    accum_steps: int = 1  # micro-batches per step (GradCache: the contrastive batch stays whole)
    grad_checkpointing: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    # several processes: "ddp" replicates the model; "fsdp" shards each transformer block
    # (FSDP2 fully_shard) and writes sharded checkpoints (torch.distributed.checkpoint)
    parallelism: str = "ddp"
    loss: str = "plain"  # "chunked": the same, in O(N) memory; "siglip": the sigmoid loss
    loss_chunk_size: int = 4096
    low_res_size: int = 0  # CLIPA: train at this image size (ViT; 0: off) ...
    low_res_until: float = 0.8  # ... for this fraction of the steps, then at full size
    # a second caption per image, drawn independently by the caption function (in another
    # language, for a multilingual one): "image" contrasts the image with it too; "text"
    # contrasts the two captions with each other (their languages align); "" off
    second_caption: str = ""
    seed: int = 0
    deterministic: bool = False
    threads: int = 0  # torch CPU threads; 0: torch's default
    device: str = "auto"
    max_nonfinite: int = 10  # consecutive skipped steps before the run stops
    # an exponential moving average of the weights (0: none), updated after every step,
    # evaluated and saved beside the raw weights (OUTPUT/model-ema)
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        _at_least("train", 1, steps=self.steps)
        _at_least("train", 0, epochs=self.epochs, threads=self.threads)
        _at_least("train", 1, accum_steps=self.accum_steps, loss_chunk_size=self.loss_chunk_size)
        _at_least("train", 1, max_nonfinite=self.max_nonfinite)
        _choice("train", "precision", self.precision, PRECISIONS)
        _choice("train", "loss", self.loss, LOSSES)
        _choice("train", "device", self.device, DEVICES)
        _choice("train", "parallelism", self.parallelism, ("ddp", "fsdp"))
        _choice("train", "second_caption", self.second_caption, SECOND_CAPTIONS)
        if self.parallelism == "fsdp" and (self.compile or self.accum_steps > 1):
            raise ValueError(
                'train.parallelism = "fsdp" does not yet combine with train.compile or '
                "train.accum_steps > 1 (use ddp for those)"
            )
        _at_least("train", 0, low_res_size=self.low_res_size)
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.low_res_until <= 1:
            raise ValueError(f"train.low_res_until must be in [0, 1], got {self.low_res_until}")


@dataclass(frozen=True)
class CheckpointSection:
    interval: int = 500  # steps between checkpoints (and one at the end)
    keep: int = 3  # the last K are kept

    def __post_init__(self) -> None:
        _at_least("checkpoint", 1, interval=self.interval, keep=self.keep)


@dataclass(frozen=True)
class LogSection:
    interval: int = 1  # steps between JSONL / TensorBoard records
    tensorboard: bool = True
    progress: bool = True  # a bar on a terminal, a line every ~10% otherwise
    plots: bool = True

    def __post_init__(self) -> None:
        _at_least("log", 1, interval=self.interval)


@dataclass(frozen=True)
class EvalSection:
    """Periodic evaluation on rank 0, with the protocols of ``cliplab eval``. Each
    ``[[eval.sets]]`` table names a protocol, its sets (by name under ``data.dir/eval`` or
    by path) and options (see :mod:`cliplab.evaluation.training`); ``synthetic_pairs > 0``
    adds retrieval on held-out pairs of the synthetic set."""

    interval: int = 0  # 0: at the end only
    synthetic_pairs: int = 0
    batch_size: int = 256
    sets: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sets", tuple(dict(t) for t in self.sets))
        _at_least("eval", 0, interval=self.interval, synthetic_pairs=self.synthetic_pairs)
        _at_least("eval", 1, batch_size=self.batch_size)
        for table in self.sets:
            check_eval_set(table)


#: ``train.second_caption``: off, contrasted with the image, contrasted with the first caption.
SECOND_CAPTIONS = ("", "image", "text")

SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "optim": OptimSection,
    "train": TrainSection,
    "checkpoint": CheckpointSection,
    "log": LogSection,
    "eval": EvalSection,
}


@dataclass(frozen=True)
class Config:
    """A whole training run."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output: str = ""

    def __post_init__(self) -> None:
        if self.train.loss == "siglip":  # the sigmoid loss's initial t = log 10, b = -10
            settings = {"logit_scale_init": math.log(10.0), "logit_bias_init": -10.0}
            settings.update(self.model.settings)
            object.__setattr__(self, "model", dataclasses.replace(self.model, settings=settings))
        if self.train.second_caption and self.train.accum_steps > 1:
            raise ValueError("train.second_caption does not combine with train.accum_steps > 1")

    def batch_split(self, world_size: int) -> tuple[int, int]:
        """(per-rank batch, micro-batch) from the global batch; clear errors when uneven."""
        n, accum = self.data.batch_size, self.train.accum_steps
        if n % world_size:
            raise ValueError(f"data.batch_size {n} is not divisible by the {world_size} processes")
        per_rank = n // world_size
        if per_rank % accum:
            raise ValueError(
                f"the per-process batch {per_rank} is not divisible by train.accum_steps {accum}"
            )
        return per_rank, per_rank // accum

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready); ``Config.from_dict`` inverts it."""
        d = _lists(dataclasses.asdict(self))
        d["model"] = _lists(self.model.to_table())
        d["data"]["sources"] = [s.to_dict() for s in self.data.sources]
        d["eval"]["sets"] = [dict(t) for t in self.eval.sets]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        unknown = sorted(set(d) - set(SECTIONS) - {"output"})
        if unknown:
            raise ValueError(unknown_message("section", unknown[0], [*SECTIONS, "output"]))
        sections = {}
        for name, section_cls in SECTIONS.items():
            values = d.get(name, {})
            if not isinstance(values, dict):
                raise ValueError(f"[{name}] must be a table, got {values!r}")
            if section_cls is ModelSection:
                sections[name] = ModelSection.from_table(values)
            else:
                sections[name] = _build_section(name, section_cls, values)
        output = d.get("output", "")
        if not isinstance(output, str):
            raise ValueError(f"output must be a path string, got {output!r}")
        return cls(output=output, **sections)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def _lists(value: Any) -> Any:
    """Tuples as lists, all the way down: what the config looks like after a JSON round trip."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def check_eval_set(table: dict[str, Any]) -> None:
    """Fail early (at config load, not after training) on an ``[[eval.sets]]`` table whose
    protocol, input or option names are wrong; the sets themselves are read later."""
    from cliplab.evaluation.registry import get
    from cliplab.evaluation.training import SPEC_KEYS

    if "protocol" not in table:
        raise ValueError(f"every [[eval.sets]] table needs a 'protocol'; got {table}")
    protocol = get(str(table["protocol"]))
    inputs = {i.name for i in protocol.inputs}
    missing = [i.name for i in protocol.inputs if i.required and i.name not in table]
    if missing:
        raise ValueError(f"[[eval.sets]] for {protocol.name} needs {', '.join(missing)}")
    options = {k: v for k, v in table.items() if k not in inputs and k not in SPEC_KEYS}
    protocol.make_options(options)


#: Keys that moved, for a clear message when an older config names them.
MOVED = {
    "data.crop_scale": "data.augment.crop_scale",
    "data.color_jitter": "data.augment.color_jitter",
    "data.grayscale": "data.augment.grayscale",
    "data.blur": "data.augment.blur",
    "data.invert": "data.augment.invert",
    "train.patch_dropout": "model.vision.patch_dropout",
}


def _build_section(name: str, section_cls: type, values: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    for key in values:
        if f"{name}.{key}" in MOVED:
            raise ValueError(f"{name}.{key} is now {MOVED[f'{name}.{key}']}")
        if key not in fields:
            raise ValueError(unknown_message(f"key in [{name}]:", key, list(fields)))
    values = dict(values)
    for key, value in values.items():
        values[key] = _coerce(f"{name}.{key}", fields[key], value)
    try:
        return section_cls(**values)
    except TypeError as e:  # a wrong type deep inside a section
        raise ValueError(f"[{name}]: {e}") from e


def _coerce(where: str, f: dataclasses.Field, value: Any) -> Any:
    """Check a TOML value against the field's type; ints are accepted where floats are."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if dataclasses.is_dataclass(default):  # a table inside the section: [data.augment]
        if dataclasses.is_dataclass(value):
            return value
        if isinstance(value, bool):  # data.augment was a switch before it was a table
            raise ValueError(f"{where} is a table now: {where}.crop = {str(value).lower()}")
        if not isinstance(value, dict):
            raise ValueError(f"[{where}] must be a table, got {value!r}")
        return _build_section(where, type(default), value)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    elif isinstance(default, tuple):
        ok = isinstance(value, list | tuple)
        value = tuple(value) if ok else value
        if ok and f.name == "sources":
            ok = all(isinstance(v, dict | SourceSpec) for v in value)
    else:
        ok = True
    if not ok:
        raise ValueError(f"{where} must be a {type(default).__name__}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------
# Loading and overrides
# ---------------------------------------------------------------------------------------


def apply_override(d: dict[str, Any], item: str) -> None:
    """Apply one ``--set PATH=VALUE`` to a config dict (:func:`cliplab.config.parse_override`,
    the one grammar of every command). A path that starts with a section names a key of the
    config (``train.steps=300``, ``data.augment.blur=0.3``, ``model.vision.width=96``); any
    other path is a model setting, as in every command (``activation=gelu`` is
    ``model.activation``, ``vision.width=96`` is ``model.vision.width``)."""
    key, value = parse_override(item)
    parts = key.split(".")
    if parts[0] not in SECTIONS and parts != ["output"]:
        if len(parts) > 1 and parts[0] not in ("vision", "text"):  # neither config nor model
            valid = [*SECTIONS, "output", "vision", "text"]
            raise ValueError(unknown_message("section", parts[0], valid) + f" (in --set {item})")
        parts = ["model", *parts]
    if parts[0] in SECTIONS and len(parts) < 2:
        raise ValueError(f"--set {item}: name a key inside [{parts[0]}], e.g. {parts[0]}.<key>=...")
    if key in MOVED:
        raise ValueError(f"--set {item}: {key} is now {MOVED[key]}")
    if parts[0] != "model" and len(parts) >= 2:
        fields = {f.name for f in dataclasses.fields(SECTIONS[parts[0]])}
        if parts[1] not in fields:
            raise ValueError(
                unknown_message(f"key in [{parts[0]}]:", parts[1], sorted(fields))
                + f" (in --set {item})"
            )
    node = d
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {item}: {part!r} is not a table")
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """A ``Config`` from a TOML file (or the defaults) with ``--set`` overrides applied."""
    d: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            d = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: invalid TOML: {e}") from e
    for item in overrides:
        apply_override(d, item)
    return Config.from_dict(d)
