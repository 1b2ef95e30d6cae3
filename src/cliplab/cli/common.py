"""What every command shares, so the same flag means the same thing everywhere:

- ``--model``: anything :func:`cliplab.load` reads (a checkpoint in any format, a pretrained
  name fetched into the cache on first use, ``random:<preset>``);
- ``--set KEY=VALUE`` (repeatable): a bare key is a model setting the checkpoint cannot tell
  (``--set activation=gelu``); commands with a training config also take
  ``section.key=value`` (``--set train.steps=100``). Values are TOML (``3``, ``1e-3``,
  ``true``, ``[1, 2]``) or bare strings;
- ``--device``: a torch device (default: CPU, or the config's);
- ``--out``: the output directory (or file) of the command;
- ``--runtime``: where a command encodes (``cliplab.runtime``): torch (default, exact
  float32), bf16, int8, onnx, onnx-int8 or auto (the fastest this machine has).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "number_list",
    "add_device",
    "add_model",
    "add_out",
    "add_runtime",
    "add_set",
    "load_model",
    "model_settings",
]


def add_model(
    parser: argparse.ArgumentParser,
    *,
    required: bool = True,
    nargs: str | None = None,
    default: str | None = None,
    help: str | None = None,
) -> None:
    parser.add_argument(
        "--model",
        required=required,
        nargs=nargs,
        default=default,
        help=help
        or "a checkpoint (any format cliplab.load reads), a pretrained name (ARCH/TAG, ViT-B/32, "
        "hf-hub:ORG/REPO, ORG/REPO: cliplab list-models --pretrained), or random:<preset>",
    )


def add_set(parser: argparse.ArgumentParser, sections: bool = False) -> None:
    extra = (
        "; a path that starts with a config section changes the config, e.g. train.steps=100"
        if sections
        else ""
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "a setting by its dotted path, the same in every command: a model setting the "
            f"checkpoint cannot tell, e.g. activation=gelu or vision.patch_dropout=0.5{extra}; "
            "repeatable"
        ),
    )


def number_list(
    kind: type = float,
    low: float = float("-inf"),
    high: float = float("inf"),
    what: str = "numbers",
) -> Any:
    """An argparse ``type``: comma-separated numbers of ``kind`` within ``[low, high]``
    (``--alpha 0,0.5,1``, ``--lr 1e-5,1e-4``, ``--shots 1,2,4``); a clear error otherwise."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None
        if not values or not all(low <= v <= high for v in values):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return values

    return parse


def add_device(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--device", default=default, help="torch device: cpu, cuda, cuda:1 (default: cpu)"
    )


def add_runtime(parser: argparse.ArgumentParser) -> None:
    from cliplab.runtime import RUNTIMES

    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="how to encode: torch (exact float32, the default), bf16 (CPUs with bf16 "
        "instructions), int8, onnx, onnx-int8 (ONNX Runtime), auto (the fastest here)",
    )


def add_out(
    parser: argparse.ArgumentParser,
    default: str | None = None,
    help: str = "output directory",
    url: bool = False,
) -> None:
    """``--out``: a local folder (a Path), or with ``url`` also object storage (a string,
    since a Path would fold ``s3://`` into ``s3:/``)."""
    parser.add_argument(
        "--out",
        "-o",
        type=str if url else Path,
        default=Path(default) if default else None,
        required=default is None,
        help=help,
    )


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--set`` values that are model settings (the keys without a dot)."""
    from cliplab.config import parse_settings

    settings = parse_settings(args.settings)
    dotted = [k for k in settings if "." in k]
    if dotted:
        raise ValueError(
            f"--set {dotted[0]}=...: this command has no configuration sections; "
            "give model settings such as --set activation=gelu"
        )
    return settings


def load_model(args: argparse.Namespace, spec: str | None = None) -> tuple[torch.nn.Module, Any]:
    """``(model, preprocess)`` for ``--model`` (or ``spec``) with the ``--set`` settings, on
    ``--device``, on ``--runtime`` where the command has it."""
    from cliplab import load
    from cliplab.runtime import accelerate

    model, preprocess = load(spec or args.model, device=args.device, **model_settings(args))
    runtime = getattr(args, "runtime", "torch")
    return (accelerate(model, runtime) if runtime != "torch" else model), preprocess
