"""CLIP's text encoder: a GPT-2 style causal transformer read out at the EOT token.

With switches (:class:`~cliplab.config.TextConfig`) it is also SigLIP's: bidirectional, read
out at the last position, projected by a linear layer with a bias."""

from __future__ import annotations

import itertools
from collections import Counter

import torch
from torch import nn

from cliplab.config import TextConfig
from cliplab.models.transformer import LayerNorm, Transformer


def trim_padding(text: torch.Tensor) -> torch.Tensor:
    """Token ids (B, L) -> (B, L'), cut after the last EOT of the batch (the highest id in
    each row). Exact for the causal text tower: later positions never reach the features."""
    if text.shape[0] == 0:
        return text
    return text[:, : int(text.argmax(dim=-1).max()) + 1]


# What one more length group costs, in padded token positions: the fixed cost of running the
# tower's layers once more (a few kernel launches per layer), measured on CPU as about the
# work of 512 positions for a 96-wide 2-layer tower. A position's work grows with the
# width squared and the launches do not, so a tower of width w pays GROUP_COST * (96/w)^2
# (:func:`group_cost`): 18 positions for ViT-B/32's 512-wide text tower.
GROUP_COST = 512


def group_cost(width: int) -> int:
    """One more pass through a ``width``-wide tower's layers, in token positions."""
    return max(1, round(GROUP_COST * (96 / width) ** 2))


def length_groups(
    lengths: list[int], max_groups: int = 4, group_cost: int = GROUP_COST
) -> list[tuple[list[int], int]]:
    """Split a batch by caption length so that each group is cut to its own longest caption.

    ``lengths``: positions up to and including each row's EOT. Returns ``(rows, length)``
    pairs (rows in the batch, the group's longest length) covering every row once, chosen to
    minimise the padded positions computed plus ``group_cost`` per group (at most
    ``max_groups``). Captions are short and skewed (the demo's: mean 8.5, longest ~25 in a
    batch of 256), so cutting the whole batch to its longest wastes about two thirds of the
    text tower's work; three or four groups recover most of it. Exact for the causal tower.
    """
    if not lengths:
        return []
    counts = Counter(lengths)
    distinct = sorted(counts)  # K distinct lengths; a group is a run of them
    prefix = [0, *itertools.accumulate(counts[n] for n in distinct)]  # rows up to each
    k = len(distinct)
    inf = float("inf")
    # best[g][j]: the cheapest cover of the j shortest lengths by g groups; cut[g][j]: where
    # the last of them starts
    best = [[inf] * (k + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (k + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for j in range(1, k + 1):
            for i in range(g - 1, j):
                cost = best[g - 1][i] + (prefix[j] - prefix[i]) * distinct[j - 1] + group_cost
                if cost < best[g][j]:
                    best[g][j], cut[g][j] = cost, i
    groups_used = min(range(1, max_groups + 1), key=lambda g: best[g][k])
    bounds, j = [], k
    for g in range(groups_used, 0, -1):
        i = cut[g][j]
        bounds.append((distinct[i], distinct[j - 1]))
        j = i
    rows: list[tuple[list[int], int]] = []
    for low, high in reversed(bounds):
        members = [r for r, length in enumerate(lengths) if low <= length <= high]
        rows.append((members, high))
    return rows


class TextTransformer(nn.Module):
    """Token ids (B, L) -> text features (B, embed_dim), unnormalised.

    The feature is the top layer's activation at the EOT token (the highest id in each row,
    as in OpenAI's code), layer-normalised and linearly projected. SigLIP's (``causal=False,
    pool="last"``): at the last position, whatever it holds (texts are padded to the
    context length, as SigLIP was trained).
    """

    def __init__(self, config: TextConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.context_length = config.context_length
        self.vocab_size = config.vocab_size
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(
            config.width,
            config.layers,
            config.heads,
            config.mlp_width,
            config.activation,
            config.layer_norm_eps,
        )
        self.ln_final = LayerNorm(config.width, eps=config.layer_norm_eps)
        self.text_projection: nn.Parameter | nn.Linear | None = None
        if config.projection == "matrix":
            self.text_projection = nn.Parameter(torch.empty(config.width, embed_dim))
        elif config.projection == "linear":
            self.text_projection = nn.Linear(config.width, embed_dim)
        # Causal attention means positions after a row's EOT never influence its feature, so
        # padding is cut before the transformer: the batch is split into at most
        # ``config.length_groups`` groups by caption length, each cut to its own longest
        # (``length_groups``; exact, and 3-5x less work for typical captions); 1 cuts the
        # whole batch to its longest caption, 0 keeps static shapes. The setting is the
        # model's; code that needs static shapes on a built model (ONNX export, a compiled
        # training step) sets this attribute from outside.
        self.length_groups = config.length_groups
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()
        nn.init.ones_(self.ln_final.weight)
        nn.init.zeros_(self.ln_final.bias)
        projection = self.text_projection
        if isinstance(projection, nn.Linear):
            nn.init.normal_(projection.weight, std=self.config.width**-0.5)
            nn.init.zeros_(projection.bias)
        elif projection is not None:
            nn.init.normal_(projection, std=self.config.width**-0.5)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if text.dim() != 2:
            raise ValueError(
                f"text must be token ids of shape (batch, length), got {tuple(text.shape)}"
            )
        if text.shape[1] > self.context_length:
            raise ValueError(
                f"text has {text.shape[1]} positions but the model's context length is "
                f"{self.context_length}"
            )
        groups = []
        if self.length_groups > 0 and text.shape[0] > 0:
            lengths = (text.argmax(dim=-1) + 1).tolist()
            groups = length_groups(
                lengths, max_groups=self.length_groups, group_cost=group_cost(self.config.width)
            )
        if len(groups) > 1:
            index = [torch.tensor(rows, device=text.device) for rows, _ in groups]
            parts = [self._eot_features(text[i, :n]) for i, (_, n) in zip(index, groups)]
            x = torch.cat(parts)[torch.argsort(torch.cat(index))]  # (B, width), batch order
        else:  # one group: the whole batch cut to its longest (or, untrimmed, as given)
            x = self._eot_features(text[:, : groups[0][1]] if groups else text)  # (B, width)
        x = self.ln_final(x)
        projection = self.text_projection
        if isinstance(projection, nn.Linear):
            return projection(x)  # (B, embed_dim)
        return x if projection is None else x @ projection  # (B, embed_dim)

    def _shared_prefix(self, text: torch.Tensor, eot: torch.Tensor) -> int:
        """How many leading positions every row of ``text`` shares (before any row's EOT),
        when computing them once pays; else 0.

        Prompts made from one template share its words before the class name (``a photo of
        a``): with causal attention those positions' activations are the same in every row,
        so they are computed once for the batch and the rows attend to their keys and
        values. Inference only (no autograd graph), on the trimming tower; worth it when
        the positions saved outweigh one more pass through the layers (:func:`group_cost`)."""
        B = text.shape[0]
        if B < 2 or not self.length_groups or torch.is_grad_enabled():
            return 0
        same = (text == text[:1]).all(dim=0)[: int(eot.min())]  # (positions before an EOT,)
        P = int(same.int().cumprod(0).sum())
        saved = (B - 1) * P  # positions not computed again
        return P if saved >= group_cost(self.config.width) else 0

    def _eot_features(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> the top layer's activation at each row's EOT (or the position
        ``config.pool`` names), (B, width)."""
        eot = text.argmax(dim=-1)  # (B,)
        B, L = text.shape
        dtype = self.positional_embedding.dtype
        x = self.token_embedding(text).to(dtype)  # (B, L, width)
        x = x + self.positional_embedding[:L].to(dtype)
        P = self._shared_prefix(text, eot)
        if P:  # the positions every row shares, once; each row's own positions after them
            keep: list = []
            self.transformer(x[:1, :P], causal=True, keep=keep)  # (1, P, width)
            x = self.transformer(x[:, P:], causal=True, prefix=keep)  # (B, L-P, width)
            eot = eot - P
        else:
            x = self.transformer(x, causal=self.config.causal)  # (B, L, width)
        if self.config.pool == "last":  # SigLIP: the last position, padding or not
            return x[:, -1]
        if self.config.pool == "first":
            return x[:, 0]
        return x[torch.arange(B, device=x.device), eot]  # (B, width)
