"""The pre-LN transformer shared by both towers, with OpenAI's parameter names.

Parameter names match OpenAI's ``clip/model.py`` (``attn.in_proj_weight``, ``mlp.c_fc``...),
so OpenAI and OpenCLIP state dicts load without renaming. Attention is computed with
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU), batch-first.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

KeyValues = tuple[torch.Tensor, torch.Tensor]  # one layer's keys and values (B, H, L, D/H)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back, as OpenAI's (safe for fp16 weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        y = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI's GELU approximation ``x * sigmoid(1.702 x)``, used by all released models."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":  # SigLIP's (big_vision's default GELU)
        return nn.GELU(approximate="tanh")
    raise ValueError(f"unknown activation {name!r}; expected 'quick_gelu', 'gelu' or 'gelu_tanh'")


def mlp(width: int, mlp_width: int, activation: str) -> nn.Sequential:
    """``c_fc``, the activation, ``c_proj`` (OpenAI's names)."""
    return nn.Sequential(
        OrderedDict(
            [
                ("c_fc", nn.Linear(width, mlp_width)),
                ("gelu", make_activation(activation)),
                ("c_proj", nn.Linear(mlp_width, width)),
            ]
        )
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        prefix: KeyValues | None = None,
        keep: list[KeyValues] | None = None,
    ) -> torch.Tensor:
        """``prefix``: keys and values (1, H, P, D/H) of P positions that come before every
        row of ``x`` (a prefix the rows share, computed once); ``keep``: a list this call
        appends its own keys and values to, to serve as a later call's ``prefix``."""
        B, L, D = x.shape  # (batch, tokens, width)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
        q, k, v = qkv.view(B, L, 3, self.heads, D // self.heads).permute(
            2, 0, 3, 1, 4
        )  # (B, H, L, D/H)
        if keep is not None:
            keep.append((k, v))
        if prefix is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, L, D/H)
        else:
            P = prefix[0].shape[2]
            k = torch.cat([prefix[0].expand(B, -1, -1, -1), k], dim=2)  # (B, H, P+L, D/H)
            v = torch.cat([prefix[1].expand(B, -1, -1, -1), v], dim=2)
            # row i of x sits at position P+i: it sees the prefix and x's rows up to i
            mask = (
                torch.ones(L, P + L, dtype=torch.bool, device=x.device).tril(P) if causal else None
            )
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, D/H)
        return self.out_proj(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class ResidualAttentionBlock(nn.Module):
    """``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(
        self, width: int, heads: int, mlp_width: int, activation: str, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = mlp(width, mlp_width, activation)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        prefix: KeyValues | None = None,
        keep: list[KeyValues] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal, prefix=prefix, keep=keep)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks (``resblocks.N`` as in OpenAI's state dicts)."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_width: int,
        activation: str,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_width, activation, eps) for _ in range(layers)
        )

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        prefix: list[KeyValues] | None = None,
        keep: list[KeyValues] | None = None,
    ) -> torch.Tensor:
        """``keep``: a list that collects each layer's keys and values; ``prefix``: such a
        list from an earlier call on positions that precede every row of ``x`` (exact with
        causal attention: a prefix shared by a batch of prompts is computed once)."""
        for i, block in enumerate(self.resblocks):  # x: (B, L, width)
            x = block(x, causal=causal, prefix=None if prefix is None else prefix[i], keep=keep)
        return x

    @torch.no_grad()
    def init_weights(self) -> None:
        """OpenAI's initialisation (GPT-2 style, output projections scaled by depth)."""
        proj_std = (self.width**-0.5) * ((2 * self.layers) ** -0.5)
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            for ln in (block.ln_1, block.ln_2):
                nn.init.ones_(ln.weight)
                nn.init.zeros_(ln.bias)
