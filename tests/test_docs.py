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


def test_extending_data_shows_the_real_code_and_one_file_per_change() -> None:
    """docs/extending-data.md: each Python block is the code as it is in the data layer's
    image or storage module; each diff (a format, a backend, an augmentation) changes one file and its context and removed lines
    are that file's lines, in order (the change still applies)."""
    page = (ROOT / "docs" / "extending-data.md").read_text(encoding="utf-8")
    data = ROOT / "src/cliplab/data"
    sources = [(data / name).read_text(encoding="utf-8") for name in ("images.py", "storage.py")]
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) >= 4
    for block in blocks:
        assert any(block in source for source in sources), block
    diffs = re.findall(r"```diff\n(.*?)```", page, flags=re.S)
    assert [re.findall(r"^--- a/(\S+)$", d, flags=re.M) for d in diffs] == [
        ["src/cliplab/data/images.py"],
        ["src/cliplab/data/storage.py"],
        ["src/cliplab/augment.py"],
    ]
    for diff in diffs:
        path = re.search(r"^--- a/(\S+)$", diff, flags=re.M).group(1)
        lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
        at = 0
        for line in diff.splitlines()[2:]:
            if line.startswith("@@"):
                continue
            if line[:1] in (" ", "-") or line == "":
                at = lines.index(line[1:], at) + 1  # ValueError: the diff no longer applies


def _headings(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings (lower case, punctuation dropped, spaces -> -)."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{1,6}\s+(.*)$", text, flags=re.M)
    }


def _written_pages() -> list[Path]:
    """README.md and the hand-written pages of docs/ (report.md files are generated)."""
    docs = sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "report.md")
    return [ROOT / "README.md", *docs]


def test_relative_links_in_readme_and_docs_resolve() -> None:
    broken = []
    for page in _written_pages():
        text = page.read_text(encoding="utf-8")
        text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks
        text = re.sub(r"`[^`\n]*`", "", text)  # inline code
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):  # https:, mailto:
                continue
            target, _, anchor = link.partition("#")
            dest = (page.parent / target).resolve() if target else page
            where = f"{page.relative_to(ROOT)}: {link}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _headings(dest):
                broken.append(f"{where} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    assert (
        readme.count("<!-- DEMO-RESULTS -->") == 1 and readme.count("<!-- /DEMO-RESULTS -->") == 1
    )
