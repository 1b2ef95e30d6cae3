"""Real HTTP servers on 127.0.0.1 for the fetching tests: a file server with Range requests
and scripted faults, and a small Hugging Face-compatible endpoint for ``huggingface_hub``.

Faults are scripted per path as a list consumed one request at a time (then plain success):

- ``"drop:N"``: send the headers and N bytes of the body, then close the connection;
- ``"404"``, ``"500"``: that status; ``"429:S"``: 429 with ``Retry-After: S``;
- ``"stall:S"``: send nothing for S seconds (a server that hangs);
- ``"redirect:URL"``: a 302 to URL.

Every request is counted (``requests``) and every body byte sent (``sent``), per path.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.lock = threading.Lock()

    def next_fault(self, path: str) -> str | None:
        with self.lock:
            self.requests[path] += 1
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None


class _Handler(BaseHTTPRequestHandler):
    state: _State
    hub = False  # answer as a Hugging Face endpoint: /ORG/REPO/resolve/REV/FILE

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _path(self) -> str:
        path = self.path.split("?", 1)[0]
        if self.hub and "/resolve/" in path:  # /org/repo/resolve/rev/file -> org/repo/file
            repo, _, rest = path.lstrip("/").partition("/resolve/")
            return f"{repo}/{rest.partition('/')[2]}"
        return path.lstrip("/")

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        # the client may give up first (the timeout tests): not an error of the server's
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self._path()
        fault = self.state.next_fault(path)
        data = self.state.files.get(path)
        if fault and fault.startswith("stall:"):
            time.sleep(float(fault.split(":", 1)[1]))
            fault = None
        if fault and fault.startswith("redirect:"):
            self.send_response(302)
            self.send_header("Location", fault.split(":", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fault in ("404", "500") or (fault is None and data is None):
            code = 404 if fault in ("404", None) else 500
            self.send_response(code)
            if self.hub and code == 404:
                self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fault and fault.startswith("429:"):
            self.send_response(429)
            self.send_header("Retry-After", fault.split(":", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        assert data is not None
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start = int(ranged[len("bytes=") :].split("-", 1)[0] or 0)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        part = data[start:]
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Accept-Ranges", "bytes")
        if self.hub:
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.end_headers()
        if not body:
            return
        if fault and fault.startswith("drop:"):
            part = part[: int(fault.split(":", 1)[1])]
            self.wfile.write(part)
            self.wfile.flush()
            self.state.sent[path] += len(part)
            self.close_connection = True
            self.connection.shutdown(2)  # the body ends early: a dropped connection
            return
        self.wfile.write(part)
        self.state.sent[path] += len(part)


class Server:
    """A running server: ``url(path)``, ``files``, ``faults``, ``requests``, ``sent``."""

    def __init__(self, hub: bool = False) -> None:
        self.state = _State()
        handler = type("Handler", (_Handler,), {"state": self.state, "hub": hub})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    @property
    def files(self) -> dict[str, bytes]:
        return self.state.files

    @property
    def faults(self) -> dict[str, list[str]]:
        return self.state.faults

    @property
    def requests(self) -> Counter[str]:
        return self.state.requests

    @property
    def sent(self) -> Counter[str]:
        return self.state.sent


@contextmanager
def serve(hub: bool = False) -> Iterator[Server]:
    """A file server (or, with ``hub``, a Hugging Face-compatible endpoint) on 127.0.0.1."""
    server = Server(hub)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
