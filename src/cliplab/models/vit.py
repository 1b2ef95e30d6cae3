"""Vision Transformer image encoder, with the paper's extra LayerNorm (``ln_pre``)."""

from __future__ import annotations

import torch
from torch import nn

from cliplab.config import ViTConfig
from cliplab.models.transformer import LayerNorm, Transformer


class VisionTransformer(nn.Module):
    """Images (B, 3, S, S) -> image features (B, embed_dim), unnormalised.

    Patches are embedded by a bias-free strided convolution, a class token is prepended,
    positional embeddings added, then ``ln_pre``, the transformer, ``ln_post`` on the class
    token and a linear projection.
    """

    def __init__(self, config: ViTConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        w = config.width
        self.conv1 = nn.Conv2d(
            3, w, kernel_size=config.patch_size, stride=config.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(torch.empty(w))
        self.positional_embedding = nn.Parameter(torch.empty(config.grid_size**2 + 1, w))
        self.ln_pre = LayerNorm(w)
        self.transformer = Transformer(
            w, config.layers, config.heads, config.mlp_width, config.activation
        )
        self.ln_post = LayerNorm(w)
        self.proj = nn.Parameter(torch.empty(w, embed_dim))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        scale = self.config.width**-0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj, std=scale)
        nn.init.kaiming_uniform_(self.conv1.weight, a=5**0.5)  # nn.Conv2d's default
        for ln in (self.ln_pre, self.ln_post):
            nn.init.ones_(ln.weight)
            nn.init.zeros_(ln.bias)
        self.transformer.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(
                f"images must have shape (batch, 3, {size}, {size}), got {tuple(x.shape)}"
            )
        x = self.conv1(x.to(self.conv1.weight.dtype))  # (B, width, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, grid**2, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, width)
        x = torch.cat([cls, x], dim=1)  # (B, grid**2 + 1, width)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)  # (B, grid**2 + 1, width)
        x = self.ln_post(x[:, 0])  # (B, width)
        return x @ self.proj  # (B, embed_dim)
