"""FSDP2 (``train.parallelism = "fsdp"``) on 2 gloo processes against DDP: the same losses
and weights after a few steps; sharded checkpoints that reload into FSDP (exact resume),
into DDP and into a single process; the memory each rank holds for ViT-L/14."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp

from cliplab.train import Trainer
from cliplab.train import checkpoint as ckpt
from cliplab.train.distributed import DistEnv
from gloo import join_gloo, leave_gloo
from train_helpers import fixed_batch, max_abs_diff, tiny_config

B = 8
OPTIM = {"lr": 1e-4, "grad_clip_norm": 1.0}


def _batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [fixed_batch(2 * B, seed=200 + k) for k in range(n)]


def _config(parallelism: str, **train):
    return tiny_config(
        data={"batch_size": 2 * B}, train={"parallelism": parallelism, **train}, optim=OPTIM
    )


def _worker(rank: int, init_file: str, out: str) -> None:
    join_gloo(rank, 2, init_file)
    env = DistEnv(rank=rank, world_size=2)
    mine = slice(rank * B, (rank + 1) * B)
    batches = [(i[mine], t[mine]) for i, t in _batches()]
    report: dict = {}
    for kind in ("ddp", "fsdp"):
        trainer = Trainer(_config(kind), output=f"{out}-{kind}", env=env)
        losses = [trainer.train_step(*b).loss for b in batches[:3]]
        trainer.save_checkpoint()  # step 3: a file (ddp) or a sharded folder (fsdp)
        gathered = trainer.gathered_model()
        report[kind] = {"losses": losses, "weights": gathered.state_dict() if gathered else None}
        losses.append(trainer.train_step(*batches[3]).loss)  # one more step, uninterrupted
        after = trainer.gathered_model()
        report[kind]["after"] = after.state_dict() if after else None
        report[kind]["loss4"] = losses[-1]
    # FSDP resumes exactly from its sharded checkpoint; DDP loads the FSDP checkpoint too
    resumed = Trainer(_config("fsdp"), output=f"{out}-fsdp", env=env)
    assert resumed.resume() and resumed.step == 3
    report["fsdp-resumed-loss4"] = resumed.train_step(*batches[3]).loss
    final = resumed.gathered_model()
    report["fsdp-resumed"] = final.state_dict() if final else None
    ddp = Trainer(_config("ddp"), output=f"{out}-fsdp", env=env)
    assert ddp.resume() and ddp.step == 3
    report["ddp-from-fsdp"] = ddp.model.state_dict()
    report["ddp-from-fsdp-loss4"] = ddp.train_step(*batches[3]).loss
    torch.save(report, f"{out}.{rank}")
    leave_gloo()


def test_fsdp_equals_ddp_and_its_sharded_checkpoints_reload_anywhere(tmp_path: Path) -> None:
    out = tmp_path / "run"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2)
    r0 = torch.load(f"{out}.0", weights_only=False)
    ddp, fsdp = r0["ddp"], r0["fsdp"]
    assert max(abs(a - b) for a, b in zip(ddp["losses"], fsdp["losses"])) < 1e-5
    assert max_abs_diff(ddp["weights"], fsdp["weights"]) < 1e-5
    assert max_abs_diff(ddp["after"], fsdp["after"]) < 1e-5
    # exact resume of FSDP from its own sharded checkpoint
    assert r0["fsdp-resumed-loss4"] == fsdp["loss4"]
    assert max_abs_diff(r0["fsdp-resumed"], fsdp["after"]) == 0.0
    # the sharded checkpoint in DDP: the same weights, and the next step agrees
    assert max_abs_diff(r0["ddp-from-fsdp"], fsdp["weights"]) == 0.0
    assert abs(r0["ddp-from-fsdp-loss4"] - fsdp["loss4"]) < 1e-5
    # ... and in a single process without a process group (model and optimiser)
    folder = Path(f"{out}-fsdp") / "checkpoints" / "step_00000003.dcp"
    assert folder.is_dir() and (folder / ckpt.EXTRA).is_file()
    single = Trainer(_config("ddp"))
    ckpt.load_sharded_train_state(folder, single.model, single.optimizer)
    assert max_abs_diff(single.model.state_dict(), fsdp["weights"]) == 0.0
    assert any(s for s in single.optimizer.state.values())  # Adam moments came back too
    assert not list(folder.parent.glob(".*.tmp"))


def test_memory_per_rank_for_vit_l14() -> None:
    from cliplab.factory import create_model
    from cliplab.train.parallelize import sharded_bytes_per_rank

    with torch.device("meta"):
        model = create_model("ViT-L/14")
    one = sharded_bytes_per_rank(model, 1)
    assert 420e6 < one["parameters"] < 440e6  # ViT-L/14 CLIP: ~428M parameters
    assert one["fsdp_bytes"] == one["ddp_bytes"] == one["parameters"] * 16
    for ranks in (8, 64):
        m = sharded_bytes_per_rank(model, ranks)
        assert m["ddp_bytes"] / ranks <= m["fsdp_bytes"] < 1.05 * m["ddp_bytes"] / ranks
