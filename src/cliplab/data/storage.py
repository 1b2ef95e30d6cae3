"""Where data lives: the one way cliplab opens a shard, a manifest, an image or a table.

A location is a local path, a ``file:`` URL, ``pipe:COMMAND`` (the command's stdout, as
webdataset spells it), or any URL fsspec knows (``s3://``, ``gs://``, ``https://``,
``memory://`` ...; the protocol's package must be installed: ``s3fs`` for ``s3://``,
``gcsfs`` for ``gs://``: the ``remote`` extra).

Remote files are read through :class:`ResilientFile`: when a read fails half-way (a dropped
connection, a reset, a timeout), it waits with exponential backoff, reopens the object and
seeks back to the byte where the read stopped, so a tar reader above it sees one unbroken
stream and resumes at exactly the right sample. A missing object or a refused permission is
not retried.

Credentials and endpoints come from fsspec's own configuration, which reads environment
variables ``FSSPEC_<PROTOCOL>_<OPTION>`` when fsspec is imported, e.g. for an S3-compatible
server (MinIO, moto, Ceph)::

    FSSPEC_S3_ENDPOINT_URL=http://127.0.0.1:9000 AWS_ACCESS_KEY_ID=... cliplab train ...

or ``fsspec.config.conf["s3"] = {"endpoint_url": ...}`` in a program.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ResilientFile",
    "exists",
    "fs_and_path",
    "is_dir",
    "is_file",
    "is_remote",
    "join",
    "list_files",
    "open_binary",
    "open_text",
    "parent",
    "read_bytes",
    "read_range",
    "read_text",
    "retry_policy",
    "upload",
]

log = logging.getLogger(__name__)

#: Attempts and first backoff (seconds, doubled each retry, capped at 30 s) for remote reads.
_RETRIES = int(os.environ.get("CLIPLAB_STORAGE_RETRIES", "6"))
_BACKOFF = float(os.environ.get("CLIPLAB_STORAGE_BACKOFF", "0.5"))
#: Bytes one request fetches from object storage (s3fs reads 50 MB by default): a dropped
#: connection costs at most this much re-reading.
BLOCK_SIZE = int(os.environ.get("CLIPLAB_STORAGE_BLOCK_SIZE", str(8 << 20)))

# errors that say the object is not there or not ours: retrying cannot help
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def retry_policy() -> tuple[int, float]:
    """``(attempts, first backoff in seconds)`` for remote reads (env
    ``CLIPLAB_STORAGE_RETRIES`` / ``CLIPLAB_STORAGE_BACKOFF``)."""
    return _RETRIES, _BACKOFF


def is_remote(location: str | os.PathLike[str]) -> bool:
    """True for a URL with a protocol other than ``file`` (``s3://``, ``https://`` ...)."""
    text = os.fspath(location)
    protocol, sep, _ = text.partition("://")
    return bool(sep) and protocol.isidentifier() and protocol != "file" or text.startswith("pipe:")


def _local(location: str | os.PathLike[str]) -> str:
    text = os.fspath(location)
    if text.startswith("file://"):
        return text[7:]
    if text.startswith("file:"):
        return text[5:]
    return text


def fs_and_path(url: str) -> tuple[Any, str]:
    """fsspec's file system for a URL, and the path within it."""
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError as e:  # pragma: no cover - fsspec comes with the remote extra
        raise ImportError(
            f"reading {url} needs fsspec (and its protocol's package, e.g. s3fs): "
            "pip install 'cliplab[remote]'"
        ) from e
    del fsspec
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise ImportError(f"cannot open {url}: {e}") from None


def _retry(what: str, call: Callable[[], Any], recover: Callable[[], None] | None = None) -> Any:
    """``call()``, retried with exponential backoff on transport errors (``recover()`` runs
    before each retry); a missing object or a refused permission is raised at once."""
    attempts, delay = retry_policy()
    for attempt in range(attempts):
        try:
            return call()
        except _PERMANENT:
            raise
        except Exception as e:  # noqa: BLE001 - transport errors come in many types
            if attempt == attempts - 1:
                raise OSError(f"{what}: gave up after {attempts} attempts: {e}") from e
            log.warning("%s (%s); retrying in %.1f s", what, e, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
            if recover is not None:
                recover()
    raise AssertionError("unreachable")


class ResilientFile(io.RawIOBase):
    """A read-only remote file that survives dropped connections (see the module docs)."""

    def __init__(self, url: str, block_size: int | None = None) -> None:
        self.url = url
        self.block_size = block_size or BLOCK_SIZE
        self.fs, self.path = fs_and_path(url)
        self.pos = 0
        self.size: int | None = None
        self.f: Any = _retry(f"opening {url}", self._open)

    def _open(self) -> Any:
        f = self.fs.open(self.path, "rb", block_size=self.block_size)
        if self.size is None:
            self.size = getattr(f, "size", None)
        if self.pos:
            f.seek(self.pos)
        return f

    def _reopen(self) -> None:
        """A fresh handle at ``pos`` (or a stand-in that fails, so the next retry reopens)."""
        with contextlib.suppress(Exception):  # the old handle is broken anyway
            self.f.close()
        try:
            self.f = self._open()
        except _PERMANENT:
            raise
        except Exception:  # noqa: BLE001 - the next attempt reopens again
            self.f = _Broken()

    def _read_once(self, size: int) -> bytes:
        data = self.f.read(size)
        self.pos += len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        what = f"{self.url}: read broke at byte {self.pos}"
        return _retry(what, lambda: self._read_once(size), recover=self._reopen)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == io.SEEK_CUR:
            offset += self.pos
        elif whence == io.SEEK_END:
            if self.size is None:
                raise OSError(f"{self.url}: size unknown, cannot seek from the end")
            offset += self.size
        self.pos = offset
        try:
            self.f.seek(offset)
        except Exception:  # noqa: BLE001 - the next read reopens at self.pos
            self.f = _Broken()
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        try:
            self.f.close()
        finally:
            super().close()


class _Broken:
    """Stands in for a handle that could not be reopened: the next read retries."""

    def read(self, size: int = -1) -> bytes:
        raise ConnectionError("connection not re-established")

    def seek(self, offset: int) -> int:
        return offset

    def close(self) -> None:
        pass


def open_binary(location: str | os.PathLike[str]) -> IO[bytes]:
    """A readable binary file: local path, ``file:``, ``pipe:COMMAND`` or an fsspec URL."""
    text = os.fspath(location)
    if text.startswith("pipe:"):
        process = subprocess.Popen(
            text[5:], shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert process.stdout is not None
        return process.stdout
    if is_remote(text):
        return io.BufferedReader(ResilientFile(text), buffer_size=1 << 16)  # type: ignore[arg-type]
    return open(_local(text), "rb")  # noqa: SIM115 (closed by the caller)


def open_text(location: str | os.PathLike[str], errors: str = "replace") -> IO[str]:
    """A UTF-8 text file (BOM dropped, bad bytes replaced unless ``errors="strict"``, ``.gz``
    decompressed)."""
    raw: IO[bytes] = open_binary(location)
    if os.fspath(location).lower().endswith(".gz"):
        import gzip

        raw = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline="")


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """The whole file (remote reads retried)."""
    text = os.fspath(location)
    if not is_remote(text):
        return Path(_local(text)).read_bytes()
    with open_binary(text) as f:
        return f.read()


def read_range(location: str | os.PathLike[str], start: int, size: int) -> bytes:
    """``size`` bytes from byte ``start`` (fewer where the file ends first): a seek for a
    local file, one ranged request for a URL (retried), so one tar member costs its own bytes
    and no more. A ``pipe:`` cannot be read by range (``ValueError``)."""
    text = os.fspath(location)
    if text.startswith("pipe:"):
        raise ValueError(f"{text}: a pipe: location cannot be read by byte range")
    if start < 0 or size < 0:
        raise ValueError(f"byte range must be non-negative, got start={start}, size={size}")
    if not is_remote(text):
        with open(_local(text), "rb") as f:
            f.seek(start)
            return f.read(size)
    fs, path = fs_and_path(text)
    what = f"reading {text} bytes {start}..{start + size}"
    return bytes(_retry(what, lambda: fs.cat_file(path, start=start, end=start + size)))


def read_text(location: str | os.PathLike[str]) -> str:
    return read_bytes(location).decode("utf-8")


def _probe(location: str | os.PathLike[str], pipe: bool, local: str, remote: str) -> bool:
    """A yes/no question about a location: a ``pipe:`` answers ``pipe``; a local path asks
    ``Path.<local>()``, a URL its file system's ``<remote>()`` (retried)."""
    text = os.fspath(location)
    if text.startswith("pipe:"):
        return pipe
    if not is_remote(text):
        return bool(getattr(Path(_local(text)), local)())
    fs, path = fs_and_path(text)
    return bool(_retry(f"checking {text}", lambda: getattr(fs, remote)(path)))


def exists(location: str | os.PathLike[str]) -> bool:
    """Whether something is there (a ``pipe:`` command is taken to exist)."""
    return _probe(location, True, "exists", "exists")


def is_dir(location: str | os.PathLike[str]) -> bool:
    return _probe(location, False, "is_dir", "isdir")


def is_file(location: str | os.PathLike[str]) -> bool:
    return _probe(location, False, "is_file", "isfile")


def list_files(location: str | os.PathLike[str], suffix: str) -> list[str]:
    """The files directly in a folder whose names end with ``suffix``, sorted, as locations
    of the same kind (URLs stay URLs)."""
    text = os.fspath(location)
    if not is_remote(text):
        return [str(p) for p in sorted(Path(_local(text)).glob(f"*{suffix}"))]
    fs, path = fs_and_path(text)
    names = _retry(f"listing {text}", lambda: fs.ls(path, detail=False))
    protocol = text.partition("://")[0]
    return sorted(f"{protocol}://{name}" for name in names if str(name).endswith(suffix))


def join(root: str | os.PathLike[str], relative: str) -> str:
    """``relative`` taken from ``root`` (already absolute paths and URLs pass through)."""
    if is_remote(relative) or relative.startswith("file:"):
        return relative
    root_text = os.fspath(root)
    if is_remote(root_text):
        return posixpath.join(root_text.rstrip("/"), relative.lstrip("/"))
    path = Path(os.path.expanduser(relative))
    return str(path if path.is_absolute() else Path(_local(root_text)) / path)


def parent(location: str | os.PathLike[str]) -> str:
    """The folder a file is in."""
    text = os.fspath(location)
    if is_remote(text):
        return posixpath.dirname(text.rstrip("/"))
    return str(Path(_local(text)).parent)


def upload(local: str | os.PathLike[str], location: str | os.PathLike[str]) -> None:
    """Put the local file ``local`` at ``location`` (a URL, or a local path: copied into
    place atomically), retried like reads. Object stores make a whole object appear at
    once, so a reader never sees a partly uploaded file."""
    text = os.fspath(location)
    if not is_remote(text):
        from cliplab.fileio import atomic_write

        atomic_write(_local(text), lambda tmp: shutil.copyfile(local, tmp))
        return
    fs, path = fs_and_path(text)
    _retry(f"uploading {text}", lambda: fs.put_file(os.fspath(local), path))
