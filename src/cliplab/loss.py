"""CLIP's contrastive objective, and SigLIP's sigmoid variant.

CLIP's symmetric cross-entropy over scaled cosine similarities comes in three forms, all taking L2-normalised features and the multiplier ``exp(t)`` (pass
``model.logit_scale.exp()``; ``model.logit_scale`` itself is the log ``t``):

- ``clip_loss``: one process, the paper's pseudo-code. Materialises the N x N logits.
- ``distributed_clip_loss``: each rank scores its local rows (images -> all texts) and
  local columns (texts -> all images) against features gathered from every rank, with
  gradients flowing back through the gather; labels are offset by the rank's position. The
  mean of the ranks' losses is the single-process loss on the concatenated batch, and with
  DDP's gradient averaging the gradients equal the single-process ones too.
- ``chunked_clip_loss``: the same values and gradients computed block by block, never
  holding more than a ``chunk_size x chunk_size`` block of logits: O(N * D) extra memory
  instead of O(N^2). Distributed-aware like the above.

SigLIP (Zhai et al. 2023) scores every image-text pair on its own: ``-log sigmoid(z (s cos +
b))`` with ``z = 1`` for the matching pair and ``-1`` otherwise, summed and divided by the
batch size. ``siglip_loss`` is the one-process form; ``distributed_siglip_loss`` never
gathers the batch: each rank scores its images against its own texts, then passes its texts
to the next rank around a ring ``world - 1`` times (all negatives), with the gradients sent
back the same way. The ranks' mean is the one-process loss on the whole batch.

Features must have the same batch size on every rank (the data loader guarantees it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "chunked_clip_loss",
    "clip_loss",
    "distributed_clip_loss",
    "distributed_siglip_loss",
    "gather_features",
    "rank_and_world",
    "siglip_loss",
]


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies; labels ``arange(N)``.

    ``image_features``/``text_features``: (N, D) normalised; ``logit_scale``: ``exp(t)``.
    """
    logits = logit_scale * image_features @ text_features.t()  # (N, N), rows are images
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


# ---------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------


def _dist_active(group: object | None = None) -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world(group: object | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group``; ``(0, 1)`` when not running distributed."""
    if not _dist_active(group):
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(group), dist.get_world_size(group)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient for our slice.

    Implemented with ``all_reduce`` (supported by gloo and NCCL alike) and a slice, so the
    gradient each rank receives for its local features includes the terms that other ranks'
    losses put on them.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: object | None) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.group = group
        ctx.rank, world = dist.get_rank(group), dist.get_world_size(group)
        ctx.local = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)  # (world * B, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.local
        return grad[start : start + ctx.local], None


def gather_features(x: torch.Tensor, group: object | None = None) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from all ranks in rank order, differentiably.

    Returns ``x`` itself when not running distributed.
    """
    if not _dist_active(group):
        return x
    return _GatherWithGrad.apply(x, group)


def _gather_pair(
    image_features: torch.Tensor, text_features: torch.Tensor, group: object | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets gathered in one collective: (N, D) each."""
    if not _dist_active(group):
        return image_features, text_features
    d = image_features.shape[1]
    both = gather_features(torch.cat([image_features, text_features], dim=1), group)  # (N, 2D)
    return both[:, :d], both[:, d:]


def distributed_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    group: object | None = None,
) -> torch.Tensor:
    """This rank's share of the global loss: local rows and columns vs gathered features.

    Each rank returns ``(CE(I_local @ T_all^T) + CE(T_local @ I_all^T)) / 2`` with labels
    ``rank * B + arange(B)``; the ranks' mean is ``clip_loss`` on the global batch. Falls back
    to ``clip_loss`` when not distributed.
    """
    rank, world = rank_and_world(group)
    if world == 1:
        return clip_loss(image_features, text_features, logit_scale)
    all_images, all_texts = _gather_pair(image_features, text_features, group)  # (N, D)
    b = image_features.shape[0]
    labels = torch.arange(b, device=image_features.device) + rank * b
    logits_per_image = logit_scale * image_features @ all_texts.t()  # (B, N)
    logits_per_text = logit_scale * text_features @ all_images.t()  # (B, N)
    return (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2


# ---------------------------------------------------------------------------------------
# Chunked (memory-efficient) loss
# ---------------------------------------------------------------------------------------


def _segments(n: int, start: int, stop: int, chunk: int) -> list[tuple[int, int, bool]]:
    """``[0, n)`` cut at ``start``/``stop`` and into pieces of at most ``chunk``;
    each piece is flagged True when it lies in the local range ``[start, stop)``."""
    cuts = sorted({0, start, stop, n})
    pieces = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        for s in range(lo, hi, chunk):
            pieces.append((s, min(s + chunk, hi), start <= s < stop))
    return pieces


def _block_logits(
    images: torch.Tensor, texts: torch.Tensor, scale: float, acc: torch.dtype
) -> torch.Tensor:
    """``scale * images @ texts^T`` for one block, in ``acc`` precision: (R, C)."""
    return torch.mm(images, texts.t()).to(acc).mul_(scale)


class _ChunkedClipLoss(torch.autograd.Function):
    """Loss and gradients of the symmetric cross-entropy, block by block.

    The global logits ``M = s * I_all @ T_all^T`` (N x N) are never built. This rank needs
    the log-sum-exp of its rows ``[a, b)`` (image -> text) and of its columns ``[a, b)``
    (text -> image), so only blocks in that row strip or column strip are computed. The
    backward recomputes each block and turns it into softmax weights from the saved
    log-sum-exps: ``dL/dM = w * (P_row + P_col) - 2w * [positives]`` with ``w = 1 / 2B``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        all_images: torch.Tensor,
        all_texts: torch.Tensor,
        scale: torch.Tensor,
        start: int,
        stop: int,
        chunk: int,
    ) -> torch.Tensor:
        n, b = all_images.shape[0], stop - start
        acc = torch.promote_types(all_images.dtype, torch.float32)  # fp32 at least
        s = float(scale)
        lse_rows = all_images.new_full((b,), float("-inf"), dtype=acc)  # (B,)
        lse_cols = all_images.new_full((b,), float("-inf"), dtype=acc)  # (B,)
        for r0, r1, r_local in _segments(n, start, stop, chunk):
            for c0, c1, c_local in _segments(n, start, stop, chunk):
                if not (r_local or c_local):
                    continue
                logits = _block_logits(all_images[r0:r1], all_texts[c0:c1], s, acc)  # (R, C)
                if r_local:
                    rows = slice(r0 - start, r1 - start)
                    lse_rows[rows] = torch.logaddexp(lse_rows[rows], logits.logsumexp(dim=1))
                if c_local:
                    cols = slice(c0 - start, c1 - start)
                    lse_cols[cols] = torch.logaddexp(lse_cols[cols], logits.logsumexp(dim=0))
        local_dot = (all_images[start:stop] * all_texts[start:stop]).sum(dim=1).to(acc)  # (B,)
        positives = scale.to(acc) * local_dot
        loss = ((lse_rows - positives).mean() + (lse_cols - positives).mean()) / 2
        ctx.save_for_backward(all_images, all_texts, scale, lse_rows, lse_cols, local_dot)
        ctx.range = (start, stop, chunk)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        all_images, all_texts, scale, lse_rows, lse_cols, local_dot = ctx.saved_tensors
        start, stop, chunk = ctx.range
        n, b = all_images.shape[0], stop - start
        acc = lse_rows.dtype
        s = float(scale)
        w = float(grad) / (2 * b)
        # fold |w| into the shifts: exp(logits - (lse - log|w|)) = |w| * softmax
        log_w = math.log(abs(w)) if w else float("-inf")
        shift_rows, shift_cols = lse_rows - log_w, lse_cols - log_w
        grad_images = torch.zeros_like(all_images)  # (N, D)
        grad_texts = torch.zeros_like(all_texts)  # (N, D)
        grad_scale = torch.zeros((), dtype=acc, device=all_images.device)  # sum of dL/dM * M
        for r0, r1, r_local in _segments(n, start, stop, chunk):
            for c0, c1, c_local in _segments(n, start, stop, chunk):
                if not (r_local or c_local):
                    continue
                logits = _block_logits(all_images[r0:r1], all_texts[c0:c1], s, acc)  # (R, C)
                row_part = shift_rows[r0 - start : r1 - start, None] if r_local else None
                col_part = shift_cols[None, c0 - start : c1 - start] if c_local else None
                weights = torch.sub(logits, row_part if r_local else col_part).exp_()
                if r_local and c_local:
                    weights += torch.sub(logits, col_part).exp_()
                if w < 0:
                    weights.neg_()
                grad_scale += torch.dot(weights.view(-1), logits.view(-1))
                weights = weights.to(all_images.dtype)  # dL/dlogits for this block
                grad_images[r0:r1].addmm_(weights, all_texts[c0:c1], alpha=s)
                grad_texts[c0:c1].addmm_(weights.t(), all_images[r0:r1], alpha=s)
        # the positives appear in both directions: d/d(pos_i) = -2w, pos_i = s * <I_i, T_i>
        grad_images[start:stop] -= (2 * w * s) * all_texts[start:stop]
        grad_texts[start:stop] -= (2 * w * s) * all_images[start:stop]
        grad_scale = grad_scale / s - 2 * w * local_dot.sum()  # dL/ds = sum(dL/dM * M) / s - ...
        return grad_images, grad_texts, grad_scale.to(scale.dtype), None, None, None


def chunked_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    chunk_size: int = 4096,
    group: object | None = None,
) -> torch.Tensor:
    """``distributed_clip_loss`` (``clip_loss`` in one process) in O(N * D) extra memory.

    Logits are computed ``chunk_size x chunk_size`` at a time in the forward and again in
    the backward (about twice the matmul work of the plain loss for that saving). Works
    in one process and across ranks (features gathered differentiably).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    rank, _ = rank_and_world(group)
    all_images, all_texts = _gather_pair(image_features, text_features, group)
    b = image_features.shape[0]
    scale = logit_scale if torch.is_tensor(logit_scale) else torch.tensor(float(logit_scale))
    scale = scale.to(device=image_features.device)
    if not float(scale.detach()) > 0:
        raise ValueError(
            f"chunked_clip_loss needs a positive logit scale exp(t), got {float(scale.detach())}"
        )
    return _ChunkedClipLoss.apply(all_images, all_texts, scale, rank * b, rank * b + b, chunk_size)


# ---------------------------------------------------------------------------------------
# SigLIP: the sigmoid loss
# ---------------------------------------------------------------------------------------


def _siglip_sum(
    images: torch.Tensor,
    texts: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    positives: bool,
) -> torch.Tensor:
    """``-sum log sigmoid(z * (s * I @ T^T + b))`` over a block; ``z`` is +1 on the diagonal
    when the block holds the matching pairs (``positives``), -1 everywhere else."""
    logits = scale * images @ texts.t() + bias  # (B, C)
    signs = -torch.ones_like(logits)
    if positives:
        signs.diagonal().fill_(1.0)
    return -F.logsigmoid(signs * logits).sum()


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
) -> torch.Tensor:
    """SigLIP's loss on one process: ``-1/N sum_ij log sigmoid(z_ij (s <I_i, T_j> + b))``.

    Features (N, D) normalised; ``logit_scale`` is ``exp(t)``; ``logit_bias`` is ``b``.
    """
    n = image_features.shape[0]
    return _siglip_sum(image_features, text_features, logit_scale, logit_bias, True) / n


class _RingPass(torch.autograd.Function):
    """Send ``x`` to the next rank and receive the previous rank's; the backward sends the
    gradient of what was received back to the previous rank and receives ours from the next."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: object | None) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return _exchange(x.contiguous(), group, forward=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return _exchange(grad.contiguous(), ctx.group, forward=False), None


def _exchange(x: torch.Tensor, group: object | None, forward: bool) -> torch.Tensor:
    import torch.distributed as dist

    rank, world = rank_and_world(group)
    step = 1 if forward else -1
    send_to, recv_from = (rank + step) % world, (rank - step) % world
    if group is not None:  # P2P ops name global ranks
        send_to = dist.get_global_rank(group, send_to)
        recv_from = dist.get_global_rank(group, recv_from)
    received = torch.empty_like(x)
    ops = [
        dist.P2POp(dist.isend, x, send_to, group),
        dist.P2POp(dist.irecv, received, recv_from, group),
    ]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


def distributed_siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    group: object | None = None,
) -> torch.Tensor:
    """This rank's share of SigLIP's loss, the text features travelling around a ring.

    Rank ``r`` scores its B images against its own texts (the positives on the diagonal),
    then ``world - 1`` times receives the texts of rank ``r - k`` (all negatives), keeping
    one B x B block of logits at a time and never the whole batch. Returns the strip's sum
    over B; the ranks' mean equals ``siglip_loss`` on the concatenated batch, and gradients
    reach the ranks that sent each text. ``siglip_loss`` when not distributed.
    """
    _, world = rank_and_world(group)
    if world == 1:
        return siglip_loss(image_features, text_features, logit_scale, logit_bias)
    total = _siglip_sum(image_features, text_features, logit_scale, logit_bias, True)
    texts = text_features
    for _ in range(world - 1):
        texts = _RingPass.apply(texts, group)  # (B, D) from rank - k
        total = total + _siglip_sum(image_features, texts, logit_scale, logit_bias, False)
    return total / image_features.shape[0]
