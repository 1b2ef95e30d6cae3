"""cliplab: CLIP (Radford et al. 2021), complete and verified against the references.

The familiar entry points::

    import cliplab
    model, preprocess = cliplab.load("ViT-B-32.pt")          # OpenAI / OpenCLIP / HF / cliplab
    model = cliplab.create_model("tiny-vit")                 # any preset, random weights
    tokens = cliplab.tokenize(["a photo of a cat"])          # (1, 77) LongTensor
    tokens = cliplab.get_tokenizer(model)(["a photo of a cat"])  # the model's own (SigLIP's)
    image_features = model.encode_image(preprocess(img)[None])
    text_features = model.encode_text(tokens)
"""

from __future__ import annotations

from cliplab._lazy import lazy_exports

#: Where each public name lives; imported on first use, so ``import cliplab.data...`` and
#: the commands that need no model (data download, curate) do not pay for importing torch.
_EXPORTS = {
    "convert": "cliplab.checkpoints.api",
    "load": "cliplab.checkpoints.api",
    "save": "cliplab.checkpoints.api",
    "CheckpointError": "cliplab.checkpoints.errors",
    "CLIPConfig": "cliplab.config",
    "ResNetConfig": "cliplab.config",
    "TextConfig": "cliplab.config",
    "ViTConfig": "cliplab.config",
    "create_model": "cliplab.factory",
    "create_model_and_transforms": "cliplab.factory",
    "CLIP": "cliplab.models",
    "get_config": "cliplab.presets",
    "list_models": "cliplab.presets",
    "Tokenizer": "cliplab.tokenizer",
    "decode": "cliplab.tokenizer",
    "tokenize": "cliplab.tokenizer",
    "get_tokenizer": "cliplab.tokenizer.files",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__version__ = "0.1.0"

__all__ = [
    "CLIP",
    "CLIPConfig",
    "CheckpointError",
    "ResNetConfig",
    "TextConfig",
    "Tokenizer",
    "ViTConfig",
    "__version__",
    "convert",
    "create_model",
    "create_model_and_transforms",
    "decode",
    "get_config",
    "get_tokenizer",
    "list_models",
    "load",
    "save",
    "tokenize",
]
