"""A local "web" on 127.0.0.1 for the downloader's tests, benchmark and walkthrough.

Each :class:`Site` is a real HTTP/1.1 server (keep-alive, one thread per connection) on its
own port, so each is its own host to a downloader's per-host limits, robots.txt and
opt-outs. Its images are real files (installed emoji, Tux Paint stamps) served from memory;
paths ask for the web's bad behaviour:

=========================  ===============================================================
``/img/NAME``              the image, with its real content type
``/liar/NAME``             the image, served as ``text/html``
``/html/NAME``             an HTML page served as ``image/jpeg``
``/slow/SECONDS/NAME``     the image after a delay
``/trickle/NAME``          the image one byte every 0.2 s
``/drop/NAME``             full ``Content-Length``, half the body, then the socket closes
``/truncated/NAME``        the first 60% of the image as a complete response
``/huge/NAME``             ``Content-Length`` of 1 GB (nothing is sent)
``/endless/NAME``          a body without length that never ends (chunks until closed)
``/redirect/NAME``         302 to ``/img/NAME``;  ``/loop/NAME``: 302 to itself
``/status/CODE/NAME``      that status (403, 404, 500 ...)
``/busy/NAME``             429 with ``Retry-After: 1`` the first time, the image after
``/bomb/NAME``             a PNG whose header claims 100,000 x 100,000 pixels
=========================  ===============================================================

``Site(opt_out="noai")`` sends ``X-Robots-Tag`` with every answer; ``Site(robots=TEXT)``
serves a robots.txt (otherwise 404). Each site counts its requests and the most
connections it had open at once (``requests`` by behaviour, ``paths`` by whole path).
"""

from __future__ import annotations

import contextlib
import http.server
import mimetypes
import socketserver
import struct
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["Site", "bomb_png", "local_web", "read_images"]


def bomb_png(side: int = 100_000) -> bytes:
    """A small PNG whose header claims ``side`` x ``side`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def read_images(
    folder: str | Path, limit: int | None = None, suffix: str = ".png"
) -> dict[str, bytes]:
    """name -> bytes of the images under ``folder`` (sorted; names made URL-safe)."""
    out: dict[str, bytes] = {}
    for path in sorted(Path(folder).rglob(f"*{suffix}")):
        name = urllib.parse.quote(path.relative_to(folder).as_posix().replace("/", "_"))
        out[name] = path.read_bytes()
        if limit is not None and len(out) >= limit:
            break
    return out


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up mid-body is part of the weather here


class Site:
    """One host of the local web (see the module docstring)."""

    def __init__(
        self,
        images: Mapping[str, bytes],
        *,
        opt_out: str | None = None,
        robots: str | None = None,
    ) -> None:
        self.images, self.opt_out, self.robots = dict(images), opt_out, robots
        self.requests: Counter[str] = Counter()  # by first path segment
        self.paths: Counter[str] = Counter()  # by whole path and query
        self.agents: Counter[str] = Counter()  # User-Agent headers seen
        self.open = self.max_open = self.connections = 0
        self._lock = threading.Lock()
        self._busy_seen: set[str] = set()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, kind: str, name: str, *args: object) -> str:
        parts = [kind, *map(str, args), name]
        return f"{self.base}/" + "/".join(parts)

    def start(self) -> Site:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # as real servers do: no 40 ms delayed-ACK stalls

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                with site._lock:
                    site.connections += 1
                    site.open += 1
                    site.max_open = max(site.max_open, site.open)

            def finish(self) -> None:
                with contextlib.suppress(OSError):
                    super().finish()
                with site._lock:
                    site.open -= 1

            def send(self, code: int, body: bytes, ctype: str, **headers: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if site.opt_out:
                    self.send_header("X-Robots-Tag", site.opt_out)
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802, C901 - one branch per behaviour
                parts = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
                kind = parts[0]
                with site._lock:
                    site.requests[kind] += 1
                    site.paths[self.path] += 1
                    site.agents[self.headers.get("User-Agent", "")] += 1
                if kind == "robots.txt":
                    if site.robots is None:
                        self.send(404, b"no robots", "text/plain")
                    else:
                        self.send(200, site.robots.encode(), "text/plain")
                    return
                name = parts[-1]
                data = site.images.get(name)
                ctype = mimetypes.guess_type(urllib.parse.unquote(name))[0] or "image/png"
                if kind == "bomb":
                    self.send(200, bomb_png(), "image/png")
                elif kind == "status":
                    self.send(int(parts[1]), b"status", "text/plain")
                elif kind == "html":
                    self.send(200, b"<html><body>not an image</body></html>", "image/jpeg")
                elif kind == "loop":
                    self.send(302, b"", "text/plain", Location=self.path)
                elif kind == "redirect":
                    self.send(302, b"", "text/plain", Location=f"/img/{name}")
                elif data is None:
                    self.send(404, b"no such image", "text/plain")
                elif kind == "img":
                    self.send(200, data, ctype)
                elif kind == "liar":
                    self.send(200, data, "text/html")
                elif kind == "slow":
                    time.sleep(float(parts[1]))
                    self.send(200, data, ctype)
                elif kind == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        for i in range(len(data)):
                            self.wfile.write(data[i : i + 1])
                            self.wfile.flush()
                            time.sleep(0.2)
                elif kind == "truncated":
                    self.send(200, data[: len(data) * 6 // 10], ctype)
                elif kind == "busy":
                    with site._lock:
                        first = name not in site._busy_seen
                        site._busy_seen.add(name)
                    if first:
                        self.send(429, b"slow down", "text/plain", Retry_After="1")
                    else:
                        self.send(200, data, ctype)
                elif kind == "drop":
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif kind == "huge":
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(1 << 30))
                    self.end_headers()
                    self.close_connection = True
                elif kind == "endless":
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.end_headers()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        while True:
                            self.wfile.write(b"\0" * 65536)
                else:
                    self.send(404, b"unknown path", "text/plain")

        return Handler


@contextlib.contextmanager
def local_web(*sites: Site) -> Iterator[tuple[Site, ...]]:
    """Start ``sites``; stop them on exit."""
    for site in sites:
        site.start()
    try:
        yield sites
    finally:
        for site in sites:
            site.stop()
