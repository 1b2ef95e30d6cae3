"""Robustness to distribution shift (the paper's section 3.3, Figures 13-14): zero-shot against
a linear probe fitted on the source distribution, on the source's own test images and on
shifted sets of the same classes, with effective robustness against a baseline of probes
(the maths: :mod:`cliplab.evaluation.effective_robustness`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from cliplab.data.evalsets import ClassificationSet
from cliplab.encode import FeatureStore
from cliplab.evaluation.effective_robustness import (
    Baseline,
    EvalSplit,
    align_to_source,
    pool_baselines,
    robustness_study,
)
from cliplab.evaluation.output import (
    have_matplotlib,
    images_markdown,
    markdown_table,
    pct,
    pyplot,
    save_figure,
    slug,
)
from cliplab.evaluation.probe import ProbeOptions, probe_data, stratified_split
from cliplab.evaluation.protocol import Input, Protocol, Result, Row
from cliplab.templates import resolve_templates

SHIFT = "shift average"


@dataclass(frozen=True)
class Options(ProbeOptions):
    pass


@dataclass
class RobustnessResult(Result):
    protocol: ClassVar[str] = "robustness"

    source: str
    setup: str
    in_distribution: str
    shifted: list[str]
    sets: dict[str, dict[str, Any]]
    probe: dict[str, Any]
    accuracy: dict[str, dict[str, float]]  # model -> set -> top-1 (plus "shift average")
    baseline: dict[str, dict[str, Any]]
    baseline_points: list[dict[str, Any]]
    effective_robustness: dict[str, dict[str, float]]
    gap_closed: dict[str, dict[str, float | None]]
    baseline_pooled_over: int = 1

    @property
    def key(self) -> str:
        return self.source

    def _target(self) -> str:
        return SHIFT if self.shifted else self.in_distribution

    def rows(self) -> list[Row]:
        t = self._target()
        return [
            Row(t, "zero-shot", "top-1", self.accuracy["zero-shot"].get(t), None, f"shift from {self.source}"),
            Row(t, "source-fitted probe", "top-1", self.accuracy["linear probe"].get(t), None, f"shift from {self.source}"),
        ]  # fmt: skip

    def scalars(self) -> dict[str, float]:
        out = {}
        for model, key in (("zero-shot", "zero_shot"), ("linear probe", "probe")):
            for s, v in self.accuracy[model].items():
                out[f"{key}_{s.replace(' ', '_')}_top1"] = v
            er = self.effective_robustness[model].get(SHIFT)
            if er is not None:
                out[f"{key}_effective_robustness"] = er
        return out

    def summary(self) -> str:
        acc, i = self.accuracy, self.in_distribution
        t = self._target()
        er = self.effective_robustness["zero-shot"].get(t)
        return (
            f"robustness {self.source}: zero-shot {pct(acc['zero-shot'][i])}% -> "
            f"{pct(acc['zero-shot'][t])}% under shift, probe {pct(acc['linear probe'][i])}% -> "
            f"{pct(acc['linear probe'][t])}%"
            + (
                f"; effective robustness of zero-shot {100 * er:+.1f} points"
                if er is not None
                else ""
            )
        )

    def markdown(self, plots: Mapping[str, str] | None = None, title: str = "") -> str:
        sets = [self.in_distribution, *self.shifted] + ([SHIFT] if self.shifted else [])
        rows = [[m, *[pct(acc.get(s)) for s in sets]] for m, acc in self.accuracy.items()]
        targets = [*self.shifted, SHIFT] if self.shifted else []
        er_rows = []
        for model, er in self.effective_robustness.items():
            gc = self.gap_closed[model]
            er_rows.append(
                [
                    model,
                    *[
                        f"{100 * er[t]:+.1f} ({pct(gc[t], 0) if gc[t] is not None else '-'}%)"
                        for t in targets
                    ],
                ]
            )
        base = self.baseline.get(SHIFT, {})
        set_lines = [
            f"- {name}: {v['n']} images, {v['classes']} classes"
            + (
                f", {v['dropped']} images of classes the source lacks dropped"
                if v["dropped"]
                else ""
            )
            for name, v in self.sets.items()
        ]
        lines = [
            f"### {title or 'Robustness to distribution shift'}: {self.source}",
            "",
            f"{self.setup}. Probe C = {self.probe['C']:.3g}.",
            "",
            *set_lines,
            "",
            "Top-1 accuracy (%); logits restricted to each set's classes:",
            "",
            markdown_table(["model", *sets], rows),
        ]
        if targets:
            lines += [
                "",
                "Effective robustness (points above the baseline; share of the gap to the ideal "
                f"y = x line closed). Baseline: {base.get('kind', '-')} over "
                f"{base.get('points', 0)} source-fitted probes in logit space (the paper fits "
                "~200 ImageNet models).",
            ]
            if base.get("kind") != "least squares":
                lines.append(
                    "**The baseline's slope is assumed, not fitted** (its probes are too few or "
                    "span too little in-distribution accuracy): read these numbers as indicative."
                )
            lines += ["", markdown_table(["model", *targets], er_rows)]
        return "\n".join(lines + images_markdown(dict(plots or {})))

    def plots(self, out_dir: Path, stem: str) -> dict[str, str]:
        name = f"{stem}-robustness.png"
        plot_robustness({"model": self}, out_dir / name)
        return {"robustness": name}


def plot_robustness(
    studies: Mapping[str, RobustnessResult], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """In-distribution vs shifted accuracy (the shift average): probes (the baseline family,
    dots), zero-shot (stars), the fitted baseline and the ideal ``y = x``. ``studies``: label
    -> result (their baselines pooled already when there are several)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    first = next(iter(studies.values()))
    target = first._target()
    id_name = first.in_distribution
    for i, (label, study) in enumerate(studies.items()):
        color = f"C{i}"
        acc = study.accuracy
        probes = [m for m in acc if m != "zero-shot"]
        ax.scatter(
            [100 * acc[m][id_name] for m in probes],
            [100 * acc[m][target] for m in probes],
            color=color,
            alpha=0.6,
            label=f"{label}: source-fitted probes",
        )
        ax.scatter(
            [100 * acc["zero-shot"][id_name]],
            [100 * acc["zero-shot"][target]],
            marker="*",
            s=220,
            color=color,
            edgecolor="black",
            label=f"{label}: zero-shot",
        )
    base = first.baseline.get(target)
    if base is not None:
        line = Baseline(**base)
        xs = [0.005 + 0.99 * i / 200 for i in range(201)]
        fitted = "logit fit" if base["kind"] == "least squares" else "slope 1, assumed"
        ax.plot(
            [100 * x for x in xs],
            [100 * line.predict(x) for x in xs],
            color="black",
            linewidth=1,
            label=f"baseline: {fitted} ({base['points']} probes)",
        )
    ax.plot([0, 100], [0, 100], color="grey", linestyle="--", label="ideal robust (y = x)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"in-distribution accuracy (%): {id_name}")
    ax.set_ylabel(f"accuracy under shift (%): {target}")
    ax.set_title(title or "effective robustness")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)


def _split(store: FeatureStore, dataset: ClassificationSet, source: Sequence[str]) -> EvalSplit:
    keep, labels, classes, dropped = align_to_source(source, dataset)
    if not keep:
        raise ValueError(f"{dataset.name} shares no class name with the source set")
    return EvalSplit(dataset.name, store.dataset(dataset)[keep], labels, classes, dropped)


def run(
    store: FeatureStore,
    options: Options,
    *,
    source: ClassificationSet,
    shifted: Sequence[ClassificationSet],
    source_test: ClassificationSet | None = None,
) -> RobustnessResult:
    """Zero-shot vs a source-fitted probe under distribution shift.

    The probe trains on ``source`` (all of it when ``source_test`` is the in-distribution
    test set, else on a per-class split of ``source`` whose other part is the test set).
    """
    classnames = list(source.classnames)
    validation = None
    seed, C = options.seed, options.C
    if source_test is not None:
        train_x = store.dataset(source)
        train_y = torch.as_tensor(source.labels, dtype=torch.long)
        id_split = _split(store, source_test, classnames)
        note = f"probe fitted on all of {source.name}; in-distribution test: {source_test.name}"
        _, held = stratified_split(train_y, 0.2, seed)
        if not held and C is None:  # one image per class: validate on part of the ID set
            test_idx, val_idx = stratified_split(id_split.labels, 0.5, seed)
            if not val_idx:
                raise ValueError(
                    f"{source.name} has one image per class and {source_test.name} too: "
                    "no validation split for the probe's C; pass C"
                )
            validation = EvalSplit(
                f"{source_test.name} (validation)",
                id_split.features[val_idx],
                id_split.labels[val_idx],
                id_split.classes,
            )
            id_split = EvalSplit(
                f"{source_test.name} (held out)",
                id_split.features[test_idx],
                id_split.labels[test_idx],
                id_split.classes,
                id_split.dropped,
            )
            note += (
                f" ({source.name} has one image per class, so the probe's C is chosen on "
                f"{len(val_idx)} images of {source_test.name}, split per class, and the "
                f"in-distribution test is its other {len(test_idx)} images)"
            )
    else:
        data = probe_data(store, source, None, seed=seed)
        train_x, train_y = data.train_x, data.train_y
        id_split = EvalSplit(
            f"{source.name} (held out)", data.test_x, data.test_y, list(range(len(classnames)))
        )
        note = data.note
    weights = store.classifier(classnames, resolve_templates(options.templates, source.templates))
    study = robustness_study(
        classnames=classnames,
        train_x=train_x,
        train_y=train_y,
        zero_shot_weights=weights,
        in_distribution=id_split,
        shifted=[_split(store, s, classnames) for s in shifted],
        validation=validation,
        C=C,
        seed=seed,
        backend=options.backend,  # type: ignore[arg-type]
        max_iter=options.max_iter,
    )
    return RobustnessResult.from_dict({"source": source.name, "setup": note, **study})


def pool(items: Sequence[tuple[str, Any]]) -> list[RobustnessResult]:
    """Each model's study rescored against one baseline pooled over every model's probes
    (as the paper pools all its ImageNet models into one trend line)."""
    labelled = []
    for label, r in items:
        d = r.to_dict()
        for p in d["baseline_points"]:
            p.setdefault("checkpoint", label)
        labelled.append(d)
    return [RobustnessResult.from_dict(d) for d in pool_baselines(labelled)]


def compare(items: Sequence[tuple[str, Any]], out_dir: Path) -> list[str]:
    """Each model's study (pooled already), and one plot with every model."""
    lines: list[str] = []
    for label, study in items:
        lines += [study.markdown(title=label), ""]
    source = items[0][1].source
    if have_matplotlib():
        name = f"robustness-{slug(source)}.png"
        plot_robustness(dict(items), out_dir / name, f"effective robustness: {source}")
        lines += [f"![robustness {source}]({name})", ""]
    return lines


PROTOCOL = Protocol(
    name="robustness",
    title="Robustness to distribution shift",
    help="zero-shot vs probe under distribution shift",
    inputs=(
        Input("source", "classification", "source (training) distribution"),
        Input(
            "source_test",
            "classification",
            "in-distribution test set (default: a per-class split of the source)",
            required=False,
            sep="@",
        ),
        Input("shifted", "classification", "shifted sets", many=True, sep=":"),
    ),
    options=Options,
    result=RobustnessResult,
    run=run,
    compare=compare,
    pool=pool,
)
