"""The contrastive loss: the plain form against a naive reference, the chunked form against
the plain one (values and gradients), and the distributed forms on 2 gloo processes against
one process on the concatenated batch."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import cliplab
from cliplab.loss import (
    chunked_clip_loss,
    clip_loss,
    distributed_clip_loss,
    distributed_siglip_loss,
    gather_features,
    siglip_loss,
)
from gloo import join_gloo, leave_gloo


def naive_clip_loss(
    images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """The paper's pseudo-code written out with explicit loops (float64)."""
    n = images.shape[0]
    total_i2t = images.new_zeros(())
    total_t2i = images.new_zeros(())
    for i in range(n):
        row = torch.stack(
            [logit_scale * images[i] @ texts[j] for j in range(n)]
        )  # image i vs all texts
        col = torch.stack(
            [logit_scale * images[j] @ texts[i] for j in range(n)]
        )  # text i vs all images
        total_i2t = total_i2t - (row[i] - torch.log(torch.exp(row).sum()))
        total_t2i = total_t2i - (col[i] - torch.log(torch.exp(col).sum()))
    return (total_i2t / n + total_t2i / n) / 2


def features(
    n: int, d: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    texts = F.normalize(images + 0.8 * torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    return images, texts


def loss_and_grads(fn, images, texts, t: float, **kwargs):
    images = images.clone().requires_grad_()
    texts = texts.clone().requires_grad_()
    log_scale = torch.tensor(t, dtype=images.dtype, requires_grad=True)
    loss = fn(images, texts, log_scale.exp(), **kwargs)
    loss.backward()
    return loss.detach(), images.grad, texts.grad, log_scale.grad


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def test_plain_loss_matches_naive_reference_forward_and_backward() -> None:
    images, texts = features(12, 16, seed=1)
    t = math.log(1 / 0.07)
    ours = loss_and_grads(clip_loss, images, texts, t)
    ref = loss_and_grads(naive_clip_loss, images, texts, t)
    assert max_diff(ours, ref) < 1e-12
    # float32 against the float64 reference
    ours32 = loss_and_grads(clip_loss, images.float(), texts.float(), t)
    assert max_diff([x.double() for x in ours32], ref) < 1e-5


def test_perfect_alignment_and_chance() -> None:
    images, _ = features(8, 16, seed=2)
    assert float(clip_loss(images, images, torch.tensor(100.0))) < 1e-3  # sharp and right
    assert float(clip_loss(images, images, torch.tensor(0.0))) == pytest.approx(
        math.log(8)
    )  # uniform


@pytest.mark.parametrize("n,chunk", [(16, 16), (16, 5), (37, 8), (9, 64)])
def test_chunked_loss_equals_plain_loss(n: int, chunk: int) -> None:
    images, texts = features(n, 24, seed=n)
    plain = loss_and_grads(clip_loss, images, texts, 2.7)
    chunked = loss_and_grads(chunked_clip_loss, images, texts, 2.7, chunk_size=chunk)
    assert max_diff(plain, chunked) < 1e-12
    plain32 = loss_and_grads(clip_loss, images.float(), texts.float(), 2.7)
    chunked32 = loss_and_grads(
        chunked_clip_loss, images.float(), texts.float(), 2.7, chunk_size=chunk
    )
    assert max_diff(plain32, chunked32) < 1e-5


def test_distributed_loss_without_process_group_is_plain() -> None:
    images, texts = features(10, 8, seed=3)
    assert torch.equal(
        distributed_clip_loss(images, texts, torch.tensor(3.0)),
        clip_loss(images, texts, torch.tensor(3.0)),
    )
    assert gather_features(images) is images


# ---------------------------------------------------------------------------------------
# Two gloo processes vs one process
# ---------------------------------------------------------------------------------------

WORLD = 2
LOCAL = 6


def _dist_worker(rank: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    join_gloo(rank, WORLD, init_file)
    images, texts = features(WORLD * LOCAL, 16, seed=7)
    mine = slice(rank * LOCAL, (rank + 1) * LOCAL)
    results = {}
    for name, fn, kwargs in (
        ("plain", distributed_clip_loss, {}),
        ("chunked", chunked_clip_loss, {"chunk_size": 4}),
    ):
        loss, gi, gt, gs = loss_and_grads(fn, images[mine], texts[mine], 2.5, **kwargs)
        stats = torch.stack([loss, gs])  # the scale's gradient is averaged, as the trainer does
        dist.all_reduce(stats)
        results[name] = {
            "loss": stats[0] / WORLD,
            "grad_scale": stats[1] / WORLD,
            "grad_images": gi,
            "grad_texts": gt,
        }
    gathered = [None] * WORLD
    dist.all_gather_object(gathered, results)
    if rank == 0:
        torch.save(gathered, out_file)
    leave_gloo()


def test_distributed_losses_equal_single_process_on_the_concatenated_batch(tmp_path) -> None:
    out = tmp_path / "results.pt"
    mp.spawn(_dist_worker, args=(str(tmp_path / "init"), str(out)), nprocs=WORLD)
    per_rank = torch.load(out, weights_only=False)
    images, texts = features(WORLD * LOCAL, 16, seed=7)
    loss, gi, gt, gs = loss_and_grads(clip_loss, images, texts, 2.5)
    for name in ("plain", "chunked"):
        got = [r[name] for r in per_rank]
        assert abs(float(got[0]["loss"]) - float(loss)) < 1e-12, name
        assert abs(float(got[0]["grad_scale"]) - float(gs)) < 1e-12, name
        # each rank holds the gradient of the sum of the ranks' losses for its own features;
        # DDP's averaging divides by the world size: the single-process gradient
        grad_images = torch.cat([r["grad_images"] for r in got]) / WORLD
        grad_texts = torch.cat([r["grad_texts"] for r in got]) / WORLD
        assert float((grad_images - gi).abs().max()) < 1e-12, name
        assert float((grad_texts - gt).abs().max()) < 1e-12, name


# ---------------------------------------------------------------------------------------
# SigLIP's sigmoid loss
# ---------------------------------------------------------------------------------------


def naive_siglip_loss(images, texts, scale, bias) -> torch.Tensor:
    """SigLIP's pseudo-code with explicit loops: -1/N sum_ij log sigmoid(z_ij (s x.y + b))."""
    n = images.shape[0]
    total = images.new_zeros(())
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total - torch.log(torch.sigmoid(z * (scale * images[i] @ texts[j] + bias)))
    return total / n


def siglip_grads(fn, images, texts, t: float, b: float, **kwargs):
    images = images.clone().requires_grad_()
    texts = texts.clone().requires_grad_()
    log_scale = torch.tensor(t, dtype=images.dtype, requires_grad=True)
    bias = torch.tensor(b, dtype=images.dtype, requires_grad=True)
    loss = fn(images, texts, log_scale.exp(), bias, **kwargs)
    loss.backward()
    return loss.detach(), images.grad, texts.grad, log_scale.grad, bias.grad


def test_siglip_loss_matches_naive_reference_forward_and_backward() -> None:
    images, texts = features(9, 16, seed=4)
    ours = siglip_grads(siglip_loss, images, texts, math.log(10), -10.0)
    ref = siglip_grads(naive_siglip_loss, images, texts, math.log(10), -10.0)
    assert max_diff(ours, ref) < 1e-12
    assert float(ref[4]) != 0 and float(ref[3]) != 0  # the bias and scale are learnt
    # orthogonal pairs scored sharply: positives at +50, negatives at -50: loss ~ 0; with
    # s = 0 every pair scores sigmoid(b): N * log(1 + e^-b) / N + (N - 1) * log(1 + e^b)
    ortho = torch.eye(8, 16, dtype=torch.float64)
    assert float(siglip_loss(ortho, ortho, torch.tensor(100.0), torch.tensor(-50.0))) < 1e-12
    flat = float(siglip_loss(ortho, ortho, torch.tensor(0.0), torch.tensor(-2.0)))
    assert flat == pytest.approx(math.log1p(math.exp(2.0)) + 7 * math.log1p(math.exp(-2.0)))
    assert torch.equal(
        distributed_siglip_loss(images, texts, torch.tensor(10.0), torch.tensor(-10.0)),
        siglip_loss(images, texts, torch.tensor(10.0), torch.tensor(-10.0)),
    )


def _siglip_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    join_gloo(rank, world, init_file)
    images, texts = features(world * LOCAL, 16, seed=8)
    mine = slice(rank * LOCAL, (rank + 1) * LOCAL)
    loss, gi, gt, gs, gb = siglip_grads(
        distributed_siglip_loss, images[mine], texts[mine], math.log(10), -10.0
    )
    stats = torch.stack([loss, gs, gb])  # scale and bias gradients averaged, as the trainer
    dist.all_reduce(stats)
    gathered = [None] * world
    dist.all_gather_object(gathered, {"stats": stats / world, "gi": gi, "gt": gt})
    if rank == 0:
        torch.save(gathered, out_file)
    leave_gloo()


@pytest.mark.parametrize("world", [2, 3])
def test_ring_siglip_loss_equals_single_process_on_the_concatenated_batch(
    tmp_path, world: int
) -> None:
    """2 ranks, and 3 (where the next and the previous rank differ, so a ring that sent
    texts or gradients the wrong way round would be caught)."""
    out = tmp_path / "results.pt"
    mp.spawn(_siglip_worker, args=(world, str(tmp_path / "init"), str(out)), nprocs=world)
    per_rank = torch.load(out, weights_only=False)
    images, texts = features(world * LOCAL, 16, seed=8)
    loss, gi, gt, gs, gb = siglip_grads(naive_siglip_loss, images, texts, math.log(10), -10.0)
    stats = per_rank[0]["stats"]
    assert abs(float(stats[0]) - float(loss)) < 1e-12
    assert abs(float(stats[1]) - float(gs)) < 1e-12
    assert abs(float(stats[2]) - float(gb)) < 1e-12
    assert float((torch.cat([r["gi"] for r in per_rank]) / world - gi).abs().max()) < 1e-12
    assert float((torch.cat([r["gt"] for r in per_rank]) / world - gt).abs().max()) < 1e-12


def test_library_does_not_import_the_training_application() -> None:
    """``cliplab`` (the library) never imports ``cliplab.train`` or ``cliplab.cli`` (only
    the applications, ``cliplab.demo`` among them, do)."""
    root = Path(cliplab.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root).parts
        if relative[0] in ("train", "cli", "demo", "__main__.py"):  # the applications
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(root)}: {n}"
                for n in names
                if n.startswith(("cliplab.train", "cliplab.cli"))
            ]
    assert not offenders
