"""A benchmark suite (``cliplab eval suite``): a file listing (dataset, protocol, options),
run for one or several models, written as one table in CLIP_benchmark's result schema.

A suite file is TOML (or the same as JSON), one ``[[task]]`` per dataset and protocol::

    [[task]]
    dataset = "data/eval/emoji-google"     # any layout cliplab.data.layouts reads
    protocol = "zeroshot"                  # default: zeroshot (retrieval for caption sets)
    dataset_name = "cifar10"               # optional: bundled class names and templates
    split = "test"                         # optional: the split of a CLIP_benchmark layout
    name = "emoji (Google)"                # optional: the row's label
    options = { ties = "topk" }            # the protocol's options (cliplab eval --help)
    train = "data/eval/emoji-apple"        # other inputs of the protocol, by name

Paths are relative to the suite file. Every result becomes one record of CLIP_benchmark's
JSON schema (``dataset``, ``model``, ``pretrained``, ``task``, ``metrics``, ``language``;
its metric names: ``acc1``, ``acc5``, ``mean_per_class_recall``; ``lp_acc1``...;
``image_retrieval_recall@k`` for text->image, ``text_retrieval_recall@k`` for image->text),
with cliplab's own result under ``cliplab``. :func:`write_suite` writes them as
``results.json``, ``results.csv`` (one row per record, metrics as columns, as
``clip_benchmark build`` makes), ``results.md`` (one column per model) and, for several
models, ``results.png``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from cliplab.data import storage
from cliplab.evaluation.output import markdown_table, pct
from cliplab.evaluation.protocol import Result
from cliplab.evaluation.registry import PROTOCOLS
from cliplab.fileio import write_json, write_text

__all__ = ["SuiteTask", "clip_benchmark_record", "headline", "read_suite", "write_suite"]

#: cliplab protocol -> CLIP_benchmark task name.
TASKS = {
    "zeroshot": "zeroshot_classification",
    "retrieval": "zeroshot_retrieval",
    "linear-probe": "linear_probe",
}
_KEYS = {"dataset", "protocol", "dataset_name", "split", "name", "options"}


@dataclass(frozen=True)
class SuiteTask:
    """One line of a suite: a protocol on a dataset (and the protocol's other inputs)."""

    protocol: str
    dataset: str
    inputs: Mapping[str, Any] = field(default_factory=dict)  # other inputs: name -> path(s)
    options: Mapping[str, Any] = field(default_factory=dict)
    dataset_name: str | None = None
    split: str = "test"
    name: str | None = None

    def load(self, kind: str, path: str) -> Any:
        from cliplab.data.evalsets import load_classification, load_retrieval

        if kind == "retrieval":
            return load_retrieval(path, split=self.split)
        return load_classification(path, dataset_name=self.dataset_name, split=self.split)

    def loaded_inputs(self) -> dict[str, Any]:
        """The protocol's inputs, loaded (the dataset and the others)."""
        protocol = PROTOCOLS[self.protocol]
        values = {protocol.inputs[0].name: self.dataset, **self.inputs}
        out: dict[str, Any] = {}
        for spec in protocol.inputs:
            value = values.get(spec.name)
            if value is None:
                if spec.required:
                    raise ValueError(f"{self.protocol} on {self.dataset}: needs {spec.name}")
                out[spec.name] = [] if spec.many else None
            elif spec.many:
                items = value if isinstance(value, list) else [value]
                out[spec.name] = [self.load(spec.kind, v) for v in items]
            else:
                out[spec.name] = self.load(spec.kind, value)
        return out


def _resolve(base: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_resolve(base, v) for v in value]
    if not isinstance(value, str) or storage.is_remote(value) or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def _default_protocol(path: str) -> str:
    """``retrieval`` for a caption set, else ``zeroshot``."""
    from cliplab.data.evalsets import read_meta

    text = path.rstrip("/")
    if text.endswith(".json"):
        return "retrieval"  # a Karpathy-split JSON
    try:
        if storage.is_file(storage.join(text, "meta.json")):
            return "retrieval" if read_meta(text).get("task") == "retrieval" else "zeroshot"
        kind = storage.join(text, "dataset_type.txt")
        if storage.is_file(kind) and storage.read_text(kind).strip().lower() == "retrieval":
            return "retrieval"
    except (OSError, ValueError):
        pass
    return "zeroshot"


def read_suite(path: str | os.PathLike[str]) -> list[SuiteTask]:
    """The tasks of a suite file (TOML, or JSON: ``{"task": [...]}`` or a list); a clear
    ``ValueError`` for an unknown protocol, option or input, or a task without a dataset."""
    text = os.fspath(path)
    try:
        raw = Path(text).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read suite {text}: {e.strerror or e}") from None
    try:
        data: Any = json.loads(raw) if text.endswith(".json") else tomllib.loads(raw)
    except ValueError as e:
        raise ValueError(
            f"{text}: not valid {'JSON' if text.endswith('.json') else 'TOML'}: {e}"
        ) from None
    entries = (
        data if isinstance(data, list) else data.get("task") if isinstance(data, dict) else None
    )
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{text}: no tasks (one [[task]] table per dataset and protocol)")
    base = os.path.dirname(os.path.abspath(text))
    tasks = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("dataset"), str):
            raise ValueError(f"{text}: task {n} needs a dataset")
        dataset = _resolve(base, entry["dataset"])
        protocol = str(entry.get("protocol") or _default_protocol(dataset))
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"{text}: task {n}: unknown protocol {protocol!r} ({', '.join(PROTOCOLS)})"
            )
        spec = PROTOCOLS[protocol]
        others = {i.name for i in spec.inputs[1:]}
        unknown = set(entry) - _KEYS - others
        if unknown:
            raise ValueError(
                f"{text}: task {n} ({protocol}): unknown keys {sorted(unknown)}; "
                f"known: {sorted(_KEYS | others)}"
            )
        options = dict(entry.get("options") or {})
        spec.make_options(options)  # checked now, not after an hour of other tasks
        tasks.append(
            SuiteTask(
                protocol=protocol,
                dataset=dataset,
                inputs={k: _resolve(base, entry[k]) for k in others if k in entry},
                options=options,
                dataset_name=entry.get("dataset_name"),
                split=str(entry.get("split", "test")),
                name=entry.get("name"),
            )
        )
    return tasks


def clip_benchmark_record(
    result: Result, task: SuiteTask, model: str, pretrained: str, seconds: float
) -> dict[str, Any]:
    """A result as one record of CLIP_benchmark's result JSON (plus cliplab's own)."""
    own = result.to_dict()
    if result.protocol == "zeroshot":
        metrics = {"acc1": own["top1"], "acc5": own["top5"],
                   "mean_per_class_recall": own["mean_per_class_recall"]}  # fmt: skip
    elif result.protocol == "retrieval":
        metrics = {}
        for key, value in own["recall"].items():
            direction, k = key.split("_R@")
            kind = "image_retrieval" if direction == "text_to_image" else "text_retrieval"
            metrics[f"{kind}_recall@{k}"] = value
    elif result.protocol == "linear-probe":
        m = own["metrics"]
        metrics = {"lp_acc1": m["top1"], "lp_acc5": m.get("top5"),
                   "lp_mean_per_class_recall": m["mean_per_class_recall"]}  # fmt: skip
    else:
        metrics = dict(result.scalars())
    return {
        "dataset": task.name or getattr(result, "dataset", None) or task.dataset,
        "model": model,
        "pretrained": pretrained,
        "task": TASKS.get(result.protocol, result.protocol),
        "metrics": metrics,
        "language": "en",
        "cliplab": {
            "protocol": result.protocol,
            "path": task.dataset,
            "options": dict(task.options),
            "seconds": round(seconds, 3),
            "result": own,
        },  # fmt: skip
    }


def headline(record: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The figures a summary table shows for a record: (metric, value)."""
    m = record["metrics"]
    if record["task"] == "zeroshot_classification":
        return [("top-1", m["acc1"])]
    if record["task"] == "linear_probe":
        return [("linear probe top-1", m["lp_acc1"])]
    if record["task"] == "zeroshot_retrieval":
        k = 5 if "image_retrieval_recall@5" in m else 1
        return [(f"text→image R@{k}", m[f"image_retrieval_recall@{k}"]),
                (f"image→text R@{k}", m[f"text_retrieval_recall@{k}"])]  # fmt: skip
    return [(k, v) for k, v in m.items() if isinstance(v, float)][:1]


def _csv(records: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for r in records:
        columns += [k for k in r["metrics"] if k not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "model", "pretrained", "task", *columns])
    for r in records:
        writer.writerow([r["dataset"], r["model"], r["pretrained"], r["task"],
                         *[r["metrics"].get(c, "") for c in columns]])  # fmt: skip
    return buffer.getvalue()


def _table(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]], dict]:
    models = list(dict.fromkeys(r["model"] for r in records))
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for r in records:
        for metric, value in headline(r):
            rows.setdefault((r["dataset"], metric), {})[r["model"]] = value
    body = [[d, m, *[pct(v.get(model)) if model in v else "" for model in models]]
            for (d, m), v in rows.items()]  # fmt: skip
    return ["dataset", "metric (%)", *models], body, rows


def write_suite(
    records: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    title: str = "cliplab eval suite",
) -> dict[str, Path]:
    """``results.json``, ``results.csv``, ``results.md`` and (several models) ``results.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": write_json(out / "results.json", list(records)),
             "csv": write_text(out / "results.csv", _csv(records))}  # fmt: skip
    header, body, rows = _table(records)
    lines = [f"# {title}", "", markdown_table(header, body)]
    models = header[2:]
    if len(models) > 1:
        from cliplab.evaluation.output import have_matplotlib

        if have_matplotlib():
            files["png"] = _plot(rows, models, out / "results.png", title)
            lines += ["", f"![{title}](results.png)"]
    files["md"] = write_text(out / "results.md", "\n".join(lines) + "\n")
    return files


def _plot(rows: Mapping[tuple[str, str], Mapping[str, float]], models: Sequence[str],
          path: Path, title: str) -> Path:  # fmt: skip
    from cliplab.evaluation.output import pyplot, save_figure

    plt = pyplot()
    labels = [f"{d}\n{m}" for d, m in rows]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(labels) * len(models) + 1.2))
    height = 0.8 / len(models)
    for i, model in enumerate(models):
        ys = [j + i * height for j in range(len(labels))]
        xs = [100 * rows[key].get(model, float("nan")) for key in rows]
        bars = ax.barh(ys, xs, height=height, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(labels))], labels=labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("%")
    ax.set_xlim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()  # the dataset names stay inside the picture
    return save_figure(fig, path)
