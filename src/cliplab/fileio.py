"""Atomic writes: the one way cliplab puts a file or a directory in place.

A crash, a kill or a full disk at any moment leaves either the old content or the new one at
the final path, never a truncated mix: the new content is written under a temporary name in
the same directory (same file system), flushed to disk, then renamed over the final path.

    atomic_write(path, lambda tmp: torch.save(state, tmp))       # any writer that takes a path
    write_text(path, "...")  /  write_json(path, data)
    with AtomicFile(path) as tmp: ...                             # a file written in many calls
    with AtomicDirectory(path) as tmp: ...                        # a directory built in place
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["AtomicDirectory", "AtomicFile", "atomic_write", "write_json", "write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Staged:
    """A temporary ``tmp`` that replaces ``path`` on ``commit``; as a context manager it
    yields ``tmp``, commits on success and discards on an error."""

    tmp: Path

    def commit(self) -> Path:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class AtomicFile(_Staged):
    """A temporary file beside ``path`` that replaces ``path`` on :meth:`commit`.

    As a context manager it yields the temporary path, commits on success and removes the
    temporary file on an error. ``commit`` fsyncs the file, gives it the permissions
    ``open()`` would have (``mkstemp`` makes 0600) and renames it into place.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> Path:
        with self.tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.chmod(self.tmp, 0o666 & ~_umask())
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` writes the content to a temporary path, which then replaces ``path``."""
    with AtomicFile(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike[str], data: Any, indent: int | None = 2) -> Path:
    """Atomically write JSON (UTF-8, non-ASCII kept, anything else through ``str``)."""
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=str) + "\n"
    return write_text(path, text)


class AtomicDirectory(_Staged):
    """A fresh staging directory beside ``path`` that replaces ``path`` on :meth:`commit`.

    As a context manager it yields the staging path, commits on success and removes the
    staging directory on an error. A directory cannot be renamed over a non-empty one, so
    the old ``path`` is removed just before the rename: a crash in that instant leaves no
    directory (never a partial one), which every reader here treats as "not built".
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)

    def commit(self) -> Path:
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
