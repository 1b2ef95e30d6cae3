"""A real S3-compatible server on 127.0.0.1 for the tests (moto's server mode), behind a TCP
proxy that can drop connections in the middle of a response.

    with object_store() as store:              # bucket "cliplab" on a fresh server
        store.upload(tmp_path / "shards", "shards")   # -> s3://cliplab/shards/...
        store.proxy.drop(times=3, after_bytes=40_000)
        ...                                    # s3:// reads go through the proxy

fsspec is pointed at the proxy through ``fsspec.config.conf["s3"]`` (and, for subprocesses,
``FSSPEC_S3_ENDPOINT_URL`` in ``store.env``); both are restored on exit.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

BUCKET = "cliplab"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class DroppingProxy:
    """Forwards TCP from a local port to ``upstream``; after :meth:`drop`, the next ``times``
    connections (of those numbered ``every - 1`` modulo ``every``: moto answers one request
    per connection) that have sent ``after_bytes`` response bytes are reset mid-stream."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pending = 0
        self.after_bytes = 0
        self.every = 1
        self.connections = 0
        self.dropped = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self, times: int, after_bytes: int, every: int = 1) -> None:
        with self.lock:
            self.pending, self.after_bytes, self.every = times, after_bytes, every

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += 1
                victim = self.connections % self.every == 0
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, victim), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if response:
                    with self.lock:
                        cut = self.pending > 0 and sent + len(data) > self.after_bytes
                        if cut:
                            self.pending -= 1
                            self.dropped += 1
                    if cut:
                        dst.sendall(data[: max(0, self.after_bytes - sent)])
                        for s in (src, dst):  # reset (linger 0); shutdown wakes the other pump
                            s.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                            )
                            with contextlib.suppress(OSError):
                                s.shutdown(socket.SHUT_RDWR)
                            s.close()
                        return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


class ObjectStore:
    def __init__(self, endpoint: str, proxy: DroppingProxy) -> None:
        self.endpoint = endpoint
        self.proxy = proxy
        self.env = {**CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": endpoint}

    def client(self):  # noqa: ANN201 - a boto3 client
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def upload(self, local: Path, prefix: str) -> str:
        """Every file under ``local`` to ``s3://cliplab/<prefix>/...``; returns that URL."""
        client = self.client()
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(local).as_posix()}"
                client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
        return f"s3://{BUCKET}/{prefix}"


@contextlib.contextmanager
def object_store() -> Iterator[ObjectStore]:
    """A moto S3 server and a dropping proxy on 127.0.0.1, fsspec pointed at the proxy."""
    import fsspec
    import s3fs
    from moto.server import ThreadedMotoServer

    old_env = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = DroppingProxy((host, port))
    store = ObjectStore(f"http://127.0.0.1:{proxy.port}", proxy)
    store.client().create_bucket(Bucket=BUCKET)
    old_conf = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"endpoint_url": store.endpoint}
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield store
    finally:
        if old_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = old_conf
        s3fs.S3FileSystem.clear_instance_cache()
        proxy.close()
        server.stop()
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
