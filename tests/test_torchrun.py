"""``torchrun`` for real: ``torchrun --standalone --nproc_per_node 2 -m cliplab train`` (gloo on
CPU) against one process on the whole batch, and a rank killed mid-run: the job stops (no
hang), and re-running the same command resumes bit-identically to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cliplab.train import Trainer, load_config
from cliplab.train.data import build_loader
from test_train_resume import logged_steps, train_records
from train_helpers import max_abs_diff, run_toml


def torchrun(config: Path, out: Path) -> list[str]:
    launcher = Path(sys.executable).with_name("torchrun")
    head = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [
        *head,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cliplab",
        "train",
        str(config),
        "--out",
        str(out),
    ]


def write(tmp_path: Path, name: str, steps: int, interval: int) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(run_toml(steps=steps, interval=interval, lr=1e-4, keep=3))
    return path


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_ranks_under_torchrun_equal_one_process_on_the_whole_batch(
    tmp_path: Path, parallelism: str
) -> None:
    steps = 3
    config_path = write(tmp_path, "run", steps, 2)
    out = tmp_path / "torchrun"
    command = [*torchrun(config_path, out), "--set", f'train.parallelism="{parallelism}"']
    command += ["--set", "eval.synthetic_pairs=32"]  # an evaluation at the end, on rank 0
    done = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["step"] == steps and summary["eval"], summary
    suffix = ".dcp" if parallelism == "fsdp" else ".pt"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"step_0000000{s}{suffix}" for s in (2, 3)
    ]

    # one process, on the union of the two ranks' batches (each rank's loader, rebuilt here)
    config = load_config(config_path, [f'output="{tmp_path / "single"}"'])
    single = Trainer(config)
    loaders = [
        iter(build_loader(config, 32, single.model.context_length, 8, rank, 2)) for rank in (0, 1)
    ]
    losses = []
    for _ in range(steps):
        b0, b1 = next(loaders[0]), next(loaders[1])
        result = single.train_step(
            torch.cat([b0.images, b1.images]), torch.cat([b0.tokens, b1.tokens])
        )
        losses.append(result.loss)
    ranked = load_file(out / "model" / "model.safetensors")
    assert max_abs_diff(ranked, single.model.state_dict()) < 1e-5
    logged = [loss for _, loss in train_records(out)]
    assert max(abs(a - b) for a, b in zip(logged, losses)) < 1e-5, (logged, losses)


def rank_pids(launcher: int) -> dict[int, int]:
    """RANK -> pid of the workers torchrun started (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid")))
        if ppid != launcher:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc (Linux)")
def test_a_killed_rank_stops_the_job_and_the_rerun_resumes_bit_identically(tmp_path: Path) -> None:
    steps, interval = 12, 3
    config = write(tmp_path, "run", steps, interval)
    reference = tmp_path / "reference"
    done = subprocess.run(torchrun(config, reference), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "run"
    job = subprocess.Popen(
        torchrun(config, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    deadline = time.monotonic() + 180
    while logged_steps(out) < 5:
        assert job.poll() is None, job.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    ranks = rank_pids(job.pid)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = job.communicate(timeout=120)  # the job stops: no hang on the dead peer
    assert job.returncode != 0
    killed_at = logged_steps(out)
    assert killed_at < steps
    for pid in ranks.values():  # no rank left behind
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )

    again = subprocess.run(torchrun(config, out), capture_output=True, text=True, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] is not None and summary["resumed_from"] % interval == 0
    assert summary["resumed_from"] <= killed_at
    ours = load_file(out / "model" / "model.safetensors")
    ref = load_file(reference / "model" / "model.safetensors")
    assert [k for k in ref if not torch.equal(ours[k], ref[k])] == []
    assert train_records(out) == train_records(reference)
