"""Pretrained weights by name, fetched from real HTTP servers the tests start on 127.0.0.1:
a file server with Range requests and scripted faults (OpenAI-style URLs, a user's own
registry) and a Hugging Face-compatible endpoint that ``huggingface_hub`` talks to
(``HF_ENDPOINT``). No mock of the client: the real downloader and the real huggingface_hub
run against servers that drop connections, answer 404/429/500, stall and lie."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import cliplab
from cliplab.checkpoints import api
from cliplab.checkpoints.errors import CheckpointError
from cliplab.checkpoints.fetch import FetchError, cache_root, download
from cliplab.checkpoints.registry import resolve_name
from cliplab.cli import main
from cliplab.presets import get_config
from hubserver import serve

ROOT = Path(__file__).resolve().parents[1]
CONFIG = get_config("tiny-vit", vision={"heads": 1}, text={"heads": 1})  # OpenAI's head width


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every cache in tmp_path, quick timeouts, and a clean network environment."""
    import huggingface_hub.constants as hf_constants

    for name in (
        "CLIPLAB_OFFLINE",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "CLIPLAB_REGISTRY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLIPLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CLIPLAB_FETCH_RETRIES", "3")
    monkeypatch.setenv("CLIPLAB_FETCH_TIMEOUT", "2")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


def weights_file(tmp_path: Path, seed: int = 0) -> tuple[Path, bytes]:
    """A tiny CLIP saved in OpenAI's layout (a state-dict .pt), and its bytes."""
    torch.manual_seed(seed)
    model = cliplab.create_model(CONFIG)
    path = api.export_openai(model, tmp_path / f"tiny-{seed}.pt")
    return path, path.read_bytes()


def register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **entries: dict) -> None:
    """A user registry (CLIPLAB_REGISTRY) with ``entries`` (name -> table)."""
    lines = []
    for name, table in entries.items():
        lines.append(f'[pretrained."{name}"]')
        lines += [
            f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in table.items()
        ]
    path = tmp_path / "registry.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv("CLIPLAB_REGISTRY", str(path))


def features(model: torch.nn.Module) -> torch.Tensor:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.encode_image(images)


def test_a_name_fetches_verifies_caches_and_equals_the_file(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = weights_file(env)
    with serve() as server:
        server.files["m/tiny.pt"] = data
        sha = hashlib.sha256(data).hexdigest()
        register(env, monkeypatch, **{"tiny/demo": {"url": server.url("m/tiny.pt"), "sha256": sha}})
        model, _ = cliplab.load("tiny/demo")
        assert torch.equal(features(model), features(cliplab.load(path)[0]))
        cached = cache_root() / "files" / sha / "tiny.pt"
        assert cached.read_bytes() == data
        assert not list(cached.parent.glob("*.partial"))
        assert server.requests["m/tiny.pt"] == 1
        cliplab.load("tiny/demo")  # from the cache: no request, no re-hash needed
        assert server.requests["m/tiny.pt"] == 1
        assert (cached.parent / "tiny.pt.sha256").read_text().split()[0] == sha


def test_dropped_connections_resume_at_the_byte_they_reached(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data = weights_file(env)
    with serve() as server:
        server.files["tiny.pt"] = data
        server.faults["tiny.pt"] = ["drop:1000", "drop:20000", "drop:7"]
        sha = hashlib.sha256(data).hexdigest()
        dest = download(server.url("tiny.pt"), env / "out" / "tiny.pt", sha256=sha, progress=False)
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
        assert server.requests["tiny.pt"] == 4  # three cut bodies, then the rest
        assert server.sent["tiny.pt"] == len(data)  # no byte sent twice: each retry resumed


def test_a_wrong_checksum_deletes_the_file_and_names_the_url(env: Path) -> None:
    with serve() as server:
        server.files["tiny.pt"] = b"not the weights" * 1000
        url = server.url("tiny.pt")
        dest = env / "out" / "tiny.pt"
        with pytest.raises(
            FetchError, match=f"{url} sent 15000 bytes with SHA-256 .* not the expected"
        ):
            download(url, dest, sha256="0" * 64, progress=False)
        assert not dest.exists() and not list(dest.parent.glob("tiny.pt.partial"))


def test_http_errors_fail_fast_or_are_retried_as_they_deserve(env: Path) -> None:
    with serve() as server:
        server.files["ok.pt"] = b"x" * 5000
        server.faults["missing.pt"] = ["404"]
        with pytest.raises(FetchError, match="HTTP 404"):
            download(server.url("missing.pt"), env / "a.pt", progress=False)
        assert server.requests["missing.pt"] == 1  # a 404 is not retried
        server.faults["ok.pt"] = ["429:1"]
        start = time.monotonic()
        download(server.url("ok.pt"), env / "b.pt", progress=False)
        assert time.monotonic() - start >= 1.0  # Retry-After honoured
        assert server.requests["ok.pt"] == 2
        server.faults["ok.pt"] = ["500", "500"]
        download(server.url("ok.pt"), env / "c.pt", progress=False)
        assert server.requests["ok.pt"] == 5 and (env / "c.pt").read_bytes() == b"x" * 5000
        server.faults["ok.pt"] = ["500"] * 10
        with pytest.raises(FetchError, match="gave up after 3 retries"):
            download(server.url("ok.pt"), env / "d.pt", progress=False)


def test_a_stalled_server_times_out(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPLAB_FETCH_TIMEOUT", "0.5")
    monkeypatch.setenv("CLIPLAB_FETCH_RETRIES", "1")
    with serve() as server:
        server.files["slow.pt"] = b"x" * 100
        server.faults["slow.pt"] = ["stall:3", "stall:3"]
        start = time.monotonic()
        with pytest.raises(FetchError, match="gave up after 1 retries"):
            download(server.url("slow.pt"), env / "slow.pt", progress=False)
        assert time.monotonic() - start < 3.0  # timed out, did not wait for the server


def test_redirects_leave_the_host_only_over_https(env: Path) -> None:
    with serve() as server:
        server.files["real.pt"] = b"y" * 300
        port = server.base.rsplit(":", 1)[1]
        server.faults["same.pt"] = [f"redirect:{server.url('real.pt')}"]
        download(server.url("same.pt"), env / "same.pt", progress=False)  # same host: followed
        assert (env / "same.pt").read_bytes() == b"y" * 300
        server.faults["away.pt"] = [f"redirect:http://localhost:{port}/real.pt"]
        with pytest.raises(FetchError, match="refused"):
            download(server.url("away.pt"), env / "away.pt", progress=False)


def test_offline_mode_opens_no_connection_and_says_what_is_missing(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data = weights_file(env)
    with serve() as server:
        server.files["tiny.pt"] = data
        sha = hashlib.sha256(data).hexdigest()
        register(env, monkeypatch, **{"tiny/demo": {"url": server.url("tiny.pt"), "sha256": sha}})
        for flag in ("CLIPLAB_OFFLINE", "HF_HUB_OFFLINE"):
            monkeypatch.setenv(flag, "1")
            with pytest.raises(
                FetchError, match="offline .* tiny/demo is not cached .* cliplab pull"
            ):
                cliplab.load("tiny/demo")
            monkeypatch.delenv(flag)
        assert sum(server.requests.values()) == 0
        cliplab.load("tiny/demo")  # online: fetched once
        monkeypatch.setenv("CLIPLAB_OFFLINE", "1")
        cliplab.load("tiny/demo")  # offline: from the cache
        assert sum(server.requests.values()) == 1


def test_names_that_are_urls_or_climb_out_are_refused(env: Path) -> None:
    for bad in ("http://127.0.0.1:1/x.pt", "file:///etc/passwd", "../../no-such/x.pt", "a/../../b"):
        with pytest.raises(CheckpointError, match="not a URL|never contains '..'"):
            resolve_name(bad)
    with pytest.raises(CheckpointError, match="did you mean ViT-B-32/laion2b_s34b_b79k"):
        resolve_name("ViT-B-32/laion2b_s34b_b79")
    with pytest.raises(CheckpointError, match="is an architecture: .* random:tiny-vit"):
        resolve_name("tiny-vit")
    assert resolve_name("ViT-B/32").entry.name == "ViT-B-32/openai"
    assert resolve_name("ViT-L/14@336px").entry.sha256.startswith("3035c92b")
    hf = resolve_name("someorg/somerepo@v1.2").entry
    assert (hf.repo, hf.revision, hf.layout) == ("someorg/somerepo", "v1.2", "transformers")
    assert resolve_name("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K").entry.layout == "open_clip"


def test_two_processes_pulling_one_file_make_one_download(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 << 20)
    sha = hashlib.sha256(data).hexdigest()
    with serve() as server:
        server.files["big.pt"] = data
        server.faults["big.pt"] = ["stall:1"]  # the first download takes a while
        code = textwrap.dedent(
            f"""
            from pathlib import Path
            from cliplab.checkpoints.fetch import download
            path = download({server.url("big.pt")!r}, Path({str(env / "shared" / "big.pt")!r}),
                            sha256={sha!r}, progress=False)
            print(len(path.read_bytes()))
            """
        )
        procs = [
            subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
        assert outputs == [str(len(data))] * 2
        assert server.requests["big.pt"] == 1 and server.sent["big.pt"] == len(data)
        assert (env / "shared" / "big.pt").read_bytes() == data


def hub_files(tmp_path: Path, layout: str) -> tuple[dict[str, bytes], Path]:
    """The files of a tiny model's repository in ``layout``, and the folder they came from."""
    torch.manual_seed(7)
    model = cliplab.create_model(CONFIG)
    folder = tmp_path / f"repo-{layout}"
    if layout == "open_clip":
        from cliplab.checkpoints.openclip import export_openclip

        export_openclip(model, folder)
    else:
        api.export_hf(model, folder)
    return {p.name: p.read_bytes() for p in folder.iterdir()}, folder


@pytest.mark.parametrize("layout", ["open_clip", "transformers"])
def test_hugging_face_repositories_through_huggingface_hub(
    env: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    files, folder = hub_files(env, layout)
    name = "hf-hub:org/tiny" if layout == "open_clip" else "org/tiny"
    with serve(hub=True) as server:
        for filename, data in files.items():
            server.files[f"org/tiny/{filename}"] = data
        monkeypatch.setenv("HF_ENDPOINT", server.base)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(FetchError, match="offline"):
            cliplab.load(name)
        assert sum(server.requests.values()) == 0
        monkeypatch.delenv("HF_HUB_OFFLINE")
        model, _ = cliplab.load(name)
        assert torch.equal(features(model), features(cliplab.load(folder)[0]))
        fetched = sum(server.requests.values())
        monkeypatch.setenv("CLIPLAB_OFFLINE", "1")
        again, _ = cliplab.load(name)  # Hugging Face's cache: no connection
        assert sum(server.requests.values()) == fetched
        assert torch.equal(features(again), features(model))


def test_pull_to_a_folder_then_load_offline_elsewhere(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, data = weights_file(env)
    files, _ = hub_files(env, "open_clip")
    carry = env / "usb"
    with serve() as server, serve(hub=True) as hub:
        server.files["tiny.pt"] = data
        for filename, blob in files.items():
            hub.files[f"org/tiny/{filename}"] = blob
        sha = hashlib.sha256(data).hexdigest()
        register(env, monkeypatch, **{"tiny/demo": {"url": server.url("tiny.pt"), "sha256": sha}})
        monkeypatch.setenv("HF_ENDPOINT", hub.base)
        assert main(["pull", "tiny/demo", "hf-hub:org/tiny", "--to", str(carry), "--quiet"]) == 0
        assert "CLIPLAB_CACHE=" in capsys.readouterr().out
        requests = sum(server.requests.values()) + sum(hub.requests.values())
        monkeypatch.setenv("CLIPLAB_CACHE", str(carry))  # the other machine
        monkeypatch.setenv("CLIPLAB_OFFLINE", "1")
        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(env / "elsewhere-hf"))
        cliplab.load("tiny/demo")
        cliplab.load("hf-hub:org/tiny")
        assert sum(server.requests.values()) + sum(hub.requests.values()) == requests
        assert main(["pull", "ViT-B-32/laion2b_s34b_b7", "--quiet"]) == 2  # a misspelt name
        assert "did you mean ViT-B-32/laion2b_s34b_b79k" in capsys.readouterr().err
        monkeypatch.delenv("CLIPLAB_OFFLINE")
        server.faults["gone.pt"] = ["404"]
        register(env, monkeypatch, **{"gone/x": {"url": server.url("gone.pt")}})
        assert main(["pull", "gone/x", "--quiet"]) == 1  # the server's fault, not the input's


def test_openai_files_come_from_a_mirror(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLIPLAB_OPENAI_URL replaces OpenAI's host: the same path, verified the same way."""
    _, data = weights_file(env)
    sha = hashlib.sha256(data).hexdigest()
    official = f"https://openaipublic.azureedge.net/clip/models/{sha}/tiny.pt"
    register(env, monkeypatch, **{"tiny/openai": {"url": official, "sha256": sha}})
    with serve() as mirror:
        mirror.files[f"clip/models/{sha}/tiny.pt"] = data
        monkeypatch.setenv("CLIPLAB_OPENAI_URL", mirror.base)
        model, _ = cliplab.load("tiny/openai")
        assert model.config == CONFIG
        assert mirror.requests[f"clip/models/{sha}/tiny.pt"] == 1


def test_list_models_pretrained_shows_the_registry(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list-models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    assert "ViT-B-32/laion2b_s34b_b79k" in out and "66.6" in out and "ViT-L-14-336/openai" in out
    assert main(["list-models", "--pretrained", "--json"]) == 0
    import json

    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ViT-B-32/openai"]["source"].endswith("/ViT-B-32.pt")
    assert rows["ViT-B-32/openai"]["imagenet_top1"] == pytest.approx(0.6332)
    assert len(rows) >= 40 and not any(r["cached"] for r in rows.values())
