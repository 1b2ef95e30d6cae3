"""Keeping a folder's collection in step with the folder: what changed, and the snapshot.

Re-running ``cliplab embed DIR --out C`` on a complete collection of a local folder syncs it
(:func:`cliplab.search.embed.embed` calls :func:`plan` and :func:`commit`):

- every file of DIR is ``stat``-ed and compared with the collection's file list
  (``sync/files-G.parquet``: path, size, mtime, content hash, id): a new path is **added**;
  a path whose size and mtime are unchanged is **unchanged** and never read; one whose size
  or mtime changed is hashed, and is **changed** when the hash differs (re-embedded) or
  merely **touched** when it does not (its new stat is recorded); a path no longer there is
  **removed**;
- added and changed files are embedded into new parts after the existing ones (ids go on
  from the last); the ids of removed files, and the old ids of changed ones, become
  tombstones (``sync/deleted-G.npy``) that no search returns. Ids are never reused, so an
  index stays valid: the sync adds the new rows to it, and searches skip tombstones;
- the new state (``state.json``: generation, parts, tombstones, file list) is written last,
  atomically: a reader that opened the collection before sees the old snapshot throughout,
  one that opens it after sees the new one (:class:`cliplab.search.collection.Collection`).

Content hashes come free: the embedding hashes each image's bytes as it reads them. The
first sync of a collection embedded before its file list existed takes the files as they are
now as its baseline (files changed in between are not noticed once).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cliplab.fileio import atomic_write, write_json
from cliplab.search.collection import STATE_FILE, Collection, _pyarrow

__all__ = ["FileEntry", "SyncPlan", "commit", "file_list", "hash_file", "plan", "scan", "walk"]

#: Generations of tombstone and file-list files kept (readers of the previous snapshot).
KEEP = 2


@dataclass(frozen=True)
class FileEntry:
    size: int
    mtime_ns: int
    sha256: str  # "" when never hashed
    id: int  # -1: the file could not be embedded (its failure is in failures.jsonl)


@dataclass
class SyncPlan:
    """What a sync will do, by relative path."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)  # new mtime, same content
    unchanged: int = 0
    seconds: float = 0.0
    current: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> size, mtime
    hashes: dict[str, str] = field(default_factory=dict)  # computed during planning
    known: dict[str, FileEntry] = field(default_factory=dict)  # the file list it compared to

    @property
    def embed(self) -> list[str]:
        """Files to embed: added and changed, sorted."""
        return sorted(self.added + self.changed)

    def summary(self) -> dict[str, int]:
        return {
            "added": len(self.added),
            "changed": len(self.changed),
            "removed": len(self.removed),
            "touched": len(self.touched),
            "unchanged": self.unchanged,
        }


def hash_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan(root: str | os.PathLike[str], files: list[str]) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of each of ``files`` (relative to ``root``) that still exists."""
    out = {}
    top = os.fspath(root)
    stat, join = os.stat, os.path.join
    for rel in files:
        try:
            st = stat(join(top, rel))
        except OSError:
            continue
        out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def walk(root: str | os.PathLike[str], extensions: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every image under ``root`` by relative path, as
    :class:`cliplab.data.manifest.FolderSource` chooses them (its extensions, no hidden
    names): one ``scandir`` walk with a ``stat`` per file and nothing else."""
    wanted = {"." + e.lower().lstrip(".") for e in extensions}
    out: dict[str, tuple[int, int]] = {}
    stack = [(os.fspath(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):  # as os.walk: linked folders not entered
                    stack.append((entry.path, prefix + name + "/"))
                    continue
                dot = name.rfind(".")
                if name.startswith(".") or dot < 0 or name[dot:].lower() not in wanted:
                    continue
                st = entry.stat()
            except OSError:
                continue
            out[prefix + name] = (st.st_size, st.st_mtime_ns)
    return out


def file_list(collection: Collection) -> dict[str, FileEntry] | None:
    """The collection's file list (None when it has none yet)."""
    name = (collection.state or {}).get("files")
    if not name:
        return None
    table = _pyarrow().parquet.read_table(collection.path / name).to_pydict()
    return {
        path: FileEntry(size, mtime, sha, ident)
        for path, size, mtime, sha, ident in zip(
            table["path"], table["size"], table["mtime_ns"], table["sha256"], table["id"]
        )
    }


def _baseline(collection: Collection, root: str) -> dict[str, FileEntry]:
    """A file list for a collection that has none: its embedded files as they are now."""
    keys = collection.metadata.column("key").to_pylist()
    ids = collection.metadata.column("id").to_pylist()
    stats = scan(root, keys)
    return {k: FileEntry(*stats[k], "", i) for k, i in zip(keys, ids) if k in stats}


def plan(collection: Collection, root: str, extensions: Sequence[str]) -> SyncPlan:
    """Compare the folder's image files with the collection's file list."""
    start = time.perf_counter()
    known = file_list(collection)
    if known is None:
        known = _baseline(collection, root)
    result = SyncPlan(current=walk(root, extensions), known=known)
    for rel, (size, mtime) in result.current.items():
        entry = known.get(rel)
        if entry is None:
            result.added.append(rel)
        elif (entry.size, entry.mtime_ns) == (size, mtime):
            result.unchanged += 1
        else:
            try:
                digest = hash_file(Path(root) / rel)
            except OSError:  # gone or unreadable since the walk: embedding will say which
                result.changed.append(rel)
                continue
            result.hashes[rel] = digest
            if entry.sha256 and entry.sha256 == digest:
                result.touched.append(rel)
            else:
                result.changed.append(rel)
    result.removed = sorted(rel for rel in known if rel not in result.current)
    result.seconds = time.perf_counter() - start
    return result


def commit(
    collection: Collection,
    root: str,
    sync: SyncPlan | None,
    parts: int,
    new_ids: dict[str, int],
    hashes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write the new snapshot: tombstones, file list, then ``state.json``; returns the state.

    ``sync`` None: the first state of a freshly embedded collection (``new_ids``: every
    embedded file's id, -1 for those that failed). ``parts``: how many parts the new snapshot
    holds. ``hashes``: SHA-256 of the files the embedding read (relative path -> hex)."""
    hashes = hashes or {}
    pa = _pyarrow()
    out = collection.path
    generation = collection.generation + 1
    known = sync.known if sync else {}
    deleted = set(collection.deleted.tolist())
    entries: dict[str, FileEntry] = {}
    if sync is None:
        stats = scan(root, sorted(new_ids))
        entries = {rel: FileEntry(*stats[rel], hashes.get(rel, ""), new_ids[rel]) for rel in stats}
    else:
        for rel in sync.removed + sync.changed:
            if known[rel].id >= 0:
                deleted.add(known[rel].id)
        changed = set(sync.changed)
        for rel, entry in known.items():
            now = sync.current.get(rel)
            if now is None or rel in changed:
                continue
            if rel in sync.hashes:  # touched: the same content, a new stat
                entry = FileEntry(now[0], now[1], sync.hashes[rel], entry.id)
            entries[rel] = entry
        for rel in sync.embed:
            size, mtime = sync.current[rel]
            digest = hashes.get(rel) or sync.hashes.get(rel)
            if digest is None:
                try:
                    digest = hash_file(Path(root) / rel)
                except OSError:  # deleted while it was being embedded: as if never there
                    if rel not in new_ids:
                        continue
                    digest = ""
            entries[rel] = FileEntry(size, mtime, digest, new_ids.get(rel, -1))
    (out / "sync").mkdir(exist_ok=True)
    deleted_name = f"sync/deleted-{generation:06d}.npy"
    tombstones = np.array(sorted(deleted), dtype=np.int64)
    atomic_write(out / deleted_name, lambda tmp: np.save(tmp.open("wb"), tombstones))
    files_name = f"sync/files-{generation:06d}.parquet"
    paths = sorted(entries)
    table = pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "size": pa.array([entries[p].size for p in paths], pa.int64()),
            "mtime_ns": pa.array([entries[p].mtime_ns for p in paths], pa.int64()),
            "sha256": pa.array([entries[p].sha256 for p in paths], pa.string()),
            "id": pa.array([entries[p].id for p in paths], pa.int64()),
        }
    )
    atomic_write(out / files_name, lambda tmp: pa.parquet.write_table(table, str(tmp)))
    state = {
        "generation": generation,
        "parts": parts,
        "deleted": deleted_name,
        "files": files_name,
        "root": str(root),
        "synced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "last": sync.summary() if sync else {"added": len(entries)},
    }
    write_json(out / STATE_FILE, state)
    for old in (out / "sync").glob("*-*.*"):  # generations no reader opens any more
        number = old.stem.rsplit("-", 1)[-1]
        if number.isdigit() and int(number) <= generation - KEEP:
            old.unlink(missing_ok=True)
    return state


def status(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``state.json`` of a collection (None: never synced), for ``/health`` and the page."""
    try:
        return json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _inside(path: str | os.PathLike[str], folder: str) -> bool:
    """Whether ``path`` (relative paths taken from here) is ``folder`` or under it."""
    try:
        return Path(os.path.abspath(path)).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


class Watcher:
    """Waits for files under ``root`` to change: inotify events through ``watchdog`` where it
    is installed (``cliplab[search]``), else a poll of the folder's files and their stats
    every ``interval`` seconds. :meth:`wait` returns once a change was followed by
    ``settle`` quiet seconds (a copy of many photos becomes one sync, not hundreds)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        interval: float = 2.0,
        settle: float = 1.0,
        ignore: str | os.PathLike[str] | None = None,
    ) -> None:
        import threading

        self.root, self.interval, self.settle = Path(root), interval, settle
        # the collection's own writes (when it lives inside the folder) are not changes
        self.ignore = str(Path(ignore).resolve()) if ignore is not None else None
        skip = self.ignore
        self._event = threading.Event()
        self._observer: Any = None
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            self._signature = self._poll()
            return
        flag = self._event

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                if skip and _inside(event.src_path, skip):
                    return
                flag.set()

        self._observer = Observer()
        self._observer.schedule(_Handler(), str(self.root), recursive=True)
        self._observer.start()

    @property
    def kind(self) -> str:
        return (
            "inotify (watchdog)"
            if self._observer is not None
            else f"polling every {self.interval:g} s"
        )

    def _poll(self) -> int:
        entries = []
        for path in self.root.rglob("*"):
            if self.ignore and _inside(path, self.ignore):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((str(path), st.st_size, st.st_mtime_ns))
        return hash(tuple(sorted(entries)))

    def _changed(self, timeout: float) -> bool:
        if self._observer is not None:
            seen = self._event.wait(timeout)
            self._event.clear()
            return seen
        time.sleep(timeout)
        signature = self._poll()
        changed, self._signature = signature != self._signature, signature
        return changed

    def wait(self) -> None:
        """Block until the folder changed and then stayed quiet for ``settle`` seconds."""
        while not self._changed(self.interval):
            pass
        while self._changed(self.settle):
            pass

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
