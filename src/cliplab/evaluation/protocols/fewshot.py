"""Zero-shot against few-shot linear probes (the paper's Figure 6, at our scale).

For each k in ``shots``, k training examples per class are drawn (one draw per seed), a
logistic-regression probe is fitted on their frozen features and tested; the curve is the
mean and standard deviation over seeds. The regularisation of each probe is chosen on a
validation split held out of the training pool before drawing, disjoint from every draw:
more than a true k-shot learner could use, so the probe curve is an upper bound and the
comparison favours the probe, not zero-shot. ``matched_shots`` is where the curve crosses
zero-shot accuracy (linear in log2 k), the paper's "zero-shot CLIP matches a 4-shot probe".
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from cliplab.data.evalsets import ClassificationSet
from cliplab.encode import FeatureStore
from cliplab.evaluation.metrics import classification_metrics
from cliplab.evaluation.output import (
    have_matplotlib,
    images_markdown,
    markdown_table,
    pct,
    pyplot,
    save_figure,
    slug,
)
from cliplab.evaluation.probe import (
    Backend,
    ProbeOptions,
    linear_probe,
    probe_data,
    sample_shots,
    stratified_split,
)
from cliplab.evaluation.protocol import Input, Protocol, Result, Row, option
from cliplab.evaluation.protocols.zeroshot import zero_shot_features
from cliplab.progress import progress_bar

DEFAULT_SHOTS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Options(ProbeOptions):
    shots: tuple[int, ...] = option(DEFAULT_SHOTS, "examples per class of each probe")
    seeds: int = option(3, "draws per k (seeds 0, 1, ...)")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "shots", tuple(int(k) for k in self.shots))
        if not self.shots or min(self.shots) < 1:
            raise ValueError(f"shots must be positive integers, got {list(self.shots)}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")


def matching_shots(shots: Sequence[int], means: Sequence[float], target: float) -> float | None:
    """The k at which the curve reaches ``target``, interpolated linearly in log2 k.

    ``None`` when no k reaches it (zero-shot beats every probe); ``shots[0]`` when the
    smallest k already does (read it as "at most ``shots[0]``").
    """
    points = list(zip(shots, means))
    if not points:
        return None
    if points[0][1] >= target:
        return float(points[0][0])
    for (k0, a0), (k1, a1) in zip(points, points[1:]):
        if a0 < target <= a1:
            t = (target - a0) / (a1 - a0)
            return 2.0 ** (math.log2(k0) + t * (math.log2(k1) - math.log2(k0)))
    return None


@dataclass
class FewShotResult(Result):
    """Per-k test accuracy (mean, std, each run) and the zero-shot reference."""

    protocol: ClassVar[str] = "fewshot"

    dataset: str
    shots: list[int]
    seeds: list[int]
    curve: dict[str, dict[str, Any]]  # str(k) -> {"mean", "std", "runs"}
    zero_shot: float | None = None
    matched_shots: float | None = None
    chance: float | None = None
    setup: str = ""
    metric: str = "top1"

    def mean(self, k: int) -> float:
        return float(self.curve[str(k)]["mean"])

    def std(self, k: int) -> float:
        return float(self.curve[str(k)]["std"])

    def effective_shots(self) -> float:
        """What zero-shot is worth in labelled examples per class: where the probe curve
        crosses it, ``inf`` when it beats every probe, 0 when even the fewest-shot probe wins
        (``nan`` without a zero-shot figure)."""
        if self.zero_shot is None:
            return math.nan
        if self.matched_shots is None:
            return math.inf
        if self.matched_shots == self.shots[0] and self.mean(self.shots[0]) > self.zero_shot:
            return 0.0
        return float(self.matched_shots)

    def crossing(self) -> str:
        """Where zero-shot meets the curve: "4.0", "≤ 1" or "> 16"."""
        k = self.effective_shots()
        if math.isnan(k):
            return "-"
        if math.isinf(k):
            return f"> {self.shots[-1]}"
        return f"≤ {self.shots[0]}" if k == 0 else f"{k:.1f}"

    def verdict(self) -> str:
        if self.matched_shots is None:
            return f"zero-shot beats every probe up to {self.shots[-1]} shots"
        if self.effective_shots() == 0:
            return f"a {self.shots[0]}-shot probe already beats zero-shot"
        return f"zero-shot matches a {self.matched_shots:.1f}-shot probe (log2 interpolation)"

    def rows(self) -> list[Row]:
        detail = f"per class, mean of {len(self.seeds)} draws"
        ks = sorted({self.shots[0], self.shots[-1]})
        return [
            Row(
                self.dataset, f"{k}-shot probe", "top-1", self.mean(k), self.chance, f"{k} {detail}"
            )
            for k in ks
        ]

    def scalars(self) -> dict[str, float]:
        out = {f"{k}shot_top1": self.mean(k) for k in self.shots}
        if self.zero_shot is not None:
            out["zero_shot_top1"] = self.zero_shot
        return out

    def summary(self) -> str:
        curve = ", ".join(f"{k}: {pct(self.mean(k))}" for k in self.shots)
        return (
            f"few-shot {self.dataset}: zero-shot {pct(self.zero_shot)}%; probes {curve}; "
            f"{self.verdict()}"
        )

    def markdown(self, plots: Mapping[str, str] | None = None) -> str:
        rows = [[str(k), pct(self.mean(k)), pct(self.std(k))] for k in self.shots]
        rows.insert(0, ["0 (zero-shot)", pct(self.zero_shot), ""])
        lines = [
            f"### Zero-shot vs few-shot: {self.dataset}",
            "",
            f"{self.setup}. {len(self.seeds)} seeds per k; C chosen per probe on a validation "
            f"split held out of the training pool. Chance {pct(self.chance)}%. "
            f"**{self.verdict()}**.",
            "",
            markdown_table(["examples per class", "top-1 mean (%)", "std (points)"], rows),
        ]
        return "\n".join(lines + images_markdown(dict(plots or {})))

    def plots(self, out_dir: Path, stem: str) -> dict[str, str]:
        name = f"{stem}-fewshot.png"
        plot_fewshot({"model": self}, out_dir / name, f"zero-shot vs few-shot: {self.dataset}")
        return {"few-shot curve": name}


def plot_fewshot(
    curves: Mapping[str, FewShotResult], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Few-shot probe accuracy against k (log2 axis), zero-shot as a star at k=0 and a dashed
    line; one curve per model (label -> result)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, (label, r) in enumerate(curves.items()):
        color = f"C{i}"
        ks = list(r.shots)
        mean = [100 * r.mean(k) for k in ks]
        std = [100 * r.std(k) for k in ks]
        ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, color=color, label=f"{label}: probe")
        if r.zero_shot is not None:
            zs = 100 * r.zero_shot
            ax.axhline(zs, color=color, linestyle="--", linewidth=1)
            ax.plot(
                [0.5], [zs], marker="*", markersize=14, color=color, label=f"{label}: zero-shot"
            )
        if r.chance is not None and i == 0:
            ax.axhline(100 * r.chance, color="grey", linestyle=":", label="chance")
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for r in curves.values() for k in r.shots})
    ax.set_xticks([0.5, *ticks], labels=["0", *[str(k) for k in ticks]])
    ax.set_xlabel("labelled examples per class (0 = zero-shot)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "zero-shot vs few-shot linear probes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def few_shot_curve(
    train_x: torch.Tensor,
    train_y: Sequence[int] | torch.Tensor,
    test_x: torch.Tensor,
    test_y: Sequence[int] | torch.Tensor,
    *,
    num_classes: int,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: Sequence[int] = (0, 1, 2),
    val_fraction: float = 0.2,
    C: float | None = None,
    backend: Backend = "torch",
    max_iter: int = 1000,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[int, list[dict[str, Any]]]:
    """Test metrics of k-shot probes: k -> one dict per seed (see the module docstring).

    With a fixed ``C`` no validation split is held out and no search runs.
    """
    train_y = torch.as_tensor(train_y, dtype=torch.long)
    test_y = torch.as_tensor(test_y, dtype=torch.long)
    if C is None:
        pool, held = stratified_split(train_y, val_fraction, seed=12345)
        if not held:
            raise ValueError("no validation examples for choosing C: pass C=")
        val_x, val_y = train_x[held], train_y[held]
    else:
        pool, val_x, val_y = list(range(train_y.numel())), None, None
    runs: dict[int, list[dict[str, Any]]] = {k: [] for k in shots}
    jobs = [(k, s) for k in shots for s in seeds]
    for k, seed in progress_bar(jobs, total=len(jobs), desc="few-shot probes", enabled=progress):
        idx = sample_shots(train_y, k, seed, pool)
        result = linear_probe(
            train_x[idx],
            train_y[idx],
            test_x,
            test_y,
            num_classes=num_classes,
            val_x=val_x,
            val_y=val_y,
            C=C,
            refit=False,
            backend=backend,
            max_iter=max_iter,
            device=device,
        )
        runs[k].append(
            {
                "seed": seed,
                "n_train": len(idx),
                "C": result.C,
                "top1": result.metrics["top1"],
                "top5": result.metrics["top5"],
                "mean_per_class_recall": result.metrics["mean_per_class_recall"],
            }
        )
    return runs


def summarise(
    runs: Mapping[int, list[dict[str, Any]]], metric: str = "top1"
) -> dict[str, dict[str, Any]]:
    """``str(k) -> {"mean", "std" (unbiased; 0 for one run), "runs"}``."""
    out = {}
    for k, rs in runs.items():
        values = torch.tensor([r[metric] for r in rs], dtype=torch.float64)
        std = float(values.std(unbiased=True)) if values.numel() > 1 else 0.0
        out[str(k)] = {"mean": float(values.mean()), "std": std, "runs": list(rs)}
    return out


def run(
    store: FeatureStore,
    options: Options,
    *,
    dataset: ClassificationSet,
    train: ClassificationSet | None = None,
) -> FewShotResult:
    """k-shot probe curve against zero-shot on the same test images (Figure 6)."""
    data = probe_data(store, dataset, train, seed=options.seed)
    logits, _ = zero_shot_features(store, dataset, options.templates, data.test_x)
    zs = classification_metrics(logits, data.test_y)["top1"]
    seeds = list(range(options.seeds))
    runs = few_shot_curve(
        data.train_x,
        data.train_y,
        data.test_x,
        data.test_y,
        num_classes=dataset.num_classes,
        shots=options.shots,
        seeds=seeds,
        C=options.C,
        backend=options.backend,  # type: ignore[arg-type]
        max_iter=options.max_iter,
        progress=store.progress,
    )
    curve = summarise(runs)
    means = [curve[str(k)]["mean"] for k in options.shots]
    return FewShotResult(
        dataset=dataset.name,
        shots=list(options.shots),
        seeds=seeds,
        curve=curve,
        zero_shot=zs,
        matched_shots=matching_shots(options.shots, means, zs),
        chance=1.0 / dataset.num_classes,
        setup=data.note,
    )


def compare(items: Sequence[tuple[str, Any]], out_dir: Path) -> list[str]:
    r0: FewShotResult = items[0][1]
    shots = r0.shots
    rows = [
        [
            m,
            pct(r.zero_shot),
            *[f"{pct(r.mean(k))} ± {100 * r.std(k):.1f}" for k in shots],
            r.crossing(),
        ]
        for m, r in items
    ]
    headers = ["model", "zero-shot", *[f"{k}-shot" for k in shots], "zero-shot = k-shot at k"]
    lines = [
        f"### {r0.dataset}",
        "",
        r0.setup + f"; {len(r0.seeds)} seeds (mean ± std).",
        "",
        markdown_table(headers, rows),
    ]
    if have_matplotlib():
        name = f"fewshot-{slug(r0.dataset)}.png"
        plot_fewshot(dict(items), out_dir / name, f"zero-shot vs few-shot: {r0.dataset}")
        lines += ["", f"![few-shot {r0.dataset}]({name})"]
    return [*lines, ""]


PROTOCOL = Protocol(
    name="fewshot",
    title="Zero-shot vs few-shot linear probes",
    help="k-shot probes against zero-shot (Figure 6)",
    inputs=(
        Input("dataset", "classification", "test set directory"),
        Input("train", "classification", "training pool (default: split the test set)", False),
    ),
    options=Options,
    result=FewShotResult,
    run=run,
    compare=compare,
)
