"""cliplab.transforms against OpenAI's, OpenCLIP's and torchvision's preprocessing.

Parity is checked on random images of many sizes (smaller and larger than the target, odd,
non-square, extreme aspect ratios, 1x1) in every PIL mode the references handle; the
measured differences are 0 (bit-identical) and the tolerance is the 1e-5 of the spec.
"""

from __future__ import annotations

import pickle
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image

import refs
from cliplab.augment import TrainTransform
from cliplab.transforms import (
    OPENAI_MEAN,
    OPENAI_STD,
    EvalTransform,
    center_crop,
    resized_output_size,
    to_normalized_tensor,
    to_rgb,
)

pytestmark = pytest.mark.filterwarnings(
    # Pillow's own advice when converting palette images with per-index alpha (both sides).
    "ignore:Palette images with Transparency expressed in bytes:UserWarning"
)

ATOL = 1e-5
SIZES = (32, 64, 224, 336)
#: One 8-bit level after normalization (the largest 1/std), for approximate checks.
ONE_LEVEL = 1.0 / 255.0 / min(OPENAI_STD) + 1e-6

MODES = (
    "1",
    "L",
    "LA",
    "La",
    "P",
    "P+transparency",
    "P+transparency-bytes",
    "PA",
    "RGB",
    "RGB+transparency",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "I",
    "I;16",
    "I;16L",
    "I;16B",
    "I;16N",
    "F",
    "F01",
)
#: (width, height): smaller/larger than the targets, odd, non-square, 1x1.
SHAPES = (
    (1, 1),
    (2, 3),
    (17, 31),
    (32, 32),
    (63, 64),
    (100, 37),
    (37, 100),
    (225, 224),
    (513, 257),
)
EXTREME_SHAPES = ((1000, 3), (3, 1000))


@cache
def make_image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    """A random image in ``mode`` (plus a few pseudo-modes with a ``transparency`` entry).

    Cached: the transforms under test must not (and do not) modify their input.
    """
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[: max(1, height // 3), :, 3] = 0  # a fully transparent band, as in emoji
    rgba_img = Image.fromarray(rgba)
    rgb = rgba_img.convert("RGB")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        values = rng.integers(0, 65536, (height, width), dtype=np.uint16)
        values[:, : max(1, width // 2)] //= 256  # half dark, so clipping is not all 255
        dtype = {"I;16B": ">u2", "I;16N": "=u2"}.get(mode, "<u2")
        return Image.frombytes(mode, (width, height), values.astype(dtype).tobytes())
    if mode == "I":
        return Image.fromarray(rng.integers(-1000, 70000, (height, width)).astype(np.int32))
    if mode == "F":
        return Image.fromarray(rng.uniform(-50.0, 400.0, (height, width)).astype(np.float32))
    if mode == "F01":
        return Image.fromarray(rng.uniform(0.0, 1.0, (height, width)).astype(np.float32))
    if mode.startswith("P"):
        indices = rng.integers(0, 64, (height, width), dtype=np.uint8)
        image = Image.frombytes("P", (width, height), indices.tobytes())
        image.putpalette(rng.integers(0, 256, 64 * 3, dtype=np.uint8).tobytes())
        if mode == "PA":
            image = image.convert("PA")
            image.putalpha(rgba_img.getchannel("A"))
        elif mode == "P+transparency":
            image.info["transparency"] = int(indices[0, 0])
        elif mode == "P+transparency-bytes":
            alpha = rng.integers(0, 256, 64, dtype=np.uint8)
            alpha[indices[0, 0]] = 0
            image.info["transparency"] = bytes(alpha)
        return image
    if mode == "RGB+transparency":
        rgb.info["transparency"] = tuple(int(c) for c in rgba[0, 0, :3])
        return rgb
    if mode in ("LA", "La"):
        return rgba_img.convert("LA").convert(mode)
    if mode in ("RGBA", "RGBa"):
        return rgba_img.convert(mode)
    return rgb.convert(mode)


def openai_reference_input(image: Image.Image) -> Image.Image:
    """What our output for ``image`` must equal OpenAI's output of (documented deviations)."""
    if image.mode == "PA":  # Pillow resizes PA bicubically on palette indices
        return image.convert("RGBA")
    if image.mode == "La":  # Pillow cannot convert La to RGB
        return image.convert("LA")
    return image


def torchvision_train(n: int, scale: tuple[float, float], ratio: tuple[float, float]):
    T = refs.torchvision_transforms()
    return T.Compose(
        [
            T.RandomResizedCrop(
                n, scale=scale, ratio=ratio, interpolation=T.InterpolationMode.BICUBIC
            ),
            lambda image: image.convert("RGB"),
            T.ToTensor(),
            T.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == torch.float32
    return float((a - b).abs().max())


# --------------------------------------------------------------------------- eval parity


#: Modes checked at the large sizes too (the full list runs at the small ones).
LARGE_SIZE_MODES = ("RGB", "L", "RGBA", "P+transparency", "PA", "I;16B", "F")
LARGE_SIZE_SHAPES = ((1, 1), (37, 100), (225, 224), (513, 257))


@pytest.mark.parametrize("n", SIZES)
def test_eval_matches_openai_and_openclip(n: int) -> None:
    ours = EvalTransform(n)
    openai = refs.openai_preprocess(n)
    openclip = refs.open_clip().image_transform(n, is_train=False)
    small = n <= 64
    modes = MODES if small else LARGE_SIZE_MODES
    shapes = SHAPES + EXTREME_SHAPES if small else LARGE_SIZE_SHAPES
    for mode in modes:
        for k, (w, h) in enumerate(shapes):
            image = make_image(mode, w, h, seed=k)
            out = ours(image)
            assert out.shape == (3, n, n)
            reference_input = openai_reference_input(image)
            assert max_diff(out, openai(reference_input)) <= ATOL, (mode, (w, h))
            assert max_diff(out, openclip(reference_input)) <= ATOL, (mode, (w, h))


@pytest.mark.parametrize("n", (224, 336))
def test_eval_extreme_aspect_ratios_large_sizes(n: int) -> None:
    ours, openai = EvalTransform(n), refs.openai_preprocess(n)
    for mode, (w, h) in (("RGB", (1000, 3)), ("L", (3, 1000))):
        image = make_image(mode, w, h)
        assert max_diff(ours(image), openai(image)) <= ATOL


def test_openai_pipeline_fails_on_la_and_mangles_pa() -> None:
    """Why La and PA deviate: OpenAI's pipeline raises on La and interpolates PA indices."""
    openai = refs.openai_preprocess(32)
    with pytest.raises(ValueError):
        openai(make_image("La", 40, 50))
    pa = make_image("PA", 40, 50)
    mangled = openai(pa)
    sane = openai(pa.convert("RGBA"))
    assert max_diff(mangled, sane) > 0.5
    assert max_diff(EvalTransform(32)(pa), sane) == 0.0


def test_resized_output_size_matches_torchvision() -> None:
    functional = refs.torchvision_transforms().functional
    rng = np.random.default_rng(0)
    cases = [(h, w, s) for h in (1, 2, 3, 7, 224, 225) for w in (1, 3, 224, 1000) for s in SIZES]
    cases += [tuple(int(x) for x in rng.integers(1, 5000, 3)) for _ in range(2000)]
    for h, w, size in cases:
        expected = functional._compute_resized_output_size((h, w), [size])
        assert list(resized_output_size(h, w, size)) == expected, (h, w, size)


@pytest.mark.parametrize("mode", ("RGB", "L", "P", "RGBA", "F", "I;16", "1", "CMYK"))
def test_center_crop_matches_torchvision_including_padding(mode: str) -> None:
    T = refs.torchvision_transforms()
    for w, h in ((1, 1), (3, 2), (5, 9), (10, 10), (31, 8), (64, 65)):
        image = make_image(mode, w, h)
        for size in ((10, 10), (7, 12), (1, 1), (64, 33)):
            ours = center_crop(image, size)
            theirs = T.CenterCrop(size)(image)
            assert ours.mode == theirs.mode and ours.size == theirs.size
            assert np.array_equal(np.asarray(ours), np.asarray(theirs)), (mode, (w, h), size)
            if mode == "P":
                assert ours.getpalette() == theirs.getpalette()


# --------------------------------------------------------------------------- train parity

TRAIN_CONFIGS = (
    ((0.9, 1.0), (3.0 / 4.0, 4.0 / 3.0)),
    ((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)),
    ((0.9, 1.0), (1.0, 1.0)),
    ((0.3, 0.6), (0.5, 2.0)),
)


TRAIN_SHAPES = ((1, 1), (2, 3), (17, 31), (100, 37), (513, 257), (1000, 3), (3, 1000))


# --------------------------------------------------------------------------- to_rgb


@pytest.mark.parametrize("mode", [m for m in MODES if m != "La"])
def test_to_rgb_default_is_pillow_convert(mode: str) -> None:
    image = make_image(mode, 13, 11)
    assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")))


def test_to_rgb_la_goes_through_la() -> None:
    image = make_image("La", 13, 11)
    assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("LA").convert("RGB")))


def test_pillow_clips_high_bit_depth() -> None:
    """What Pillow (hence OpenAI) does with 16-bit/32-bit/float: clip to 0..255."""
    values = np.array([[0, 100, 255, 256, 1000, 65535]], dtype=np.uint16)
    for mode, dtype in (("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")):
        image = Image.frombytes(mode, (6, 1), values.astype(dtype).tobytes())
        assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 100, 255, 255, 255, 255]
    ints = Image.fromarray(np.array([[-5, 0, 1, 255, 256, 70000]], dtype=np.int32))
    assert np.asarray(to_rgb(ints))[0, :, 0].tolist() == [0, 0, 1, 255, 255, 255]
    floats = Image.fromarray(np.array([[-1.0, 0.4, 0.6, 1.0, 1.6, 300.0]], dtype=np.float32))
    assert np.asarray(to_rgb(floats))[0, :, 0].tolist() == [0, 0, 0, 1, 1, 255]  # truncates


def test_to_rgb_rescale_high_bit_depth() -> None:
    levels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    expected = levels.astype(np.uint8)
    for mode, dtype in (("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")):
        image = Image.frombytes(mode, (16, 16), (levels * 257).astype(dtype).tobytes())
        out = np.asarray(to_rgb(image, rescale_high_bit_depth=True))
        assert out.shape == (16, 16, 3)
        assert np.array_equal(out[..., 0], expected) and np.array_equal(out[..., 2], expected)
    ints = Image.fromarray(np.array([[-5, 0, 257, 32768, 65535, 70000]], dtype=np.int32))
    out = np.asarray(to_rgb(ints, rescale_high_bit_depth=True))[0, :, 0]
    assert out.tolist() == [0, 0, 1, 128, 255, 255]
    floats = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0, np.nan, 0.2]], dtype=np.float32)
    out = np.asarray(to_rgb(Image.fromarray(floats), rescale_high_bit_depth=True))[0, :, 0]
    assert out.tolist() == [0, 0, 128, 255, 255, 0, 51]
    # 8-bit modes are unaffected.
    rgb = make_image("RGB", 5, 5)
    assert np.array_equal(np.asarray(to_rgb(rgb, rescale_high_bit_depth=True)), np.asarray(rgb))


def test_eval_rescale_high_bit_depth() -> None:
    """16-bit photos come out like their 8-bit versions (within one level), in every 16-bit
    layout alike (this also sidesteps Pillow resampling I;16B/I;16N byte-swapped)."""
    yy, xx = np.mgrid[:45, :70]
    smooth = 0.5 + 0.45 * np.sin(xx / 9.0) * np.cos(yy / 7.0)  # bicubic barely overshoots
    values = np.rint(smooth * 65535).astype(np.uint16)
    eight_bit = EvalTransform(32)(Image.fromarray(np.rint(values / 257.0).astype(np.uint8)))
    ours = EvalTransform(32, rescale_high_bit_depth=True)
    outs = []
    for mode, dtype in (("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")):
        outs.append(ours(Image.frombytes(mode, (70, 45), values.astype(dtype).tobytes())))
    outs.append(ours(Image.fromarray(values.astype(np.int32))))
    outs.append(ours(Image.fromarray((values / 65535.0).astype(np.float32))))
    for out in outs:
        assert max_diff(out, outs[0]) <= ATOL
        # The 8-bit path rounds between Pillow's two resampling passes: up to ~2 levels.
        assert max_diff(out, eight_bit) <= 2 * ONE_LEVEL
    # The default keeps OpenAI's clipping: the bright half of the image is plain white.
    clipped = EvalTransform(32)(
        Image.frombytes("I;16", (70, 45), (values | 4096).astype("<u2").tobytes())
    )
    white = (1.0 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    assert max_diff(clipped, white.view(3, 1, 1).expand(3, 32, 32)) <= ATOL


@pytest.mark.parametrize(
    "mode",
    (
        "RGBA",
        "RGBa",
        "LA",
        "La",
        "PA",
        "P+transparency",
        "P+transparency-bytes",
        "RGB+transparency",
    ),
)
def test_to_rgb_background_composites_alpha(mode: str) -> None:
    image = make_image(mode, 20, 12)
    rgba = np.asarray(
        image.convert("LA").convert("RGBA") if mode == "La" else image.convert("RGBA")
    )
    alpha = rgba[..., 3:].astype(np.float64) / 255.0
    for background in ((255, 255, 255), (10, 200, 30)):
        out = np.asarray(to_rgb(image, background)).astype(np.float64)
        expected = rgba[..., :3] * alpha + np.array(background) * (1.0 - alpha)
        assert np.abs(out - expected).max() <= 1.0, (mode, background)
        transparent = rgba[..., 3] == 0
        assert transparent.any()
        assert (out[transparent] == background).all()
        opaque = rgba[..., 3] == 255
        assert np.array_equal(out[opaque], rgba[..., :3][opaque])


def test_to_rgb_background_leaves_opaque_modes_alone() -> None:
    for mode in ("RGB", "L", "P", "CMYK", "I;16", "F"):
        image = make_image(mode, 9, 9)
        assert np.array_equal(np.asarray(to_rgb(image, (255, 255, 255))), np.asarray(to_rgb(image)))


def test_eval_background_on_emoji() -> None:
    """A red disc on a transparent background: white corners with a white background,
    and otherwise exactly OpenAI's pipeline with compositing as the conversion."""
    yy, xx = np.mgrid[:72, :72]
    emoji = np.zeros((72, 72, 4), dtype=np.uint8)
    emoji[..., 0] = 220
    emoji[..., 3] = np.where((yy - 36) ** 2 + (xx - 36) ** 2 < 30**2, 255, 0)
    image = Image.fromarray(emoji)
    out = EvalTransform(64, background=(255, 255, 255))(image)
    white = (1.0 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    assert torch.allclose(out[:, 0, 0], white, atol=ATOL)
    dropped = EvalTransform(64)(image)  # OpenAI's behaviour: alpha dropped, black corners
    black = -torch.tensor(OPENAI_MEAN) / torch.tensor(OPENAI_STD)
    assert torch.allclose(dropped[:, 0, 0], black, atol=ATOL)
    T = refs.torchvision_transforms()
    reference = T.Compose(
        [
            T.Resize(64, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(64),
            lambda im: to_rgb(im, (255, 255, 255)),
            T.ToTensor(),
            T.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )
    assert max_diff(out, reference(image)) <= ATOL


# --------------------------------------------------------------------------- inputs and API


def test_numpy_input_is_accepted_as_uint8_hwc() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    rgba = np.concatenate([rgb, np.full((40, 50, 1), 255, np.uint8)], axis=2)
    t = EvalTransform(32)
    assert torch.equal(t(rgb), t(Image.fromarray(rgb)))
    assert torch.equal(t(gray), t(Image.fromarray(gray)))
    assert torch.equal(t(gray[..., None]), t(Image.fromarray(gray)))
    assert torch.equal(t(rgba), t(Image.fromarray(rgb)))
    assert np.array_equal(
        np.asarray(to_rgb(gray)), np.asarray(Image.fromarray(gray).convert("RGB"))
    )


@pytest.mark.parametrize(
    "transform", (EvalTransform(32), TrainTransform(32)), ids=("eval", "train")
)
def test_bad_inputs(transform) -> None:
    """The training transform (cliplab.augment) rejects what the eval transform rejects."""
    with pytest.raises(TypeError, match="PIL"):
        transform(torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="PIL"):
        transform([[0, 1], [2, 3]])
    with pytest.raises(TypeError, match="PIL"):
        transform(None)
    with pytest.raises(TypeError, match="uint8"):
        transform(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        transform(np.zeros((8, 8, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="empty"):
        transform(np.zeros((0, 8, 3), dtype=np.uint8))
    for size in ((0, 5), (5, 0), (0, 0)):
        with pytest.raises(ValueError, match="empty"):
            transform(Image.new("RGB", size))
    with pytest.raises(ValueError, match="empty"):
        to_rgb(Image.new("L", (0, 3)))
    with pytest.raises(TypeError, match="PIL"):
        to_rgb(torch.zeros(8, 8, 3))


@pytest.mark.parametrize("cls", (EvalTransform,))
def test_bad_arguments(cls) -> None:
    for size in (0, -1, -224):
        with pytest.raises(ValueError, match="image_size"):
            cls(size)
    for size in (2.5, "224", True, None):
        with pytest.raises(TypeError, match="image_size"):
            cls(size)
    for background in ((255, 255), (0, 0, 256), "white", (1.5, 0, 0)):
        with pytest.raises(ValueError, match="background"):
            cls(32, background=background)
    with pytest.raises(ValueError, match="mean"):
        cls(32, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std"):
        cls(32, std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="background"):
        to_rgb(Image.new("RGBA", (2, 2)), background=(0, 0))


def test_repr() -> None:
    text = repr(EvalTransform(224))
    assert text.startswith("EvalTransform(\n") and text.endswith("\n)")
    for part in (
        "Resize(shortest_side=224, interpolation=bicubic)",
        "CenterCrop(size=(224, 224))",
        "ToRGB(background=None, rescale_high_bit_depth=False)",
        "ToTensor()",
        "Normalize(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))",
    ):
        assert part in text


def test_transforms_pickle() -> None:
    """DataLoader workers pickle the transform."""
    image = make_image("RGB", 50, 40)
    for t in (EvalTransform(32, background=(1, 2, 3)), TrainTransform(32)):
        clone = pickle.loads(pickle.dumps(t))
        torch.manual_seed(0)
        a = t(image)
        torch.manual_seed(0)
        assert torch.equal(a, clone(image))


def test_to_normalized_tensor() -> None:
    image = make_image("RGB", 6, 5)
    T = refs.torchvision_transforms()
    expected = T.Normalize(OPENAI_MEAN, OPENAI_STD)(T.ToTensor()(image))
    out = to_normalized_tensor(image)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    custom = to_normalized_tensor(image, mean=[0.5] * 3, std=torch.full((3, 1, 1), 0.5))
    assert torch.equal(custom, T.Normalize([0.5] * 3, [0.5] * 3)(T.ToTensor()(image)))
    with pytest.raises(ValueError, match="RGB"):
        to_normalized_tensor(make_image("L", 6, 5))
