"""Fetching one image URL politely: kept-alive connections, redirects, limits, opt-outs.

:class:`HttpClient` is a small HTTP/1.1 client over :mod:`http.client` (standard library):
one pool of kept-alive connections per host (a TCP and TLS handshake per host, not per
image), redirects followed by hand (loops caught), a byte limit checked against
``Content-Length`` and while reading, and every failure turned into :class:`Failure` with a
short reason that the run counts: ``timeout``, ``dns``, ``connection``, ``truncated-body``,
``ssl``, ``http-404`` (each status its own), ``too-large``, ``redirect-loop``,
``too-many-redirects``, ``bad-url``. ``Failure.retry`` says whether trying again may help
(timeouts, dropped connections, 429 and 5xx), ``Failure.retry_after`` carries the server's
``Retry-After``.

Opt-outs: :func:`opted_out` reads ``X-Robots-Tag`` (``noai``, ``noimageai``, ``noindex`` by
default, alone or for our user agent: ``cliplab: noai``); :class:`Robots` is one host's
robots.txt, read by RFC 9309's rules (a 4xx means no rules, a 5xx or no answer means
everything is disallowed).
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.robotparser
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_OPT_OUTS",
    "Failure",
    "HttpClient",
    "Response",
    "Robots",
    "host_of",
    "opted_out",
]

#: X-Robots-Tag directives that opt an image out of a training set, by default.
DEFAULT_OPT_OUTS = ("noai", "noimageai", "noindex")
MAX_REDIRECTS = 5
_CHUNK = 1 << 16
#: Statuses worth another try (after the server's Retry-After where it gives one).
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class Failure(Exception):
    """A URL that gave no image: ``reason`` is what the run counts."""

    def __init__(
        self, reason: str, detail: str = "", retry: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.retry, self.retry_after = reason, detail, retry, retry_after


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    url: str  # after redirects
    received: int = 0  # bytes of bodies read, redirects included


def host_of(url: str) -> str:
    """The politeness key of a URL: scheme, host and port (``http://a.example:8080``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a bad port or IPv6 literal: the fetch fails it as bad-url
        return "invalid://"
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def opted_out(headers: http.client.HTTPMessage, tags: Iterable[str], agent: str) -> str | None:
    """The first opt-out directive in the response's X-Robots-Tag headers, or None. A
    directive may name a user agent (``googlebot: noindex``): it counts only for ours."""
    wanted = {t.lower() for t in tags}
    agent = agent.lower()
    for value in headers.get_all("X-Robots-Tag") or ():
        scope = None
        for part in value.split(","):
            token = part.strip().lower()
            if ":" in token:  # "agent: directive" starts a scope for that agent
                name, _, token = token.partition(":")
                scope, token = name.strip(), token.strip()
            if token in wanted and (scope is None or scope == agent or scope == "*"):
                return token
    return None


@dataclass
class Robots:
    """One host's robots.txt, fetched once. ``allow_all``/``deny_all`` short-cut RFC 9309's
    unavailable (4xx) and unreachable (5xx, network) cases."""

    parser: urllib.robotparser.RobotFileParser | None = None
    deny_all: bool = False
    unreachable: Failure | None = None  # no such host, not a URL: the image's own failure

    def allows(self, agent: str, url: str) -> bool:
        if self.unreachable is not None:
            raise Failure(self.unreachable.reason, self.unreachable.detail)
        if self.deny_all:
            return False
        return self.parser is None or self.parser.can_fetch(agent, url)


@dataclass
class _Pool:
    idle: list[http.client.HTTPConnection] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class HttpClient:
    """GET with kept-alive connections per host; thread-safe (a connection is used by one
    thread at a time). ``max_bytes`` bounds a body; ``timeout`` is per socket operation."""

    def __init__(
        self, user_agent: str, timeout: float = 10.0, max_bytes: int = 20 << 20, max_idle: int = 32
    ) -> None:
        self.user_agent, self.timeout, self.max_bytes, self.max_idle = (
            user_agent,
            timeout,
            max_bytes,
            max_idle,
        )
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context()

    # -- connections ---------------------------------------------------------------------
    def _pool(self, key: str) -> _Pool:
        with self._lock:
            return self._pools.setdefault(key, _Pool())

    def _connect(self, parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        host, port = parts.hostname or "", parts.port
        if parts.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._ssl)
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def _checkout(self, key: str, parts: urllib.parse.SplitResult) -> tuple[object, bool]:
        pool = self._pool(key)
        with pool.lock:
            if pool.idle:
                return pool.idle.pop(), True
        return self._connect(parts), False

    def _checkin(self, key: str, conn: http.client.HTTPConnection) -> None:
        pool = self._pool(key)
        with pool.lock:
            if len(pool.idle) < self.max_idle:
                pool.idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            for conn in pool.idle:
                conn.close()

    # -- one request ---------------------------------------------------------------------
    def _once(self, url: str) -> tuple[int, http.client.HTTPMessage, bytes]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Failure("bad-url", url[:200])
        key = host_of(url)
        # non-ASCII in a path or query is sent percent-encoded (the request line is ASCII)
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        path = urllib.parse.quote(path, safe="/%?=&;:@!$'()*+,~-._")
        headers = {"User-Agent": self.user_agent, "Accept": "image/*,*/*;q=0.8"}
        for attempt in range(2):  # a kept-alive connection the server closed: one fresh try
            if attempt == 0:
                conn, reused = self._checkout(key, parts)
            else:  # never a second idle one: after an idle timeout they are all stale
                conn, reused = self._connect(parts), False
            try:
                conn.request("GET", path, headers=headers)  # type: ignore[attr-defined]
                resp = conn.getresponse()  # type: ignore[attr-defined]
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()  # type: ignore[attr-defined]
                if reused and attempt == 0:
                    continue
                raise Failure("connection", "closed before a response", retry=True) from None
            except BaseException:
                conn.close()  # type: ignore[attr-defined]
                raise
            try:
                body, reusable = self._read(resp)
            except BaseException:
                conn.close()  # type: ignore[attr-defined]
                raise
            if resp.will_close or not reusable:
                conn.close()  # type: ignore[attr-defined]
            else:
                self._checkin(key, conn)  # type: ignore[arg-type]
            return resp.status, resp.headers, body
        raise AssertionError("unreachable")

    def _read(self, resp: http.client.HTTPResponse) -> tuple[bytes, bool]:
        """The body, and whether the connection can serve another request."""
        length = resp.getheader("Content-Length")
        known = length is not None and length.isdigit()
        if resp.status >= 300:
            # a short error or redirect body is read so the connection can be kept
            if known and int(length) <= _CHUNK:  # type: ignore[arg-type]
                try:
                    return resp.read(), True
                except http.client.IncompleteRead:
                    return b"", False
            return b"", False
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            resp.close()
            raise Failure("too-large", f"Content-Length {length}")
        chunks, size = [], 0
        # a server that trickles bytes never trips the per-read timeout: a whole-body deadline
        deadline = time.monotonic() + 3 * self.timeout
        expected = int(length) if known else None  # type: ignore[arg-type]
        try:
            while expected is None or size < expected:
                if time.monotonic() > deadline:
                    resp.close()
                    raise Failure("timeout", f"body not complete in {3 * self.timeout:g} s")
                chunk = resp.read1(_CHUNK)  # one recv: the deadline is checked between them
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    resp.close()
                    raise Failure("too-large", f"more than {self.max_bytes} bytes")
                chunks.append(chunk)
        except http.client.IncompleteRead as e:
            raise Failure(
                "truncated-body", f"{len(e.partial)} bytes then EOF", retry=True
            ) from None
        if expected is not None and size < expected:
            # http.client's read1 returns b"" at an early EOF instead of raising
            raise Failure("truncated-body", f"{size} of {length} bytes", retry=True)
        resp.close()  # the body is complete: the connection is free for the next request
        return b"".join(chunks), True

    def get(self, url: str) -> Response:
        """The body of ``url`` after redirects, or :class:`Failure`."""
        seen: list[str] = []
        received = 0
        while True:
            seen.append(url)
            try:
                status, headers, body = self._once(url)
            except Failure:
                raise
            except (ValueError, UnicodeError) as e:  # a port, host or IPv6 literal no URL has
                raise Failure("bad-url", f"{url[:200]}: {e}") from None
            except socket.gaierror as e:
                raise Failure("dns", str(e)) from None
            except TimeoutError:
                raise Failure("timeout", url[:200], retry=True) from None
            except ssl.SSLError as e:
                raise Failure("ssl", str(e)) from None
            except (http.client.HTTPException, OSError) as e:
                raise Failure("connection", f"{type(e).__name__}: {e}", retry=True) from None
            received += len(body)
            if status in (301, 302, 303, 307, 308):
                target = headers.get("Location")
                if not target:
                    raise Failure(f"http-{status}", "redirect without Location")
                try:
                    url = urllib.parse.urljoin(url, target)
                except ValueError:
                    raise Failure("bad-url", f"redirect to {target[:200]}") from None
                if url in seen:
                    raise Failure("redirect-loop", " -> ".join(seen[-3:] + [url])[:300])
                if len(seen) > MAX_REDIRECTS:
                    raise Failure("too-many-redirects", url[:200])
                continue
            if status != 200:
                raise Failure(
                    f"http-{status}",
                    url[:200],
                    retry=status in RETRY_STATUSES,
                    retry_after=_retry_after(headers.get("Retry-After")),
                )
            return Response(status, headers, body, url, received)

    def robots(self, url: str, agent: str) -> Robots:
        """The robots.txt of ``url``'s host, by RFC 9309's rules for failures."""
        parts = urllib.parse.urlsplit(url)
        where = f"{parts.scheme}://{parts.netloc}/robots.txt"
        try:
            response = self.get(where)
        except Failure as e:
            if e.reason in ("dns", "bad-url"):
                return Robots(unreachable=e)
            code = int(e.reason[5:]) if e.reason.startswith("http-") else 0
            if 400 <= code < 500:
                return Robots()  # unavailable: no rules
            return Robots(deny_all=True)  # unreachable: assume everything is disallowed
        parser = urllib.robotparser.RobotFileParser()
        parser.parse(response.body.decode("utf-8", "replace").splitlines())
        return Robots(parser)


def agent_token(user_agent: str) -> str:
    """The product token robots.txt rules name (``cliplab`` in ``cliplab/0.4 (+url)``)."""
    return user_agent.split("/", 1)[0].split()[0].strip().lower() or "*"


def split_tags(tags: str | Sequence[str]) -> tuple[str, ...]:
    """``"noai,noimageai"`` -> ``("noai", "noimageai")``; empty entries dropped."""
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    return tuple(t.strip().lower() for t in items if t.strip())
