"""One Markdown report over several models (``cliplab eval report``): a table of the models,
then a section per protocol of the registry, in its order, each putting the models' results
side by side on every set (the protocol's ``compare``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cliplab.evaluation.output import markdown_table
from cliplab.evaluation.protocol import Result
from cliplab.evaluation.registry import PROTOCOLS
from cliplab.fileio import write_json, write_text

__all__ = ["ModelRun", "write_report"]


@dataclass
class ModelRun:
    """One model's part of a report: a label, facts about it, its results."""

    label: str
    results: list[Result]
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "info": dict(self.info),
            "results": [r.to_dict() for r in self.results],
        }


def write_report(
    runs: Sequence[ModelRun],
    out_dir: str | os.PathLike[str],
    title: str = "cliplab evaluation report",
) -> Path:
    """``report.md`` (plots beside it) and ``report.json`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", "## Models", ""]
    info_keys = sorted({k for run in runs for k in run.info})
    lines.append(
        markdown_table(
            ["model", *info_keys],
            [[run.label, *[run.info.get(k, "") for k in info_keys]] for run in runs],
        )
    )
    runs = [ModelRun(run.label, list(run.results), run.info) for run in runs]
    for name, protocol in PROTOCOLS.items():
        by_key: dict[str, list[tuple[int, int]]] = {}  # set -> [(run, result) positions]
        for i, run in enumerate(runs):
            for j, r in enumerate(run.results):
                if r.protocol == name:
                    by_key.setdefault(r.key, []).append((i, j))
        if not by_key:
            continue
        lines += ["", f"## {protocol.title}", ""]
        for positions in by_key.values():
            items = [(runs[i].label, runs[i].results[j]) for i, j in positions]
            if protocol.pool is not None:  # rescored together; report.json keeps these
                for (i, j), pooled in zip(positions, protocol.pool(items)):
                    runs[i].results[j] = pooled
                items = [(runs[i].label, runs[i].results[j]) for i, j in positions]
            lines += protocol.section(items, out)
    md = write_text(out / "report.md", "\n".join(lines).rstrip() + "\n")
    write_json(out / "report.json", [run.to_dict() for run in runs])
    return md
