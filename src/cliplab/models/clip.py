"""The CLIP model: an image tower and a text tower embedded in one space.

State-dict layout: ``visual.*`` as OpenAI's; the text tower lives under ``text.*`` (OpenAI
keeps it at the root; ``cliplab.checkpoints`` renames between the two).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cliplab.config import CLIPConfig, HFTextConfig, ResNetConfig, TextConfig, ViTConfig
from cliplab.models.resnet import ModifiedResNet
from cliplab.models.text import TextTransformer
from cliplab.models.vit import VisionTransformer

#: The cap on the logits' scale ``exp(t)`` (the paper's 100): training clamps the learnt
#: ``logit_scale`` (which is ``t``) at ``log(MAX_LOGIT_SCALE)``, inference never scales above it.
MAX_LOGIT_SCALE = 100.0


def build_vision_tower(config: ViTConfig | ResNetConfig, embed_dim: int) -> nn.Module:
    """The image encoder that ``config.kind`` names."""
    if isinstance(config, ViTConfig):
        return VisionTransformer(config, embed_dim)
    if isinstance(config, ResNetConfig):
        return ModifiedResNet(config, embed_dim)
    raise TypeError(f"unknown vision config {config!r}")


def build_text_tower(config: TextConfig | HFTextConfig, embed_dim: int) -> nn.Module:
    """The text encoder that ``config.kind`` names (a transformers model for ``"hf"``)."""
    if isinstance(config, HFTextConfig):
        from cliplab.models.hf_text import HFTextEncoder

        return HFTextEncoder(config, embed_dim)
    return TextTransformer(config, embed_dim)


class CLIP(nn.Module):
    """Contrastive image-text model (Radford et al. 2021).

    ``encode_image``/``encode_text`` return projected, unnormalised features as OpenAI's;
    ``forward`` returns ``(logits_per_image, logits_per_text)``, each scaled by
    ``exp(logit_scale)``, as OpenAI's.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = build_vision_tower(config.vision, config.embed_dim)
        self.text = build_text_tower(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        if config.logit_bias_init is not None:  # SigLIP's bias (a parameter only when used)
            self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init)))

    @property
    def dtype(self) -> torch.dtype:
        return self.logit_scale.dtype

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images (B, 3, S, S) -> features (B, embed_dim)."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids (B, L) from ``cliplab.tokenize`` -> features (B, embed_dim)."""
        features = self.text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self, images: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image_features = self.encode_image(images, normalize=True)  # (N, E)
        text_features = self.encode_text(text, normalize=True)  # (M, E)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()  # (N, M)
        if self.config.logit_bias_init is not None:
            logits_per_image = logits_per_image + self.logit_bias
        return logits_per_image, logits_per_image.t()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
