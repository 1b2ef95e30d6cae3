"""Search: ``cliplab embed`` (sources, bad records, resume after a kill), ``cliplab index``
(kinds, recall, growth, merge), ``cliplab search`` and the model fingerprint check."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cliplab
from cliplab.cli import main
from cliplab.data.shardwriter import ShardWriter
from cliplab.data.sources import spec_for_path
from cliplab.search.collection import Collection
from cliplab.search.embed import embed
from cliplab.search.index import build_index, plan_index
from cliplab.search.query import Searcher

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}
MODEL = "random:tiny-vit"


def make_folder(root: Path, n: int = 30, bad: bool = True) -> Path:
    """``n`` coloured images in two folders, a third with captions; and two bad files."""
    for i in range(n):
        name = list(COLOURS)[i % 3]
        path = root / ("sub" if i % 2 else "") / f"{name}{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48 + i, 40), COLOURS[name]).save(path)
        if i % 3 == 0:
            path.with_suffix(".txt").write_text(f"a {name} square")
    if bad:
        (root / "broken.png").write_bytes((root / "red000.png").read_bytes()[:100])
        (root / "notes.png").write_text("not an image")
    return root


def run_embed(source: Path, out: Path, **options) -> object:
    model, preprocess = cliplab.load(MODEL)
    spec = spec_for_path(str(source))
    return embed(spec, out, model, preprocess, model_spec=MODEL, progress=False, **options)


def test_embed_a_folder_counts_bad_images_and_matches_the_model(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "pics")
    result = run_embed(folder, tmp_path / "c", batch_size=4, part_size=8)
    assert result.embedded == 30 and dict(result.failures) == {
        "truncated-image": 1,
        "not-an-image": 1,
    }
    c = Collection(tmp_path / "c")
    assert len(c) == 30 and c.records == 32 and len(c.parts) == 4
    meta = c.metadata.to_pylist()
    assert [r["id"] for r in meta] == list(range(30))
    assert meta[0]["key"] == "blue002.png" and meta[0]["width"] == 50 and meta[0]["height"] == 40
    captions = {r["key"]: r["caption"] for r in meta}
    assert captions["red000.png"] == "a red square" and captions["sub/green001.png"] is None
    failures = [json.loads(x) for x in (tmp_path / "c" / "failures.jsonl").read_text().splitlines()]
    assert {Path(f["path"]).name: f["reason"] for f in failures} == {
        "broken.png": "truncated-image",
        "notes.png": "not-an-image",
    }
    # the stored rows are the model's own normalised features (up to float16)
    model, preprocess = cliplab.load(MODEL)
    with torch.no_grad():
        image = Image.open(meta[5]["path"])
        expected = model.encode_image(preprocess(image)[None], normalize=True)[0].numpy()
    vectors = c.image_embeddings()
    np.testing.assert_allclose(vectors[5], expected, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-3)
    texts = c.text_embeddings()
    assert (np.linalg.norm(texts, axis=1) > 0).sum() == 10  # one image in three has a caption


def test_workers_change_nothing(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "pics")
    run_embed(folder, tmp_path / "a", batch_size=3, part_size=6, workers=0)
    run_embed(folder, tmp_path / "b", batch_size=3, part_size=6, workers=2)
    a, b = Collection(tmp_path / "a"), Collection(tmp_path / "b")
    assert np.array_equal(a.image_embeddings(), b.image_embeddings())
    assert a.metadata.equals(b.metadata)


def test_resume_after_a_lost_part_embeds_nothing_twice(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "pics")
    run_embed(folder, tmp_path / "straight", batch_size=4, part_size=8)
    run_embed(folder, tmp_path / "c", batch_size=4, part_size=8)
    # a kill during part 2: its files may exist, its record does not; the run never
    # finished, so the collection is not complete and has no snapshot yet
    for n in (2, 3):
        (tmp_path / "c" / "parts" / f"{n:06d}.json").unlink()
    info = json.loads((tmp_path / "c" / "embed.json").read_text())
    (tmp_path / "c" / "embed.json").write_text(json.dumps({**info, "complete": False}))
    (tmp_path / "c" / "state.json").unlink()
    kept = Collection(tmp_path / "c")
    assert kept.records == 16 and len(kept) == 14  # the two bad files come early
    result = run_embed(folder, tmp_path / "c", batch_size=4, part_size=8)
    assert result.resumed_from == 16 and result.embedded == 16
    a, b = Collection(tmp_path / "straight"), Collection(tmp_path / "c")
    assert np.array_equal(a.image_embeddings(), b.image_embeddings())
    assert a.metadata.equals(b.metadata)
    # another model or dtype in the same directory is refused
    model, preprocess = cliplab.load("random:tiny-rn")
    with pytest.raises(ValueError, match="different fingerprint"):
        embed(spec_for_path(str(folder)), tmp_path / "c", model, preprocess, model_spec="x")


def test_killed_embed_resumes_to_the_same_collection(tmp_path: Path) -> None:
    """SIGKILL a real `cliplab embed` once it has written a part; the re-run completes the
    collection: every image once, in order, as a run that was never interrupted."""
    folder = make_folder(tmp_path / "pics", n=300, bad=False)
    argv = ["embed", str(folder), "--model", MODEL, "--batch-size", "4", "--part-size", "20"]
    argv += ["--workers", "0", "--quiet", "--out"]
    command = [sys.executable, "-m", "cliplab", *argv, str(tmp_path / "c")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (tmp_path / "c" / "parts" / "000001.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = Collection(tmp_path / "c").records
    assert 40 <= done < 300, done
    assert main([*argv, str(tmp_path / "c")]) == 0
    assert main([*argv, str(tmp_path / "straight")]) == 0
    a, b = Collection(tmp_path / "straight"), Collection(tmp_path / "c")
    assert (
        len(b) == 300
        and b.metadata.column("key").to_pylist() == a.metadata.column("key").to_pylist()
    )
    assert np.array_equal(a.image_embeddings(), b.image_embeddings())


def test_embed_shards_and_manifests_with_bad_records(tmp_path: Path) -> None:
    import io

    def png(colour: tuple[int, int, int]) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (40, 40), colour).save(buffer, "PNG")
        return buffer.getvalue()

    with ShardWriter(tmp_path / "shards", max_samples=5) as writer:
        for i in range(12):
            name = list(COLOURS)[i % 3]
            writer.write(f"s{i:02d}", {"png": png(COLOURS[name]), "txt": f"a {name} thing"})
        writer.write("s99", {"txt": "no image"})
    last = sorted((tmp_path / "shards").glob("*.tar"))[-1]
    data = last.read_bytes()
    last.write_bytes(data[: 3 * 512 + 60])  # cut inside the second member of the last shard
    result = run_embed(tmp_path / "shards", tmp_path / "c")
    c = Collection(tmp_path / "c")
    assert dict(result.failures) == {"truncated-tar": 1}  # s10 lost; s11 and s99 never read
    assert result.embedded == 10
    rows = c.metadata.to_pylist()
    assert rows[0]["key"] == "s00" and rows[0]["caption"] == "a red thing"
    assert rows[0]["path"] == str((tmp_path / "shards" / "shard-000000.tar").resolve())
    # a CSV manifest: a row whose file is missing is counted
    (tmp_path / "m.csv").write_text(
        "image,caption\n" + "".join(f"{p},x\n" for p in ("a.png", "nope.png", "b.png"))
    )
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 40), (3, 2, 1)).save(tmp_path / "b.png")
    result = run_embed(tmp_path / "m.csv", tmp_path / "m")
    assert result.embedded == 2 and dict(result.failures) == {"missing-file": 1}
    assert Collection(tmp_path / "m").row(1)["path"] == str((tmp_path / "b.png").resolve())


def test_embed_rejects_records_for_the_training_decoders_reasons() -> None:
    """The search path decodes through the training decoder: a bad record gets the reason
    training would count; images training would skip for its own rules (tiny, banners) are
    embedded; transparency is composited on white before the model's preprocessing."""
    import io
    import random

    from cliplab.data.decode import ImageDecoder, error_sample
    from cliplab.data.images import rgb
    from cliplab.data.stream import BadSample, RawSample
    from cliplab.search.batches import decode

    _, preprocess = cliplab.load(MODEL)

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    bad = {
        "malformed-member": error_sample("a", ""),
        "truncated-tar": error_sample("b", "truncated-tar", detail="cut"),
        "no-image": RawSample("c", {"txt": b"words only"}),
        "zero-bytes": RawSample("d", {"png": b""}),
        "not-an-image": RawSample("e", {"png": b"plain text, named .png"}),
        "truncated-image": RawSample("f", {"png": png(Image.new("RGB", (64, 64)))[:60]}),
    }
    for reason, record in bad.items():
        assert decode(record, None, preprocess, captions=True).reason == reason
        with pytest.raises(BadSample, match=reason):
            ImageDecoder()(RawSample(record.key, {**record.members, "txt": b"x"}), random.Random(0))
    for size in ((2, 2), (400, 20)):  # too small / too wide to train on, still searchable
        item = decode(RawSample("g", {"png": png(Image.new("RGB", size))}), None, preprocess, False)
        assert item.reason is None and (item.width, item.height) == size
    clear = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    item = decode(RawSample("h", {"png": png(clear), "txt": b" red "}), None, preprocess, True)
    assert torch.equal(item.pixels, preprocess(rgb(clear))) and item.caption == "red"
    assert not torch.equal(item.pixels, preprocess(clear))  # not OpenAI's dropped alpha


def synthetic_collection(path: Path, n: int, dim: int = 32, seed: int = 0) -> Collection:
    """A collection of ``n`` clustered unit vectors, written as `cliplab embed` would."""
    from cliplab.search.embed import _PartWriter

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dim))
    x = centres[rng.integers(0, 64, n)] + 0.5 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    info = {"format": "cliplab-embeddings", "version": 1, "model": "synthetic",
            "fingerprint": "f" * 64, "dim": dim, "dtype": "float32", "captions": False}  # fmt: skip
    path.mkdir(parents=True)
    (path / "embed.json").write_text(json.dumps(info))
    writer = _PartWriter(path, 0, "float32", False, dim)
    writer.images = [x.astype(np.float32)]
    writer.meta = [
        {"key": f"k{i}", "path": None, "caption": None, "width": 1, "height": 1} for i in range(n)
    ]
    writer.records = n
    writer.flush(0)
    return Collection(path)


def test_index_kinds_and_recall(tmp_path: Path) -> None:
    assert plan_index(10_000, 512).kind == "exact"
    assert plan_index(1_000_000, 512).kind == "hnsw"
    small = plan_index(1_000_000, 512, memory_budget=200 * 2**20)
    assert small.kind == "ivf-pq" and small.bytes_estimate <= 200 * 2**20
    assert small.factory.startswith("IVF4096,PQ")
    with pytest.raises(ValueError, match="do not fit"):
        plan_index(1_000_000, 512, memory_budget=1000)
    c = synthetic_collection(tmp_path / "c", 4_000)
    exact = build_index(c, recall_queries=200)
    assert exact["plan"]["kind"] == "exact" and exact["recall@10 (image queries)"] == 1.0
    hnsw = build_index(c, kind="hnsw", recall_queries=200)
    assert hnsw["plan"]["kind"] == "hnsw" and hnsw["recall@10 (image queries)"] > 0.9
    ivf = build_index(c, kind="ivf-pq", memory_budget=4_000 * 16 + 2**20, recall_queries=200)
    assert ivf["plan"]["factory"].startswith("IVF") and 0.2 < ivf["recall@10 (image queries)"] < 1


def test_index_grows_merges_and_refuses_another_model(tmp_path: Path, capsys) -> None:
    folder = make_folder(tmp_path / "pics")
    run_embed(folder, tmp_path / "c", part_size=8)
    assert main(["index", str(tmp_path / "c")]) == 0
    # new images: the re-run syncs the collection and adds them to its index too
    for i in range(5):
        Image.new("RGB", (40, 40), (i, 200, 40)).save(folder / f"zz{i}.png")
    shutil.copytree(tmp_path / "c" / "index", tmp_path / "old-index")
    result = run_embed(folder, tmp_path / "c", part_size=8)
    assert result.embedded == 5 and result.sync["added"] == 5
    assert Searcher(tmp_path / "c").index.ntotal == 35
    # an index left behind (built before the new images): refused, then grown
    shutil.rmtree(tmp_path / "c" / "index")
    shutil.copytree(tmp_path / "old-index", tmp_path / "c" / "index")
    with pytest.raises(ValueError, match="holds 30 of 35"):
        Searcher(tmp_path / "c")
    capsys.readouterr()
    assert main(["index", str(tmp_path / "c")]) == 0
    assert "added 5 new vectors" in capsys.readouterr().out
    assert Searcher(tmp_path / "c").index.ntotal == 35
    # merge with another collection of the same model
    make_folder(tmp_path / "more", n=9, bad=False)
    run_embed(tmp_path / "more", tmp_path / "d", part_size=8)
    argv = ["index", str(tmp_path / "c"), "--merge", str(tmp_path / "d"), "--out"]
    assert main([*argv, str(tmp_path / "m")]) == 0
    merged = Collection(tmp_path / "m")
    assert len(merged) == 44 and merged.metadata.column("id").to_pylist() == list(range(44))
    d = Collection(tmp_path / "d")
    assert [merged.row(35 + i)["key"] for i in range(9)] == [d.row(i)["key"] for i in range(9)]
    assert Searcher(tmp_path / "m").index.ntotal == 44
    # another model: no query, no merge
    model, preprocess = cliplab.load("random:tiny-rn")
    with pytest.raises(ValueError, match="not comparable"):
        Searcher(tmp_path / "c", model, preprocess)
    other = tmp_path / "other"
    embed(spec_for_path(str(folder)), other, model, preprocess, model_spec="x", progress=False)
    capsys.readouterr()
    assert main([*argv[:3], str(other), "--out", str(tmp_path / "x")]) == 2
    assert "different models" in capsys.readouterr().err


def test_a_collection_of_shards_and_files_reads_each_row_from_its_own_kind(
    tmp_path: Path,
) -> None:
    """A merged collection (``make demo``'s ``search/all``: shards and folders) reads a
    shard row's member and a file row's file; so ``cliplab dedup`` finds no exact copies
    among distinct images (each shard read whole once put a shard's images in one group)."""
    import io

    from cliplab.search.dedup import content_hashes, exact_groups

    members = {}
    with ShardWriter(tmp_path / "shards", max_samples=4) as writer:
        for i in range(6):
            buffer = io.BytesIO()
            Image.new("RGB", (40, 40), (40 * i, 90, 200 - 30 * i)).save(buffer, "PNG")
            members[f"s{i}"] = buffer.getvalue()
            writer.write(f"s{i}", {"png": members[f"s{i}"], "txt": f"shape {i}"})
    run_embed(tmp_path / "shards", tmp_path / "a")
    run_embed(make_folder(tmp_path / "pics", n=6, bad=False), tmp_path / "b")
    argv = ["index", str(tmp_path / "a"), "--merge", str(tmp_path / "b")]
    assert main([*argv, "--out", str(tmp_path / "m")]) == 0
    merged = Collection(tmp_path / "m")
    for i in range(len(merged)):
        row = merged.row(i)
        expected = members.get(row["key"]) or Path(row["path"]).read_bytes()
        assert merged.image_bytes(i) == expected, row
    hashes, _, unreadable = content_hashes(merged, range(len(merged)))
    assert unreadable == 0 and len(hashes) == 12 and exact_groups(hashes) == []


def test_search_cli_text_image_and_captions(tmp_path: Path, capsys) -> None:
    folder = make_folder(tmp_path / "pics")
    run_embed(folder, tmp_path / "c")
    assert main(["index", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "c"), "a red square", "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 5 and hits[0]["score"] >= hits[-1]["score"]
    text_scores = [h["score"] for h in hits]
    query = folder / "sub" / "green001.png"
    assert main(["search", str(tmp_path / "c"), "--image", str(query), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    # an image is its own nearest neighbour (ties with identical colours aside)
    assert hits[0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert all("green" in h["key"] for h in hits)
    argv = ["search", str(tmp_path / "c"), "--image", str(query), "--captions", "-k", "2", "--json"]
    assert main(argv) == 0
    assert all(h["caption"] for h in json.loads(capsys.readouterr().out))
    # exact search agrees with the index (an exact index here)
    assert (
        main(["search", str(tmp_path / "c"), "a red square", "-k", "5", "--exact", "--json"]) == 0
    )
    exact = json.loads(capsys.readouterr().out)
    assert [h["score"] for h in exact] == pytest.approx(text_scores, abs=1e-5)  # ties aside
    for bad in (
        ["search", str(tmp_path / "c")],
        ["search", str(tmp_path / "c"), "x", "-k", "0"],
        ["search", str(tmp_path / "c"), "--image", str(folder / "notes.png")],
        ["search", str(tmp_path / "nope"), "x"],
    ):
        assert main(bad) == 2, bad


def test_ray_engine_writes_the_same_collection(tmp_path: Path) -> None:
    """`cliplab embed --engine ray` on a local Ray cluster (decode tasks, a model actor): the
    same parts, ids, metadata, failures and vectors as the local engine; then it resumes."""
    ray = pytest.importorskip("ray", reason="needs Ray Data: pip install 'cliplab[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # both runs use it
    try:
        _ray_engine_same_collection(tmp_path)
    finally:
        ray.shutdown()


def _ray_engine_same_collection(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "pics")
    argv = ["embed", str(folder), "--model", MODEL, "--batch-size", "4", "--part-size", "8"]
    argv += ["--quiet"]
    ray_argv = [*argv, "--workers", "2", "--engine", "ray", "--out", str(tmp_path / "ray")]
    # exit status 1: done, with bad records skipped (the folder has two)
    assert main([*argv, "--workers", "0", "--out", str(tmp_path / "local")]) == 1
    assert main(ray_argv) == 1
    a, b = Collection(tmp_path / "local"), Collection(tmp_path / "ray")
    assert len(b) == 30 and b.records == 32 and len(a.parts) == len(b.parts)
    assert np.array_equal(a.image_embeddings(), b.image_embeddings())
    assert np.array_equal(a.text_embeddings(), b.text_embeddings())
    assert a.metadata.equals(b.metadata)
    failures = [(tmp_path / d / "failures.jsonl").read_text() for d in ("local", "ray")]
    assert failures[0] == failures[1] and failures[0]
    # a lost part (a run killed before it finished) is re-embedded by the ray engine too
    (tmp_path / "ray" / "parts" / "000003.json").unlink()
    info = json.loads((tmp_path / "ray" / "embed.json").read_text())
    (tmp_path / "ray" / "embed.json").write_text(json.dumps({**info, "complete": False}))
    (tmp_path / "ray" / "state.json").unlink()
    assert main(ray_argv) == 0  # the bad records were in the parts kept
    c = Collection(tmp_path / "ray")
    assert np.array_equal(a.image_embeddings(), c.image_embeddings())
