"""One way for a test's worker process to join and leave a gloo group on CPU."""

from __future__ import annotations

import datetime
import gc

import torch.distributed as dist


def join_gloo(rank: int, world_size: int, init_file: str) -> None:
    """Join a gloo group through ``init_file``; a two-minute timeout turns a hang into an
    error instead of a stuck CI run."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )


def leave_gloo() -> None:
    """Every rank waits at a barrier before the group is destroyed, so no rank tears down its
    connections while a peer is still in a collective or writing its report (a rank that left
    first once aborted with "terminate called without an active exception" in CI)."""
    gc.collect()  # finished trainers' DDP reducers and FSDP handles go before the group
    dist.barrier()
    dist.destroy_process_group()
