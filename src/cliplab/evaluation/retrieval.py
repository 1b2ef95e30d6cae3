"""Image-text retrieval: Recall@K in both directions, several captions per image.

Image -> text: an image is a hit at K if any of its captions is among the K texts most
similar to it. Text -> image: a caption is a hit at K if its image is among the K most
similar images. A rank is the number of candidates scored strictly higher than the best
correct one, so exact ties count in the model's favour (as ``topk`` would in most orders);
similarities are cosines of L2-normalised features, computed in chunks to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["retrieval_metrics", "retrieval_ranks"]


def retrieval_ranks(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image->text ranks (N_images,), text->image ranks (N_texts,)), 0 = first place."""
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    owner = torch.as_tensor(text_to_image, dtype=torch.long).to(img.device)
    n_img, n_txt = img.shape[0], txt.shape[0]
    if owner.numel() != n_txt:
        raise ValueError(f"text_to_image has {owner.numel()} entries for {n_txt} texts")
    if n_txt and (owner.min() < 0 or owner.max() >= n_img):
        raise ValueError("text_to_image refers to an image that does not exist")
    missing = torch.ones(n_img, dtype=torch.bool)
    missing[owner.cpu()] = False
    if missing.any():
        raise ValueError(
            f"images without captions: {torch.nonzero(missing).flatten()[:5].tolist()}"
        )

    i2t = torch.empty(n_img, dtype=torch.long)
    for start in range(0, n_img, chunk):
        sim = img[start : start + chunk] @ txt.t()  # (b, N_txt)
        rows = torch.arange(start, min(start + chunk, n_img), device=img.device)
        is_match = owner[None, :] == rows[:, None]  # (b, N_txt)
        best = sim.masked_fill(~is_match, float("-inf")).amax(dim=1)  # best correct caption
        i2t[start : start + chunk] = (sim > best[:, None]).sum(dim=1).cpu()

    t2i = torch.empty(n_txt, dtype=torch.long)
    for start in range(0, n_txt, chunk):
        sim = txt[start : start + chunk] @ img.t()  # (b, N_img)
        target = sim.gather(1, owner[start : start + chunk, None])  # (b, 1)
        t2i[start : start + chunk] = (sim > target).sum(dim=1).cpu()
    return i2t, t2i


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """``image_to_text_R@K`` and ``text_to_image_R@K`` for each K (fractions), their mean
    (``mean_recall``), the median ranks (1-based) and the counts."""
    i2t, t2i = retrieval_ranks(image_features, text_features, text_to_image)
    result: dict[str, Any] = {}
    for k in ks:
        result[f"image_to_text_R@{k}"] = float((i2t < k).double().mean())
    for k in ks:
        result[f"text_to_image_R@{k}"] = float((t2i < k).double().mean())
    recalls = [v for v in result.values()]
    result["mean_recall"] = float(sum(recalls) / len(recalls))
    result["image_to_text_median_rank"] = float(i2t.double().median() + 1)
    result["text_to_image_median_rank"] = float(t2i.double().median() + 1)
    result["n_images"] = int(i2t.numel())
    result["n_texts"] = int(t2i.numel())
    return result
