"""The contract every evaluation protocol follows (one module each in ``protocols/``).

A protocol module defines:

- ``Options``: a frozen dataclass of its settings, each made with :func:`option` (a default
  and a help text). The CLI turns them into flags (``--max-iter``), a training config's
  ``[[eval.sets]]`` tables and ``cliplab eval report`` take the same names;
- a :class:`Result` dataclass: what one run found. It is JSON-ready (``to_dict`` /
  ``from_dict``) and knows its summary rows, its scalars (logged during training), a
  one-line summary, its Markdown section and its plots;
- ``run(store, options, **inputs) -> Result``: the protocol on one model's features (a
  :class:`~cliplab.encode.FeatureStore`) and the input sets its ``inputs`` name;
- optionally ``compare(items, out_dir)``: the report section that puts several models' results
  side by side (by default each result's own Markdown, one after the other), and
  ``pool(results)``: the results of several models on one set rescored together (robustness
  fits one baseline to every model's probes);
- ``PROTOCOL = Protocol(...)``, which :mod:`cliplab.evaluation.registry` lists.

``docs/adding-a-protocol.md`` walks through a new one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from cliplab.config import unknown_message
from cliplab.evaluation.output import have_matplotlib
from cliplab.fileio import write_json, write_text

__all__ = ["Input", "Protocol", "Result", "Row", "option"]


def option(default: Any, help: str, choices: Sequence[Any] | None = None) -> Any:
    """A field of a protocol's ``Options``: its default, what it does, its allowed values."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Input:
    """A set a protocol runs on: the keyword of ``run``, the kind of set, a help text.

    ``many``: a list of sets; ``sep``: how ``cliplab eval report`` writes this input after
    the first one in a spec (``TEST:TRAIN``, ``SOURCE@TEST:SHIFT1,SHIFT2``).
    """

    name: str
    kind: Literal["classification", "retrieval"]
    help: str
    required: bool = True
    many: bool = False
    sep: str = ":"


@dataclass(frozen=True)
class Row:
    """One headline figure: a metric of a protocol on a set, with its chance level."""

    dataset: str
    protocol: str  # "zero-shot", "linear probe", "1-shot probe", "retrieval text->image"
    metric: str  # "top-1", "R@5"
    value: float | None
    chance: float | None = None
    detail: str = ""  # how it was measured, in a few words

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Result:
    """Base of every protocol's result dataclass (``protocol`` names the protocol)."""

    protocol: ClassVar[str] = ""

    @property
    def key(self) -> str:
        """What the result is about (a report groups several models' results by it)."""
        return str(getattr(self, "dataset", ""))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"protocol": ..., <every field>}``."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"protocol": self.protocol, **fields}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """The result that ``to_dict`` wrote (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    def rows(self) -> list[Row]:
        """Headline figures for summary tables."""
        return []

    def scalars(self) -> dict[str, float]:
        """Scalars to log (training-time evaluation prefixes them with protocol and set)."""
        return {}

    def summary(self) -> str:
        """One line for the console."""
        return f"{self.protocol} {self.key}"

    def markdown(self, plots: Mapping[str, str] | None = None) -> str:
        """A Markdown section; ``plots`` (name -> file name) are shown at its end."""
        raise NotImplementedError

    def plots(self, out_dir: Path, stem: str) -> dict[str, str]:
        """Write the plots that suit this result into ``out_dir``; name -> file name."""
        return {}

    def write(self, out_dir: str | Path, stem: str) -> dict[str, Path]:
        """``<stem>.json``, ``<stem>.md`` and the PNG plots in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plots = self.plots(out, stem) if have_matplotlib() else {}
        files = {"json": write_json(out / f"{stem}.json", self.to_dict())}
        files["markdown"] = write_text(out / f"{stem}.md", self.markdown(plots) + "\n")
        files.update({name: out / file for name, file in plots.items()})
        return files


Compare = Callable[[Sequence[tuple[str, Result]], Path], list[str]]
Pool = Callable[[Sequence[tuple[str, Result]]], list[Result]]


@dataclass(frozen=True)
class Protocol:
    """A protocol as the registry, the CLI, the report and training-time evaluation see it."""

    name: str  # the CLI subcommand and registry key ("linear-probe")
    title: str  # the report's section title
    help: str
    inputs: tuple[Input, ...]
    options: type
    result: type[Result]
    run: Callable[..., Result]  # run(store, options, **inputs)
    compare: Compare | None = None
    pool: Pool | None = None

    def option_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.options))

    def make_options(self, values: Mapping[str, Any] | None = None) -> Any:
        """``Options`` from a mapping; an unknown name is a ``ValueError`` listing the valid."""
        values = dict(values or {})
        valid = [f.name for f in self.option_fields()]
        for key in values:
            if key not in valid:
                raise ValueError(f"{self.name}: " + unknown_message("option", key, valid))
        for f in self.option_fields():
            choices = f.metadata.get("choices")
            if choices and f.name in values and values[f.name] not in choices:
                raise ValueError(
                    f"{self.name}: {f.name} must be one of {', '.join(map(str, choices))}, "
                    f"got {values[f.name]!r}"
                )
        try:
            return self.options(**values)
        except TypeError as e:
            raise ValueError(f"{self.name}: {e}") from e

    def __call__(self, store: Any, options: Any = None, **inputs: Any) -> Result:
        """Run on ``store`` with ``options`` (an ``Options``, a mapping, or None) and the
        input sets by name; a missing or unknown input is a ``ValueError``."""
        if not isinstance(options, self.options):
            options = self.make_options(options)
        names = {i.name for i in self.inputs}
        unknown = sorted(set(inputs) - names)
        if unknown:
            raise ValueError(f"{self.name}: unknown input(s) {unknown}; expected {sorted(names)}")
        for i in self.inputs:
            value = inputs.get(i.name)
            if i.required and (value is None or (i.many and not value)):
                raise ValueError(f"{self.name}: needs {i.name} ({i.help})")
            inputs.setdefault(i.name, [] if i.many else None)
        return self.run(store, options, **inputs)

    def section(self, items: Sequence[tuple[str, Result]], out_dir: Path) -> list[str]:
        """The report's Markdown lines for several models' results on one set."""
        if self.compare is not None:
            return self.compare(items, out_dir)
        lines: list[str] = []
        for label, result in items:
            lines += [f"#### {label}", "", result.markdown(), ""]
        return lines
