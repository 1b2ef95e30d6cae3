"""The in-memory loader (``data.in_memory``): decode once, bad samples counted, alpha on
white, fresh captions per epoch, batched crops, determinism, exact resume, source weights;
and the caption function a shard directory's ``build.json`` names (trusted only in cliplab)."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from cliplab.data.decode import ImageDecoder
from cliplab.data.memory import MemoryLoader, random_resized_crop
from cliplab.data.shardwriter import ShardWriter
from cliplab.data.sources import ShardsSpec, build_source, resolve_caption_fn, spec_from_dict
from cliplab.data.stream import stable_seed
from cliplab.datasets.captions import draw_caption
from cliplab.tokenizer import tokenize
from cliplab.train.data import TokenizeCaptions
from cliplab.transforms import OPENAI_MEAN, OPENAI_STD

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0)}


def png(color: tuple[int, int, int], alpha: int = 255, size: int = 20) -> bytes:
    image = Image.new("RGBA", (size, size), (*color, alpha))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def emoji_meta(label: str) -> dict:
    return {
        "kind": "emoji",
        "label": label,
        "tags": [label, "colour", "square"],
        "short_names": [label],
        "category": "Symbols",
        "subcategory": "geometric",
        "captions": [f"stored caption {label}"],
    }


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """8 good samples (two per colour, the black ones fully transparent) and 2 bad ones."""
    out = tmp_path / "shards"
    with ShardWriter(out, prefix="shard", max_samples=4) as writer:
        for i, (name, rgb) in enumerate(COLORS.items()):
            alpha = 0 if name == "black" else 255
            for j in range(2):
                writer.write(
                    f"{name}{j}", {"png": png(rgb, alpha), "json": json.dumps(emoji_meta(name))}
                )
            if i == 1:
                writer.write("broken", {"png": b"\x89PNG\r\n\x1a\n not really", "json": "{}"})
                writer.write("noimage", {"json": json.dumps(emoji_meta("x"))})
    (out / "build.json").write_text(
        json.dumps({"caption_fn": "cliplab.datasets.captions:draw_caption"})
    )
    return out


def make_loader(shards: Path, **kwargs) -> MemoryLoader:
    spec = spec_from_dict(
        {"kind": "webdataset", "urls": str(shards / "shard-{000000..000002}.tar")}
    )
    source = spec.open()
    decoder = ImageDecoder(image_size=16, caption_fn=spec.caption_function())
    options = dict(image_size=16, tokenize=TokenizeCaptions(32), batch_size=4, seed=3)
    options.update(kwargs)
    return MemoryLoader([source], [decoder], **options)


def test_decodes_once_counts_bad_samples_and_composites_alpha_on_white(shards: Path) -> None:
    loader = make_loader(shards)
    assert loader.num_samples == 8
    assert sum(loader.load_skipped.values()) == 2
    assert len(loader) == 2  # 8 samples // batch 4
    pixels = {s.key: loader.images[0][i] for i, s in enumerate(loader.samples[0])}
    assert pixels["red0"][8, 8].tolist() == [255, 0, 0]
    assert pixels["black0"][8, 8].tolist() == [255, 255, 255]  # transparent -> white
    assert all("png" not in s.members for s in loader.samples[0])  # image bytes dropped


def test_epochs_cover_every_sample_and_draw_fresh_captions(shards: Path) -> None:
    loader = make_loader(shards, augment=False)
    it = iter(loader)
    epoch0 = [next(it) for _ in range(2)]
    epoch1 = [next(it) for _ in range(2)]
    keys0 = sorted(k for b in epoch0 for k in b.keys)
    assert keys0 == sorted(s.key for s in loader.samples[0])
    assert loader.epoch == 1 or loader.batch_in_epoch == 2
    # captions come from draw_caption (not the stored pool), drawn per (seed, epoch, key)
    tokens0 = torch.cat([b.tokens for b in epoch0])
    keys = [k for b in epoch0 for k in b.keys]
    sample = {s.key: s for s in loader.samples[0]}
    for row, key in zip(tokens0, keys, strict=True):
        rng = random.Random(stable_seed(3, 0, sample[key].source, key))
        expected = draw_caption(sample[key], rng)
        assert torch.equal(row, tokenize([expected], context_length=32)[0])
    first = {k: t for b in epoch0 for k, t in zip(b.keys, b.tokens, strict=True)}
    second = {k: t for b in epoch1 for k, t in zip(b.keys, b.tokens, strict=True)}
    assert any(not torch.equal(first[k], second[k]) for k in first)
    # no augmentation: the image is the normalised stored pixels
    b = epoch0[0]
    i = next(i for i, s in enumerate(loader.samples[0]) if s.key == b.keys[0])
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    expected = (loader.images[0][i].permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(b.images[0], expected)


def test_deterministic_and_resumes_exactly(shards: Path) -> None:
    a = make_loader(shards)
    it = iter(a)
    batches = [next(it) for _ in range(5)]
    b = make_loader(shards)
    it_b = iter(b)
    for _ in range(3):
        next(it_b)
    state = b.state_dict()
    c = make_loader(shards)
    c.load_state_dict(json.loads(json.dumps(state)))
    rest = [batch for batch, _ in zip(iter(c), range(2), strict=False)]
    for x, y in zip(batches[3:], rest, strict=True):
        assert x.keys == y.keys
        assert torch.equal(x.images, y.images)
        assert torch.equal(x.tokens, y.tokens)


def test_ranks_split_each_global_batch(shards: Path) -> None:
    r0 = make_loader(shards, batch_size=2, rank=0, world_size=2)
    r1 = make_loader(shards, batch_size=2, rank=1, world_size=2)
    whole = make_loader(shards, batch_size=4)
    for b0, b1, w in zip(iter(r0), iter(r1), iter(whole), strict=False):
        assert b0.keys + b1.keys == w.keys
        if r0.epoch == 1:
            break


def test_weights_set_the_mix(shards: Path, tmp_path: Path) -> None:
    spec = {"kind": "webdataset", "urls": str(shards / "shard-{000000..000002}.tar")}
    sources = [build_source(spec | {"name": "a"}), build_source(spec | {"name": "b"})]
    decoders = [ImageDecoder(image_size=16), ImageDecoder(image_size=16)]
    loader = MemoryLoader(
        sources,
        decoders,
        image_size=16,
        tokenize=TokenizeCaptions(16),
        batch_size=100,
        weights=[3.0, 1.0],
        seed=0,
    )
    plan = loader._plan(0)
    share = sum(1 for s, _ in plan if s == 0) / len(plan)
    assert len(plan) == 0 or abs(share - 0.75) < 0.1
    loader.batch_size = 1  # 16 one-sample batches: enough for a statistical check
    loader.batches_per_epoch = 400
    plan = loader._plan(1)
    share = sum(1 for s, _ in plan if s == 0) / len(plan)
    assert abs(share - 0.75) < 0.07


def test_random_resized_crop_full_crop_is_identity_and_partial_zooms() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8)
    same = random_resized_crop(x, g, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(same, x)
    # a left/right split image: a half-area crop keeps both colours only near the middle
    half = torch.zeros(64, 1, 16, 16)
    half[..., 8:] = 1.0
    out = random_resized_crop(half, g, scale=(0.09, 0.09), ratio=(1.0, 1.0))
    assert out.shape == half.shape
    assert out.min() >= 0 and out.max() <= 1
    assert math.isclose(float(out.mean()), 0.5, abs_tol=0.2)
    assert (out.flatten(1).std(1) < 0.01).any()  # some crops fall in one colour only


def test_caption_fn_from_build_json_only_when_in_cliplab(shards: Path) -> None:
    table = {"kind": "webdataset", "urls": str(shards / "shard-000000.tar")}
    assert spec_from_dict(table).caption_function() is draw_caption
    # "none" in a source table: the stored captions (it used to fail as an unexpected argument)
    none = spec_from_dict(table | {"caption_fn": "none"})
    assert none.caption_function() is None and none.open().num_samples() > 0
    (shards / "build.json").write_text(json.dumps({"caption_fn": "os:system"}))
    with pytest.raises(ValueError, match="refusing"):
        spec_from_dict(table).caption_function()
    with pytest.raises(ValueError, match="looks like|look like"):
        resolve_caption_fn("no-colon")
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_caption_fn("cliplab.nothing_here:fn")
    # a trusted name (from the config file) may live anywhere
    assert resolve_caption_fn("json:dumps") is json.dumps
    assert spec_from_dict(table | {"caption_fn": "json:dumps"}).caption_function() is json.dumps


def test_source_specs_are_typed_and_checked(shards: Path, tmp_path: Path) -> None:
    """One dataclass per kind, from a TOML table, with its name, weight and caption_fn."""
    data = tmp_path / "data"
    (data / "shards").mkdir(parents=True)
    (shards / "build.json").write_text(
        json.dumps(
            {
                "caption_fn": "cliplab.datasets.captions:draw_caption",
                "shards": [f"shard-{i:06d}.tar" for i in range(3)],
                "output": {"count": 8},
            }
        )
    )
    (data / "shards" / "emoji").symlink_to(shards)
    spec = spec_from_dict({"kind": "shards", "set": "emoji", "dir": str(data), "weight": 2.0})
    assert isinstance(spec, ShardsSpec) and spec.display_name == "emoji" and spec.weight == 2.0
    assert spec.caption_function() is draw_caption
    source = spec.open()
    assert source.name == "emoji" and len(source.urls) == 3
    half = spec_from_dict(spec.to_dict() | {"fraction": 0.5})
    assert half.open().num_samples() == 4 and spec_from_dict(half.to_dict()) == half
    with pytest.raises(
        ValueError, match="unknown field of a shards source: 'sets' .did you mean 'set'"
    ):
        spec_from_dict({"kind": "shards", "sets": "emoji"})
    with pytest.raises(ValueError, match="unknown data source kind 'tarball'"):
        spec_from_dict({"kind": "tarball"})
    with pytest.raises(ValueError, match="needs a 'kind'"):
        spec_from_dict({"urls": "x.tar"})
    with pytest.raises(ValueError, match="weight must be positive"):
        spec_from_dict({"kind": "synthetic", "weight": 0})
    with pytest.raises(FileNotFoundError, match="cliplab data build"):
        spec_from_dict({"kind": "shards", "set": "nope", "dir": str(data)}).open()


def test_trainer_runs_in_memory_and_resumes_bit_identical(tmp_path: Path) -> None:
    from cliplab.train import Trainer
    from train_helpers import tiny_config

    config = tiny_config(
        data={
            "in_memory": True,
            "crop_scale": [0.5, 1.0],
            "batch_size": 8,
            "sources": [{"kind": "synthetic", "num_samples": 40, "image_size": 32}],
        },
        train={"steps": 4},
    )

    def steps(trainer: Trainer, n: int) -> None:
        batches = iter(trainer.loader)
        for _ in range(n):
            batch = next(batches)
            trainer.train_step(batch.images, batch.tokens)

    straight = Trainer(config, output=tmp_path / "a")
    steps(straight, 4)
    first = Trainer(config, output=tmp_path / "b")
    steps(first, 2)
    first.save_checkpoint()
    resumed = Trainer(config, output=tmp_path / "b")
    assert resumed.resume() and resumed.step == 2
    assert resumed.loader.state_dict()["batch_in_epoch"] == 2
    steps(resumed, 2)
    for (name, p), q in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_color_augment_ranges_and_probabilities() -> None:
    from cliplab.data.memory import color_augment

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


def test_color_options_need_the_memory_loader() -> None:
    from train_helpers import tiny_config

    with pytest.raises(ValueError, match="in_memory"):
        tiny_config(data={"color_jitter": 0.3})
    with pytest.raises(ValueError, match="probability"):
        tiny_config(data={"in_memory": True, "blur": 2.0})


def test_second_caption_is_an_independent_draw(shards: Path) -> None:
    loader = make_loader(shards, augment=False, second_caption=True)
    batch = next(iter(loader))
    assert batch.second_tokens is not None and batch.second_tokens.shape == batch.tokens.shape
    sample = {s.key: s for s in loader.samples[0]}
    for row, second, key in zip(batch.tokens, batch.second_tokens, batch.keys, strict=True):
        rng = random.Random(stable_seed(3, 0, sample[key].source, key))
        first_text, second_text = draw_caption(sample[key], rng), draw_caption(sample[key], rng)
        assert torch.equal(row, tokenize([first_text], context_length=32)[0])
        assert torch.equal(second, tokenize([second_text], context_length=32)[0])
    assert next(iter(make_loader(shards))).second_tokens is None  # off by default


def test_trainer_second_caption_losses(tmp_path: Path) -> None:
    """ "image": the mean of the image's loss against each caption; "text": the image against
    the first caption and the second against the first. With both captions the same, each
    reduces to a known combination of the plain loss."""
    from cliplab.train import Trainer
    from train_helpers import fixed_batch, tiny_config

    data = {
        "in_memory": True,
        "batch_size": 8,
        "sources": [{"kind": "synthetic", "num_samples": 16, "image_size": 32}],
    }
    images, tokens = fixed_batch(8, seed=4)
    _, other = fixed_batch(8, seed=5)
    losses = {}
    for mode in ("", "image", "text"):
        torch.manual_seed(0)
        trainer = Trainer(
            tiny_config(data=data, train={"second_caption": mode}),
            output=tmp_path / (mode or "off"),
        )
        with torch.no_grad():
            img, txt = trainer.towers(images, tokens)
            _, txt2 = trainer.towers(images, other)
            plain = float(trainer.feature_loss(img, txt))
            expected = {
                "": plain,
                "image": (plain + float(trainer.feature_loss(img, txt2))) / 2,
                "text": (plain + float(trainer.feature_loss(txt2, txt))) / 2,
            }[mode]
        second = other if mode else None
        losses[mode] = trainer.train_step(images, tokens, second).loss
        assert abs(losses[mode] - expected) < 1e-4, mode
        batch = next(iter(trainer.loader))
        assert (batch.second_tokens is not None) == bool(mode)
    assert len({round(v, 4) for v in losses.values()}) == 3
    with pytest.raises(ValueError, match="in_memory"):
        tiny_config(train={"second_caption": "text"})
    with pytest.raises(ValueError, match="accum_steps"):
        tiny_config(data=data, train={"second_caption": "text", "accum_steps": 2})
    with pytest.raises(ValueError, match="second_caption"):
        tiny_config(data=data, train={"second_caption": "both"})


def test_exclude_labels_keeps_concepts_out_and_counts_them(shards: Path, tmp_path: Path) -> None:
    """A source's ``exclude_labels`` file drops the samples of those labels (case-folded,
    counted as ``excluded-label``) before anything is decoded into memory, and says clearly
    when the file is missing or the source cannot honour it."""
    from cliplab.train.data import build_loader
    from train_helpers import tiny_config

    labels = tmp_path / "held-out.txt"
    labels.write_text("Red\n\n  blue  \n", encoding="utf-8")
    table = {"kind": "webdataset", "urls": str(shards / "shard-{000000..000002}.tar")}

    def loader(source: dict):
        config = tiny_config(data={"in_memory": True, "batch_size": 2, "sources": [source]})
        return build_loader(config, image_size=16, context_length=32, batch_size=2)

    kept = loader(table | {"exclude_labels": str(labels)})
    assert sorted(s.key for s in kept.samples[0]) == ["black0", "black1", "green0", "green1"]
    assert kept.load_skipped["excluded-label"] == 4
    keys = [k for batch in kept.iter_epoch() for k in batch.keys]
    assert sorted(keys) == ["black0", "black1", "green0", "green1"]
    assert loader(table).num_samples == 8  # without the file: every good sample
    with pytest.raises(ValueError, match="file not found"):
        loader(table | {"exclude_labels": str(tmp_path / "nope.txt")})
    with pytest.raises(ValueError, match="exclude_labels needs"):
        loader({"kind": "synthetic", "num_samples": 8, "exclude_labels": str(labels)})
