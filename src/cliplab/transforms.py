"""Image preprocessing for CLIP, without torchvision.

``EvalTransform`` reproduces OpenAI's ``clip.clip._transform(n_px)`` (also OpenCLIP's
``image_transform(n, is_train=False)``) exactly: resize the shortest side with PIL bicubic,
center crop, convert to RGB, scale to [0, 1], normalize. Training augmentation lives in
:mod:`cliplab.augment` (one module for every training run).

Every geometric step mirrors torchvision's PIL code path call for call (output-size rounding,
crop rounding, the early return when no resize is needed, zero padding), because the CLIP
checkpoints were trained and evaluated on exactly those pixels.

Two deliberate, documented deviations from "whatever OpenAI's pipeline does":

- ``PA`` images are converted to ``RGBA`` before resizing. Pillow resizes ``PA`` bicubically
  on its raw palette indices (only ``P`` and ``1`` are forced to nearest), which produces
  meaningless colours; OpenAI's pipeline inherits that. Our output for a ``PA`` image equals
  OpenAI's output for ``image.convert("RGBA")``.
- ``La`` (premultiplied luminance+alpha) cannot be converted to RGB by Pillow at all (OpenAI's
  pipeline raises); we convert it to ``LA`` first, so the output equals OpenAI's output for
  ``image.convert("LA")``.

SigLIP's preprocessing is ``EvalTransform(size, resize_mode="squash")``: the whole image
resized to the square size (no crop), bicubic or bilinear, converted to RGB first (alpha on
``background``) as transformers' processors do, then normalised (mean/std 0.5). Its
``resampler`` picks whose resampling: ``"pil"`` (Pillow's, what OpenCLIP and transformers'
``SiglipImageProcessorPil`` compute) or ``"torch"`` (``F.interpolate`` on uint8 with
antialiasing, what transformers' ``SiglipImageProcessor`` computes since transformers 5).

High-bit-depth modes (``I;16*``, ``I``, ``F``): Pillow's ``convert("RGB")`` clips values to
[0, 255] (truncating floats), so a 16-bit photo comes out almost white and a float image in
[0, 1] almost black. That is OpenAI's behaviour and stays the default (parity); pass
``rescale_high_bit_depth=True`` to map 16-bit ranges (and float [0, 1]) onto 8 bits instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "PREPROCESS_KEYS",
    "EvalTransform",
    "center_crop",
    "preprocess_settings",
    "resize_shortest_side",
    "resized_output_size",
    "to_normalized_tensor",
    "to_rgb",
]

#: Per-channel mean of OpenAI's training images (RGB, [0, 1] scale).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
#: Per-channel standard deviation of OpenAI's training images (RGB, [0, 1] scale).
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: Modes that carry an alpha channel (``P``/``L``/``RGB`` may instead carry
#: ``info["transparency"]``, which is honoured as well).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_INT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_HIGH_BIT_DEPTH_MODES = _INT16_MODES | {"I", "F"}
_UINT16_MAX = 65535.0


# --------------------------------------------------------------------------- input checks


def _as_pil_image(image: object) -> Image.Image:
    """Validate ``image`` and return it as a PIL image (uint8 HxW[xC] arrays are accepted)."""
    if isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, np.ndarray):
        pil = _array_to_pil(image)
    elif isinstance(image, torch.Tensor):
        raise TypeError(
            "expected a PIL.Image.Image (or an HxWxC uint8 numpy array), got a torch.Tensor: "
            "a tensor's layout (CHW or HWC) and value range are ambiguous, so convert it to a "
            "PIL image first"
        )
    else:
        raise TypeError(
            f"expected a PIL.Image.Image (or an HxWxC uint8 numpy array), got {type(image).__name__}"
        )
    if pil.width == 0 or pil.height == 0:
        raise ValueError(f"cannot preprocess an empty image (size {pil.width}x{pil.height})")
    return pil


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """An HxW, HxWx1, HxWx3 or HxWx4 uint8 array as an L, RGB or RGBA image."""
    if array.dtype != np.uint8:
        raise TypeError(
            f"numpy images must be uint8 (HxW or HxWxC with C in 1, 3, 4), got dtype {array.dtype}; "
            "convert other depths to a PIL image yourself"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(
            f"numpy images must be HxW or HxWxC with C in 1, 3, 4, got shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"cannot preprocess an empty image (array shape {array.shape})")
    return Image.fromarray(np.ascontiguousarray(array))


def _check_image_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"image_size must be an int, got {type(image_size).__name__}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return int(image_size)


def _check_background(background: object) -> tuple[int, int, int] | None:
    if background is None:
        return None
    if (
        not isinstance(background, Sequence)
        or isinstance(background, str)
        or len(background) != 3
        or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in background)
    ):
        raise ValueError(
            f"background must be None or an (r, g, b) tuple of ints in 0..255, got {background!r}"
        )
    return (int(background[0]), int(background[1]), int(background[2]))


def _check_channel_stats(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {len(values)}")
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------- colour


def _has_alpha(image: Image.Image) -> bool:
    """An alpha band, a ``transparency`` entry, or a palette with alpha (``P`` whose palette
    is ``RGBA``, as Pillow builds for in-memory palettes with transparent entries)."""
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return True
    palette = image.palette if image.mode == "P" else None
    return palette is not None and palette.mode.endswith("A")


def _high_bit_depth_to_float(image: Image.Image) -> np.ndarray:
    """Pixel values of an ``I;16*``/``I``/``F`` image mapped to [0, 1] (not yet clipped).

    16-bit and ``I`` images are taken as 0..65535 (Pillow opens 16-bit PNG/TIFF as ``I;16*``
    or, in older versions, ``I``); ``F`` images are taken as already in [0, 1], the usual
    convention for float images (skimage, ``torchvision.transforms.ToPILImage``).
    """
    array = np.asarray(image)
    if image.mode == "F":
        return array.astype(np.float64)
    return array.astype(np.float64) / _UINT16_MAX


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """8-bit ``L`` (``LA`` when a ``transparency`` value marks transparent pixels, as in
    16-bit grayscale PNGs with a tRNS chunk)."""
    values = np.nan_to_num(_high_bit_depth_to_float(image), nan=0.0, posinf=1.0, neginf=0.0)
    gray = Image.fromarray(np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8))
    key = image.info.get("transparency")
    if not isinstance(key, int):
        return gray
    alpha = np.where(np.asarray(image) == key, 0, 255).astype(np.uint8)
    return Image.merge("LA", (gray, Image.fromarray(alpha)))


def to_rgb(
    image: Image.Image,
    background: tuple[int, int, int] | None = None,
    *,
    rescale_high_bit_depth: bool = False,
) -> Image.Image:
    """Convert a PIL image of any mode to RGB.

    With the defaults this is exactly OpenAI's ``image.convert("RGB")`` (alpha is dropped,
    16-bit/float values are clipped to 0..255), except for ``La``, which Pillow cannot
    convert directly and goes through ``LA``. ``background=(r, g, b)`` alpha-composites
    images with alpha (``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``, or a ``transparency``
    entry in ``image.info`` as in palette PNGs/GIFs) onto that colour instead of dropping the
    alpha, e.g. ``(255, 255, 255)`` for emoji. ``rescale_high_bit_depth=True`` maps
    ``I;16*``/``I`` from 0..65535 and ``F`` from [0, 1] onto 0..255 (rounded, clipped)
    instead of clipping. May return ``image`` itself when it is already plain RGB.
    """
    image = _as_pil_image(image)
    bg = _check_background(background)
    if rescale_high_bit_depth and image.mode in _HIGH_BIT_DEPTH_MODES:
        image = _high_bit_depth_to_l(image)
    if image.mode == "La":
        image = image.convert("LA")
    if bg is not None and _has_alpha(image):
        canvas = Image.new("RGBA", image.size, (*bg, 255))
        return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _prepare(image: Image.Image, rescale_high_bit_depth: bool) -> Image.Image:
    """Mode fixes applied before any resizing (see the module docstring)."""
    if image.mode == "PA":
        return image.convert("RGBA")
    if image.mode == "La":
        return image.convert("LA")
    if rescale_high_bit_depth and image.mode in _INT16_MODES | {"I"}:
        # Resample in float: keeps 16-bit precision and avoids Pillow's bicubic resize of
        # I;16B/I;16N, which resamples byte-swapped values.
        return Image.fromarray(_high_bit_depth_to_float(image).astype(np.float32))
    return image


# --------------------------------------------------------------------------- geometry


def resized_output_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(new_height, new_width)`` for resizing the shortest side to ``size``.

    Exactly torchvision's ``Resize(int)``: the long side is ``int(size * long / short)``
    (truncated), and ties (square images) count as "width is the short side".
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w


def resize_shortest_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shortest side is ``size``, PIL bicubic, as torchvision's ``Resize(size)``.

    Pillow forces nearest-neighbour for ``P`` and ``1`` images and resamples ``RGBA``/``LA``
    with premultiplied alpha, exactly as in OpenAI's pipeline.
    """
    new_h, new_w = resized_output_size(image.height, image.width, size)
    if (image.height, image.width) == (new_h, new_w):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC)


def _crop(image: Image.Image, top: int, left: int, height: int, width: int) -> Image.Image:
    return image.crop((left, top, left + width, top + height))


def _pad_zeros(image: Image.Image, ltrb: tuple[int, int, int, int]) -> Image.Image:
    """torchvision's constant zero padding of a PIL image (keeps the palette of ``P``)."""
    bands = len(image.getbands())
    fill: int | tuple[int, ...] = 0 if bands == 1 else (0,) * bands
    if image.mode == "P":
        palette = image.getpalette()
        padded = ImageOps.expand(image, border=ltrb, fill=fill)
        padded.putpalette(palette)
        return padded
    return ImageOps.expand(image, border=ltrb, fill=fill)


def center_crop(image: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Center crop to ``size`` (int or ``(height, width)``) exactly as torchvision's CenterCrop.

    The offset is ``int(round((side - crop) / 2))`` (Python's round-half-to-even); an image
    smaller than the crop is first zero-padded, the extra pixel of an odd padding going
    right/bottom.
    """
    crop_h, crop_w = (size, size) if isinstance(size, int) else size
    if crop_h <= 0 or crop_w <= 0:
        raise ValueError(f"crop size must be positive, got {size!r}")
    width, height = image.size
    if crop_w > width or crop_h > height:
        ltrb = (
            (crop_w - width) // 2 if crop_w > width else 0,
            (crop_h - height) // 2 if crop_h > height else 0,
            (crop_w - width + 1) // 2 if crop_w > width else 0,
            (crop_h - height + 1) // 2 if crop_h > height else 0,
        )
        image = _pad_zeros(image, ltrb)
        width, height = image.size
        if crop_w == width and crop_h == height:
            return image
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return _crop(image, top, left, crop_h, crop_w)


# --------------------------------------------------------------------------- tensor


def to_normalized_tensor(
    image: Image.Image,
    mean: Sequence[float] | torch.Tensor = OPENAI_MEAN,
    std: Sequence[float] | torch.Tensor = OPENAI_STD,
) -> torch.Tensor:
    """RGB PIL image -> float32 ``[3, H, W]``: ``(pixel / 255 - mean) / std``.

    Same float32 operations as torchvision's ``ToTensor`` + ``Normalize``, so results are
    bit-identical. The transforms pass ``mean``/``std`` as precomputed ``[3, 1, 1]`` tensors.
    """
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
    if not isinstance(mean, torch.Tensor):
        mean = _stats_tensor(_check_channel_stats("mean", mean))
    if not isinstance(std, torch.Tensor):
        std = _stats_tensor(_check_channel_stats("std", std))
    array = np.array(image, dtype=np.uint8, copy=True)  # H x W x 3
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    return tensor.sub_(mean).div_(std)


def _stats_tensor(values: tuple[float, float, float]) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).view(-1, 1, 1)


def _fmt(values: Sequence[float], digits: int | None = None) -> str:
    return "(" + ", ".join(str(round(v, digits) if digits else v) for v in values) + ")"


# --------------------------------------------------------------------------- transforms


class _BaseTransform:
    """Shared colour/normalization settings of the eval and train transforms."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        background: tuple[int, int, int] | None,
        rescale_high_bit_depth: bool,
    ) -> None:
        self.image_size = _check_image_size(image_size)
        self.mean = _check_channel_stats("mean", mean)
        self.std = _check_channel_stats("std", std)
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must be non-zero, got {self.std!r}")
        self.background = _check_background(background)
        self.rescale_high_bit_depth = bool(rescale_high_bit_depth)
        self._mean = _stats_tensor(self.mean)
        self._std = _stats_tensor(self.std)

    def _finish(self, image: Image.Image) -> torch.Tensor:
        rgb = to_rgb(image, self.background, rescale_high_bit_depth=self.rescale_high_bit_depth)
        return to_normalized_tensor(rgb, self._mean, self._std)

    def _repr_tail(self) -> list[str]:
        return [
            f"ToRGB(background={self.background}, "
            f"rescale_high_bit_depth={self.rescale_high_bit_depth})",
            "ToTensor()",
            f"Normalize(mean={_fmt(self.mean)}, std={_fmt(self.std)})",
        ]

    def _repr_steps(self) -> list[str]:
        raise NotImplementedError

    def __repr__(self) -> str:
        lines = "".join(f"    {step}\n" for step in self._repr_steps() + self._repr_tail())
        return f"{type(self).__name__}(\n{lines})"


#: The settings a checkpoint may carry for its eval transform (``EvalTransform``'s arguments).
PREPROCESS_KEYS = (
    "mean",
    "std",
    "background",
    "resize_mode",
    "interpolation",
    "resize_size",
    "resampler",
)
_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def preprocess_settings(settings: dict) -> dict:
    """The eval-transform settings among ``settings`` (a checkpoint's ``preprocess``), JSON
    lists as tuples."""
    return {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in settings.items()
        if k in PREPROCESS_KEYS
    }


def _squash_torch(image: Image.Image, size: int, interpolation: str) -> torch.Tensor:
    """An RGB image resized to (size, size) by ``F.interpolate`` on its uint8 pixels with
    antialiasing, as transformers' torchvision-backed processors resize: (3, size, size)."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[
        None
    ]  # (1, 3, H, W)
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(
            pixels, size=(size, size), mode=interpolation, align_corners=False, antialias=True
        )
    return pixels[0]


class EvalTransform(_BaseTransform):
    """CLIP's eval preprocessing: PIL image -> float32 tensor ``[3, image_size, image_size]``.

    Resize the shortest side to ``image_size`` (PIL bicubic), center crop, convert to RGB
    (this order, as OpenAI's), scale to [0, 1], normalize with ``mean``/``std``. With the
    defaults the output equals OpenAI's ``clip.clip._transform(image_size)`` bit for bit.
    ``background`` and ``rescale_high_bit_depth`` are passed to :func:`to_rgb`.

    ``resize_mode="squash"`` is SigLIP's: convert to RGB, resize the whole image to
    ``resize_size`` (default ``image_size``) square with ``interpolation``, keep the top-left
    ``image_size`` pixels (all of them but for SO400M/14 at 384 px, whose patches see 378), by
    Pillow's resampling or torch's (``resampler``, see the module docstring).
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        background: tuple[int, int, int] | None = None,
        rescale_high_bit_depth: bool = False,
        resize_mode: str = "shortest",
        interpolation: str = "bicubic",
        resize_size: int | None = None,
        resampler: str = "pil",
    ) -> None:
        super().__init__(image_size, mean, std, background, rescale_high_bit_depth)
        for name, value, choices in (
            ("resize_mode", resize_mode, ("shortest", "squash")),
            ("interpolation", interpolation, tuple(_INTERPOLATION)),
            ("resampler", resampler, ("pil", "torch")),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if resize_mode == "shortest" and (interpolation, resize_size, resampler) != (
            "bicubic",
            None,
            "pil",
        ):
            raise ValueError('resize_mode "shortest" is OpenAI\'s: PIL bicubic, no resize_size')
        self.resize_mode = resize_mode
        self.interpolation = interpolation
        self.resize_size = _check_image_size(resize_size or self.image_size)
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size {resize_size} is smaller than image_size {image_size}")
        self.resampler = resampler

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Preprocess one image (PIL, or an HxW[xC] uint8 numpy array)."""
        image = _prepare(_as_pil_image(image), self.rescale_high_bit_depth)
        if self.resize_mode == "squash":
            return self._squash(image)
        image = resize_shortest_side(image, self.image_size)
        image = center_crop(image, self.image_size)
        return self._finish(image)

    def _squash(self, image: Image.Image) -> torch.Tensor:
        rgb = to_rgb(image, self.background, rescale_high_bit_depth=self.rescale_high_bit_depth)
        n, size = self.image_size, self.resize_size
        if self.resampler == "torch":
            pixels = _squash_torch(rgb, size, self.interpolation)[:, :n, :n].float()
            return pixels.div_(255).sub_(self._mean).div_(self._std)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), _INTERPOLATION[self.interpolation])
        return to_normalized_tensor(rgb.crop((0, 0, n, n)), self._mean, self._std)

    def _repr_steps(self) -> list[str]:
        n = self.image_size
        if self.resize_mode == "squash":
            crop = [f"Crop(top_left=({n}, {n}))"] if self.resize_size != n else []
            size = self.resize_size
            return [
                f"Resize(size=({size}, {size}), interpolation={self.interpolation}, "
                f"resampler={self.resampler})",
                *crop,
            ]
        return [f"Resize(shortest_side={n}, interpolation=bicubic)", f"CenterCrop(size=({n}, {n}))"]
