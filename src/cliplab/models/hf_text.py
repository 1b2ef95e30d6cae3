"""A text tower from Hugging Face ``transformers``, as OpenCLIP's ``HFTextEncoder`` builds it
(its multilingual models: XLM-R towers). Token ids (B, L) -> features (B, embed_dim).

The transformer is ``AutoModel.from_config`` of the checkpoint's own config (no download);
its attention mask is the non-padding tokens (``input_ids != pad_token_id``); the pooled
feature (mean over those tokens, or the first token) is projected by an MLP or a linear map
(no biases). Parameter names are OpenCLIP's: ``transformer.*`` (transformers' own), ``proj.*``.
"""

from __future__ import annotations

import torch
from torch import nn

from cliplab.config import HFTextConfig


def _transformers():
    try:
        import transformers
    except ModuleNotFoundError as e:  # pragma: no cover - an install problem
        raise ModuleNotFoundError(
            "this model's text tower is a Hugging Face transformers model: pip install transformers"
        ) from e
    return transformers


class HFTextEncoder(nn.Module):
    """OpenCLIP's ``HFTextEncoder`` for a config the checkpoint carries."""

    def __init__(self, config: HFTextConfig, embed_dim: int) -> None:
        super().__init__()
        tf = _transformers()
        self.config = config
        self.context_length = config.context_length
        settings = config.settings
        hf_config = tf.AutoConfig.for_model(**settings)
        self.pad_id = int(getattr(hf_config, "pad_token_id", 0) or 0)
        pooling_layer = config.pooler == "cls_pooler"  # transformers' own pooler (dense, tanh)
        self.transformer = tf.AutoModel.from_config(hf_config, add_pooling_layer=pooling_layer)
        width = config.width
        if config.proj == "linear":
            self.proj: nn.Module = nn.Linear(width, embed_dim, bias=False)
        elif config.proj == "mlp":
            hidden = (width + embed_dim) // 2
            self.proj = nn.Sequential(
                nn.Linear(width, hidden, bias=False),
                nn.GELU(),
                nn.Linear(hidden, embed_dim, bias=False),
            )
        else:
            self.proj = nn.Identity()

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        mask = (text != self.pad_id).long()  # (B, L): the non-padding tokens
        out = self.transformer(input_ids=text, attention_mask=mask)
        if self.config.pooler == "mean_pooler":
            hidden = out.last_hidden_state * mask.unsqueeze(-1)  # (B, L, width)
            pooled = hidden.sum(dim=1) / mask.sum(-1, keepdim=True)  # (B, width)
        elif self.config.pooler == "cls_pooler" and out.pooler_output is not None:
            pooled = out.pooler_output  # (B, width)
        else:
            pooled = out.last_hidden_state[:, 0]  # (B, width)
        return self.proj(pooled)  # (B, embed_dim)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """Also after ``to_empty`` (a model built on the meta device, then loaded): the
        transformer's index buffers, which no checkpoint holds, get their values again."""
        module = super()._apply(fn, recurse)
        with torch.no_grad():
            for sub in self.transformer.modules():
                for name in sub._non_persistent_buffers_set:
                    buffer = sub._buffers.get(name)
                    if buffer is None or buffer.is_meta:
                        continue
                    if name == "position_ids":
                        buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
                    elif name == "token_type_ids":
                        buffer.zero_()
        return module
