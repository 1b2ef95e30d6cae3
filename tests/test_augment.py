"""cliplab.augment, the one training augmentation: the batched crop and photometric steps,
the prepared square, the per-image TrainTransform and the config's checks."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from cliplab.augment import (
    Augment,
    AugmentConfig,
    TrainTransform,
    color_augment,
    random_resized_crop,
    square,
)
from cliplab.transforms import OPENAI_MEAN, OPENAI_STD, EvalTransform


def test_random_resized_crop_full_crop_is_identity_and_partial_zooms() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8)
    same = random_resized_crop(x, g, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(same, x)
    # a left/right split image: a small crop keeps both colours only near the middle
    half = torch.zeros(64, 1, 16, 16)
    half[..., 8:] = 1.0
    out = random_resized_crop(half, g, scale=(0.09, 0.09), ratio=(1.0, 1.0))
    assert out.shape == half.shape
    assert out.min() >= 0 and out.max() <= 1
    assert math.isclose(float(out.mean()), 0.5, abs_tol=0.2)
    assert (out.flatten(1).std(1) < 0.01).any()  # some crops fall in one colour only


def test_random_resized_crop_samples_area_and_ratio_as_asked() -> None:
    """A crop of a ramp image: its span in x is the crop's width fraction."""
    g = torch.Generator().manual_seed(1)
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(400, 1, 64, 64).contiguous()
    out = random_resized_crop(ramp, g, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    width = out[:, 0, 0, -1] - out[:, 0, 0, 0]  # ~ 0.5 of the side (area 0.25, square)
    assert torch.allclose(width, torch.full_like(width, 0.5 * 63 / 64), atol=0.02)


def test_color_augment_ranges_and_probabilities() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 3, 6, 6)
    assert torch.equal(color_augment(x, g), x.clamp(0, 1))  # nothing asked: unchanged
    grey = color_augment(x, g, grayscale=1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    half = color_augment(x, g, grayscale=0.5)
    is_grey = (half[:, 0] - half[:, 2]).abs().flatten(1).amax(1) < 1e-6
    assert 0.4 < is_grey.float().mean() < 0.6
    blurred = color_augment(x, g, blur=1.0)
    assert blurred.std() < x.std()  # smoothing lowers the variance of noise
    # the 3x3 binomial kernel [1 2 1]^T [1 2 1] / 16 with replicated edges, for the chosen
    # images only (the others untouched)
    k = torch.tensor([1.0, 2.0, 1.0])
    kernel = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    reference = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3
    )
    assert torch.allclose(blurred, reference, atol=1e-6)
    some = color_augment(x, g, blur=0.5)
    is_blurred = (some - reference).abs().flatten(1).amax(1) < 1e-6
    assert 0.4 < is_blurred.float().mean() < 0.6
    assert torch.equal(some[~is_blurred], x[~is_blurred])
    assert torch.allclose(color_augment(x, g, invert=1.0), 1 - x)
    some = color_augment(x, g, invert=0.5)
    is_neg = (some - (1 - x)).abs().flatten(1).amax(1) < 1e-6
    assert 0.4 < is_neg.float().mean() < 0.6
    assert torch.equal(some[~is_neg], x[~is_neg])  # the rest untouched
    flat = torch.full((50, 3, 4, 4), 0.5)
    jittered = color_augment(flat, g, jitter=0.3)
    assert jittered.min() >= 0.5 * 0.7 - 1e-6 and jittered.max() <= 0.5 * 1.3 + 1e-6
    assert jittered.flatten(1).std(1).max() < 1e-6  # a flat image stays flat
    assert jittered.view(50, -1)[:, 0].std() > 0.02  # but brightness differs per image


def test_square_is_the_eval_geometry_in_eight_bits() -> None:
    rng = np.random.default_rng(0)
    for h, w in ((40, 60), (60, 40), (10, 7), (32, 32)):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        pixels = square(image, 32)
        assert pixels.shape == (32, 32, 3) and pixels.dtype == torch.uint8
        mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
        std = torch.tensor(OPENAI_STD).view(3, 1, 1)
        as_eval = (pixels.permute(2, 0, 1).float() / 255 - mean) / std
        assert torch.equal(as_eval, EvalTransform(32)(image))


def test_augment_without_steps_only_normalises_and_checks_its_input() -> None:
    pixels = torch.randint(0, 256, (5, 8, 8, 3), dtype=torch.uint8)
    out = Augment(AugmentConfig(crop=False))(pixels, torch.Generator())
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    with pytest.raises(ValueError, match="uint8"):
        Augment()(pixels.float(), torch.Generator())
    with pytest.raises(ValueError, match="uint8"):
        Augment()(pixels.permute(0, 3, 1, 2).contiguous(), torch.Generator())


def test_augment_is_a_function_of_its_generator() -> None:
    pixels = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8)
    augment = Augment(AugmentConfig(crop_scale=(0.3, 1.0), color_jitter=0.3, blur=0.5))
    a = augment(pixels, torch.Generator().manual_seed(5))
    b = pickle.loads(pickle.dumps(augment))(pixels, torch.Generator().manual_seed(5))
    c = augment(pixels, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"crop_scale": (1.0, 0.5)}, "crop_scale"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.5,)}, "crop_scale"),
        ({"crop_scale": (0.5, 1.5)}, "crop_scale"),
        ({"crop_ratio": (2.0, 1.0)}, "crop_ratio"),
        ({"crop_ratio": (-1.0, 1.0)}, "crop_ratio"),
        ({"color_jitter": 1.0}, "color_jitter"),
        ({"grayscale": -0.1}, "probability"),
        ({"invert": 1.5}, "probability"),
    ],
)
def test_config_is_checked(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**bad)


def test_train_transform_is_the_batch_augmentation_for_one_image() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8))
    t = TrainTransform(32, scale=(0.3, 1.0))
    state = torch.get_rng_state()
    a = t(image, generator=torch.Generator().manual_seed(5))
    b = t(image, generator=torch.Generator().manual_seed(5))
    c = t(image, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)  # a generator leaves the global RNG alone
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (3, 32, 32)
    batch = Augment(AugmentConfig(crop_scale=(0.3, 1.0)))(
        square(image, 32)[None], torch.Generator().manual_seed(5)
    )
    assert torch.equal(a, batch[0])
    numpy_input = t(np.asarray(image), generator=torch.Generator().manual_seed(5))
    assert torch.equal(numpy_input, a)
    with pytest.raises(ValueError, match="image_size"):
        TrainTransform(0)
    assert "crop_scale=(0.3, 1.0)" in repr(t)
