"""``cliplab serve``: the JSON API on a real uvicorn server on 127.0.0.1 (hostile requests
get a 4xx, never a 500; no path traversal), and the web page in a real headless Chromium."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cliplab
from cliplab.data.sources import spec_for_path
from cliplab.data.webdataset import is_shard
from cliplab.search.collection import Collection
from cliplab.search.dedup import find_duplicates
from cliplab.search.embed import embed
from cliplab.search.filters import Filter
from cliplab.search.index import build_index
from cliplab.search.query import Searcher

httpx = pytest.importorskip("httpx", reason="the serve tests need httpx: pip install '.[browser]'")
uvicorn = pytest.importorskip("uvicorn", reason="serving needs the serve extra")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}
LIMIT = 256 * 1024


def png_bytes(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    pics = root / "pics"
    pics.mkdir()
    for i in range(18):
        name = list(COLOURS)[i % 3]
        (pics / f"{name}{i:02d}.png").write_bytes(png_bytes(COLOURS[name], 40 + i))
        (pics / f"{name}{i:02d}.txt").write_text(f"a {name} square")
        day = time.mktime((2024, 1, i + 1, 12, 0, 0, 0, 0, -1))  # no EXIF: the file's date
        os.utime(pics / f"{name}{i:02d}.png", (day, day))
    model, preprocess = cliplab.load("random:tiny-vit")
    embed(
        spec_for_path(str(pics)),
        root / "c",
        model,
        preprocess,
        model_spec="random:tiny-vit",
        progress=False,
    )
    build_index(Collection(root / "c"))
    # each colour's squares differ only in size: near duplicates, for the page's groups
    find_duplicates(root / "c", sample=6)
    return root / "c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(collection: Path) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 in a thread; yields its base URL."""
    yield from run_server(collection)


def run_server(collection: Path, **options) -> Iterator[str]:
    from cliplab.serve import create_app

    app = create_app(Searcher(collection), max_upload_bytes=LIMIT, **options)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    headers = {"Authorization": f"Bearer {options['token']}"} if options.get("token") else {}
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1, headers=headers).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield base
    srv.should_exit = True
    thread.join(timeout=10)


def test_api_answers(server: str) -> None:
    health = httpx.get(f"{server}/health").json()
    sync = health.pop("sync")
    assert health == {"status": "ok", "images": 18, "model": "random:tiny-vit",
                      "index": "exact", "captions": True, "runtime": "torch"}  # fmt: skip
    assert sync["generation"] == 1 and sync["last"] == {"added": 18}
    found = httpx.get(f"{server}/search", params={"q": "a red square", "k": 5}).json()["results"]
    assert len(found) == 5 and all(r["url"] == f"/image/{r['id']}" for r in found)
    by_image = httpx.post(
        f"{server}/search", files={"image": ("q.png", png_bytes(COLOURS["green"]))}, data={"k": "3"}
    ).json()["results"]
    assert [r["caption"] for r in by_image] == ["a green square"] * 3
    assert by_image[0]["score"] == pytest.approx(1.0, abs=2e-3)
    captions = httpx.post(
        f"{server}/search",
        files={"image": ("q.png", png_bytes(COLOURS["blue"]))},
        data={"k": "2", "captions": "true"},
    ).json()["results"]
    # a random model: which caption wins is arbitrary, but it is the best-scoring one
    assert len(captions) == 2 and captions[0]["score"] >= captions[1]["score"]
    assert {r["caption"] for r in captions} <= {f"a {c} square" for c in COLOURS}
    probs = httpx.post(
        f"{server}/classify",
        files={"image": ("q.png", png_bytes(COLOURS["red"]))},
        data={"labels": "red, green,blue"},
    ).json()
    assert probs["templates"] == 7 and {r["label"] for r in probs["results"]} == set(COLOURS)
    assert sum(r["probability"] for r in probs["results"]) == pytest.approx(1, abs=1e-4)
    grouped = httpx.post(  # labels with members: one probability per label, not per member
        f"{server}/classify",
        files={"image": ("q.png", png_bytes(COLOURS["red"]))},
        data={"labels": "warm=red|orange|yellow, cool=green|blue"},
    ).json()["results"]
    assert sorted(r["label"] for r in grouped) == ["cool", "warm"]
    assert sum(r["probability"] for r in grouped) == pytest.approx(1, abs=1e-4)
    image = httpx.get(f"{server}{found[0]['url']}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (found[0]["width"], found[0]["height"])
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "cliplab search" in page.text


@pytest.mark.parametrize(
    "method,path,kwargs,status",
    [
        ("get", "/search", {"params": {"q": ""}}, 400),
        ("get", "/search", {"params": {"q": "   "}}, 400),
        ("get", "/search", {"params": {"q": "x" * 1001}}, 400),
        ("get", "/search", {"params": {"q": "x" * 20_000}}, 422),
        ("get", "/search", {"params": {"q": "cat", "k": 0}}, 400),
        ("get", "/search", {"params": {"q": "cat", "k": 100_000}}, 400),
        ("get", "/search", {"params": {"q": "cat", "k": "many"}}, 422),
        ("post", "/search", {"files": {"image": ("x.png", b"not an image")}}, 415),
        ("post", "/search", {"files": {"image": ("x.png", png_bytes((1, 2, 3))[:60])}}, 400),
        ("post", "/search", {"files": {"image": ("x.png", bomb())}}, 413),
        ("post", "/search", {"files": {"image": ("x.png", b"")}}, 400),
        ("post", "/search", {"files": {"image": ("x.png", b"\x00" * (LIMIT + 1))}}, 413),
        ("post", "/search", {"data": {"k": "3"}}, 422),
        ("post", "/classify", {"files": {"image": ("x.png", png_bytes((1, 2, 3)))}, "data": {"labels": " , "}}, 400),
        ("post", "/classify", {"files": {"image": ("x.png", png_bytes((1, 2, 3)))}, "data": {"labels": "a,a"}}, 400),
        ("post", "/classify", {"files": {"image": ("x.png", png_bytes((1, 2, 3)))}, "data": {"labels": "=a|b"}}, 400),
        ("post", "/classify", {"files": {"image": ("x.png", png_bytes((1, 2, 3)))}, "data": {"labels": "a=" + "|".join(map(str, range(101)))}}, 400),
        ("post", "/classify", {"files": {"image": ("x.png", png_bytes((1, 2, 3)))}, "data": {"labels": ",".join(map(str, range(101)))}}, 400),
        ("post", "/classify", {"files": {"image": ("x.png", png_bytes((1, 2, 3)))}, "data": {"labels": "a", "templates": "../../etc/passwd"}}, 400),
        ("post", "/classify", {"files": {"image": ("x.png", b"GIF89a broken")}, "data": {"labels": "a"}}, 415),
        ("get", "/image/18", {}, 404),
        ("get", "/image/-1", {}, 404),
        ("get", "/image/abc", {}, 422),
        ("get", "/image/99999999999999999999999", {}, 404),
        ("get", "/image/..%2F..%2F..%2Fetc%2Fpasswd", {}, 404),
        ("get", "/image/1/../../../etc/passwd", {}, 404),
        ("get", "/../../../../etc/passwd", {}, 404),
        ("get", "/static/..%2F..%2Fapp.py", {}, 404),
        ("get", "/%2e%2e/%2e%2e/etc/passwd", {}, 404),
        ("delete", "/search", {}, 405),
        ("get", "/search", {"params": {"q": "cat", "min_relevance": 1.5}}, 400),
        ("get", "/search", {"params": {"q": "cat", "min_relevance": "nan"}}, 400),
        ("get", "/search", {"params": {"q": "-cat -dog"}}, 400),
        ("post", "/search", {"files": {"image": ("x.png", png_bytes((1, 2, 3)))}, "data": {"image_weight": "-1"}}, 400),
        ("post", "/search", {"files": {"image": ("x.png", png_bytes((1, 2, 3)))}, "data": {"q": "x" * 1001}}, 400),
        ("post", "/embed", {"json": {"texts": "a cat"}}, 400),
        ("post", "/embed", {"json": {"texts": [1, 2]}}, 400),
        ("post", "/embed", {"json": {"texts": ["x" * 1001]}}, 400),
        ("post", "/embed", {"json": [["a"]]}, 400),
        ("post", "/embed", {"content": b"\xff\xfe", "headers": {"Content-Type": "application/json"}}, 400),
        ("post", "/embed", {"files": {"other": ("x.png", png_bytes((1, 2, 3)))}}, 400),
        ("post", "/embed", {"files": {"images": ("x.png", bomb())}}, 413),
        ("post", "/embed", {"files": {"images": ("x.png", b"\x00" * (LIMIT + 1))}}, 413),
        ("get", "/embed", {}, 405),
        ("get", "/search", {"params": {"q": "cat", "after": "2024-13-01"}}, 400),
        ("get", "/search", {"params": {"q": "cat", "after": "2024-05-01", "before": "2024-01-01"}}, 400),
        ("get", "/search", {"params": {"q": "cat", "bbox": "1,2,3"}}, 400),
        ("get", "/search", {"params": {"q": "cat", "bbox": "50,0,40,10"}}, 400),
        ("get", "/search", {"params": {"q": "cat", "near": "95,0,10"}}, 400),
        ("get", "/search", {"params": {"q": "cat", "near": "0,0,nan"}}, 400),
        ("get", "/search", {"params": {"q": "cat", "sort": "random"}}, 400),
        ("get", "/search", {"params": {"q": "cat", "path": "[" * 5000}}, 400),
        ("get", "/search", {"params": {"path": "../../etc/*"}}, 200),
        ("post", "/search", {"files": {"image": ("x.png", png_bytes((1, 2, 3)))}, "data": {"before": "yesterday"}}, 400),
    ],
)  # fmt: skip
def test_hostile_requests_get_4xx_never_500(
    server: str, method: str, path: str, kwargs: dict, status: int
) -> None:
    response = httpx.request(method, f"{server}{path}", **kwargs)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and "/etc/passwd" not in response.text.replace(path, "")


def test_a_body_without_content_length_is_limited_too(server: str) -> None:
    """A chunked upload (no Content-Length) over the limit is cut off with 413."""

    def chunks() -> Iterator[bytes]:
        boundary = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        yield boundary
        for _ in range(LIMIT // 4096 + 20):
            yield b"\x00" * 4096
        yield b"\r\n--x--\r\n"

    response = httpx.post(
        f"{server}/search",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 413


def test_server_never_reads_outside_the_collection(server: str, collection: Path) -> None:
    """Only the collection's own files, by id: a secret beside it is never served."""
    secret = collection.parent / "secret.txt"
    secret.write_text("do not serve")
    for path in ("/image/..%2Fsecret.txt", "/secret.txt", "/image/%2E%2E%2Fsecret.txt"):
        response = httpx.get(f"{server}{path}")
        assert response.status_code in (404, 422) and "do not serve" not in response.text


def test_images_of_collections_in_object_storage(tmp_path: Path) -> None:
    """Collections embedded from WebDataset shards and from image files that sit in an
    S3-compatible server (moto on 127.0.0.1): `/image/{id}` answers every image's original
    bytes, read from the shard member by key or from the file; a bad id is a 4xx."""
    pytest.importorskip("moto", reason="needs moto[server]: pip install 'cliplab[scale]'")
    pytest.importorskip("s3fs", reason="needs s3fs: pip install 'cliplab[scale]'")
    from fastapi.testclient import TestClient

    from cliplab.data.shardwriter import ShardWriter
    from cliplab.serve import create_app
    from objectstore import object_store

    local = tmp_path / "data"
    (local / "images").mkdir(parents=True)
    originals: dict[str, bytes] = {}  # shard key or file name -> bytes

    def original(row: dict) -> bytes:
        return originals[row["key"] if row["path"].endswith(".tar") else row["path"][-7:]]

    rows = ["image,caption"]
    with ShardWriter(local / "shards", max_samples=3) as writer:
        for i in range(7):
            name = list(COLOURS)[i % 3]
            data = png_bytes(COLOURS[name], 32 + i)
            writer.write(f"s{i:02d}", {"png": data, "txt": f"a {name} square"})
            originals[f"s{i:02d}"] = data
            (local / "images" / f"f{i:02d}.png").write_bytes(data)
            originals[f"f{i:02d}.png"] = data
            rows.append(f"images/f{i:02d}.png,a {name} square")
    (local / "manifest.csv").write_text("\n".join(rows) + "\n")
    model, preprocess = cliplab.load("random:tiny-vit")
    with object_store() as store:
        url = store.upload(local, "serve")
        sources = {
            "shards": f"{url}/shards/shard-{{000000..000002}}.tar",
            "files": f"{url}/manifest.csv",
        }
        for name, source in sources.items():
            out = tmp_path / name
            embed(spec_for_path(source), out, model, preprocess, model_spec="random:tiny-vit",
                  progress=False)  # fmt: skip
            collection = Collection(out)
            assert len(collection) == 7
            client = TestClient(create_app(Searcher(out, model, preprocess)))
            for i in range(7):
                row = collection.row(i)
                assert row["path"].startswith("s3://cliplab/serve/"), row
                assert is_shard(row["path"]) == (name == "shards"), row
                response = client.get(f"/image/{i}")
                assert response.status_code == 200, response.text
                assert response.content == original(row)
                assert response.headers["content-type"] == "image/png"
            hit = client.get("/search", params={"q": "a red square", "k": 1}).json()["results"][0]
            assert client.get(hit["url"]).content == original(hit)
            for bad in ("7", "-1", "x", "..%2Fmanifest.csv", "0/../../manifest.csv"):
                response = client.get(f"/image/{bad}")
                assert response.status_code in (404, 422) and "Traceback" not in response.text
        # a shard that went away: a 404, never a 500
        store.client().delete_object(Bucket="cliplab", Key="serve/shards/shard-000000.tar")
        gone = TestClient(create_app(Searcher(tmp_path / "shards", model, preprocess)))
        assert gone.get("/image/0").status_code == 404
        assert gone.get("/image/6").status_code == 200


# --------------------------------------------------------------------------- the browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Chromium is not installed: apt-get install chromium chromium-driver (.ci/run does)",
)
def test_page_in_a_real_browser(server: str, tmp_path: Path) -> None:
    """Headless Chromium: type a query and see the result images load, upload an image to
    search with it, classify an uploaded image against typed labels."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install '.[browser]'")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(server + "/")
        wait.until(lambda d: "18 images" in d.find_element(By.ID, "status").text)
        box = driver.find_element(By.ID, "q")
        box.send_keys("a red square", Keys.ENTER)

        def loaded_images(d):
            images = d.find_elements(By.CSS_SELECTOR, "#grid img")
            done = [
                i
                for i in images
                if d.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth > 0", i
                )
            ]
            return len(images) >= 12 and len(done) == len(images)

        wait.until(loaded_images)
        assert 'results for "a red square"' in driver.find_element(By.ID, "summary").text
        query = tmp_path / "green.png"
        query.write_bytes(png_bytes(COLOURS["green"]))
        driver.find_element(By.ID, "image-file").send_keys(str(query))
        wait.until(lambda d: "green.png" in d.find_element(By.ID, "summary").text)
        wait.until(loaded_images)
        captions = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#grid .caption")][:3]
        assert captions == ["a green square"] * 3
        driver.find_element(By.ID, "labels").send_keys("red, green, blue")
        driver.find_element(By.ID, "classify-file").send_keys(str(query))
        driver.find_element(By.ID, "classify").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#probs div span")) == 6)
        labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#probs div span")][::2]
        assert sorted(labels) == ["blue", "green", "red"]
        # a date filter and newest first: the squares dated 2024-01-10 on, newest first
        driver.find_element(By.ID, "q").clear()
        driver.find_element(By.ID, "q").send_keys("a red square", Keys.ENTER)
        wait.until(lambda d: 'results for "a red square"' in d.find_element(By.ID, "summary").text)
        set_value = (
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('change'))"
        )
        driver.execute_script(set_value, driver.find_element(By.ID, "after"), "2024-01-10")
        driver.execute_script(set_value, driver.find_element(By.ID, "sort"), "date")
        wait.until(lambda d: d.find_element(By.ID, "summary").text.startswith("9 results"))
        dates = [e.text[:10] for e in driver.find_elements(By.CSS_SELECTOR, "#grid .when")]
        assert dates == [f"2024-01-{d:02d}" for d in range(18, 9, -1)]
        # the relevance slider: only results at least that relevant (here: none at 1.0)
        driver.execute_script(set_value, driver.find_element(By.ID, "relevance"), "1")
        wait.until(lambda d: d.find_element(By.ID, "summary").text.startswith("0 results"))
        driver.execute_script(set_value, driver.find_element(By.ID, "relevance"), "0")
        driver.execute_script(set_value, driver.find_element(By.ID, "after"), "")
        driver.execute_script(set_value, driver.find_element(By.ID, "sort"), "")
        wait.until(lambda d: d.find_element(By.ID, "summary").text.startswith("18 results"))
        # more like this: the image itself is among the first (its colour's other squares are
        # the same picture at another size: they tie with it)
        first = driver.find_elements(By.CSS_SELECTOR, "#grid .card")[4]
        src = first.find_element(By.CSS_SELECTOR, "img").get_attribute("src")
        first.find_element(By.CSS_SELECTOR, ".like").click()
        wait.until(lambda d: "more like" in d.find_element(By.ID, "summary").text)
        wait.until(loaded_images)
        scores = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#grid .score")]
        sources = [
            e.get_attribute("src") for e in driver.find_elements(By.CSS_SELECTOR, "#grid img")
        ]
        assert scores[0].startswith("1.000") and src in sources[: scores.count(scores[0])]
        # the duplicate groups cliplab dedup found, and the sync status
        driver.find_element(By.ID, "show-dups").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#dups .group img"))
        assert "near-duplicate groups" in driver.find_element(By.ID, "dups-summary").text
        assert "generation 1" in driver.find_element(By.ID, "status").text
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10_000
        assert driver.find_element(By.ID, "error").text == ""
    finally:
        driver.quit()


TOKEN = "s3cret-token-0123456789"


def test_a_token_guards_every_request(collection: Path) -> None:
    from fastapi.testclient import TestClient

    from cliplab.serve import create_app

    client = TestClient(create_app(Searcher(collection), token=TOKEN))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = client.get("/health", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/image/0").status_code == 401
    upload = {"image": ("a.png", png_bytes(COLOURS["red"]), "image/png")}
    assert client.post("/search", files=upload).status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/health", headers=good).status_code == 200
    assert client.get("/search", params={"q": "red", "k": 2}, headers=good).status_code == 200
    assert client.post("/search", files=upload, headers=good).status_code == 200


def test_cross_origin_calls_are_closed_unless_listed(collection: Path) -> None:
    from fastapi.testclient import TestClient

    from cliplab.serve import create_app

    origin = {"Origin": "https://evil.example"}
    closed = TestClient(create_app(Searcher(collection)))
    assert "access-control-allow-origin" not in closed.get("/health", headers=origin).headers
    app = create_app(Searcher(collection), cors_origins=["https://photos.example"])
    opened = TestClient(app)
    allowed = opened.get("/health", headers={"Origin": "https://photos.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://photos.example"
    assert "access-control-allow-origin" not in opened.get("/health", headers=origin).headers


def test_serving_beyond_loopback_needs_a_token(collection: Path, monkeypatch) -> None:
    from cliplab.cli import main

    monkeypatch.delenv("CLIPLAB_TOKEN", raising=False)
    assert main(["serve", str(collection), "--host", "0.0.0.0"]) == 2
    assert main(["serve", str(collection), "--host", "192.168.1.5", "--token", "short"]) == 2
    monkeypatch.setenv("CLIPLAB_TOKEN", "short")
    assert main(["serve", str(collection), "--host", "0.0.0.0"]) == 2


def test_the_client_covers_every_endpoint(server: str, collection: Path, tmp_path: Path) -> None:
    """``cliplab.client`` against the real server: each endpoint's answer equals the
    library's own, errors come back as ClientError with the server's status and detail."""
    from cliplab.client import Client, ClientError

    client = Client(server)
    searcher = Searcher(collection)
    assert client.health()["images"] == 18
    hits = client.search("a red square -blue", k=4)
    ours = searcher.search_text("a red square -blue", k=4)
    assert [h["id"] for h in hits] == [h.id for h in ours]
    assert [h["relevance"] for h in hits] == pytest.approx([h.relevance for h in ours], abs=1e-4)
    picture = tmp_path / "q.png"
    picture.write_bytes(png_bytes(COLOURS["green"]))
    assert client.search_image(picture, k=3)[0]["key"].startswith("green")
    assert client.search_image(picture.read_bytes(), k=2, text="a square", image_weight=0.3)
    assert all(h["caption"] for h in client.search_image(picture, k=2, captions=True))
    probs = client.classify(picture, ["red", "green"])
    assert {p["label"] for p in probs} == {"red", "green"}
    texts = client.embed_texts(["a red square", "a blue square"])
    assert texts.shape == (2, 32)
    assert np.allclose(texts, searcher.embed_texts(["a red square", "a blue square"]), atol=1e-6)
    images = client.embed_images([picture, png_bytes(COLOURS["red"])])
    expected = searcher.embed_images([picture, png_bytes(COLOURS["red"])])
    assert np.allclose(images, expected, atol=1e-6)
    assert client.image(0) == Collection(collection).image_bytes(0)
    # more like an image of the collection (its stored embedding) and filters
    like = client.search(like=4, k=6, before="2024-01-10")
    assert like[0]["score"] == pytest.approx(1.0, abs=1e-3) and len(like) == 6
    assert all(h["taken"] < "2024-01-10" for h in like)
    assert [h["id"] for h in like] == [
        h.id for h in searcher.nearest(searcher.vector_of(4), 6, where=Filter(before="2024-01-10"))
    ]
    listed = client.search(after="2024-01-16", sort="oldest")
    assert [h["taken"][:10] for h in listed] == ["2024-01-16", "2024-01-17", "2024-01-18"]
    # the duplicate groups: one near group per colour (the same square at other sizes)
    dups = client.duplicates()
    assert dups["report"] and not dups["exact"] and 0 <= dups["precision"] <= 1
    colours = sorted({c["key"][:3] for c in g} for g in dups["near"])
    assert len(colours) == 3 and all(len(c) == 1 for c in colours)
    for call, status in (
        (lambda: client.image(999), 404),
        (lambda: client.search(like=999), 404),
        (lambda: client.search("x", near=(0, 0, -1)), 400),
        (lambda: client.search("x", colour="red"), TypeError),
        (lambda: client.search("x", min_relevance=2.0), 400),
        (lambda: client.embed_texts([]), 400),
        (lambda: client.embed_texts(["x"] * 257), 400),
        (lambda: client.embed_images([b"not an image"]), 415),
        (lambda: client.embed_images([picture] * 33), 400),
    ):
        if status is TypeError:
            with pytest.raises(TypeError):
                call()
            continue
        with pytest.raises(ClientError) as error:
            call()
        assert error.value.status == status and error.value.detail
    raw = httpx.post(f"{server}/embed", content=b"texts", headers={"Content-Type": "text/plain"})
    assert raw.status_code == 415
    assert (
        httpx.post(
            f"{server}/embed", content=b"{", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    with pytest.raises(ClientError) as gone:
        Client(f"http://127.0.0.1:{free_port()}", timeout=2).health()
    assert gone.value.status == 0


def test_the_client_sends_its_token(collection: Path) -> None:
    from cliplab.client import Client, ClientError

    servers = run_server(collection, token=TOKEN)
    base = next(servers)
    try:
        assert Client(base, token=TOKEN).health()["status"] == "ok"
        assert Client(base, token=TOKEN).embed_texts(["a red square"]).shape == (1, 32)
        with pytest.raises(ClientError) as refused:
            Client(base).health()
        assert refused.value.status == 401
    finally:
        next(servers, None)


def test_queries_on_a_faster_runtime_find_the_same_images(collection: Path) -> None:
    """``cliplab serve --runtime int8``: queries encoded by the int8 model land next to the
    float32 ones and find the same images."""
    from fastapi.testclient import TestClient

    from cliplab.serve import create_app

    exact, fast = Searcher(collection), Searcher(collection, runtime="int8")
    assert fast.runtime == "int8" and exact.runtime == "torch"
    for text in ("a red square", "a blue square -green"):
        a, b = exact.query_vector(text), fast.query_vector(text)
        assert float(a @ b) > 0.99
    client = TestClient(create_app(fast))
    got = client.get("/search", params={"q": "a green square", "k": 6}).json()["results"]
    assert {h["id"] for h in got} == {h.id for h in exact.search_text("a green square", k=6)}
