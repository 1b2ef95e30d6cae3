"""``cliplab eval PROTOCOL``: every protocol of :mod:`cliplab.evaluation.registry`, and
``cliplab eval report`` over several models. The subcommands, their flags and the report's
sections all come from the registry: a protocol's inputs become ``--dataset``, ``--train``,
``--source``... and its options ``--templates``, ``--max-iter``...

    cliplab eval zeroshot     --model M --dataset SET [--templates T]
    cliplab eval linear-probe --model M --dataset TEST [--train TRAIN]
    cliplab eval fewshot      --model M --dataset TEST [--train TRAIN] [--shots 1,2,4,8,16]
    cliplab eval retrieval    --model M --dataset RETRIEVAL_SET
    cliplab eval prompts      --model M --dataset SET [--ensemble imagenet80]
    cliplab eval robustness   --model M --source SRC [--source-test T] --shifted S1 S2
    cliplab eval report       --model M1 M2 --zeroshot SET ... --out DIR
    cliplab eval suite        --model M1 [M2 ...] --suite SUITE.toml --out DIR

Each writes ``<protocol>-<set>.json``, ``.md`` and PNG plots into ``--out`` and prints a
summary. Image features and zero-shot classifiers are cached under ``--cache-dir`` (default
``$CLIPLAB_CACHE`` or ``~/.cache/cliplab/eval``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

from cliplab.cli.common import (
    add_device,
    add_model,
    add_out,
    add_runtime,
    add_set,
    load_model,
    number_list,
)
from cliplab.data.evalsets import load_classification, load_retrieval
from cliplab.encode import BadImages, FeatureStore
from cliplab.evaluation.protocol import Input, Protocol
from cliplab.evaluation.registry import PROTOCOLS
from cliplab.evaluation.report import ModelRun, write_report

LOADERS = {"classification": load_classification, "retrieval": load_retrieval}


def default_cache_dir() -> Path:
    """``$CLIPLAB_CACHE`` or ``$XDG_CACHE_HOME/cliplab/eval`` (``~/.cache/cliplab/eval``)."""
    if env := os.environ.get("CLIPLAB_CACHE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "cliplab" / "eval"


# --------------------------------------------------------------------------- flags


_ints = number_list(int, 1, what="positive integers")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option_type(field: dataclasses.Field) -> Any:
    """The argparse type of an ``Options`` field, from its annotation."""
    annotation = str(field.type).replace(" ", "")
    if annotation.startswith("tuple[int"):
        return _ints
    for name, cast in (("int", int), ("float", float)):
        if annotation in (name, f"{name}|None"):
            return cast
    if annotation.startswith("str"):  # str, str | None, str | Sequence[str] | None
        return str
    raise TypeError(f"option {field.name}: no command-line type for {field.type!r}")


def add_option_flags(parser: argparse.ArgumentParser, fields: list[dataclasses.Field]) -> None:
    for f in fields:
        kind = _option_type(f)
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            _flag(f.name),
            dest=f"option_{f.name}",
            type=kind,
            default=default,
            choices=f.metadata.get("choices"),
            help=f"{f.metadata.get('help', '')} (default: {shown})",
        )


def options_from(args: argparse.Namespace, protocol: Protocol) -> Any:
    values = {f.name: getattr(args, f"option_{f.name}") for f in protocol.option_fields()}
    return protocol.make_options(values)


def add_store_flags(parser: argparse.ArgumentParser, nargs: str | None = None) -> None:
    add_model(parser, nargs=nargs)
    add_set(parser)
    add_device(parser)
    add_runtime(parser)
    add_out(parser, default="eval-results")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="image-loading processes")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--no-cache", action="store_true", help="compute everything afresh")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def make_store(args: argparse.Namespace, spec: str) -> FeatureStore:
    model, preprocess = load_model(args, spec)
    return FeatureStore(
        model,
        preprocess,
        cache_dir=None if args.no_cache else args.cache_dir,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.workers,
        progress=not args.quiet,
    )


def _load(spec: Input, value: Any, dataset_name: str | None = None, split: str = "test") -> Any:
    """An input's set(s); ``dataset_name`` (bundled class names and templates) applies to
    classification sets, ``split`` to layouts with splits (a split folder names its own)."""
    if value is None:
        return [] if spec.many else None
    if spec.kind == "classification":
        kwargs: dict[str, Any] = {"dataset_name": dataset_name, "split": split}
    else:
        kwargs = {"split": split}
    load = LOADERS[spec.kind]
    return [load(v, **kwargs) for v in value] if spec.many else load(value, **kwargs)


# --------------------------------------------------------------------------- one protocol


def add_protocol_parser(subparsers: argparse._SubParsersAction, protocol: Protocol) -> None:
    p = subparsers.add_parser(protocol.name, help=protocol.help, description=protocol.help)
    add_store_flags(p)
    for i in protocol.inputs:
        p.add_argument(
            _flag(i.name),
            dest=f"input_{i.name}",
            type=str,  # a folder, or a URL (s3://...: a Path would fold its "//")
            nargs="+" if i.many else None,
            required=i.required,
            help=i.help,
        )
    p.add_argument(
        "--dataset-name",
        help="which standard dataset the sets are (cifar10, imagenet1k, ...): its bundled class "
        "names and templates where a set has none (default: the set's folder name if it names one)",
    )
    p.add_argument(
        "--split",
        default="test",
        help="the split read from layouts with splits (CLIP_benchmark shards, ImageFolder, "
        "Karpathy JSON); a CLIP_benchmark split folder given itself names its own",
    )
    add_option_flags(p, protocol.option_fields())
    p.set_defaults(run=run_protocol, protocol_spec=protocol)


def _stem(protocol: str, name: str) -> str:
    return f"{protocol}-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def run_despite_bad_images(
    protocol: Protocol, store: FeatureStore, options: Any, inputs: dict[str, Any]
) -> tuple[Any, list[str]]:
    """Run the protocol; a set with unreadable images is reported image by image and the
    protocol runs again on its readable images (their features are kept, not recomputed).
    Returns (result, the problems, one line each)."""
    problems: list[str] = []
    while True:
        try:
            return protocol(store, options, **inputs), problems
        except BadImages as e:
            if e.dataset is None or not e.good:
                raise
            problems += [f"{e.dataset.name}: {name}: {reason}" for _, name, reason in e.failures]
            subset = e.dataset.subset(e.good)

            def swap(value: Any, bad: Any = e.dataset, good: Any = subset) -> Any:
                if isinstance(value, list):
                    return [good if v is bad else v for v in value]
                return good if value is bad else value

            inputs = {k: swap(v) for k, v in inputs.items()}


def report_problems(problems: list[str]) -> int:
    """Print each unreadable image on stderr; the exit status (1 when there were any)."""
    for line in problems:
        print(f"cliplab eval: skipped {line}", file=sys.stderr)
    if problems:
        print(f"cliplab eval: {len(problems)} image(s) could not be read", file=sys.stderr)
    return 1 if problems else 0


def run_protocol(args: argparse.Namespace) -> int:
    protocol: Protocol = args.protocol_spec
    options = options_from(args, protocol)
    inputs = {
        i.name: _load(i, getattr(args, f"input_{i.name}"), args.dataset_name, args.split)
        for i in protocol.inputs
    }
    result, problems = run_despite_bad_images(
        protocol, make_store(args, args.model), options, inputs
    )
    files = result.write(args.out, _stem(protocol.name, result.key))
    print(result.summary())
    for kind, path in files.items():
        print(f"  {kind}: {path}")
    return report_problems(problems)


# --------------------------------------------------------------------------- report


def spec_metavar(protocol: Protocol) -> str:
    """How a report spec of this protocol is written: ``TEST[:TRAIN]``."""
    first, *rest = protocol.inputs
    out = first.name.upper()
    for i in rest:
        part = i.sep + i.name.upper() + (",..." if i.many else "")
        out += part if i.required else f"[{part}]"
    return out


def parse_spec(protocol: Protocol, spec: str) -> dict[str, Any]:
    """A report spec (``SOURCE@TEST:SHIFT1,SHIFT2``) -> the protocol's inputs, loaded."""
    first, *rest = protocol.inputs
    by_sep = {i.sep: i for i in rest}
    pattern = "(" + "|".join(re.escape(s) for s in by_sep) + ")"
    parts = re.split(pattern, spec) if rest else [spec]
    values: dict[str, Any] = {first.name: parts[0]}
    for sep, value in zip(parts[1::2], parts[2::2]):
        i = by_sep[sep]
        values[i.name] = [v for v in value.split(",") if v] if i.many else value
    for i in protocol.inputs:
        if i.required and not values.get(i.name):
            raise ValueError(f"--{protocol.name} expects {spec_metavar(protocol)}, got {spec!r}")
    return {i.name: _load(i, values.get(i.name)) for i in protocol.inputs}


def add_report_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="run protocols over several models: one Markdown report"
    )
    add_store_flags(p, nargs="+")
    fields: dict[str, dataclasses.Field] = {}
    for protocol in PROTOCOLS.values():
        p.add_argument(
            _flag(protocol.name),
            dest=f"report_{protocol.name}",
            nargs="*",
            default=[],
            metavar=spec_metavar(protocol),
            help=f"{protocol.help}: sets",
        )
        for f in protocol.option_fields():
            fields.setdefault(f.name, f)
    add_option_flags(p, list(fields.values()))
    p.add_argument("--title", default="cliplab evaluation report")
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    jobs = []
    for name, protocol in PROTOCOLS.items():
        options = options_from(args, protocol)
        for spec in getattr(args, f"report_{name}"):
            jobs.append((protocol, options, parse_spec(protocol, spec)))
    if not jobs:
        flags = ", ".join(_flag(n) for n in PROTOCOLS)
        raise ValueError(f"nothing to evaluate: give sets to {flags}")
    runs, problems = [], []
    for spec in args.model:
        print(f"evaluating {spec}", file=sys.stderr)
        store = make_store(args, spec)
        results = []
        for protocol, options, inputs in jobs:
            result, found = run_despite_bad_images(protocol, store, options, inputs)
            results.append(result)
            problems += [p for p in found if p not in problems]
        runs.append(ModelRun(spec, results, model_info(store)))
        del store
    print(f"wrote {write_report(runs, args.out, args.title)}")
    return report_problems(problems)


# --------------------------------------------------------------------------- suite


def add_suite_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "suite",
        help="run a benchmark suite file for one or several models: one table",
        description="Run every task of --suite (a TOML file of [[task]] tables: dataset, "
        "protocol, options; see cliplab.evaluation.suite) for each --model; write "
        "results.json and results.csv in CLIP_benchmark's schema, results.md (a column per "
        "model) and results.png (several models). Features are cached per model and set.",
    )
    add_store_flags(p, nargs="+")
    p.add_argument("--suite", type=Path, required=True, help="a .toml (or .json) suite file")
    p.add_argument("--title", default="cliplab eval suite")
    p.set_defaults(run=run_suite)


def run_suite(args: argparse.Namespace) -> int:
    import time

    from cliplab.evaluation.suite import clip_benchmark_record, read_suite, write_suite

    tasks = read_suite(args.suite)
    loaded = [(task, task.loaded_inputs()) for task in tasks]  # every set readable first
    records, problems = [], []
    for spec, label in zip(args.model, model_labels(args.model)):
        print(f"evaluating {spec} on {len(tasks)} task(s)", file=sys.stderr)
        store = make_store(args, spec)
        for task, inputs in loaded:
            protocol = PROTOCOLS[task.protocol]
            start = time.perf_counter()
            result, found = run_despite_bad_images(
                protocol, store, protocol.make_options(task.options), inputs
            )
            seconds = time.perf_counter() - start
            problems += [p for p in found if p not in problems]
            records.append(clip_benchmark_record(result, task, label, spec, seconds))
            print(f"  {result.summary()} [{seconds:.1f} s]", file=sys.stderr)
        del store
    files = write_suite(records, args.out, args.title)
    print((args.out / "results.md").read_text(encoding="utf-8"))
    for kind, path in files.items():
        print(f"  {kind}: {path}")
    return report_problems(problems)


#: Folder names that say nothing about which model it is.
_GENERIC = ("model", "final", "checkpoints", "train", "runs", "out")


def model_labels(specs: list[str]) -> list[str]:
    """Short, distinct column names for models: a checkpoint's most telling folder name
    (``runs/demo/train/model`` -> ``demo``), with more of its path where two would read
    alike; a name (``ViT-B/32``, ``random:tiny-vit``) as it is."""
    parts = []
    for spec in specs:
        path = Path(spec)
        if path.exists():
            full = path.resolve()
            found = [p for p in full.parts if p not in _GENERIC and p != full.anchor]
            stem = Path(found[-1]).stem if found else spec
            parts.append([*found[:-1], stem] if found else [spec])
        else:
            parts.append([spec])
    depth = [1] * len(specs)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        grow = [
            i
            for i, label in enumerate(labels)
            if depth[i] < len(parts[i])
            and any(labels[j] == label and parts[j] != parts[i] for j in range(len(labels)))
        ]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    out = []
    for label in labels:  # still alike (the same checkpoint twice): numbered
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def model_info(store: FeatureStore) -> dict[str, Any]:
    model = store.model
    vision = getattr(getattr(model, "config", None), "vision", None)
    return {
        "image tower": type(vision).__name__.replace("Config", "") if vision is not None else "",
        "image size": getattr(vision, "image_size", ""),
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "fingerprint": store.model_key[:12],
        "runtime": getattr(model, "runtime", "torch"),
    }


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model: " + ", ".join(PROTOCOLS),
        description=__doc__.split("\n\n")[0],
    )
    protocols = parser.add_subparsers(dest="protocol", metavar="PROTOCOL")
    protocols.required = True
    for protocol in PROTOCOLS.values():
        add_protocol_parser(protocols, protocol)
    add_report_parser(protocols)
    add_suite_parser(protocols)
