"""Model architectures: one file each (``vit.py``, ``resnet.py``, ``text.py``) and ``CLIP``."""

from cliplab.models.clip import CLIP, MAX_LOGIT_SCALE, build_vision_tower
from cliplab.models.resnet import ModifiedResNet
from cliplab.models.text import TextTransformer
from cliplab.models.vit import VisionTransformer

__all__ = [
    "CLIP",
    "MAX_LOGIT_SCALE",
    "ModifiedResNet",
    "TextTransformer",
    "VisionTransformer",
    "build_vision_tower",
]
