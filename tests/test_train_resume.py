"""Exact resumption with real signals: ``python -m cliplab train`` killed with SIGKILL at a
random moment, re-run, stopped with SIGTERM, re-run again with the same command, ends with
weights and a loss curve bit-identical to an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from train_helpers import run_toml

STEPS = 30
INTERVAL = 4
CONFIG = run_toml(steps=STEPS, interval=INTERVAL, shuffle=64, warmup=5)


def command(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cliplab", "train", str(config), "--out", str(out)]


def logged_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            steps.append(json.loads(line)["step"])
    return max(steps)


def run_until(
    cmd: list[str],
    out: Path,
    step: int,
    sig: int,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start the run and send ``sig`` once it has logged ``step`` (plus a random few ms)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + timeout
    while logged_steps(out) < step:
        assert proc.poll() is None, (
            f"the run ended before step {step}: {proc.stderr.read().decode()[-2000:]}"
        )
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.05))
    proc.send_signal(sig)
    proc.wait(timeout=timeout)
    return proc


def train_records(out: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


def assert_identical(out: Path, reference: Path) -> None:
    ours = load_file(out / "model" / "model.safetensors")
    ref = load_file(reference / "model" / "model.safetensors")
    assert ours.keys() == ref.keys()
    different = [k for k in ref if not torch.equal(ours[k], ref[k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"
    assert train_records(out) == train_records(reference)  # the same loss at every step, once each


def test_killed_then_preempted_run_resumes_bit_identical(tmp_path: Path) -> None:
    """SIGKILL at a random step and moment (maybe mid-checkpoint), resume; SIGTERM at a
    random later step (a checkpoint of that step, exit 143), resume to the end."""
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    reference = tmp_path / "reference"  # the uninterrupted run, alongside (2 cores)
    log = (tmp_path / "reference.log").open("w")
    uninterrupted = subprocess.Popen(command(config, reference), stdout=log, stderr=log)
    rng = random.Random(os.getpid())
    out = tmp_path / "run"
    killed_at = rng.randint(4, STEPS // 2)
    proc = run_until(command(config, out), out, killed_at, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    # the killed run may have logged a step or two past killed_at: wait for a step the
    # resumed run logs itself, or SIGTERM could arrive before its handler is installed
    logged = logged_steps(out)
    proc = run_until(
        command(config, out),
        out,
        rng.randint(logged + 1, max(logged + 1, STEPS - 3)),
        signal.SIGTERM,
    )
    stderr = proc.stderr.read().decode()
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr and "checkpoint saved" in stderr
    # the newest complete checkpoint (the kill may have hit the write of the last one)
    resumed = re.search(r"resumed from the checkpoint of step (\d+)", stderr)
    assert resumed is None or (int(resumed[1]) % INTERVAL == 0 and int(resumed[1]) <= killed_at + 2)
    stopped = logged_steps(out)
    assert (out / "checkpoints" / f"step_{stopped:08d}.pt").exists()  # the step it stopped at

    done = subprocess.run(command(config, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["resumed_from"] == stopped
    assert uninterrupted.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-2000:]
    assert [s for s, _ in train_records(reference)] == list(range(1, STEPS + 1))
    assert_identical(out, reference)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]
