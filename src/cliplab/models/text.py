"""CLIP's text encoder: a GPT-2 style causal transformer read out at the EOT token."""

from __future__ import annotations

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


class TextTransformer(nn.Module):
    """Token ids (B, L) -> text features (B, embed_dim), unnormalised.

    The feature is the top layer's activation at the EOT token (the highest id in each row,
    as in OpenAI's code), layer-normalised and linearly projected.
    """

    def __init__(self, config: TextConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.context_length = config.context_length
        self.vocab_size = config.vocab_size
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(
            config.width, config.layers, config.heads, config.mlp_width, config.activation
        )
        self.ln_final = LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.empty(config.width, embed_dim))
        # Causal attention means positions after the last EOT in the batch never influence
        # the features, so they are cut before the transformer (exact, and 3-5x less work
        # for typical captions). Set False for static shapes (CUDA graphs, some compilers).
        self.trim_padding = True
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()
        nn.init.ones_(self.ln_final.weight)
        nn.init.zeros_(self.ln_final.bias)
        nn.init.normal_(self.text_projection, std=self.config.width**-0.5)

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
        if self.trim_padding:
            text = trim_padding(text)
        eot = text.argmax(dim=-1)  # (B,)
        B, L = text.shape
        dtype = self.text_projection.dtype
        x = self.token_embedding(text).to(dtype)  # (B, L, width)
        x = x + self.positional_embedding[:L].to(dtype)
        x = self.transformer(x, causal=True)  # (B, L, width)
        x = x[torch.arange(B, device=x.device), eot]  # (B, width)
        x = self.ln_final(x)
        return x @ self.text_projection  # (B, embed_dim)
