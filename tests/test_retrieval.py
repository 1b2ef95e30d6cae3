"""Retrieval Recall@K with several captions per image: against brute force, and on stub
features whose answers are known; ties count against the model (the one tie rule)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cliplab.evaluation.protocols.retrieval import retrieval_metrics, retrieval_ranks


def brute_force(image_features, text_features, owner, k):
    """Recall@k by sorting every row: the obvious, slow definition."""
    img = F.normalize(image_features, dim=-1)
    txt = F.normalize(text_features, dim=-1)
    sim = img @ txt.t()
    i2t_hits = 0
    for i in range(len(img)):
        top = sim[i].argsort(descending=True)[:k].tolist()
        i2t_hits += any(owner[t] == i for t in top)
    t2i_hits = 0
    for t in range(len(txt)):
        top = sim[:, t].argsort(descending=True)[:k].tolist()
        t2i_hits += owner[t] in top
    return i2t_hits / len(img), t2i_hits / len(txt)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_several_captions(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n_img, d = 40, 8
    counts = torch.randint(1, 4, (n_img,), generator=g).tolist()  # 1 to 3 captions each
    owner = [i for i, c in enumerate(counts) for _ in range(c)]
    images = torch.randn(n_img, d, generator=g)
    texts = images[owner] + 1.2 * torch.randn(len(owner), d, generator=g)  # noisy captions
    metrics = retrieval_metrics(images, texts, owner, ks=(1, 5, 10))
    for k in (1, 5, 10):
        i2t, t2i = brute_force(images, texts, owner, k)
        assert metrics[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert metrics[f"text_to_image_R@{k}"] == pytest.approx(t2i)
    assert metrics["n_images"] == n_img and metrics["n_texts"] == len(owner)


def test_chunking_does_not_change_ranks() -> None:
    g = torch.Generator().manual_seed(5)
    images, texts = torch.randn(30, 6, generator=g), torch.randn(45, 6, generator=g)
    owner = [i % 30 for i in range(45)]
    a = retrieval_ranks(images, texts, owner, chunk=7)
    b = retrieval_ranks(images, texts, owner, chunk=1000)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_perfect_and_permuted_stubs() -> None:
    n = 10
    images = torch.eye(n)
    owner = [i for i in range(n) for _ in range(2)]
    texts = torch.eye(n)[owner]
    m = retrieval_metrics(images, texts, owner)
    assert all(m[k] == 1.0 for k in m if "R@" in k)
    assert m["image_to_text_median_rank"] == 1.0 and m["mean_recall"] == 1.0
    # Captions of images 0 and 1 describe each other: those 2 images and 4 captions miss.
    perm = list(range(n))
    perm[0], perm[1] = 1, 0
    swapped = torch.eye(n)[[perm[o] for o in owner]]
    m = retrieval_metrics(images, swapped, owner, ks=(1, 2))
    assert m["image_to_text_R@1"] == pytest.approx(8 / 10)
    assert m["text_to_image_R@1"] == pytest.approx(16 / 20)
    # A swapped caption scores 1 for the wrong image and 0 for its own and the 8 others: the
    # ties count against the model, so its image ranks last (9), not second.
    assert m["text_to_image_R@2"] == pytest.approx(16 / 20)
    _, t2i = retrieval_ranks(images, swapped, owner)
    assert t2i.tolist() == [9] * 4 + [0] * 16


def test_ties_count_against_the_model() -> None:
    """Constant features: every candidate ties, so nothing is retrieved at any K < N."""
    n = 6
    owner = list(range(n))
    m = retrieval_metrics(torch.ones(n, 4), torch.ones(n, 4), owner, ks=(1, 5))
    assert m["image_to_text_R@1"] == m["text_to_image_R@5"] == 0.0
    assert m["text_to_image_median_rank"] == n
    # NaN features rank the right answer last too
    nan = torch.full((n, 4), float("nan"))
    assert retrieval_metrics(nan, nan, owner, ks=(1,))["mean_recall"] == 0.0


def test_one_good_caption_is_enough() -> None:
    images = torch.eye(3)
    texts = torch.stack(
        [torch.tensor([0.0, 1.0, 1.0]), torch.eye(3)[0], torch.eye(3)[1], torch.eye(3)[2]]
    )
    owner = [0, 0, 1, 2]  # image 0 has a wrong caption and a right one
    m = retrieval_metrics(images, texts, owner, ks=(1,))
    assert m["image_to_text_R@1"] == 1.0
    assert m["text_to_image_R@1"] == pytest.approx(3 / 4)


def test_images_without_captions_are_an_error() -> None:
    with pytest.raises(ValueError, match="without captions"):
        retrieval_metrics(torch.eye(3), torch.eye(3)[:2], [0, 1])
    with pytest.raises(ValueError, match="entries"):
        retrieval_metrics(torch.eye(3), torch.eye(3), [0, 1])
