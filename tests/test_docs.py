"""The documentation shows the code as it is."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_adding_a_protocol_shows_the_real_file_and_registry_line() -> None:
    page = (ROOT / "docs" / "adding-a-protocol.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    source = (ROOT / "src/cliplab/evaluation/protocols/knn.py").read_text(encoding="utf-8")
    assert blocks[0] == source
    from cliplab.evaluation.registry import MODULES, PROTOCOLS

    assert "knn" in MODULES and PROTOCOLS["knn"].result.protocol == "knn"
    listed = re.findall(r'"(\w+)",', blocks[1])
    assert tuple(listed) == MODULES
