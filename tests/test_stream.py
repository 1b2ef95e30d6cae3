"""The streaming loader: deterministic, exactly resumable (bad samples and workers too),
split across ranks without overlap, and mixing sources by weight."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import pytest
import torch

import cliplab
from cliplab.augment import Augment
from cliplab.data import BadSample, ImageTextStream, RawSample, StreamingLoader, SyntheticSource


def tokenize(captions: list[str]) -> torch.Tensor:
    return cliplab.tokenize(captions, context_length=16, truncate=True)


class FlakySource:
    """Every 7th sample is bad: tests that skipping is counted and resume stays exact."""

    name = "flaky"

    def __init__(self, n: int = 300) -> None:
        self.inner = SyntheticSource(n, split="flaky", image_size=16, name="flaky")

    def num_samples(self) -> int:
        return self.inner.num_samples()

    def iter_raw(self, seed: int, epoch: int, stream: int, num_streams: int) -> Iterator[RawSample]:
        return self.inner.iter_raw(seed, epoch, stream, num_streams)

    def decode(self, sample: RawSample, rng: random.Random):
        if int(sample.key) % 7 == 0:
            raise BadSample("corrupt-image", sample.key)
        return self.inner.decode(sample, rng)


def make_loader(
    workers: int = 0, rank: int = 0, world: int = 1, sources=None, weights=None, batch=8, seed=0
):
    sources = sources or [SyntheticSource(400, image_size=16), FlakySource()]
    stream = ImageTextStream(
        sources,
        decode=None,
        augment=Augment(),
        image_size=16,
        tokenize=tokenize,
        batch_size=batch,
        weights=weights,
        seed=seed,
        rank=rank,
        world_size=world,
        shuffle_buffer=16,
    )
    return StreamingLoader(stream, num_workers=workers)


def take(loader: StreamingLoader, n: int) -> list:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def same(a, b) -> bool:
    return a.keys == b.keys and torch.equal(a.images, b.images) and torch.equal(a.tokens, b.tokens)


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    a, b, c = take(make_loader(), 5), take(make_loader(), 5), take(make_loader(seed=1), 5)
    assert all(same(x, y) for x, y in zip(a, b))
    assert not all(same(x, y) for x, y in zip(a, c))
    assert all(
        len(x) == 8 and x.images.shape == (8, 3, 16, 16) and x.tokens.shape == (8, 16) for x in a
    )


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop", [1, 4, 7, 11])  # mid-epoch, and (11) inside the second epoch
def test_resume_is_exact(workers: int, stop: int) -> None:
    full = take(make_loader(workers), 14)
    assert len(make_loader(workers)) == 700 // 8
    first = make_loader(workers)
    first.stream.batches_per_epoch = 9  # short epochs, to cross an epoch boundary
    full = take(first, 14)
    interrupted = make_loader(workers)
    interrupted.stream.batches_per_epoch = 9
    head = take(interrupted, stop)
    state = interrupted.state_dict()
    resumed = make_loader(workers)
    resumed.stream.batches_per_epoch = 9
    resumed.load_state_dict(state)
    tail = take(resumed, 14 - stop)
    assert all(same(x, y) for x, y in zip(head + tail, full))


def test_worker_count_must_match_on_resume() -> None:
    loader = make_loader(0)
    take(loader, 2)
    with pytest.raises(ValueError, match="same number"):
        make_loader(2).load_state_dict(loader.state_dict())


def test_bad_samples_are_skipped_and_counted() -> None:
    loader = make_loader(sources=[FlakySource()])
    loader.stream.batches_per_epoch = 10
    keys = [k for batch in loader.iter_epoch() for k in batch.keys]
    assert keys and all(int(k) % 7 for k in keys)
    assert loader.epoch == 1  # the epoch ended, its counters reset
    loader2 = make_loader(sources=[FlakySource()])
    loader2.stream.batches_per_epoch = 10
    batches = list(loader2.iter_epoch())
    skipped = sum(sum(b.skipped.values()) for b in batches)
    reads = batches[-1].position
    assert skipped == reads - 80 and skipped > 0


def test_ranks_read_disjoint_samples() -> None:
    source = SyntheticSource(64, image_size=16)
    keys = []
    for rank in (0, 1):
        loader = make_loader(rank=rank, world=2, sources=[source], batch=4)
        # without a shuffle buffer an epoch is exactly one pass; with one, the buffer mixes
        # the end of one pass with the start of the next (streaming's usual trade-off)
        loader.stream.shuffle_buffer = 1
        assert len(loader) == 64 // 8
        keys.append([k for b in loader.iter_epoch() for k in b.keys])
    assert len(keys[0]) == len(keys[1]) == 32
    assert not set(keys[0]) & set(keys[1])
    assert len(set(keys[0]) | set(keys[1])) == 64  # one epoch covers the source once


def test_sources_mix_by_weight() -> None:
    a = SyntheticSource(1000, split="a", image_size=16, name="a")
    b = SyntheticSource(1000, split="b", image_size=16, name="b")
    loader = make_loader(sources=[a, b], weights=[3, 1], batch=50)
    raw = loader.stream._raw_stream(0, 1)
    names = Counter(next(raw).source for _ in range(4000))
    assert 0.72 < names["a"] / 4000 < 0.78


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one source"):
        ImageTextStream([], None, Augment(), tokenize, 4, image_size=16)
    with pytest.raises(ValueError, match="weights must be"):
        ImageTextStream(
            [SyntheticSource(10)], None, Augment(), tokenize, 4, image_size=16, weights=[1, 2]
        )
    with pytest.raises(ValueError, match="batch_size"):
        ImageTextStream([SyntheticSource(10)], None, Augment(), tokenize, 0, image_size=16)

    class NoDecoder:
        name = "raw"

        def num_samples(self) -> int:
            return 10

    with pytest.raises(ValueError, match="no decoder for source 'raw'"):
        ImageTextStream([NoDecoder()], None, Augment(), tokenize, 4, image_size=16)


def test_synthetic_captions_describe_the_images() -> None:
    source = SyntheticSource(50, image_size=32)
    for image, caption in source.pairs(10):
        assert image.size == (32, 32)
        assert any(
            color in caption
            for color in ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
        )
    # disjoint splits
    val = SyntheticSource(50, split="val")
    assert [source.scene(i) for i in range(50)] != [val.scene(i) for i in range(50)]


def test_epoch_summary_is_logged(caplog) -> None:
    loader = make_loader(sources=[FlakySource()])
    loader.stream.batches_per_epoch = 3
    with caplog.at_level("INFO", logger="cliplab.data"):
        list(loader.iter_epoch())
    assert loader.last_epoch_skipped["corrupt-image"] > 0
    assert "bad samples skipped (corrupt-image" in caplog.text


class AllBad(FlakySource):
    def decode(self, sample, rng):
        raise BadSample("not-an-image")


def test_a_source_of_only_bad_samples_stops_with_a_clear_error(monkeypatch) -> None:
    from cliplab.data import stream as stream_module

    monkeypatch.setattr(stream_module, "MAX_CONSECUTIVE_BAD", 50)
    loader = make_loader(sources=[AllBad()])
    with pytest.raises(RuntimeError, match="50 bad samples in a row"):
        take(loader, 1)
