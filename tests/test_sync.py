"""Keeping a folder's collection in step: ``cliplab embed DIR --out C`` run again syncs C with
DIR (added, changed, touched, removed files), readers see one snapshot or the next, never a
mix, the index follows, and ``--watch`` syncs as files appear."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cliplab
from cliplab.cli import main
from cliplab.data.sources import spec_for_path
from cliplab.search.collection import Collection
from cliplab.search.embed import embed
from cliplab.search.index import build_index
from cliplab.search.query import Searcher

MODEL = "random:tiny-vit"


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _folder(root: Path, n: int) -> Path:
    for i in range(n):
        _image(root / ("a" if i % 2 else "b") / f"img{i:04d}.png", seed=i)
    return root


@pytest.fixture(scope="module")
def model():
    return cliplab.load(MODEL)


def _embed(folder: Path, out: Path, model, **kw):
    return embed(
        spec_for_path(str(folder)), out, *model, model_spec=MODEL, progress=False,
        log=lambda _: None, batch_size=16, **kw,
    )  # fmt: skip


def _live_paths(out: Path) -> set[str]:
    c = Collection(out)
    keys = c.metadata.column("key").to_pylist()
    return {keys[i] for i in np.flatnonzero(c.alive())}


def test_a_rerun_adds_changes_and_removes_only_what_changed(tmp_path: Path, model) -> None:
    folder = _folder(tmp_path / "pics", 40)
    out = tmp_path / "c"
    first = _embed(folder, out, model, part_size=16)
    assert first.embedded == 40 and Collection(out).generation == 1
    before = Collection(out)
    old_ids = dict(
        zip(before.metadata.column("key").to_pylist(), before.metadata.column("id").to_pylist())
    )
    # nothing changed: nothing is embedded, no new generation
    again = _embed(folder, out, model)
    assert again.embedded == 0 and again.sync == {
        "added": 0, "changed": 0, "removed": 0, "touched": 0, "unchanged": 40,
    }  # fmt: skip
    assert Collection(out).generation == 1
    # 3 new, 2 changed, 1 touched (same bytes, new mtime), 2 deleted
    for i in (100, 101, 102):
        _image(folder / "new" / f"img{i}.png", seed=i)
    _image(folder / "a" / "img0001.png", seed=999)
    _image(folder / "b" / "img0002.png", seed=998)
    touched = folder / "a" / "img0003.png"
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    (folder / "b" / "img0004.png").unlink()
    (folder / "a" / "img0005.png").unlink()
    result = _embed(folder, out, model)
    assert result.sync == {"added": 3, "changed": 2, "removed": 2, "touched": 1, "unchanged": 35}
    assert result.embedded == 5  # only the added and changed files were read and embedded
    c = Collection(out)
    assert c.generation == 2 and len(c) == 45 and c.live == 41 and result.total == 41
    assert sorted(c.deleted.tolist()) == sorted(
        old_ids[k] for k in ("a/img0001.png", "b/img0002.png", "b/img0004.png", "a/img0005.png")
    )
    assert _live_paths(out) == {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}
    # unchanged files keep their ids and embeddings
    keys = c.metadata.column("key").to_pylist()
    assert keys.index("b/img0000.png") == old_ids["b/img0000.png"]
    assert np.array_equal(c.image_embeddings()[: len(before)][c.alive()[: len(before)]],
                          before.image_embeddings()[c.alive()[: len(before)]])  # fmt: skip
    # a search finds the changed image under its new id, and never a tombstone
    searcher = Searcher(out, *model)
    hits = searcher.search_image(folder / "a" / "img0001.png", k=5)
    assert hits[0].key == "a/img0001.png" and hits[0].id >= 40
    everything = searcher.search_text("a photo", k=100)
    assert len(everything) == 41 and not {h.id for h in everything} & set(c.deleted.tolist())
    # the file list remembers failures: a bad file is not retried until it changes
    (folder / "bad.png").write_bytes(b"not an image")
    assert _embed(folder, out, model).failures == {"not-an-image": 1}
    assert _embed(folder, out, model).sync["added"] == 0


def test_the_index_follows_a_sync_and_agrees_with_exact_search(tmp_path: Path, model) -> None:
    folder = _folder(tmp_path / "pics", 60)
    out = tmp_path / "c"
    _embed(folder, out, model)
    build_index(Collection(out), kind="exact")
    for i in range(60, 70):
        _image(folder / "more" / f"img{i}.png", seed=i)
    for i in range(0, 20, 2):
        (folder / "b" / f"img{i:04d}.png").unlink()
    _embed(folder, out, model)
    indexed, exact = Searcher(out, *model), Searcher(out, *model, use_index=False)
    # an exact index removes deleted images at once: 70 rows seen, 60 entries
    assert indexed.index is not None and indexed.index.ntotal == 60
    assert indexed.index.rows == 70
    for query in ("red", "a dog", "img"):
        a = [h.id for h in indexed.search_text(query, k=15)]
        b = [h.id for h in exact.search_text(query, k=15)]
        assert a == b and len(a) == 15
        assert not set(a) & set(Collection(out).deleted.tolist())


def test_readers_see_the_old_or_the_new_snapshot_never_a_mix(tmp_path: Path, model) -> None:
    folder = _folder(tmp_path / "pics", 80)
    out = tmp_path / "c"
    _embed(folder, out, model, part_size=10)
    old = _live_paths(out)
    for i in range(80, 140):
        _image(folder / "new" / f"img{i}.png", seed=i)
    for i in range(0, 30):
        (folder / ("a" if i % 2 else "b") / f"img{i:04d}.png").unlink()
    new = {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}
    seen: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                searcher = Searcher(out, *model)
                hits = searcher.search_text("anything", k=500)
                paths = {h.key for h in hits}
                assert paths in (old, new), (len(paths), len(old), len(new))
                seen.append("old" if paths == old else "new")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    _embed(folder, out, model, part_size=10)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert "old" in seen and "new" in seen and seen.index("new") > 0


def test_a_long_lived_searcher_moves_to_the_new_snapshot_on_refresh(tmp_path: Path, model) -> None:
    folder = _folder(tmp_path / "pics", 20)
    out = tmp_path / "c"
    _embed(folder, out, model)
    searcher = Searcher(out, *model)
    assert len(searcher.search_text("x", k=100)) == 20
    _image(folder / "late.png", seed=7)
    _embed(folder, out, model)
    assert len(searcher.search_text("x", k=100)) == 20  # its snapshot, until refreshed
    assert searcher.refresh() and len(searcher.search_text("x", k=100)) == 21
    assert not searcher.refresh()


def test_cli_prints_the_sync_and_watch_keeps_in_step(tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path / "pics", 12)
    out = tmp_path / "c"
    argv = ["embed", str(folder), "--model", MODEL, "--out", str(out), "--quiet"]
    assert main(argv) == 0
    (folder / "a" / "img0001.png").unlink()
    assert main(["embed", str(folder), "--out", str(out), "--quiet"]) == 0  # its own model
    assert "sync: 0 added, 0 changed, 1 removed, 11 unchanged" in capsys.readouterr().out
    fresh = ["embed", str(folder), "--out", str(tmp_path / "new"), "--quiet"]
    assert main(fresh) == 2 and "--model is needed" in capsys.readouterr().err
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cliplab", *argv, "--watch", "--interval", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )  # fmt: skip
    try:
        line = ""
        while "watching" not in line:
            line = proc.stdout.readline()
            assert line, "the watcher exited"
        _image(folder / "dropped-in.png", seed=5)
        deadline = time.monotonic() + 60
        while json.loads((out / "state.json").read_text())["generation"] < 3:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        assert "dropped-in.png" in _live_paths(out)
    finally:
        proc.send_signal(signal.SIGTERM)  # as a service manager stops it
        try:
            output = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, output
    assert "1 added" in output and "stopped watching" in output


def test_a_running_server_serves_the_new_snapshot(tmp_path: Path, model) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from test_serve import run_server

    folder = _folder(tmp_path / "pics", 10)
    out = tmp_path / "c"
    _embed(folder, out, model)
    gone = Collection(out).metadata.column("key").to_pylist().index("b/img0000.png")
    server = run_server(out)
    base = next(server)
    try:
        assert httpx.get(f"{base}/health").json()["images"] == 10
        assert httpx.get(f"{base}/image/{gone}").status_code == 200
        (folder / "b" / "img0000.png").unlink()
        _image(folder / "c.png", seed=3)
        _image(folder / "d.png", seed=4)
        _embed(folder, out, model)
        health = httpx.get(f"{base}/health").json()
        assert health["images"] == 11 and health["sync"]["generation"] == 2
        assert health["sync"]["last"]["added"] == 2 and health["sync"]["last"]["removed"] == 1
        assert httpx.get(f"{base}/image/{gone}").status_code == 404  # a tombstone
        found = httpx.get(f"{base}/search", params={"q": "x", "k": 50}).json()["results"]
        assert len(found) == 11 and gone not in {r["id"] for r in found}
    finally:
        server.close()


def test_the_sync_walk_sees_the_files_the_folder_source_reads(tmp_path: Path) -> None:
    from cliplab.data.images import IMAGE_EXTS
    from cliplab.data.manifest import FolderSource
    from cliplab.search.sync import walk

    root = _folder(tmp_path / "pics", 6)
    (root / ".hidden.png").write_bytes(b"x")
    (root / "a" / "notes.txt").write_text("a caption")
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "UPPER.JPG").write_bytes(b"y")
    (root / "noext").write_bytes(b"z")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # not followed
    assert sorted(walk(root, IMAGE_EXTS)) == FolderSource(root).files


def test_an_hnsw_index_keeps_tombstones_until_a_rebuild_pays(tmp_path: Path, model) -> None:
    """HNSW cannot remove: deleted images stay in it (skipped) until they pass 10% of its
    entries, then the sync rebuilds it from the live images; searches agree with exact ones
    throughout."""
    folder = _folder(tmp_path / "pics", 60)
    out = tmp_path / "c"
    _embed(folder, out, model)
    build_index(Collection(out), kind="hnsw")
    logs: list[str] = []

    def sync_and_check(expect_entries: int) -> None:
        embed(spec_for_path(str(folder)), out, *model, model_spec=MODEL, progress=False,
              log=logs.append, batch_size=16)  # fmt: skip
        indexed, exact = Searcher(out, *model), Searcher(out, *model, use_index=False)
        assert indexed.index.ntotal == expect_entries
        for query in ("red", "img"):
            a = [h.id for h in indexed.search_text(query, k=50)]
            assert a == [h.id for h in exact.search_text(query, k=50)] and len(a) == 50

    for i in (0, 2, 4):
        (folder / "b" / f"img{i:04d}.png").unlink()
    sync_and_check(60)  # 3 of 60 deleted: kept as tombstones
    assert "3 deleted images kept" in logs[-2]
    for i in (6, 8, 10, 12):
        (folder / "b" / f"img{i:04d}.png").unlink()
    sync_and_check(53)  # 7 of 60: over 10%, rebuilt from the 53 live images
    assert "4 deleted images rebuilt" in logs[-2]
    assert json.loads((out / "index" / "info.json").read_text())["deleted"] == 0


def test_a_sync_killed_before_its_commit_leaves_the_old_snapshot(tmp_path: Path, model) -> None:
    folder = _folder(tmp_path / "pics", 30)
    out = tmp_path / "c"
    _embed(folder, out, model)
    build_index(Collection(out), kind="exact")
    state = (out / "state.json").read_bytes()
    for i in range(30, 36):
        _image(folder / "n" / f"img{i}.png", seed=i)
    _embed(folder, out, model)
    (out / "state.json").write_bytes(state)  # as if killed before the state was written
    c = Collection(out)
    assert c.generation == 1 and len(c) == 30  # the new parts are not seen
    assert len(Searcher(out, *model).search_text("x", k=100)) == 30
    (folder / "n" / "img30.png").unlink()  # the folder moves on; the re-run starts from gen 1
    result = _embed(folder, out, model)
    assert result.sync["added"] == 5
    c = Collection(out)
    searcher = Searcher(out, *model)
    assert c.generation == 2 and c.live == 35 and searcher.index.ntotal == 35
    hits = searcher.search_image(folder / "n" / "img33.png", k=1)
    assert hits[0].key == "n/img33.png"  # the index rows match the committed parts


def test_a_folder_emptied_syncs_to_no_results(tmp_path: Path, model) -> None:
    folder = _folder(tmp_path / "pics", 6)
    out = tmp_path / "c"
    _embed(folder, out, model)
    for path in folder.rglob("*.png"):
        path.unlink()
    assert _embed(folder, out, model).sync["removed"] == 6
    assert Collection(out).live == 0
    assert Searcher(out, *model).search_text("anything", k=5) == []
