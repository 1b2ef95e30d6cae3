"""cliplab.progress, the one progress display: plain lines off a terminal (a line per tenth
of a known total, one every few seconds otherwise, one at the end), nothing when disabled."""

from __future__ import annotations

import pytest

from cliplab import progress as progress_module
from cliplab.progress import Progress, progress_bar


def test_a_known_total_prints_a_line_per_tenth(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(100, desc="training", unit="step", bar=False) as p:
        for i in range(100):
            p.update(1, {"loss": 1.0 / (i + 1)})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("training: 10/100 step") and "loss 0.1" in lines[0]
    assert lines[-1].startswith("training: 100/100 step")
    assert "step/s" in lines[-1]


def test_resumed_counts_start_where_they_were(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(100, desc="training", unit="step", initial=50, bar=False) as p:
        for _ in range(50):
            p.update()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == [f"{n}/100" for n in range(60, 101, 10)]


def test_an_unknown_total_prints_every_few_seconds_and_at_the_end(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    with Progress(desc="embedding", unit="img", bar=False) as p:
        for _ in range(12):
            now[0] += 1.0
            p.update(32)
        p.write("a message")
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["embedding: 160 img  32 img/s", "embedding: 320 img  32 img/s"]
    assert lines[2] == "a message"
    assert lines[3] == "embedding: 384 img  32 img/s (done)"


def test_disabled_prints_nothing_and_progress_bar_yields_everything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = Progress(10, enabled=False)
    p.update(10)
    p.write("hidden")
    p.close()
    assert list(progress_bar(range(7), total=7, enabled=False)) == list(range(7))
    assert list(progress_bar(iter(range(7)), desc="items")) == list(range(7))
    err = capsys.readouterr().err
    assert "hidden" not in err and err.count("items") == 1  # the end of an unknown total
