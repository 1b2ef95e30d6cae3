"""Training augmentation, in one place: what every training image goes through.

Every training run, streamed from shards or replayed from an in-memory cache, prepares each
image the same way and augments whole batches with :class:`Augment`:

1. **prepare** (per image, :func:`square`): an RGB image resized (bicubic) so its shorter
   side is the model's size and center-cropped to a square, kept as ``uint8`` (S, S, 3): the
   eval transform's geometry, without normalising, so it can be cached cheaply;
2. **augment** (per batch, :class:`Augment`): photometric changes (colour jitter, grey, blur,
   negatives: :func:`color_augment`), normalisation with CLIP's mean and std, and a random
   resized crop of each image (:func:`random_resized_crop`), all as tensor operations on the
   whole batch, driven by one ``torch.Generator`` (reproducible, resumable).

The paper: "a random square crop from resized images is the only data augmentation". The
crop samples the area fraction and the aspect ratio as torchvision's ``RandomResizedCrop``
does (``crop_scale``, ``crop_ratio``) and resamples bilinearly with ``grid_sample``; the
photometric steps default to off. Adding an augmentation is one field of
:class:`AugmentConfig` and a few lines of :meth:`Augment.__call__`: it is then a
``[data.augment]`` key of every training config and reaches every run.

:class:`TrainTransform` is the same augmentation for one PIL image at a time (a batch of
one), for code that wants a per-image callable (``cliplab.create_model_and_transforms``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cliplab.transforms import OPENAI_MEAN, OPENAI_STD, center_crop, resize_shortest_side, to_rgb

__all__ = [
    "Augment",
    "AugmentConfig",
    "TrainTransform",
    "color_augment",
    "random_resized_crop",
    "square",
]


@dataclass(frozen=True)
class AugmentConfig:
    """The training augmentation (``[data.augment]`` of a training config).

    ``crop``: the random resized crop (area fraction in ``crop_scale``, aspect ratio in
    ``crop_ratio``; OpenCLIP's defaults) or, when false, the prepared square as it is.
    ``color_jitter``: brightness, contrast and saturation factors each in [1 - j, 1 + j];
    ``grayscale``, ``blur``, ``invert``: the probability of a grey image, of a 3x3 binomial
    blur and of the negative ``1 - x``.
    """

    crop: bool = True
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    color_jitter: float = 0.0
    grayscale: float = 0.0
    blur: float = 0.0
    invert: float = 0.0

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio"):
            value = tuple(float(x) for x in getattr(self, name))
            object.__setattr__(self, name, value)
            lo, hi = value if len(value) == 2 else (0.0, -1.0)
            top = 1.0 if name == "crop_scale" else math.inf
            if not 0 < lo <= hi <= top:
                raise ValueError(
                    f"augment.{name} must be [low, high] with 0 < low <= high"
                    f"{' <= 1' if top == 1 else ''}, got {list(value)}"
                )
        if not 0 <= self.color_jitter < 1:
            raise ValueError(f"augment.color_jitter must be in [0, 1), got {self.color_jitter}")
        for name in ("grayscale", "blur", "invert"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment.{name} is a probability, got {getattr(self, name)}")


def square(image: Image.Image, size: int) -> torch.Tensor:
    """An image -> (size, size, 3) uint8: RGB, shorter side resized to ``size`` (bicubic),
    center-cropped (the geometry of the eval transform, kept in 8 bits to cache cheaply)."""
    image = center_crop(resize_shortest_side(to_rgb(image), size), size)
    return torch.from_numpy(np.array(image, dtype=np.uint8))  # a copy: writable, owned


def random_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator | None,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> torch.Tensor:
    """A random resized crop per image of ``images`` (B, C, S, S), resampled to S x S.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio), as torchvision samples them; a
    crop that would not fit is shrunk to fit (instead of torchvision's sequential retry loop).
    Bilinear sampling; the crop stays inside the image, and a sample that falls within half a
    pixel of its edge reads the edge pixel (``padding_mode="border"``).
    """
    b, c, s, _ = images.shape
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # fractions of the side
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)  # centre, in [-1, 1] coords
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    theta = torch.zeros(b, 2, 3, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = w, h, cx, cy
    grid = F.affine_grid(theta, [b, c, s, s], align_corners=False)  # (B, S, S, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


_LUMA = (0.299, 0.587, 0.114)


def color_augment(
    images: torch.Tensor,
    generator: torch.Generator | None,
    jitter: float = 0.0,
    grayscale: float = 0.0,
    blur: float = 0.0,
    invert: float = 0.0,
) -> torch.Tensor:
    """Per-image photometric augmentation of ``images`` (B, 3, H, W) in [0, 1].

    ``jitter``: brightness, contrast and saturation factors each ~ U(1 - j, 1 + j);
    ``grayscale``: probability of a grey (luma) image; ``blur``: probability of a 3x3
    binomial blur; ``invert``: probability of the negative ``1 - x`` (light drawings on a
    dark ground, as in Fashion-MNIST, where every training image is dark on white). Emoji of
    another vendor differ from the training style in shading, palette and line weight: these
    make the image tower lean less on them.
    """
    b = images.shape[0]
    x = images.clone()  # changed in place below; the caller's batch is left alone

    def grey_of(x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) luma
        return x[:, 0:1] * _LUMA[0] + x[:, 1:2] * _LUMA[1] + x[:, 2:3] * _LUMA[2]

    if jitter > 0:
        factors = 1 + (torch.rand(3, b, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        x.mul_(factors[0])  # brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x.sub_(mean).mul_(factors[1]).add_(mean)  # contrast
        grey = grey_of(x)
        x.sub_(grey).mul_(factors[2]).add_(grey)  # saturation
    if grayscale > 0:
        chosen = torch.rand(b, 1, 1, 1, generator=generator) < grayscale
        x = torch.where(chosen, grey_of(x), x)  # grey broadcast over the channels
    if blur > 0:
        chosen = (torch.rand(b, generator=generator) < blur).nonzero().flatten()
        if len(chosen):  # the binomial kernel is separable: two 3-tap passes, chosen only
            p = F.pad(x[chosen], (1, 1, 1, 1), mode="replicate")  # (n, 3, H + 2, W + 2)
            p = (p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]) / 4  # along W
            p = (p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]) / 4  # along H
            x = x.index_copy(0, chosen, p)
    if invert > 0:
        chosen = torch.rand(b, 1, 1, 1, generator=generator) < invert
        x = torch.where(chosen, 1 - x.clamp(0, 1), x)
    return x.clamp_(0, 1)


class Augment:
    """Prepared ``uint8`` images (B, S, S, 3) -> augmented, normalised float (B, 3, S, S).

    Photometric steps first (on [0, 1] values), then normalisation, then the crop. Picklable,
    so data-loader workers run it on the batches they build.
    """

    def __init__(
        self,
        config: AugmentConfig | None = None,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
    ) -> None:
        self.config = config or AugmentConfig()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (B, S, S, 3), got {tuple(images.shape)}")
        c = self.config
        x = images.permute(0, 3, 1, 2).float().div_(255)  # (B, 3, S, S) in [0, 1]
        if c.color_jitter or c.grayscale or c.blur or c.invert:
            x = color_augment(x, generator, c.color_jitter, c.grayscale, c.blur, c.invert)
        x = x.sub_(self.mean).div_(self.std)  # x is this call's own tensor
        if c.crop:
            x = random_resized_crop(x, generator, c.crop_scale, c.crop_ratio)
        return x.contiguous()

    def __repr__(self) -> str:
        return f"Augment({self.config})"


class TrainTransform:
    """The training augmentation for one image: PIL image -> float (3, S, S).

    :func:`square`, then :class:`Augment` on a batch of one, so a per-image pipeline trains
    on exactly what cliplab's loader feeds (``generator``: a ``torch.Generator``, else torch's
    global RNG). ``scale``/``ratio`` are the crop's (``AugmentConfig.crop_scale``/``crop_ratio``).
    """

    def __init__(
        self,
        image_size: int,
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        config: AugmentConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.image_size = image_size
        self.augment = Augment(config or AugmentConfig(crop_scale=scale, crop_ratio=ratio))
        self.generator = generator

    def __call__(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        pixels = square(image, self.image_size)[None]  # (1, S, S, 3)
        return self.augment(pixels, generator or self.generator)[0]

    def __repr__(self) -> str:
        return f"TrainTransform(image_size={self.image_size}, {self.augment.config})"
