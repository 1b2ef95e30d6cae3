"""Image-text retrieval: Recall@K in both directions, several captions per image.

Image -> text: an image is a hit at K if one of its captions ranks within the top K texts.
Text -> image: a caption is a hit at K if its image ranks within the top K images. Ranks
follow the one tie rule of :mod:`cliplab.evaluation.metrics` (a tie counts against the
model). Similarities are cosines of L2-normalised features, computed in chunks to bound
memory. Training-time retrieval runs this same protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cliplab.data.evalsets import RetrievalSet
from cliplab.encode import FeatureStore
from cliplab.evaluation.metrics import TIES, strict_ranks, topk_hits
from cliplab.evaluation.output import images_markdown, markdown_table, pct
from cliplab.evaluation.protocol import Input, Protocol, Result, Row, option

KS = (1, 5, 10)


@dataclass(frozen=True)
class Options:
    ties: str = option(
        "strict",
        "tie rule: strict (ties count against the model) or topk (CLIP_benchmark's: torch.topk "
        "breaks ties; reproduces its numbers)",
        choices=TIES,
    )


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
        rows = torch.arange(start, min(start + chunk, n_img), device=img.device)
        sim = img[rows] @ txt.t()  # (b, N_txt)
        i2t[rows.cpu()] = strict_ranks(sim, owner[None, :] == rows[:, None]).cpu()
    t2i = torch.empty(n_txt, dtype=torch.long)
    columns = torch.arange(n_img, device=img.device)
    for start in range(0, n_txt, chunk):
        sim = txt[start : start + chunk] @ img.t()  # (b, N_img)
        right = columns[None, :] == owner[start : start + chunk, None]
        t2i[start : start + chunk] = strict_ranks(sim, right).cpu()
    return i2t, t2i


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = KS,
    ties: str = "strict",
) -> dict[str, Any]:
    """``image_to_text_R@K`` and ``text_to_image_R@K`` for each K (fractions), their mean
    (``mean_recall``), the median ranks (1-based) and the counts; ``ties``: the tie rule
    (:mod:`cliplab.evaluation.metrics`)."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    i2t, t2i = retrieval_ranks(image_features, text_features, text_to_image)
    result: dict[str, Any] = {}
    if ties == "topk":
        hits = _topk_recalls(image_features, text_features, text_to_image, ks)
    for k in ks:
        result[f"image_to_text_R@{k}"] = (
            hits[("i2t", k)] if ties == "topk" else float((i2t < k).double().mean())
        )
    for k in ks:
        result[f"text_to_image_R@{k}"] = (
            hits[("t2i", k)] if ties == "topk" else float((t2i < k).double().mean())
        )
    recalls = list(result.values())
    result["mean_recall"] = float(sum(recalls) / len(recalls))
    result["image_to_text_median_rank"] = float(i2t.double().median() + 1)
    result["text_to_image_median_rank"] = float(t2i.double().median() + 1)
    result["n_images"] = int(i2t.numel())
    result["n_texts"] = int(t2i.numel())
    return result


def _topk_recalls(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor,
    ks: Sequence[int],
) -> dict[tuple[str, int], float]:
    """Recall@K under CLIP_benchmark's rule: a right candidate among ``torch.topk``'s K."""
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    owner = torch.as_tensor(text_to_image, dtype=torch.long).to(img.device)
    sim = txt @ img.t()  # (N_txt, N_img)
    right = torch.arange(img.shape[0], device=img.device)[None, :] == owner[:, None]
    out = {}
    for k in ks:
        out[("t2i", k)] = float(topk_hits(sim, right, k).double().mean())
        out[("i2t", k)] = float(topk_hits(sim.t(), right.t(), k).double().mean())
    return out


@dataclass
class RetrievalResult(Result):
    protocol: ClassVar[str] = "retrieval"

    dataset: str
    n_images: int
    n_texts: int
    recall: dict[str, float]  # "image_to_text_R@1", ..., "text_to_image_R@10"
    mean_recall: float
    image_to_text_median_rank: float
    text_to_image_median_rank: float

    @property
    def ks(self) -> list[int]:
        return sorted({int(k.split("@")[1]) for k in self.recall})

    def rows(self) -> list[Row]:
        rows = []
        for direction, label, pool in (
            ("text_to_image", "text->image", self.n_images),
            ("image_to_text", "image->text", self.n_texts),
        ):
            for k in (1, 5):
                key = f"{direction}_R@{k}"
                if key in self.recall:
                    # image->text: any of an image's captions counts, so chance is higher
                    # than k / texts; k / texts is given as a lower bound
                    chance = min(1.0, k / pool) if pool else None
                    rows.append(
                        Row(self.dataset, f"retrieval {label}", f"R@{k}", self.recall[key], chance)
                    )
        return rows

    def scalars(self) -> dict[str, float]:
        return {**self.recall, "mean_recall": self.mean_recall}

    def summary(self) -> str:
        ks = self.ks
        return (
            f"retrieval {self.dataset}: image->text R@{'/'.join(map(str, ks))} "
            + "/".join(pct(self.recall[f"image_to_text_R@{k}"]) for k in ks)
            + ", text->image "
            + "/".join(pct(self.recall[f"text_to_image_R@{k}"]) for k in ks)
        )

    def markdown(self, plots: Mapping[str, str] | None = None) -> str:
        ks = self.ks
        rows = [
            [
                "image -> text",
                *[pct(self.recall[f"image_to_text_R@{k}"]) for k in ks],
                f"{self.image_to_text_median_rank:.0f}",
            ],
            [
                "text -> image",
                *[pct(self.recall[f"text_to_image_R@{k}"]) for k in ks],
                f"{self.text_to_image_median_rank:.0f}",
            ],
        ]
        lines = [
            f"### Retrieval: {self.dataset}",
            "",
            f"{self.n_images} images, {self.n_texts} captions (chance R@1: image->text "
            f"{pct(1 / self.n_texts, 2)}%, text->image {pct(1 / self.n_images, 2)}%).",
            "",
            markdown_table(["", *[f"R@{k} (%)" for k in ks], "median rank"], rows),
        ]
        return "\n".join(lines + images_markdown(dict(plots or {})))


def run(store: FeatureStore, options: Options, *, dataset: RetrievalSet) -> RetrievalResult:
    """Recall@1/5/10 in both directions."""
    images = store.dataset(dataset)
    texts = store.texts(dataset.texts, desc=f"{dataset.name} captions")
    m = retrieval_metrics(images, texts, dataset.text_to_image, ties=options.ties)
    return RetrievalResult(
        dataset=dataset.name,
        n_images=m["n_images"],
        n_texts=m["n_texts"],
        recall={k: v for k, v in m.items() if "_R@" in k},
        mean_recall=m["mean_recall"],
        image_to_text_median_rank=m["image_to_text_median_rank"],
        text_to_image_median_rank=m["text_to_image_median_rank"],
    )


def compare(items: Sequence[tuple[str, Any]], out_dir: Path) -> list[str]:
    r0: RetrievalResult = items[0][1]
    ks = r0.ks
    table = markdown_table(
        ["model", *[f"I→T R@{k}" for k in ks], *[f"T→I R@{k}" for k in ks], "mean"],
        [
            [
                m,
                *[pct(r.recall.get(f"image_to_text_R@{k}")) for k in ks],
                *[pct(r.recall.get(f"text_to_image_R@{k}")) for k in ks],
                pct(r.mean_recall),
            ]
            for m, r in items
        ],
    )
    return [f"### {r0.dataset}", "", f"{r0.n_images} images, {r0.n_texts} captions.", "", table, ""]


PROTOCOL = Protocol(
    name="retrieval",
    title="Retrieval",
    help="image<->text Recall@1/5/10",
    inputs=(Input("dataset", "retrieval", "retrieval set directory"),),
    options=Options,
    result=RetrievalResult,
    run=run,
    compare=compare,
)
