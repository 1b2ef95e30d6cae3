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

The same tower with switches (:class:`~cliplab.config.ViTConfig`) is SigLIP's image encoder
(no class token, a patch bias, no ``ln_pre``, the "MAP" attention-pooling head, no
projection) and OpenCLIP's variants (``no_ln_pre``, average pooling, the final LayerNorm
after pooling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cliplab.config import ViTConfig
from cliplab.models.transformer import LayerNorm, SelfAttention, Transformer, mlp


def resample_positions(
    positions: torch.Tensor, old: int, grid: int, prefix: int = 1, mode: str = "bicubic"
) -> torch.Tensor:
    """Positional embeddings (prefix + old*old, W) -> (prefix + grid*grid, W): ``mode``
    (bicubic as OpenCLIP's ``resize_pos_embed``, bilinear as SigLIP 2's), antialiased, over
    the patch grid; the ``prefix`` rows (a class token's) are kept. Returns ``positions``
    when the grids match."""
    if old == grid:
        return positions
    head, patches = positions[:prefix], positions[prefix:]  # (prefix, W), (g*g, W)
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)  # (1, W, g, g)
    patches = F.interpolate(
        patches.float(), size=(grid, grid), mode=mode, antialias=True, align_corners=False
    ).to(positions.dtype)
    return torch.cat([head, patches.permute(0, 2, 3, 1).reshape(grid * grid, -1)])


def drop_patches(x: torch.Tensor, drop: float, prefix: int = 1) -> torch.Tensor:
    """Tokens (B, prefix + P, W) -> (B, prefix + K, W), K = max(1, int(P * (1 - drop))): the
    class token (if any) and K random patches per image, drawn as OpenCLIP's
    ``PatchDropout`` draws them (the top K of standard normals), so the same seed keeps the
    same patches."""
    b, p = x.shape[0], x.shape[1] - prefix
    keep = max(1, int(p * (1 - drop)))
    index = torch.randn(b, p, device=x.device).topk(keep, dim=-1).indices + prefix  # (B, K)
    patches = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # (B, K, W)
    return torch.cat([x[:, :prefix], patches], dim=1)


class AttentionPool(nn.Module):
    """SigLIP's "MAP" head: tokens (B, L, W) -> (B, W). A learnt probe attends to every token
    (multi-head, ``nn.MultiheadAttention``'s parameter layout), then ``y + mlp(ln(y))``."""

    def __init__(self, width: int, heads: int, mlp_width: int, activation: str, eps: float):
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.attn = SelfAttention(width, heads)  # its parameters; queried by the probe below
        self.ln = LayerNorm(width, eps=eps)
        self.mlp = mlp(width, mlp_width, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape  # (batch, tokens, width)
        h = self.heads
        w_q, w_kv = self.attn.in_proj_weight.split([D, 2 * D])
        b_q, b_kv = self.attn.in_proj_bias.split([D, 2 * D])
        q = F.linear(self.probe.to(x.dtype), w_q, b_q)  # (1, 1, D)
        q = q.expand(B, 1, D).view(B, 1, h, D // h).transpose(1, 2)  # (B, H, 1, D/H)
        k, v = F.linear(x, w_kv, b_kv).view(B, L, 2, h, D // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, D/H)
        y = self.attn.out_proj(y.transpose(1, 2).reshape(B, 1, D))  # (B, 1, D)
        y = y + self.mlp(self.ln(y))
        return y[:, 0]  # (B, D)


class VisionTransformer(nn.Module):
    """Images (B, 3, S, S) -> image features (B, embed_dim), unnormalised.

    Patches are embedded by a strided convolution (bias-free in CLIP), a class token is
    prepended, positional embeddings added, then ``ln_pre``, the transformer, ``ln_post`` on
    the class token and a linear projection; ``config`` switches each of these (SigLIP:
    no class token, no ``ln_pre``, ``ln_post`` on every token then the MAP head).
    """

    def __init__(self, config: ViTConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        w, eps = config.width, config.layer_norm_eps
        self.conv1 = nn.Conv2d(
            3, w, kernel_size=config.patch_size, stride=config.patch_size, bias=config.patch_bias
        )
        if config.class_token:
            self.class_embedding = nn.Parameter(torch.empty(w))
        self.positional_embedding = nn.Parameter(torch.empty(config.num_positions, w))
        self.ln_pre = LayerNorm(w, eps=eps) if config.ln_pre else nn.Identity()
        self.transformer = Transformer(
            w, config.layers, config.heads, config.mlp_width, config.activation, eps
        )
        self.ln_post = LayerNorm(w, eps=eps)
        if config.pool == "map":
            self.attn_pool = AttentionPool(
                w, config.heads, config.mlp_width, config.activation, eps
            )
        self.proj = (
            nn.Parameter(torch.empty(w, embed_dim)) if config.projection == "matrix" else None
        )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        scale = self.config.width**-0.5
        for p in (getattr(self, "class_embedding", None), self.positional_embedding, self.proj):
            if p is not None:
                nn.init.normal_(p, std=scale)
        nn.init.kaiming_uniform_(self.conv1.weight, a=5**0.5)  # nn.Conv2d's default
        if self.conv1.bias is not None:
            nn.init.zeros_(self.conv1.bias)
        for ln in self.modules():
            if isinstance(ln, LayerNorm):
                nn.init.ones_(ln.weight)
                nn.init.zeros_(ln.bias)
        self.transformer.init_weights()
        if self.config.pool == "map":
            pool = self.attn_pool
            nn.init.normal_(pool.probe, std=scale)
            nn.init.normal_(pool.attn.in_proj_weight, std=scale)
            nn.init.zeros_(pool.attn.in_proj_bias)

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
        config, prefix = self.config, int(self.config.class_token)
        if prefix:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, width)
            x = torch.cat([cls, x], dim=1)  # (B, 1 + grid**2, width)
        positions = resample_positions(
            self.positional_embedding, config.grid_size, grid, prefix, config.pos_interpolation
        )
        x = x + positions.to(x.dtype)
        if self.training and config.patch_dropout > 0:
            x = drop_patches(x, config.patch_dropout, prefix)  # (B, prefix + K, width)
        x = self.ln_pre(x)
        x = self.transformer(x)  # (B, tokens, width)
        x = self._pool(x)  # (B, width)
        return x if self.proj is None else x @ self.proj  # (B, embed_dim)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L, width) -> the image's feature before the projection (B, width)."""
        pool, prefix = self.config.pool, int(self.config.class_token)
        if pool == "map":  # SigLIP: LayerNorm on every token, then the attention-pooling head
            return self.attn_pool(self.ln_post(x))
        if pool == "tok":  # LayerNorm acts per token: the class token's alone suffices
            return self.ln_post(x[:, 0])
        if self.config.final_ln_after_pool:
            return self.ln_post(x[:, prefix:].mean(dim=1))
        return self.ln_post(x[:, prefix:]).mean(dim=1)
