"""The ``cliplab reproduce`` report: ``results.json`` -> ``report.md``, each finding beside the
paper's claim with a verdict per row and a count of the findings that agree. Apart from the
studies (:mod:`cliplab.demo.reproduce`) so that the wording can change, and the report be
rewritten (``cliplab reproduce --report-only``), without re-running an hour of training."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cliplab.demo.report import machine
from cliplab.evaluation.registry import result_from_dict
from cliplab.fileio import write_text


def report_from_results(out: str | os.PathLike[str] = "runs/reproduce") -> Path:
    """(Re)write ``OUT/report.md`` from ``OUT/results.json`` (``cliplab reproduce
    --report-only``): the report's wording can change without re-running an hour of training."""
    out = Path(out)
    path = out / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `cliplab reproduce` first")
    md = _report(json.loads(path.read_text()))
    return write_text(out / "report.md", "\n".join(md))


def fewshot_verdict(few: Any) -> str:
    """Whether a zero-shot vs k-shot comparison agrees with the paper (zero-shot worth about 4
    labelled examples per class): "yes" from 2 shots on, "partly" between 1 and 2, "no" when a
    1-shot probe already wins."""
    m = few.matched_shots
    if few.zero_shot is None:
        return "-"
    if m is None:
        return f"yes: zero-shot beats every probe up to {few.shots[-1]} shots"
    if m >= 2:
        return f"yes: zero-shot matches a {m:.1f}-shot probe"
    if m > few.shots[0] or few.mean(few.shots[0]) < few.zero_shot:
        return f"partly: zero-shot beats a 1-shot probe, matched at {m:.1f} shots"
    return "no: even a 1-shot probe beats zero-shot"


def _agreement(verdicts: Sequence[str]) -> str:
    """A finding's standing from its rows' verdicts: it agrees only when every row does."""
    yes = [v.startswith("yes") for v in verdicts]
    if yes and all(yes):
        return "agrees"
    if any(yes) or any(v.startswith("partly") for v in verdicts):
        return "mixed"
    return "disagrees"


def _report(results: dict[str, Any]) -> list[str]:
    """The report's Markdown lines, from ``results.json``'s contents."""
    few = result_from_dict(results["fewshot"])
    groups = results.get("group_fewshot") or []
    group_results = [(g, result_from_dict(g["result"])) for g in groups]
    prompts = [result_from_dict(r) for r in results["prompts"]]
    robust = results["robustness"]
    study = None if "skipped" in robust else result_from_dict(robust)
    scaling = results["compute_scaling"]
    points, slope = scaling["points"], scaling["slope"]
    data_points = results["data_scaling"]["points"]
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    rows: list[tuple[str, str, str, str]] = []  # finding, paper, cliplab, verdict
    few_claim = ("zero-shot matches a k-shot linear probe", "ImageNet: about 4-shot; 20 "
                 "datasets: 4-shot on average (Figure 6)")  # fmt: skip
    for g, r in group_results:
        plain = g.get("names_only")
        rows.append((*few_claim,
                     f"emoji {g['field']} groups ({round(1 / r.chance) if r.chance else '?'}"
                     f" classes, held-out styles; zero-shot set-up '{g['templates']}' chosen on "
                     f"validation): zero-shot {pct(r.zero_shot or 0)}"
                     + (f" (class names only, '{plain['templates']}': "
                        f"{pct(plain['zero_shot'] or 0)})" if plain else "")
                     + f", 1-shot probe {pct(r.mean(r.shots[0]))}, 16-shot "
                     f"{pct(r.mean(r.shots[-1]))}", fewshot_verdict(r)))  # fmt: skip
    rows.append((*few_claim, f"Fashion-MNIST: zero-shot {pct(few.zero_shot or 0)}, 1-shot probe "
                 f"{pct(few.mean(few.shots[0]))}", fewshot_verdict(few)))  # fmt: skip
    for r in prompts:
        g = r.gain_points
        # the paper's method is an ensemble written for the task ("dataset": the set's own
        # templates); the ImageNet-80 ensemble ("ensemble") is shown as well
        ens = "dataset" if "dataset" in g else "ensemble"
        n = {k: v.get("templates", "?") for k, v in r.results.items()}
        rows.append((
            "prompt engineering and ensembling beat the bare label",
            "ImageNet: +1.3 (one template) to about +5 points (80-template ensemble)",
            f"{r.key}, points vs bare label: "
            + ", ".join(f"{k} ({n.get(k)}) {v:+.1f}" for k, v in g.items() if k != "bare"),
            f"{'yes' if g[ens] > 0 else 'no'} ({ens})",
        ))  # fmt: skip
    robust_claim = ("zero-shot is more robust to shift than a probe fitted on the source",
                    "effective robustness up to +75% of the gap closed (Figure 13-14); "
                    "adapting to ImageNet lowers robustness")  # fmt: skip
    if study is None:
        rows.append((*robust_claim, f"not run: {robust['skipped']}", "-"))
    else:
        er, acc = study.effective_robustness, study.accuracy
        zs_er = er.get("zero-shot", {}).get("shift average")
        probe_er = er.get("linear probe", {}).get("shift average")
        rows.append((*robust_claim,
                     f"zero-shot ER {_pp(zs_er)}, source probe ER {_pp(probe_er)}; shift average: "
                     f"zero-shot {pct(acc.get('zero-shot', {}).get('shift average', 0))}, probe "
                     f"{pct(acc.get('linear probe', {}).get('shift average', 0))}",
                     "yes" if (zs_er or 0) > (probe_er or 0) else "no"))  # fmt: skip
    span = points[-1]["train_gflops"] / points[0]["train_gflops"]
    r2 = scaling.get("r2")
    rows.append(("zero-shot error falls as a power law of compute",
                 "smooth log-log trend over 44x compute (Figure 9)",
                 f"slope {slope:.3f} over {span:.0f}x compute ({len(points)} sizes"
                 + (f", R² {r2:.2f}" if r2 is not None else "") + ")",
                 "yes" if slope < 0 else "no"))  # fmt: skip
    d = {p["fraction"]: p["top1"] for p in data_points}
    mono = all(d[a] <= d[b] + 0.002 for a, b in zip(sorted(d), sorted(d)[1:], strict=False))
    rows.append(("more data helps", "the paper's premise (400M pairs)",
                 ", ".join(f"{int(100 * f)}%: {pct(v)}" for f, v in sorted(d.items())) + " top-1",
                 "yes" if mono else "no: not monotone"))  # fmt: skip
    findings: dict[str, list[str]] = {}
    for finding, _, _, verdict in rows:
        findings.setdefault(finding, []).append(verdict)
    standing = {f: _agreement(v) for f, v in findings.items()}
    agree = sum(v == "agrees" for v in standing.values())
    mixed = [f for f, v in standing.items() if v == "mixed"]
    lines = [
        "# cliplab reproduce: the paper's findings at our scale",
        "",
        f"{results.get('date') or time.strftime('%Y-%m-%d %H:%M')} on "
        f"{results.get('machine') or machine()}; "
        f"{results['seconds']['total'] / 60:.1f} minutes"
        + (
            f" (reusing the trained models {', '.join(results['reused_models'])} of an earlier "
            "run of the same command)"
            if results.get("reused_models")
            else ""
        )
        + ". Models are tiny CLIPs trained for "
        f"minutes on {', '.join(results.get('training_data') or ['the demo recipe'])}, so "
        "agreement with the paper is about direction, not size.",
        "",
        f"**{agree} of {len(standing)} findings agree**"
        + (f"; mixed (some rows agree, some do not): {'; '.join(mixed)}" if mixed else "")
        + ". A finding agrees only when every row of it does.",
        "",
        "## Claims side by side",
        "",
        "| finding | paper | cliplab (this run) | agrees? |",
        "|---|---|---|---|",
        *[f"| {f} | {p} | {c} | {v} |" for f, p, c, v in rows],
    ]
    lines += [
        "",
        "## Zero-shot vs few-shot",
        "",
        "![few-shot](fewshot.png)",
        "",
    ]
    for g, r in group_results:
        scores = ", ".join(f"{k} {pct(v)}" for k, v in g["validation_top1"].items())
        lines += [
            f"Zero-shot set-up for emoji {g['field']} groups (prompt set; '+ members': a group "
            "scored by the best of its name and its member emoji's names), chosen on the "
            "validation style "
            f"({g.get('validation_set', 'the validation style')}, {g['validation_images']} images; top-1 by candidate: "
            f"{scores}): '{g['templates']}'.",
            "",
            r.markdown(),
            "",
        ]
    lines += [few.markdown(), ""]
    lines += ["## Prompt engineering", ""]
    for r in prompts:
        lines += [f"![prompts {r.key}](prompts-{r.key}.png)", "", r.markdown(), ""]
    if study is None:
        lines += ["## Robustness", "", f"Not run: {robust['skipped']}", ""]
    else:
        lines += ["## Robustness", "", "![robustness](robustness.png)", ""]
        lines += [study.markdown(), ""]
    rule = scaling.get("steps_rule", "the same for every size")
    lines += ["## Compute scaling", "", "![compute scaling](compute-scaling.png)", "",
              f"Steps per size: {rule}.", "",
              "| model | parameters | GFLOPs per pair (fwd+bwd) | steps | training GFLOPs | "
              "top-1 | top-5 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in points:
        lines.append(
            f"| {p['name']} | {p['parameters']:,} | {p['gflops_per_pair']:.4f} | "
            f"{p.get('steps', '-')} | {p['train_gflops']:,.0f} | {pct(p['top1'])} | "
            f"{pct(p['top5'])} |"
        )
    fit = f"Fitted: error ∝ GFLOPs^{slope:.3f}" + (f" (R² {r2:.2f})." if r2 is not None else ".")
    lines += ["", fit, ""]
    lines += ["## Data scaling", "", "![data scaling](data-scaling.png)", "",
              "| pairs | top-1 | top-5 |", "|---|---|---|"]  # fmt: skip
    for p in data_points:
        lines.append(f"| {int(100 * p['fraction'])}% | {pct(p['top1'])} | {pct(p['top5'])} |")
    lines += ["", "Reproduce: `make reproduce` (or `cliplab reproduce`).", ""]
    return lines


def _pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f} points"
