"""The in-memory cache (``data.in_memory``): a stage in front of the one stream that decodes
each image once (bad samples counted, alpha on white); the stream then draws fresh captions
per epoch, mixes by weight, augments whole batches, and resumes exactly, the same for cached
and streamed runs. Also the caption function a shard directory's ``build.json`` names
(trusted only in cliplab) and the typed source specs."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from cliplab.augment import Augment, AugmentConfig
from cliplab.data import ImageTextStream, StreamingLoader
from cliplab.data.cache import MemoryCache
from cliplab.data.decode import ImageDecoder
from cliplab.data.shardwriter import ShardWriter
from cliplab.data.sources import ShardsSpec, build_source, resolve_caption_fn, spec_from_dict
from cliplab.data.stream import stable_seed
from cliplab.recipes.captions import draw_caption
from cliplab.tokenizer import tokenize
from cliplab.train.data import TokenizeCaptions
from cliplab.transforms import OPENAI_MEAN, OPENAI_STD

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0)}
NO_AUGMENT = AugmentConfig(crop=False)


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
        json.dumps({"caption_fn": "cliplab.recipes.captions:draw_caption"})
    )
    return out


def source_and_decoder(shards: Path, name: str = "emoji") -> tuple:
    spec = spec_from_dict(
        {"kind": "webdataset", "urls": str(shards / "shard-{000000..000002}.tar"), "name": name}
    )
    return spec.open(), ImageDecoder(image_size=16, caption_fn=spec.caption_function())


def make_loader(
    shards: Path,
    cached: bool = True,
    augment: AugmentConfig | None = None,
    workers: int = 0,
    **kwargs,
) -> StreamingLoader:
    source, decoder = source_and_decoder(shards)
    if cached:
        source = MemoryCache(source, decoder, 16, seed=3)
    options = dict(image_size=16, seed=3, shuffle_buffer=1)
    options.update(kwargs)
    batch_size = options.pop("batch_size", 4)
    stream = ImageTextStream(
        [source], decoder, Augment(augment), TokenizeCaptions(32), batch_size, **options
    )
    return StreamingLoader(stream, num_workers=workers)


def test_decodes_once_counts_bad_samples_and_composites_alpha_on_white(shards: Path) -> None:
    source, decoder = source_and_decoder(shards)
    cache = MemoryCache(source, decoder, 16)
    assert cache.num_samples() == 8
    assert sum(cache.skipped.values()) == 2 and set(cache.skipped) == {
        "missing-caption",
        "no-image",
    }
    pixels = {s.key: cache.pixels[i] for i, s in enumerate(cache.samples)}
    assert pixels["red0"].shape == (16, 16, 3) and pixels["red0"].dtype == torch.uint8
    assert pixels["red0"][8, 8].tolist() == [255, 0, 0]
    assert pixels["black0"][8, 8].tolist() == [255, 255, 255]  # transparent -> white
    assert all("png" not in s.members for s in cache.samples)  # image bytes dropped
    assert len(make_loader(shards)) == 2  # 8 samples // batch 4


def test_cached_and_streamed_runs_give_the_same_samples(shards: Path) -> None:
    """One path: a sample's pixels and captions are the same whether the cache decoded it
    once or the stream decodes it each epoch (one whole-epoch batch, so the same keys)."""

    def by_key(loader: StreamingLoader) -> dict:
        batch = next(iter(loader))
        return {k: (i, t) for k, i, t in zip(batch.keys, batch.images, batch.tokens, strict=True)}

    cached = by_key(make_loader(shards, cached=True, augment=NO_AUGMENT, batch_size=8))
    streamed = by_key(make_loader(shards, cached=False, augment=NO_AUGMENT, batch_size=8))
    assert sorted(cached) == sorted(streamed) and len(cached) == 8
    for key, (image, tokens) in cached.items():
        assert torch.equal(image, streamed[key][0]), key
        assert torch.equal(tokens, streamed[key][1]), key


def test_epochs_cover_every_sample_and_draw_fresh_captions(shards: Path) -> None:
    loader = make_loader(shards, augment=NO_AUGMENT)
    it = iter(loader)
    epoch0 = [next(it) for _ in range(2)]
    epoch1 = [next(it) for _ in range(2)]
    cache = loader.stream.sources[0]
    keys0 = sorted(k for b in epoch0 for k in b.keys)
    assert keys0 == sorted(s.key for s in cache.samples)
    # captions come from draw_caption (not the stored pool), drawn per (seed, epoch, key)
    tokens0 = torch.cat([b.tokens for b in epoch0])
    keys = [k for b in epoch0 for k in b.keys]
    sample = {s.key: s for s in cache.samples}
    for row, key in zip(tokens0, keys, strict=True):
        rng = random.Random(stable_seed(3, 0, sample[key].source, key))
        expected = draw_caption(sample[key], rng)
        assert torch.equal(row, tokenize([expected], context_length=32)[0])
    first = {k: t for b in epoch0 for k, t in zip(b.keys, b.tokens, strict=True)}
    second = {k: t for b in epoch1 for k, t in zip(b.keys, b.tokens, strict=True)}
    assert any(not torch.equal(first[k], second[k]) for k in first)
    # no augmentation: the image is the normalised stored pixels
    b = epoch0[0]
    i = next(i for i, s in enumerate(cache.samples) if s.key == b.keys[0])
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    expected = (cache.pixels[i].permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(b.images[0], expected)


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "streamed"])
def test_deterministic_and_resumes_exactly(shards: Path, cached: bool) -> None:
    augment = AugmentConfig(crop_scale=(0.5, 1.0), color_jitter=0.3, grayscale=0.3, blur=0.5)
    a = make_loader(shards, cached, augment)
    it = iter(a)
    batches = [next(it) for _ in range(5)]
    b = make_loader(shards, cached, augment)
    it_b = iter(b)
    for _ in range(3):
        next(it_b)
    state = b.state_dict()
    c = make_loader(shards, cached, augment)
    c.load_state_dict(json.loads(json.dumps(state)))
    rest = [batch for batch, _ in zip(iter(c), range(2), strict=False)]
    for x, y in zip(batches[3:], rest, strict=True):
        assert x.keys == y.keys
        assert torch.equal(x.images, y.images)
        assert torch.equal(x.tokens, y.tokens)


def test_ranks_split_each_epoch(shards: Path) -> None:
    r0 = make_loader(shards, batch_size=2, rank=0, world_size=2)
    r1 = make_loader(shards, batch_size=2, rank=1, world_size=2)
    keys0 = [k for b, _ in zip(iter(r0), range(2), strict=False) for k in b.keys]
    keys1 = [k for b, _ in zip(iter(r1), range(2), strict=False) for k in b.keys]
    assert not set(keys0) & set(keys1)  # disjoint shares of the cached samples
    assert len(set(keys0) | set(keys1)) == 8


def test_workers_build_the_same_batches_from_the_cache(shards: Path) -> None:
    one = [b for b, _ in zip(iter(make_loader(shards, workers=0)), range(4), strict=False)]
    two = [b for b, _ in zip(iter(make_loader(shards, workers=2)), range(4), strict=False)]
    assert [b.keys for b in one] != [] and all(len(b) == 4 for b in two)
    # workers split the cache by stream: each worker's batches are its own share, complete
    assert {k for b in two for k in b.keys} == {k for b in one for k in b.keys}


def test_weights_set_the_mix(shards: Path) -> None:
    spec = {"kind": "webdataset", "urls": str(shards / "shard-{000000..000002}.tar")}
    decoder = ImageDecoder(image_size=16)
    sources = [MemoryCache(build_source(spec | {"name": name}), decoder, 16) for name in ("a", "b")]
    stream = ImageTextStream(
        sources,
        decoder,
        Augment(),
        TokenizeCaptions(16),
        1,
        image_size=16,
        weights=[3.0, 1.0],
        batches_per_epoch=800,
    )
    picks = [s.source for s, _ in zip(stream._raw_stream(0, 1), range(800), strict=False)]
    assert abs(picks.count("a") / len(picks) - 0.75) < 0.05


def test_second_caption_is_an_independent_draw(shards: Path) -> None:
    for cached in (True, False):
        loader = make_loader(shards, cached, NO_AUGMENT, second_caption=True)
        batch = next(iter(loader))
        assert batch.second_tokens is not None
        assert batch.second_tokens.shape == batch.tokens.shape
        source, decoder = source_and_decoder(shards)
        sample = {s.key: s for s in MemoryCache(source, decoder, 16, seed=3).samples}
        for row, second, key in zip(batch.tokens, batch.second_tokens, batch.keys, strict=True):
            rng = random.Random(stable_seed(3, 0, sample[key].source, key))
            first_text, second_text = (
                draw_caption(sample[key], rng),
                draw_caption(sample[key], rng),
            )
            assert torch.equal(row, tokenize([first_text], context_length=32)[0])
            assert torch.equal(second, tokenize([second_text], context_length=32)[0])
    assert next(iter(make_loader(shards))).second_tokens is None  # off by default


def test_a_source_that_is_all_bad_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "bad"
    with ShardWriter(out, prefix="shard", max_samples=100) as writer:
        for i in range(20):
            writer.write(f"k{i}", {"png": b"not an image", "txt": "caption"})
    source = build_source({"kind": "webdataset", "urls": str(out / "shard-000000.tar")})
    cache = MemoryCache(source, ImageDecoder(image_size=16), 16)
    assert cache.num_samples() == 0 and cache.skipped == {"not-an-image": 20}
    with pytest.raises(ValueError, match="no usable samples"):
        next(cache.iter_raw(0, 0, 0, 1))


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
                "caption_fn": "cliplab.recipes.captions:draw_caption",
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
            "augment": {"crop_scale": [0.5, 1.0], "color_jitter": 0.3, "blur": 0.5},
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


def test_augment_options_are_checked_and_moved_keys_named() -> None:
    from train_helpers import tiny_config

    config = tiny_config(data={"augment": {"color_jitter": 0.3, "blur": 0.5}})
    assert config.data.augment.color_jitter == 0.3 and not config.data.in_memory
    with pytest.raises(ValueError, match="probability"):
        tiny_config(data={"in_memory": True, "augment": {"blur": 2.0}})
    with pytest.raises(ValueError, match="data.color_jitter is now data.augment.color_jitter"):
        tiny_config(data={"color_jitter": 0.3})
    with pytest.raises(ValueError, match="unknown key in .data.augment.: 'jitter'"):
        tiny_config(data={"augment": {"jitter": 0.3}})
