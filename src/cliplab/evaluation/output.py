"""What results are written with: Markdown tables, percentages and matplotlib figures
(Agg backend, no display). Public, so applications (the demo, reproduce) draw and write the
same way the protocols do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["have_matplotlib", "markdown_table", "pct", "pyplot", "save_figure", "slug"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or ImportError naming the extra to install."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'cliplab[eval]'") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (creating the directory) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage string ("-" for missing values)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    out = ["| " + " | ".join(str(h) for h in headers) + " |"]
    out.append("|" + "|".join("---" for _ in headers) + "|")
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits and dashes, at most 60)."""
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()[:60] or "x"


def images_markdown(plots: dict[str, str] | None) -> list[str]:
    """Markdown lines that show ``plots`` (name -> file name), after a blank line."""
    return ["", *[f"![{name}]({file})" for name, file in plots.items()]] if plots else []
