"""cliplab.progress, the one progress display: plain lines off a terminal, at most one every
few seconds (a line per tenth of a known total, one at that pace for an unknown total, one
at the end of a loop that took that long), nothing for a loop over in a moment, nothing when
disabled; downloads in megabytes."""

from __future__ import annotations

import pytest

from cliplab import progress as progress_module
from cliplab.progress import LINE_EVERY_S, Progress, progress_bar


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A clock the test moves by hand."""
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    return now


def test_a_known_total_prints_a_line_per_tenth(
    capsys: pytest.CaptureFixture[str], clock: list[float]
) -> None:
    with Progress(100, desc="training", unit="step", bar=False) as p:
        for i in range(100):
            clock[0] += 1.0  # a step a second: a tenth every 10 s
            p.update(1, {"loss": 1.0 / (i + 1)})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10
    assert lines[0] == "training: 10/100 step  1 step/s  loss 0.1"
    assert lines[-1].startswith("training: 100/100 step  1 step/s")


def test_lines_are_never_closer_than_the_interval(
    capsys: pytest.CaptureFixture[str], clock: list[float]
) -> None:
    with Progress(1000, desc="fast", bar=False) as p:
        for _ in range(1000):
            clock[0] += 0.01  # a tenth every second: a line only every LINE_EVERY_S
            p.update()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == int(10 / LINE_EVERY_S)
    assert lines[-1].startswith("fast: 1000/1000")


def test_resumed_counts_start_where_they_were(
    capsys: pytest.CaptureFixture[str], clock: list[float]
) -> None:
    with Progress(100, desc="training", unit="step", initial=50, bar=False) as p:
        for _ in range(50):
            clock[0] += 1.0
            p.update()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == [f"{n}/100" for n in range(60, 101, 10)]


def test_an_unknown_total_prints_every_few_seconds_and_at_the_end(
    capsys: pytest.CaptureFixture[str], clock: list[float]
) -> None:
    with Progress(desc="embedding", unit="img", bar=False) as p:
        for _ in range(12):
            clock[0] += 1.0
            p.update(32)
        p.write("a message")
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["embedding: 160 img  32 img/s", "embedding: 320 img  32 img/s"]
    assert lines[2] == "a message"
    assert lines[3] == "embedding: 384 img  32 img/s (done)"


def test_quick_loops_and_disabled_ones_print_nothing(
    capsys: pytest.CaptureFixture[str], clock: list[float]
) -> None:
    p = Progress(10, enabled=False)
    p.update(10)
    p.write("hidden")
    p.close()
    assert list(progress_bar(range(7), total=7, enabled=False)) == list(range(7))
    assert list(progress_bar(iter(range(7)), desc="items")) == list(range(7))  # instant
    assert capsys.readouterr().err == ""


def test_downloads_count_megabytes(capsys: pytest.CaptureFixture[str], clock: list[float]) -> None:
    with Progress(None, desc="ViT-B-32.pt", unit="B", bar=False) as p:
        p.reset(300_000_000, 100_000_000)  # a resumed download learns its length
        for _ in range(20):
            clock[0] += 1.0
            p.update(10_000_000)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "ViT-B-32.pt: 150.0/300.0 MB  10 MB/s"
    assert lines[-1].startswith("ViT-B-32.pt: 300.0/300.0 MB  10 MB/s")
