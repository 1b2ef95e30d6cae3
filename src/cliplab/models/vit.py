"""Vision Transformer image encoder, with the paper's extra LayerNorm (``ln_pre``).

Two training levers live here because they change what the blocks see, not the weights:

- **any input size** that is a multiple of the patch size: the positional embeddings are
  resampled (bicubic) to the input's grid, so a model can train at a lower resolution for
  most steps and at full size at the end (CLIPA) and still has one set of weights;
- **patch dropout** (FLIP): in training mode, ``patch_dropout`` of the patches of each image
  are dropped at random (the class token is always kept) after the positional embeddings,
  so the blocks see fewer tokens. Off in ``eval()`` and when ``patch_dropout == 0``; drawn
  from torch's RNG, so deterministic for a seed. A model setting (``vision.patch_dropout``),
  saved with the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cliplab.config import ViTConfig
from cliplab.models.transformer import LayerNorm, Transformer


def resample_positions(positions: torch.Tensor, old: int, grid: int) -> torch.Tensor:
    """Positional embeddings (1 + old*old, W) -> (1 + grid*grid, W): bicubic, antialiased, over
    the patch grid, as OpenCLIP's ``resize_pos_embed`` (the class token's row is kept).
    Returns ``positions`` when the grids match."""
    if old == grid:
        return positions
    cls, patches = positions[:1], positions[1:]  # (1, W), (g*g, W)
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)  # (1, W, g, g)
    patches = F.interpolate(
        patches.float(), size=(grid, grid), mode="bicubic", antialias=True, align_corners=False
    ).to(positions.dtype)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(grid * grid, -1)])


def drop_patches(x: torch.Tensor, drop: float) -> torch.Tensor:
    """Tokens (B, 1 + P, W) -> (B, 1 + K, W), K = max(1, int(P * (1 - drop))): the class
    token and K random patches per image, drawn as OpenCLIP's ``PatchDropout`` draws them
    (the top K of standard normals), so the same seed keeps the same patches."""
    b, p = x.shape[0], x.shape[1] - 1
    keep = max(1, int(p * (1 - drop)))
    index = torch.randn(b, p, device=x.device).topk(keep, dim=-1).indices + 1  # (B, K)
    patches = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # (B, K, W)
    return torch.cat([x[:, :1], patches], dim=1)


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
        patch = self.config.patch_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3] or x.shape[2] % patch:
            raise ValueError(
                f"images must have shape (batch, 3, S, S) with S a multiple of the patch size "
                f"{patch} (the model's size is {self.image_size}), got {tuple(x.shape)}"
            )
        x = self.conv1(x.to(self.conv1.weight.dtype))  # (B, width, grid, grid)
        grid = int(x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, grid**2, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, width)
        x = torch.cat([cls, x], dim=1)  # (B, grid**2 + 1, width)
        x = x + resample_positions(self.positional_embedding, self.config.grid_size, grid).to(
            x.dtype
        )
        if self.training and self.config.patch_dropout > 0:
            x = drop_patches(x, self.config.patch_dropout)  # (B, 1 + K, width)
        x = self.ln_pre(x)
        x = self.transformer(x)  # (B, tokens, width)
        x = self.ln_post(x[:, 0])  # (B, width)
        return x @ self.proj  # (B, embed_dim)
