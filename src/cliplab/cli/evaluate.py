"""``cliplab eval PROTOCOL``: the paper's evaluation protocols on evaluation-set directories.

    cliplab eval zeroshot     --model M --dataset SET [--templates T]
    cliplab eval linear-probe --model M --dataset TEST [--train TRAIN]
    cliplab eval fewshot      --model M --dataset TEST [--train TRAIN] [--shots 1,2,4,8,16]
    cliplab eval retrieval    --model M --dataset RETRIEVAL_SET
    cliplab eval prompts      --model M --dataset SET [--ensemble imagenet80]
    cliplab eval robustness   --model M --source SRC [--source-test SRC_TEST] --shifted S1 S2
    cliplab eval report       --model M1 M2 --zeroshot SET ... --out DIR

Each writes ``<protocol>-<set>.json``, ``.md`` and PNG plots into ``--out`` and prints a
summary. ``--model`` is anything ``cliplab.load`` reads, or ``random:<preset>`` for an
untrained model (a chance-level reference). Image features and zero-shot classifiers are
cached under ``--cache-dir`` (default ``$CLIPLAB_CACHE`` or ``~/.cache/cliplab/eval``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from cliplab.evaluation.datasets import ClassificationSet, load_classification, load_retrieval
from cliplab.evaluation.features import FeatureStore
from cliplab.evaluation.protocols import (
    Suite,
    run_fewshot,
    run_linear_probe,
    run_prompts,
    run_retrieval,
    run_robustness,
    run_suite,
    run_zeroshot,
)
from cliplab.evaluation.report import pct, write_outputs, write_report


def default_cache_dir() -> Path:
    """``$CLIPLAB_CACHE`` or ``$XDG_CACHE_HOME/cliplab/eval`` (``~/.cache/cliplab/eval``)."""
    if env := os.environ.get("CLIPLAB_CACHE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "cliplab" / "eval"


def load_model(spec: str, device: str | None) -> tuple[torch.nn.Module, Any]:
    """``(model, preprocess)`` for a checkpoint path/name, or ``random:<preset>`` (seed 0)."""
    from cliplab import create_model_and_transforms, load

    if spec.startswith("random:"):
        torch.manual_seed(0)
        model, _, preprocess = create_model_and_transforms(spec.split(":", 1)[1], device=device)
        return model.eval(), preprocess
    return load(spec, device=device)


def model_info(model: torch.nn.Module, store: FeatureStore) -> dict[str, Any]:
    config = getattr(model, "config", None)
    vision = getattr(config, "vision", None)
    return {
        "image tower": type(vision).__name__.replace("Config", "") if vision is not None else "",
        "image size": getattr(vision, "image_size", ""),
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "fingerprint": store.model_key[:12],
    }


def _store(args: argparse.Namespace, spec: str) -> FeatureStore:
    model, preprocess = load_model(spec, args.device)
    return FeatureStore(
        model,
        preprocess,
        cache_dir=None if args.no_cache else args.cache_dir,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.workers,
        progress=not args.quiet,
    )


def _add_common(parser: argparse.ArgumentParser, model_nargs: str | None = None) -> None:
    parser.add_argument(
        "--model",
        required=True,
        nargs=model_nargs,
        help="checkpoint (any format cliplab.load reads), OpenAI model name, or random:<preset>",
    )
    parser.add_argument("--out", type=Path, default=Path("eval-results"), help="output directory")
    parser.add_argument("--device", default=None, help="torch device (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="image-loading processes")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--no-cache", action="store_true", help="compute everything afresh")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_probe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("torch", "sklearn"),
        default="torch",
        help="L-BFGS implementation (sklearn needs the 'eval' extra)",
    )
    parser.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations per fit")
    parser.add_argument(
        "--C", type=float, default=None, help="fixed inverse regularisation (skips the search)"
    )


def _templates_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--templates",
        default=None,
        help="template set: 'dataset' (the set's own, default), a bundled name "
        "(photo, imagenet80, ...) or a JSON file",
    )


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model: zero-shot, linear probe, few-shot, retrieval, prompts, robustness",
        description=__doc__.split("\n\n")[0],
    )
    protocols = parser.add_subparsers(dest="protocol", metavar="PROTOCOL")
    protocols.required = True

    p = protocols.add_parser("zeroshot", help="zero-shot classification from class names")
    _add_common(p)
    p.add_argument("--dataset", required=True, type=Path, help="classification set directory")
    _templates_arg(p)
    p.set_defaults(run=run_zeroshot_cmd)

    p = protocols.add_parser("linear-probe", help="logistic regression on frozen features")
    _add_common(p)
    p.add_argument("--dataset", required=True, type=Path, help="test set directory")
    p.add_argument(
        "--train", type=Path, default=None, help="training set (default: split the test set)"
    )
    _add_probe(p)
    _templates_arg(p)
    p.set_defaults(run=run_linear_probe_cmd)

    p = protocols.add_parser("fewshot", help="k-shot probes against zero-shot (Figure 6)")
    _add_common(p)
    p.add_argument("--dataset", required=True, type=Path, help="test set directory")
    p.add_argument(
        "--train", type=Path, default=None, help="training pool (default: split the test set)"
    )
    p.add_argument("--shots", type=_ints, default=[1, 2, 4, 8, 16])
    p.add_argument("--seeds", type=int, default=3, help="draws per k")
    _add_probe(p)
    _templates_arg(p)
    p.set_defaults(run=run_fewshot_cmd)

    p = protocols.add_parser("retrieval", help="image<->text Recall@1/5/10")
    _add_common(p)
    p.add_argument("--dataset", required=True, type=Path, help="retrieval set directory")
    p.set_defaults(run=run_retrieval_cmd)

    p = protocols.add_parser("prompts", help="prompt-engineering ablation")
    _add_common(p)
    p.add_argument("--dataset", required=True, type=Path, help="classification set directory")
    p.add_argument("--ensemble", default="imagenet80", help="template set of the ensemble row")
    p.set_defaults(run=run_prompts_cmd)

    p = protocols.add_parser("robustness", help="zero-shot vs probe under distribution shift")
    _add_common(p)
    p.add_argument("--source", required=True, type=Path, help="source (training) distribution")
    p.add_argument(
        "--source-test",
        type=Path,
        default=None,
        help="in-distribution test set (default: a per-class split of --source)",
    )
    p.add_argument("--shifted", required=True, nargs="+", type=Path, help="shifted sets")
    _add_probe(p)
    _templates_arg(p)
    p.set_defaults(run=run_robustness_cmd)

    p = protocols.add_parser("report", help="run a suite over several models: one Markdown report")
    _add_common(p, model_nargs="+")
    p.add_argument("--zeroshot", nargs="*", type=Path, default=[], metavar="SET")
    p.add_argument("--prompts", nargs="*", type=Path, default=[], metavar="SET")
    p.add_argument(
        "--linear-probe", nargs="*", default=[], metavar="TEST[:TRAIN]", help="probe sets"
    )
    p.add_argument("--fewshot", nargs="*", default=[], metavar="TEST[:TRAIN]")
    p.add_argument("--retrieval", nargs="*", type=Path, default=[], metavar="SET")
    p.add_argument(
        "--robustness",
        nargs="*",
        default=[],
        metavar="SOURCE[@TEST]:SHIFT1,SHIFT2",
        help="source set (optionally @ its in-distribution test set), then shifted sets",
    )
    p.add_argument("--shots", type=_ints, default=[1, 2, 4, 8, 16])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ensemble", default="imagenet80")
    p.add_argument("--title", default="cliplab evaluation report")
    _add_probe(p)
    _templates_arg(p)
    p.set_defaults(run=run_report_cmd)


# --------------------------------------------------------------------------- commands


def _finish(result: dict[str, Any], args: argparse.Namespace, stem: str, summary: str) -> int:
    files = write_outputs(result, args.out, stem)
    print(summary)
    for kind, path in files.items():
        print(f"  {kind}: {path}")
    return 0


def _stem(protocol: str, dataset: ClassificationSet | Any) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in dataset.name)
    return f"{protocol}-{name}"


def _guard_sklearn(args: argparse.Namespace) -> None:
    if getattr(args, "backend", "torch") == "sklearn":
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise ValueError(
                "--backend sklearn needs scikit-learn: pip install 'cliplab[eval]'"
            ) from None


def run_zeroshot_cmd(args: argparse.Namespace) -> int:
    dataset = load_classification(args.dataset)
    r = run_zeroshot(_store(args, args.model), dataset, args.templates)
    summary = (
        f"zero-shot {dataset.name}: top-1 {pct(r['top1'])}%, top-5 {pct(r['top5'])}%, "
        f"mean per-class recall {pct(r['mean_per_class_recall'])}% "
        f"({r['n']} images, {r['num_classes']} classes, chance {pct(r['chance'])}%)"
    )
    return _finish(r, args, _stem("zeroshot", dataset), summary)


def run_linear_probe_cmd(args: argparse.Namespace) -> int:
    _guard_sklearn(args)
    test = load_classification(args.dataset)
    train = load_classification(args.train) if args.train else None
    r = run_linear_probe(
        _store(args, args.model),
        test,
        train,
        backend=args.backend,
        max_iter=args.max_iter,
        C=args.C,
        templates=args.templates,
    )
    summary = (
        f"linear probe {test.name}: top-1 {pct(r['metrics']['top1'])}% (C={r['C']:.3g}); "
        f"zero-shot on the same images {pct(r['zero_shot_top1'])}%"
    )
    return _finish(r, args, _stem("linear-probe", test), summary)


def run_fewshot_cmd(args: argparse.Namespace) -> int:
    _guard_sklearn(args)
    test = load_classification(args.dataset)
    train = load_classification(args.train) if args.train else None
    r = run_fewshot(
        _store(args, args.model),
        test,
        train,
        shots=args.shots,
        seeds=list(range(args.seeds)),
        backend=args.backend,
        max_iter=args.max_iter,
        C=args.C,
        templates=args.templates,
    )
    curve = ", ".join(f"{k}: {pct(r['curve'][str(k)]['mean'])}" for k in r["shots"])
    summary = (
        f"few-shot {test.name}: zero-shot {pct(r['zero_shot'])}%; probes {curve}; {_verdict(r)}"
    )
    return _finish(r, args, _stem("fewshot", test), summary)


def _verdict(r: dict[str, Any]) -> str:
    matched, first = r["matched_shots"], r["shots"][0]
    if matched is None:
        return f"zero-shot beats every probe up to {r['shots'][-1]} shots"
    if matched == first and r["curve"][str(first)]["mean"] > r["zero_shot"]:
        return f"a {first}-shot probe already beats zero-shot"
    return f"zero-shot matches a {matched:.1f}-shot probe"


def run_retrieval_cmd(args: argparse.Namespace) -> int:
    dataset = load_retrieval(args.dataset)
    r = run_retrieval(_store(args, args.model), dataset)
    summary = (
        f"retrieval {dataset.name}: image->text R@1/5/10 "
        + "/".join(pct(r[f"image_to_text_R@{k}"]) for k in (1, 5, 10))
        + ", text->image R@1/5/10 "
        + "/".join(pct(r[f"text_to_image_R@{k}"]) for k in (1, 5, 10))
    )
    return _finish(r, args, _stem("retrieval", dataset), summary)


def run_prompts_cmd(args: argparse.Namespace) -> int:
    dataset = load_classification(args.dataset)
    r = run_prompts(_store(args, args.model), dataset, args.ensemble)
    parts = [
        f"{name} {pct(v['top1'])}% ({r['gain_points'][name]:+.1f})"
        for name, v in r["results"].items()
    ]
    summary = f"prompts {dataset.name}: " + ", ".join(parts)
    return _finish(r, args, _stem("prompts", dataset), summary)


def run_robustness_cmd(args: argparse.Namespace) -> int:
    _guard_sklearn(args)
    source = load_classification(args.source)
    source_test = load_classification(args.source_test) if args.source_test else None
    shifted = [load_classification(p) for p in args.shifted]
    r = run_robustness(
        _store(args, args.model),
        source,
        shifted,
        source_test=source_test,
        templates=args.templates,
        backend=args.backend,
        max_iter=args.max_iter,
        C=args.C,
    )
    acc = r["accuracy"]
    target = "shift average"
    summary = (
        f"robustness {source.name}: zero-shot {pct(acc['zero-shot'][r['in_distribution']])}% -> "
        f"{pct(acc['zero-shot'][target])}% under shift, probe "
        f"{pct(acc['linear probe'][r['in_distribution']])}% -> {pct(acc['linear probe'][target])}%; "
        f"effective robustness of zero-shot {100 * r['effective_robustness']['zero-shot'][target]:+.1f} points"
    )
    return _finish(r, args, _stem("robustness", source), summary)


def _pair(spec: str) -> tuple[ClassificationSet, ClassificationSet | None]:
    test, _, train = spec.partition(":")
    return load_classification(test), load_classification(train) if train else None


def _robustness_spec(
    spec: str,
) -> tuple[ClassificationSet, ClassificationSet | None, list[ClassificationSet]]:
    head, sep, shifts = spec.partition(":")
    if not sep or not shifts:
        raise ValueError(f"--robustness expects SOURCE[@TEST]:SHIFT1,SHIFT2, got {spec!r}")
    source, _, test = head.partition("@")
    return (
        load_classification(source),
        load_classification(test) if test else None,
        [load_classification(s) for s in shifts.split(",") if s],
    )


def run_report_cmd(args: argparse.Namespace) -> int:
    _guard_sklearn(args)
    suite = Suite(
        zeroshot=[load_classification(p) for p in args.zeroshot],
        prompts=[load_classification(p) for p in args.prompts],
        linear_probe=[_pair(s) for s in args.linear_probe],
        fewshot=[_pair(s) for s in args.fewshot],
        retrieval=[load_retrieval(p) for p in args.retrieval],
        robustness=[_robustness_spec(s) for s in args.robustness],
        templates=args.templates,
        ensemble=args.ensemble,
        shots=args.shots,
        seeds=list(range(args.seeds)),
        backend=args.backend,
        max_iter=args.max_iter,
        C=args.C,
    )
    if suite.is_empty():
        raise ValueError("nothing to evaluate: give --zeroshot, --retrieval, --fewshot ... sets")
    runs = []
    for spec in args.model:
        print(f"evaluating {spec}", file=sys.stderr)
        store = _store(args, spec)
        runs.append(
            {
                "label": spec,
                "info": model_info(store.model, store),
                "results": run_suite(store, suite),
            }
        )
        del store
    path = write_report(runs, args.out, args.title)
    print(f"wrote {path}")
    return 0
