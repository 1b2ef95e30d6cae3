"""Shards and manifests in object storage: every reader takes ``s3://`` URLs, tested against a
real S3 server (moto, on 127.0.0.1) behind a proxy that drops connections mid-response."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("moto", reason="needs moto[server]: pip install 'cliplab[scale]'")
pytest.importorskip("s3fs", reason="needs s3fs: pip install 'cliplab[scale]'")

from safetensors.torch import load_file  # noqa: E402

from cliplab.data import storage  # noqa: E402
from cliplab.data.shardwriter import ShardWriter  # noqa: E402
from cliplab.data.sources import build_source, spec_for_path  # noqa: E402
from cliplab.data.webdataset import WebDatasetSource  # noqa: E402
from objectstore import object_store  # noqa: E402
from test_train_resume import logged_steps, run_until, train_records  # noqa: E402
from train_helpers import run_toml  # noqa: E402

COLORS = ("red", "green", "blue", "yellow")


def png(i: int, size: int = 96) -> bytes:
    """A noisy picture (incompressible: shards get big enough to drop mid-way)."""
    rng = np.random.default_rng(i)
    pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    pixels[..., i % 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def make_data(root: Path, n: int = 48) -> None:
    """The same samples as shards, a CSV manifest, a Parquet manifest and a folder."""
    with ShardWriter(root / "shards", max_samples=n // 4) as writer:
        for i in range(n):
            writer.write(f"{i:05d}", {"png": png(i), "txt": f"a {COLORS[i % 4]} square {i}"})
    images = root / "images"
    images.mkdir()
    rows = ["image,caption"]
    for i in range(n):
        (images / f"{i:05d}.png").write_bytes(png(i))
        (images / f"{i:05d}.txt").write_text(f"a {COLORS[i % 4]} square {i}")
        rows.append(f"images/{i:05d}.png,a {COLORS[i % 4]} square {i}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "image": [f"images/{i:05d}.png" for i in range(n)],
            "caption": [f"a {COLORS[i % 4]} square {i}" for i in range(n)],
        }
    )
    pq.write_table(table, root / "manifest.parquet", row_group_size=n // 3)


def same(a, b) -> bool:
    a, b = list(a), list(b)
    return len(a) == len(b) and all(x.key == y.key and x.members == y.members for x, y in zip(a, b))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("remote")
    make_data(root)
    return root


def test_every_reader_takes_s3_urls(data: Path) -> None:
    with object_store() as store:
        url = store.upload(data, "set")
        cases = {
            "webdataset": (f"{url}/shards/shard-{{000000..000003}}.tar", None),
            "webdataset folder": (f"{url}/shards", None),
            "csv": (f"{url}/manifest.csv", None),
            "parquet": (f"{url}/manifest.parquet", None),
            "folder": (f"{url}/images", "folder"),
        }
        for name, (location, kind) in cases.items():
            local_location = location.replace(url, str(data))
            remote = build_source(spec_for_path(location, kind))
            local = build_source(spec_for_path(local_location, kind))
            assert remote.num_samples() == local.num_samples() == 48, name
            assert same(remote.scan(), local.scan()), name
            # a stream's share, the way training reads it
            first = [next(iter(remote.iter_raw(3, 0, 1, 2))).key]
            assert first == [next(iter(local.iter_raw(3, 0, 1, 2))).key], name
        # a missing object is a counted error record, not a crash
        records = list(WebDatasetSource(f"{url}/shards/missing.tar").scan())
        assert [r.members.get("__error__") for r in records][0] is not None
        assert storage.exists(f"{url}/manifest.csv") and not storage.exists(f"{url}/nothing")


def test_dropped_connections_resume_at_the_right_byte(
    data: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    """s3fs retries a broken request itself (5 times by default); with that turned off every
    drop reaches ``ResilientFile``, which reopens at the byte it had reached: the records are
    the same, and some drops fell mid-shard."""
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    monkeypatch.setattr(storage, "BLOCK_SIZE", 64 << 10)  # several requests per shard
    monkeypatch.setattr(storage, "_BACKOFF", 0.01)
    local = list(WebDatasetSource(str(data / "shards/shard-{000000..000003}.tar")).scan())
    with object_store() as store, caplog.at_level(logging.WARNING, "cliplab.data.storage"):
        url = store.upload(data / "shards", "drops")
        store.proxy.drop(times=5, after_bytes=30_000, every=3)
        remote = list(WebDatasetSource(f"{url}/shard-{{000000..000003}}.tar").scan())
        assert store.proxy.dropped == 5
    assert same(remote, local)
    resumed = [int(m) for m in re.findall(r"read broke at byte (\d+)", caplog.text)]
    assert resumed and max(resumed) > 0, caplog.text  # resumed mid-shard, not from the start


def train_toml(urls: str, steps: int) -> str:
    source = f'kind = "webdataset"\nurls = "{urls}"\ncaption_fn = "none"'
    return run_toml(source, steps=steps, interval=3, batch=8, shuffle=16)


def test_training_from_s3_resumes_exactly_across_drops(data: Path, tmp_path: Path) -> None:
    """A run reading its shards from S3 while connections drop, stopped by SIGTERM and
    re-run, ends bit-identical to a run reading the same shards from disk."""
    steps = 10
    local_config = tmp_path / "local.toml"
    local_config.write_text(train_toml(str(data / "shards/shard-{000000..000003}.tar"), steps))
    reference = tmp_path / "reference"
    cmd = [sys.executable, "-m", "cliplab", "train"]
    done = subprocess.run([*cmd, str(local_config), "--out", str(reference)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    with object_store() as store:
        url = store.upload(data / "shards", "train")
        remote_config = tmp_path / "remote.toml"
        remote_config.write_text(train_toml(f"{url}/shard-{{000000..000003}}.tar", steps))
        env = {**__import__("os").environ, **store.env, "CLIPLAB_STORAGE_BLOCK_SIZE": "65536"}
        out = tmp_path / "remote"
        store.proxy.drop(times=12, after_bytes=30_000, every=2)
        proc = run_until(
            [*cmd, str(remote_config), "--out", str(out)], out, 4, signal.SIGTERM, env=env
        )
        assert proc.returncode == 143, proc.stderr.read().decode()[-2000:]
        stopped = logged_steps(out)
        assert stopped < steps
        done = subprocess.run(
            [*cmd, str(remote_config), "--out", str(out)], capture_output=True, env=env
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert json.loads(done.stdout.decode().strip().splitlines()[-1])["resumed_from"] == stopped
        assert store.proxy.dropped > 0
    assert train_records(out) == train_records(reference)
    ours = load_file(out / "model" / "model.safetensors")
    ref = load_file(reference / "model" / "model.safetensors")
    assert [k for k in ref if not torch.equal(ours[k], ref[k])] == []


def test_curation_eval_sets_and_embed_read_s3(data: Path, tmp_path: Path) -> None:
    """`cliplab data curate`, an evaluation set and `cliplab embed` on s3:// inputs give what
    they give on the same files on disk."""
    from PIL import Image

    import cliplab
    from cliplab.cli import main
    from cliplab.data.evalsets import EvalSetWriter, load_classification
    from cliplab.encode import encode_images
    from cliplab.search.collection import Collection

    with EvalSetWriter(
        data / "evalset", "classification", name="colours", classnames=list(COLORS),
        templates=["a photo of a {}."],
    ) as writer:  # fmt: skip
        for i in range(8):
            writer.add(Image.open(io.BytesIO(png(i, 32))), label=i % 4)
    queries = tmp_path / "queries.txt"
    queries.write_text("red\ngreen\nblue\nsquare\n")
    with object_store() as store:
        url = store.upload(data, "all")
        # curation: the same kept pairs
        common = ["--queries", str(queries), "--no-wordfreq", "--no-wordnet", "--bigrams", "0"]
        common += ["--workers", "1", "--cap", "5"]
        for name, source in (("local", str(data / "manifest.csv")), ("s3", f"{url}/manifest.csv")):
            args = ["data", "curate", source, "--out", str(tmp_path / f"curate-{name}")]
            assert main([*args, *common]) == 0
        kept = [(tmp_path / f"curate-{n}" / "kept.jsonl").read_text() for n in ("local", "s3")]
        assert kept[0] == kept[1] and kept[0].count("\n") == 20  # 5 each: red, green, blue, square
        # an evaluation set
        remote, local = (load_classification(u) for u in (f"{url}/evalset", data / "evalset"))
        assert remote.labels == local.labels and remote.classnames == local.classnames
        assert all(str(i).startswith("s3://") for i in remote.images)
        model, preprocess = cliplab.load("random:tiny-vit")
        a = encode_images(model, remote.images, preprocess)
        b = encode_images(model, local.images, preprocess)
        assert torch.equal(a, b)
        argv = ["eval", "zeroshot", "--model", "random:tiny-vit", "--no-cache", "--quiet"]
        argv += ["--out", str(tmp_path / "eval")]
        assert main([*argv, "--dataset", f"{url}/evalset"]) == 0
        assert list((tmp_path / "eval").glob("zeroshot-*.json"))
        # embed: the same collection from the S3 manifest
        for name, source in (("local", str(data / "manifest.csv")), ("s3", f"{url}/manifest.csv")):
            argv = ["embed", source, "--model", "random:tiny-vit", "--batch-size", "8"]
            assert main([*argv, "--quiet", "--out", str(tmp_path / f"embed-{name}")]) == 0
        c = [Collection(tmp_path / f"embed-{n}") for n in ("local", "s3")]
        assert len(c[1]) == 48 and np.array_equal(c[0].image_embeddings(), c[1].image_embeddings())


def test_https_shards(data: Path) -> None:
    """Shards over plain HTTP (a real server on 127.0.0.1): https:// works the same way."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(data))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/shards"
        remote = WebDatasetSource(f"{base}/shard-{{000000..000003}}.tar")
        local = WebDatasetSource(str(data / "shards/shard-{000000..000003}.tar"))
        assert remote.num_samples() == 48  # from the stats JSONs beside the shards
        assert same(remote.scan(), local.scan())
    finally:
        server.shutdown()
