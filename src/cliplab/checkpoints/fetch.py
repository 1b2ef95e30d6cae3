"""Names -> verified files in a cache: resumable downloads, checksums, offline mode.

Where files go: ``CLIPLAB_CACHE``, else ``$XDG_CACHE_HOME/cliplab``, else ``~/.cache/cliplab``
(:func:`cache_root`); a registry entry's URL file lands in ``<cache>/files/<sha256>/<name>``.
Files already on the machine are used, not fetched again: OpenAI's ``~/.cache/clip`` (where
``clip.load`` keeps them; checked against the SHA-256 once, then remembered), Hugging Face's
own cache, and ``<cache>/huggingface`` (what ``cliplab pull --to`` fills).

How a URL is fetched (:func:`download`), against what goes wrong on users' machines:

- into ``<file>.partial``, renamed only when the SHA-256 (where the registry has one) and the
  length match: a half-written file is never taken for a whole one; a mismatch deletes it and
  says which URL sent what;
- a dropped connection resumes where it stopped (HTTP ``Range``); 429 and 503 wait for the
  server's ``Retry-After``; other 5xx, timeouts and resets retry with exponential backoff
  (``CLIPLAB_FETCH_RETRIES``, default 5; ``CLIPLAB_FETCH_TIMEOUT`` seconds without a byte,
  default 30); 404 and other 4xx fail at once;
- a redirect to another host is followed only over HTTPS;
- one process downloads a file at a time (a lock beside it): two commands pulling the same
  weights make one download, and neither sees a torn file;
- progress on stderr with bytes/s (:mod:`cliplab.progress`).

``CLIPLAB_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) never opens a connection: what is missing is
named, with how to get it. Hugging Face repositories go through ``huggingface_hub``, which
honours ``HF_ENDPOINT`` (a mirror) and ``HF_TOKEN``; OpenAI's files can come from a mirror
with ``CLIPLAB_OPENAI_URL`` (the base that replaces ``https://openaipublic.azureedge.net``).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cliplab.checkpoints.errors import CheckpointError
from cliplab.checkpoints.registry import Pretrained
from cliplab.progress import Progress

__all__ = [
    "FetchError",
    "cache_root",
    "download",
    "fetch",
    "find_local",
    "offline",
]

OPENAI_BASE = "https://openaipublic.azureedge.net"
CHUNK = 1 << 20
#: Longest wait a server's Retry-After may ask for before the fetch gives up instead.
MAX_RETRY_AFTER = 120.0
#: Files of a repository fetched besides the weights, where the repository has them.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "merges.txt",
)
_LAYOUT_FILES = {
    "open_clip": (
        ("open_clip_config.json",),
        ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    ),
    "transformers": (("config.json",), ("model.safetensors", "pytorch_model.bin")),
}
_OPTIONAL = {
    "transformers": ("preprocessor_config.json", *_TOKENIZER_FILES),
    "open_clip": _TOKENIZER_FILES,
}


class FetchError(CheckpointError):
    """Weights that could not be fetched: offline, a server error, a bad checksum."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    """True when ``CLIPLAB_OFFLINE`` or ``HF_HUB_OFFLINE`` is set: no connection is opened."""
    return _flag("CLIPLAB_OFFLINE") or _flag("HF_HUB_OFFLINE")


def cache_root() -> Path:
    """``CLIPLAB_CACHE``, else ``$XDG_CACHE_HOME/cliplab``, else ``~/.cache/cliplab``."""
    if env := os.environ.get("CLIPLAB_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cliplab"


def _openai_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "clip"


def _int_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise FetchError(f"{name} must be a number, got {os.environ[name]!r}") from None


# --------------------------------------------------------------------------- verification


def _sha256(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def _verified(path: Path, sha256: str) -> bool:
    """Whether ``path`` holds ``sha256``; remembered in ``<path>.sha256`` (with the file's
    size and mtime) so a large file is hashed once, not on every load."""
    if not path.is_file():
        return False
    if not sha256:
        return True
    stat = path.stat()
    stamp = f"{sha256} {stat.st_size} {stat.st_mtime_ns}"
    marker = path.with_name(path.name + ".sha256")
    with contextlib.suppress(OSError):
        if marker.read_text(encoding="utf-8").strip() == stamp:
            return True
    if _sha256(path) != sha256:
        return False
    with contextlib.suppress(OSError):  # a read-only cache still works, it just hashes again
        marker.write_text(stamp + "\n", encoding="utf-8")
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` across processes (POSIX ``flock``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- HTTP


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect to the same host, or to another host only over HTTPS."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str):  # type: ignore[override]
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if (
            new.scheme not in ("http", "https")
            or (new.hostname != old.hostname and new.scheme != "https")
            or (old.scheme == "https" and new.scheme != "https")
        ):
            raise FetchError(
                f"{req.full_url} redirected to {newurl}: refused (a redirect may leave the "
                "host only over HTTPS, and never downgrade from it)"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_Redirects)


class _Retry(Exception):
    """A failure worth another try; ``wait`` seconds first (None: the backoff's)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def _get(url: str, partial: Path, timeout: float, progress: Progress | None) -> int:
    """One request for the rest of ``url`` into ``partial`` (appending from its length);
    returns the whole file's length. ``_Retry`` for what another try may fix."""
    start = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(
        url, headers={"User-Agent": "cliplab", "Accept-Encoding": "identity"}
    )
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and start:  # asked beyond the end: the partial file is complete
            return start
        if e.code in (429, 503):
            wait = _retry_after(e.headers.get("Retry-After"))
            raise _Retry(f"HTTP {e.code} from {url}", wait) from None
        if e.code >= 500:
            raise _Retry(f"HTTP {e.code} from {url}") from None
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:  # refused, reset, DNS, timeout
        raise _Retry(f"{url}: {getattr(e, 'reason', e)}") from None
    with response:
        if start and response.status != 206:  # the server ignored Range: start over
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        if progress is not None:
            progress.reset(total, start)
        with open(partial, "ab" if start else "wb") as out:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    if progress is not None:
                        progress.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:  # TimeoutError is an OSError
                raise _Retry(f"{url}: connection lost after {out.tell()} bytes ({e})") from None
        got = partial.stat().st_size
        if total is not None and got < total:
            raise _Retry(f"{url}: the body ended at {got} of {total} bytes")
        return got


def download(
    url: str,
    dest: Path,
    *,
    sha256: str = "",
    progress: bool = True,
    label: str = "",
) -> Path:
    """``url`` into ``dest``, verified and atomic (see the module docstring); returns ``dest``.
    A ``dest`` already holding ``sha256`` is returned at once."""
    if offline():
        raise FetchError(f"offline (CLIPLAB_OFFLINE or HF_HUB_OFFLINE is set): {url} is not cached")
    retries = int(_int_env("CLIPLAB_FETCH_RETRIES", 5))
    timeout = _int_env("CLIPLAB_FETCH_TIMEOUT", 30.0)
    with _locked(dest):
        if _verified(dest, sha256):  # another process fetched it while this one waited
            return dest
        partial = dest.with_name(dest.name + ".partial")
        bar = Progress(None, desc=label or dest.name, unit="B", enabled=progress)
        failures, delay = 0, 1.0
        try:
            while True:
                before = partial.stat().st_size if partial.exists() else 0
                try:
                    _get(url, partial, timeout, bar)
                    break
                except _Retry as e:
                    grown = partial.exists() and partial.stat().st_size > before
                    failures = 0 if grown else failures + 1  # progress resets the count
                    if failures > retries:
                        raise FetchError(f"{e} (gave up after {retries} retries)") from None
                    wait = e.wait if e.wait is not None else delay
                    if wait > MAX_RETRY_AFTER:
                        raise FetchError(f"{e}: the server asks to wait {wait:.0f} s") from None
                    bar.write(f"{e}; retrying in {wait:.1f} s")
                    time.sleep(wait)
                    delay = min(delay * 2, 30.0) if not grown else 1.0
        finally:
            bar.close()
        got = _sha256(partial)
        if sha256 and got != sha256:
            size = partial.stat().st_size
            partial.unlink()
            raise FetchError(
                f"{url} sent {size} bytes with SHA-256 {got}, not the expected {sha256}: "
                "deleted (a corrupt mirror, or the publisher replaced the file)"
            )
        os.replace(partial, dest)
        if sha256:
            _verified(dest, sha256)  # writes the marker
    return dest


# --------------------------------------------------------------------------- entries


def _url_of(entry: Pretrained) -> str:
    base = os.environ.get("CLIPLAB_OPENAI_URL")
    if base and entry.url.startswith(OPENAI_BASE):
        return base.rstrip("/") + entry.url[len(OPENAI_BASE) :]
    return entry.url


def _url_dest(entry: Pretrained, root: Path) -> Path:
    name = Path(urllib.parse.urlsplit(entry.url).path).name or "weights"
    key = entry.sha256 or hashlib.sha256(entry.url.encode()).hexdigest()
    return root / "files" / key / name


def _hf_caches(root: Path) -> list[Path | None]:
    """Where a repository's files may already be: Hugging Face's own cache (None: its
    default), then ``<cache>/huggingface``."""
    return [None, root / "huggingface"]


def find_local(entry: Pretrained, root: Path | None = None, elsewhere: bool = True) -> Path | None:
    """The entry's files if they are on this machine already (no connection), else None:
    in ``root`` (default :func:`cache_root`) and, with ``elsewhere``, in OpenAI's and
    Hugging Face's own caches."""
    root = root or cache_root()
    if entry.source == "url":
        dest = _url_dest(entry, root)
        if _verified(dest, entry.sha256):
            return dest
        if elsewhere and entry.layout == "openai":  # where OpenAI's clip.load keeps them
            theirs = _openai_cache() / dest.name
            if theirs.is_file() and _verified(theirs, entry.sha256):
                return theirs
        return None
    for cache_dir in _hf_caches(root) if elsewhere else [root / "huggingface"]:
        with contextlib.suppress(FetchError):
            return _hf_files(entry, cache_dir, local_only=True, progress=False)
    return None


def fetch(entry: Pretrained, *, root: Path | None = None, progress: bool = True) -> Path:
    """The local file or directory of ``entry``, downloading what is missing into ``root``
    (default :func:`cache_root`; a ``root`` of its own, as ``cliplab pull --to``, is filled
    whatever the other caches hold); ``FetchError`` says what went wrong and what to do."""
    own = root is not None and root != cache_root()
    root = root or cache_root()
    found = find_local(entry, root, elsewhere=not own)
    if found is not None:
        return found
    if offline():
        raise FetchError(
            f"offline (CLIPLAB_OFFLINE or HF_HUB_OFFLINE is set) and {entry.name} is not cached "
            f"here ({root}). On a machine with a connection: cliplab pull {entry.name} --to DIR, "
            "then carry DIR here and set CLIPLAB_CACHE=DIR"
        )
    if entry.source == "url":
        return download(
            _url_of(entry),
            _url_dest(entry, root),
            sha256=entry.sha256,
            progress=progress,
            label=entry.name,
        )
    return _hf_files(
        entry, root / "huggingface" if own else None, local_only=False, progress=progress
    )


def _hf_files(
    entry: Pretrained, cache_dir: Path | None, *, local_only: bool, progress: bool
) -> Path:
    """The directory holding a repository's files of ``entry.layout`` (one snapshot)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError
    except ImportError as e:  # pragma: no cover - a dependency of the hub extra
        raise FetchError(
            f"{entry.name}: fetching from Hugging Face needs huggingface_hub ({e})"
        ) from e
    required, weights = _LAYOUT_FILES[entry.layout]
    # a file the repository lacks; or, looking only at the disk, one the cache lacks
    absent: tuple[type[BaseException], ...] = (RemoteEntryNotFoundError,)
    if local_only:
        absent += (LocalEntryNotFoundError,)
    kwargs: dict[str, Any] = {
        "revision": entry.revision,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "local_files_only": local_only,
        "endpoint": os.environ.get("HF_ENDPOINT") or None,
        "token": os.environ.get("HF_TOKEN") or None,
        "etag_timeout": _int_env("CLIPLAB_FETCH_TIMEOUT", 30.0),
    }

    def get(filename: str) -> Path:
        retries = int(_int_env("CLIPLAB_FETCH_RETRIES", 5))
        for attempt in range(retries + 1):
            try:
                return Path(hf_hub_download(entry.repo, filename, **kwargs))
            except absent:
                raise
            except Exception as e:  # noqa: BLE001 - huggingface_hub's HTTP and network errors
                status = getattr(getattr(e, "response", None), "status_code", None)
                if local_only or (status is not None and status < 500 and status != 429):
                    raise FetchError(f"{entry.name}: {filename} from {entry.repo}: {e}") from None
                if attempt == retries:
                    raise FetchError(
                        f"{entry.name}: {filename} from {entry.repo} failed {retries + 1} times "
                        f"(the last: {e})"
                    ) from None
                time.sleep(min(2.0**attempt, 30.0))
        raise AssertionError("unreachable")

    try:
        files = [get(name) for name in required]
        for name in weights:
            try:
                files.append(get(name))
                break
            except absent:
                continue
        else:
            raise FetchError(f"{entry.name}: {entry.repo} has none of {', '.join(weights)}")
        if not local_only:
            for name in _OPTIONAL[entry.layout]:
                with contextlib.suppress(*absent):
                    get(name)
    except absent as e:
        raise FetchError(f"{entry.name}: {e}") from None
    folder = files[0].parent
    if any(f.parent != folder for f in files):  # pragma: no cover - one snapshot per revision
        raise FetchError(f"{entry.name}: its files are not in one snapshot folder")
    return folder
