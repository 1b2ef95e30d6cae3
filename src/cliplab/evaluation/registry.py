"""The evaluation protocols, by name: the one list the CLI's ``cliplab eval`` subcommands, the
report's sections and training-time evaluation are built from.

Adding a protocol is one module in ``protocols/`` and its name in :data:`MODULES` (see
``docs/adding-a-protocol.md``). The order there is the order of a report's sections.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from cliplab.evaluation.protocol import Protocol, Result

#: The protocols' modules (``cliplab/evaluation/protocols/<name>.py``), in report order.
MODULES = (
    "zeroshot",
    "prompts",
    "linear_probe",
    "knn",
    "fewshot",
    "retrieval",
    "robustness",
)

PROTOCOLS: dict[str, Protocol] = {}
for _name in MODULES:
    _protocol = importlib.import_module(f"cliplab.evaluation.protocols.{_name}").PROTOCOL
    PROTOCOLS[_protocol.name] = _protocol

__all__ = ["PROTOCOLS", "get", "result_from_dict"]


def get(name: str) -> Protocol:
    """The protocol called ``name``, or ``ValueError`` listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(
            f"unknown evaluation protocol {name!r}; known: {', '.join(PROTOCOLS)}"
        ) from None


def result_from_dict(data: Mapping[str, Any]) -> Result:
    """A result from its ``to_dict()`` form (its ``protocol`` key picks the class)."""
    return get(str(data.get("protocol"))).result.from_dict(data)
