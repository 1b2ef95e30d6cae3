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

from cliplab.checkpoints.api import convert, load, save
from cliplab.checkpoints.errors import CheckpointError
from cliplab.config import CLIPConfig, ResNetConfig, TextConfig, ViTConfig
from cliplab.factory import create_model, create_model_and_transforms
from cliplab.models import CLIP
from cliplab.presets import get_config, list_models
from cliplab.tokenizer import Tokenizer, decode, tokenize
from cliplab.tokenizer.files import get_tokenizer

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
