"""``cliplab data download`` against a local web of real HTTP servers on 127.0.0.1: real
images (installed emoji, Tux Paint stamps) and hosts that misbehave in every way the
downloader must count (see :mod:`cliplab.demo.localweb`)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from cliplab.cli import main
from cliplab.data.download import DownloadConfig, download
from cliplab.data.download.http import HttpClient, opted_out
from cliplab.data.download.shards import ImageOptions, Journal
from cliplab.demo.localweb import Site, local_web, read_images
from cliplab.recipes.install import source_path
from cliplab.search.collection import Collection


@pytest.fixture(scope="module")
def emoji() -> dict[str, bytes]:
    return read_images(source_path("emoji-datasource-twitter"), limit=400)


@pytest.fixture(scope="module")
def stamps() -> dict[str, bytes]:
    return read_images(source_path("tuxpaint-stamps-default"), limit=40)


def _table(path: Path, rows: list[tuple[str, str]], **extra: list[object]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption", *extra])
        for i, (url, caption) in enumerate(rows):
            w.writerow([url, caption, *(v[i] for v in extra.values())])
    return path


def _samples(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> members of every sample in every shard of ``out``."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def _config(**kw: object) -> DownloadConfig:
    kw.setdefault("progress", False)
    kw.setdefault("timeout", 3.0)
    return DownloadConfig(**kw)  # type: ignore[arg-type]


# -- counts on a misbehaving web --------------------------------------------------------
def test_every_failure_is_counted_by_reason_and_nothing_opted_out_is_written(
    emoji: dict[str, bytes], tmp_path: Path
) -> None:
    names = sorted(emoji)
    good = Site(emoji)
    optout = Site(emoji, opt_out="noai, noimageai")
    scoped = Site(emoji, opt_out="googlebot: noindex")  # another crawler's rule: not ours
    robots = Site(emoji, robots="User-agent: cliplab\nDisallow: /img/\n\nUser-agent: *\nAllow: /\n")
    with local_web(good, optout, scoped, robots):
        rows = [(good.url("img", n), f"emoji {n}") for n in names[:200]]
        rows += [(good.url("liar", names[0]), "served as text/html: still an image")]
        rows += [(good.url("redirect", names[1]), "one redirect")]
        rows += [(good.url("img", names[2]) + "?q=ñandú", "non-ASCII in the query: encoded")]
        rows += [(scoped.url("img", n), "another agent's noindex") for n in names[:5]]
        expected_ok = len(rows)
        bad = {
            "not-an-image": [good.url("html", names[0])],
            "truncated-body": [good.url("drop", names[2])],
            "truncated-image": [good.url("truncated", names[3])],
            "too-large": [good.url("huge", names[0]), good.url("endless", names[0])],
            "redirect-loop": [good.url("loop", names[0])],
            "http-404": [good.url("status", names[0], 404), good.url("img", "no-such.png")],
            "http-403": [good.url("status", names[0], 403)],
            "http-500": [good.url("status", names[0], 500)],
            "decompression-bomb": [good.url("bomb", names[0])],
            "bad-url": [
                "ftp://127.0.0.1/x.png",
                "not a url",
                "",
                "http://a:99999/x.png",
                "http://[::1/x.png",
            ],  # fmt: skip
            "dns": ["http://no-such-host.invalid/x.png"],
            "robots": [robots.url("img", n) for n in names[:4]],
        }
        rows += [(u, reason) for reason, urls in bad.items() for u in urls]
        opt = [(optout.url("img", n), "opted out") for n in names[:6]]
        rows += opt
        table = _table(tmp_path / "pairs.csv", rows)
        config = _config(
            shard_size=64,
            threads=16,
            per_host=1,
            respect_robots=True,
            retries=1,
            max_bytes=2 << 20,
        )
        summary = download([str(table)], tmp_path / "out", config)
    failures = summary["failures"]
    for reason, urls in bad.items():
        assert failures.pop(reason) == len(urls), reason
    # the host that opted out was asked once; the rest of its rows are never requested
    assert failures.pop("opt-out") == 1 and failures.pop("opt-out-host") == len(opt) - 1
    assert optout.requests["img"] == 1
    assert failures == {}
    assert summary["successes"] == expected_ok and summary["rows"] == len(rows)
    assert robots.requests == {"robots.txt": 1}  # fetched once, and no image asked for
    assert good.requests["drop"] == 2 and good.requests["status"] == 3 + 1  # 500 retried once
    samples = _samples(tmp_path / "out")
    assert len(samples) == expected_ok
    urls = {json.loads(s["json"])["url"] for s in samples.values()}
    assert not any(optout.base in u or robots.base in u for u in urls)
    # each shard's stats add up to the summary
    stats = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("shard-*.json"))]
    assert sum(s["samples"] for s in stats) == expected_ok
    assert sum(s["rows"] for s in stats) == len(rows)
    assert (
        json.loads((tmp_path / "out" / "summary.json").read_text())["failed"] == summary["failed"]
    )


def test_thousands_of_real_images_from_several_hosts(
    emoji: dict[str, bytes], stamps: dict[str, bytes], tmp_path: Path
) -> None:
    images = {**emoji, **stamps}
    sites = [Site(images) for _ in range(3)]
    names = sorted(images)
    with local_web(*sites):
        rows = [
            (f"{sites[i % 3].url('img', names[i % len(names)])}?n={i}", f"picture {i}")
            for i in range(2000)
        ]
        table = _table(tmp_path / "pairs.csv", rows, license=["cc-by"] * len(rows))
        config = _config(
            shard_size=500, image=ImageOptions(size=96), agent_url="https://example.org/crawl"
        )
        summary = download([str(table)], tmp_path / "out", config)
    assert summary["successes"] == 2000 and summary["failed"] == 0 and summary["shards"] == 4
    # connections are kept alive: far fewer than requests (8 per host at most in flight)
    assert sum(site.connections for site in sites) <= 3 * 8 * 2
    agents = set().union(*(site.agents for site in sites))
    assert agents == {config.user_agent} and config.user_agent.startswith("cliplab/")
    assert "(+https://example.org/crawl)" in config.user_agent
    assert summary["this_run"]["received_bytes"] > 0
    samples = _samples(tmp_path / "out")
    assert sorted(samples) == [f"{i:09d}" for i in range(2000)]
    sample = samples["000000007"]
    meta = json.loads(sample["json"])
    assert meta["license"] == "cc-by" and sample["txt"] == b"picture 7"
    assert meta["url"] == rows[7][0] and meta["caption"] == "picture 7"
    image = Image.open(io.BytesIO(sample["jpg"]))
    assert (image.width, image.height) == (meta["width"], meta["height"])
    big = [json.loads(s["json"]) for s in samples.values()]
    big = [m for m in big if min(m["original_width"], m["original_height"]) > 96]
    assert big and all(min(m["width"], m["height"]) == 96 for m in big)  # shrunk, never grown
    # the data layer reads the shards as they are: a survey, and an embedded collection
    assert main(["data", "stats", str(tmp_path / "out")]) == 0
    argv = ["embed", str(tmp_path / "out"), "--model", "random:tiny-vit", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "collection"), "--batch-size", "256"]) == 0
    assert len(Collection(tmp_path / "collection")) == 2000


# -- politeness --------------------------------------------------------------------------
def test_per_host_connections_and_rate_are_limited(emoji: dict[str, bytes], tmp_path: Path) -> None:
    names = sorted(emoji)
    site, fast = Site(emoji), Site(emoji)
    with local_web(site, fast):
        rows = [(site.url("slow", n, 0.05), "slow") for n in names[:40]]
        table = _table(tmp_path / "a.csv", rows)
        download([str(table)], tmp_path / "a", _config(threads=16, per_host=2))
        assert site.max_open <= 2
        rows = [(fast.url("img", n), "rated") for n in names[:21]]
        table = _table(tmp_path / "b.csv", rows)
        start = time.monotonic()
        download([str(table)], tmp_path / "b", _config(threads=16, host_rate=20.0))
        assert time.monotonic() - start >= 20 / 20.0 * 0.95  # 21 requests at 20/s: >= 1 s


def test_retry_after_is_honoured(emoji: dict[str, bytes], tmp_path: Path) -> None:
    names = sorted(emoji)
    site = Site(emoji)
    with local_web(site):
        table = _table(tmp_path / "p.csv", [(site.url("busy", n), "busy") for n in names[:3]])
        start = time.monotonic()
        summary = download([str(table)], tmp_path / "o", _config(retries=2))
        assert time.monotonic() - start >= 1.0  # Retry-After: 1 paused the host
        assert summary["successes"] == 3 and site.requests["busy"] == 6
        # without retries, the 429 is the reason
        site2 = Site(emoji)
        with local_web(site2):
            table = _table(tmp_path / "q.csv", [(site2.url("busy", names[0]), "busy")])
            summary = download([str(table)], tmp_path / "q", _config(retries=0))
        assert summary["failures"] == {"http-429": 1}


def test_x_robots_tag_reading() -> None:
    from email.message import Message

    def headers(*values: str) -> Message:
        m = Message()
        for v in values:
            m["X-Robots-Tag"] = v
        return m

    tags = ("noai", "noimageai", "noindex")
    assert opted_out(headers("noai"), tags, "cliplab") == "noai"
    assert opted_out(headers("index, follow", "NoImageAI"), tags, "cliplab") == "noimageai"
    assert opted_out(headers("googlebot: noindex"), tags, "cliplab") is None
    assert opted_out(headers("cliplab: noindex"), tags, "cliplab") == "noindex"
    assert opted_out(headers("noindex"), ("noai",), "cliplab") is None
    assert opted_out(headers(), tags, "cliplab") is None


def test_robots_txt_failures_follow_rfc_9309(emoji: dict[str, bytes]) -> None:
    client = HttpClient("cliplab/test", timeout=2.0)
    missing, broken = Site(emoji), Site(emoji)
    with local_web(missing, broken):
        assert client.robots(missing.url("img", "x"), "cliplab").allows("cliplab", "/img/x")
        # a server error: everything is disallowed
        rules = client.robots("http://127.0.0.1:1/img/x", "cliplab")  # connection refused
        assert not rules.allows("cliplab", "/img/x")
    client.close()


# -- images ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "encoding"),
    [("keep-ratio", "jpg"), ("center-crop", "webp"), ("border", "jpg"), ("no", "webp")],
)
def test_resize_modes(stamps: dict[str, bytes], mode: str, encoding: str) -> None:
    options = ImageOptions(size=64, mode=mode, encoding=encoding, quality=90)
    name = max(stamps, key=lambda n: min(Image.open(io.BytesIO(stamps[n])).size))
    data, sizes = options.process(stamps[name])
    w0, h0 = Image.open(io.BytesIO(stamps[name])).size
    image = Image.open(io.BytesIO(data))
    assert image.format == {"jpg": "JPEG", "webp": "WEBP"}[encoding]
    assert (sizes["original_width"], sizes["original_height"]) == (w0, h0)
    assert image.size == (sizes["width"], sizes["height"])
    if mode == "keep-ratio":
        assert min(image.size) == 64 and abs(image.width / image.height - w0 / h0) < 0.05
    elif mode == "center-crop" or mode == "border":
        assert image.size == (64, 64)
    else:
        assert image.size == (w0, h0)


# -- resuming ----------------------------------------------------------------------------
def _cli(pairs: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cliplab", "data", "download", str(pairs), "--out", str(out),
        "--shard-size", "20", "--threads", "4", "--quiet", *extra,
    ]  # fmt: skip


def test_a_killed_run_resumes_to_the_same_shards_and_fetches_nothing_twice(
    emoji: dict[str, bytes], tmp_path: Path
) -> None:
    names = sorted(emoji)
    site = Site(emoji)
    with local_web(site):
        rows = [(site.url("slow", names[i], 0.03), f"emoji {i}") for i in range(100)]
        rows[37] = (site.url("status", names[0], 404), "a failure is journaled too")
        pairs = _table(tmp_path / "pairs.csv", rows)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
        assert subprocess.run(_cli(pairs, tmp_path / "whole"), env=env).returncode == 0
        whole = dict(site.paths)
        site.paths.clear()
        out = tmp_path / "killed"
        proc = subprocess.Popen(_cli(pairs, out), env=env)
        deadline = time.monotonic() + 60
        # kill once a shard is complete and the next one is part-way through its journal
        while time.monotonic() < deadline:
            journals = list(out.glob("*.journal"))
            if (
                list(out.glob("shard-*.json"))
                and journals
                and len(Journal(journals[0]).read()) >= 5
            ):
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "summary.json").exists()
        first = sum(site.paths.values())
        assert 0 < first < 100
        assert subprocess.run(_cli(pairs, out), env=env).returncode == 0
    # the same bytes as the run that was never interrupted
    for shard in sorted((tmp_path / "whole").glob("shard-*.tar")):
        assert (out / shard.name).read_bytes() == shard.read_bytes(), shard.name
    assert not list(out.glob("*.journal"))
    # nothing settled before the kill was fetched again: at most the 4 in flight were
    twice = [p for p, n in site.paths.items() if n > 1]
    assert len(twice) <= 4, twice
    assert sum(site.paths.values()) <= 100 + 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["successes"] == 99 and summary["failures"] == {"http-404": 1}
    assert summary["shards_resumed"] >= 1
    assert sum(whole.values()) == 100


def test_journal_drops_a_record_cut_short(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.append(3, None, {"jpg": b"x" * 100, "txt": b"hi"})
    journal.append(5, "http-404", {})
    journal.append(7, None, {"jpg": b"y" * 50})
    journal.close()
    data = (tmp_path / "j").read_bytes()
    (tmp_path / "j").write_bytes(data[:-10])  # the kill came inside the last record
    resumed = Journal(tmp_path / "j")
    assert resumed.read() == {
        3: (None, {"jpg": b"x" * 100, "txt": b"hi"}),
        5: ("http-404", {}),
    }
    # the cut record is cut off the file: what the resumed run appends stays readable
    resumed.append(9, None, {"jpg": b"z" * 30})
    resumed.close()
    assert sorted(Journal(tmp_path / "j").read()) == [3, 5, 9]
    assert Journal(tmp_path / "j").read()[9] == (None, {"jpg": b"z" * 30})


# -- the command, its inputs and engines ------------------------------------------------
def test_cli_reads_curated_output_and_parquet_and_rejects_bad_input(
    emoji: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(emoji)
    site = Site(emoji)
    with local_web(site):
        kept = tmp_path / "kept.jsonl"  # what `cliplab data curate` writes
        with open(kept, "w") as f:
            for i, n in enumerate(names[:12]):
                line = {"id": f"t:{i}", "text": f"a cat {i}", "query": "cat"}
                line["row"] = {"url": site.url("img", n), "caption": f"a cat {i}", "src": "web"}
                f.write(json.dumps(line) + "\n")
        assert main(["data", "download", str(kept), "--out", str(tmp_path / "a"), "--quiet"]) == 0
        meta = json.loads(_samples(tmp_path / "a")["000000003"]["json"])
        assert meta["query"] == "cat" and meta["src"] == "web" and meta["caption"] == "a cat 3"
        table = pa.table(
            {"link": [site.url("img", n) for n in names[:8]], "alt": [f"alt {i}" for i in range(8)]}
        )
        pq.write_table(table, tmp_path / "p.parquet")
        argv = ["data", "download", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "b")]
        argv += ["--url-column", "link", "--caption-column", "alt", "--encode", "webp", "--quiet"]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "8 of 8 images (100.0%)" in out
    assert _samples(tmp_path / "b")["000000005"]["txt"] == b"alt 5"
    assert main(["data", "download", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "c")]) == 2
    assert (
        main(["data", "download", str(kept), "--out", str(tmp_path / "c"), "--threads", "0"]) == 2
    )
    # a folder written with another layout is not resumed into
    argv = ["data", "download", str(kept), "--out", str(tmp_path / "a"), "--quiet"]
    assert main([*argv, "--shard-size", "5"]) == 2
    assert "shard_size" in capsys.readouterr().err


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}


def test_processes_and_ray_write_the_same_shards(emoji: dict[str, bytes], tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    names = sorted(emoji)
    site = Site(emoji)
    with local_web(site):
        rows = [(site.url("img", names[i]), f"emoji {i}") for i in range(120)]
        rows[50] = (site.url("status", names[0], 404), "missing")
        pairs = _table(tmp_path / "pairs.csv", rows)
        base = _config(shard_size=25, threads=8)
        download([str(pairs)], tmp_path / "one", base)
        download([str(pairs)], tmp_path / "two", _config(shard_size=25, threads=8, processes=2))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            summary = download([str(pairs)], tmp_path / "ray", _config(shard_size=25, engine="ray"))
        finally:
            ray.shutdown()
    one = _shard_bytes(tmp_path / "one")
    assert len(one) == 5
    assert _shard_bytes(tmp_path / "two") == one
    assert _shard_bytes(tmp_path / "ray") == one
    assert summary["successes"] == 119 and summary["failures"] == {"http-404": 1}


def test_shards_go_to_object_storage_and_a_rerun_keeps_them(
    emoji: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("moto")
    from cliplab.data import storage
    from objectstore import object_store

    monkeypatch.setenv("CLIPLAB_CACHE", str(tmp_path / "cache"))
    names = sorted(emoji)
    site = Site(emoji)
    with local_web(site), object_store() as store:
        rows = [(site.url("img", names[i]), f"emoji {i}") for i in range(30)]
        pairs = _table(tmp_path / "pairs.csv", rows)
        store.client().put_object(Bucket="cliplab", Key="in/pairs.csv", Body=pairs.read_bytes())
        url = "s3://cliplab/shards"
        argv = ["data", "download", "s3://cliplab/in/pairs.csv", "--out", url, "--quiet"]
        assert main([*argv, "--shard-size", "10"]) == 0
        assert storage.list_files(url, ".tar") == [f"{url}/shard-{i:06d}.tar" for i in range(3)]
        summary = json.loads(storage.read_text(f"{url}/summary.json"))
        assert summary["successes"] == 30
        assert main(["data", "stats", url]) == 0  # the data layer reads them where they are
        before = site.requests["img"]
        assert main([*argv, "--shard-size", "10"]) == 0  # complete: nothing fetched again
        assert site.requests["img"] == before == 30
        assert json.loads(storage.read_text(f"{url}/summary.json"))["shards_resumed"] == 3
        # staged files are gone once uploaded
        assert not list((tmp_path / "cache").rglob("*.tar"))


def test_a_host_slower_than_the_timeout_counts_as_timeout(
    emoji: dict[str, bytes], tmp_path: Path
) -> None:
    names = sorted(emoji)
    site = Site(emoji)
    with local_web(site):
        rows = [(site.url("slow", names[0], 2), "too slow"), (site.url("img", names[1]), "ok")]
        rows += [(site.url("trickle", names[2]), "a byte at a time: each read is quick")]
        table = _table(tmp_path / "p.csv", rows)
        start = time.monotonic()
        summary = download([str(table)], tmp_path / "o", _config(timeout=0.5, retries=0))
    assert summary["failures"] == {"timeout": 2} and summary["successes"] == 1
    assert time.monotonic() - start < 5  # the trickle is cut at 3 x the timeout
