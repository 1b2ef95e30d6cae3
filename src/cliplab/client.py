"""A small Python client for ``cliplab serve``: every endpoint, standard library only.

    from cliplab.client import Client

    c = Client("http://127.0.0.1:8000", token=None)     # token: the server's --token
    c.health()
    c.search("a dog on a beach -people", k=10, min_relevance=0.9)
    c.search_image("holiday.jpg", k=5, text="at night")   # an image, optionally mixed with words
    c.classify("cat.jpg", ["cat", "dog"])
    vectors = c.embed_texts(["a cat", "a dog"])           # (2, D) float32, unit length
    vectors = c.embed_images(["a.jpg", "b.png"])
    data = c.image(hit["id"])                              # the image's bytes

A 4xx or 5xx answer raises :class:`ClientError` with the status and the server's one-line
``detail``; a connection that fails raises it with status 0.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Client", "ClientError"]

ImageInput = str | os.PathLike[str] | bytes


class ClientError(RuntimeError):
    """The server said no (``status``: its HTTP status; 0 when it could not be reached)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


def _image_bytes(image: ImageInput) -> tuple[str, bytes]:
    if isinstance(image, bytes):
        return "image", image
    path = Path(image)
    return path.name, path.read_bytes()


FILTERS = ("after", "before", "path", "camera", "bbox", "near", "sort")


def _filters(given: dict[str, Any]) -> dict[str, str]:
    """The search filters as request fields (``bbox``/``near`` may be tuples)."""
    unknown = set(given) - set(FILTERS)
    if unknown:
        raise TypeError(f"unknown search filters {sorted(unknown)}; known: {', '.join(FILTERS)}")
    return {
        name: ",".join(str(x) for x in value) if isinstance(value, (tuple, list)) else str(value)
        for name, value in given.items()
        if value is not None
    }


def _multipart(
    fields: dict[str, Any], files: Sequence[tuple[str, str, bytes]]
) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        if value is None:
            continue
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for field, filename, data in files:
        safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{safe}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client:
    """The endpoints of one server (``base_url``), with its bearer ``token`` if it has one."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        raw: bool = False,
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = self.base_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read().decode("utf-8")).get("detail", e.reason)
            except (ValueError, AttributeError):
                detail = str(e.reason)
            raise ClientError(e.code, str(detail)) from None
        except (urllib.error.URLError, OSError) as e:
            raise ClientError(0, f"cannot reach {self.base_url}: {e}") from None
        return data if raw else json.loads(data.decode("utf-8"))

    # -- endpoints ---------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def search(
        self,
        text: str | None = None,
        k: int = 20,
        min_relevance: float | None = None,
        like: int | None = None,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Images for words (``-word`` subtracts), best first, each with ``relevance``;
        ``like``: instead, more like the collection's image of that id.
        ``filters``: ``after``/``before`` (``"YYYY-MM-DD"``), ``path``, ``camera``, ``bbox``
        (``"S,W,N,E"``), ``near`` (``"LAT,LON,KM"``), ``sort`` (score, date, oldest); no
        ``text``: the images that pass, by date."""
        params = {"q": text or "", "k": k, "min_relevance": min_relevance, "like": like}
        params.update(_filters(filters))
        return self._request("GET", "/search", params)["results"]

    def duplicates(self) -> dict[str, Any]:
        """The duplicate groups ``cliplab dedup`` found (``report`` False when none ran)."""
        return self._request("GET", "/duplicates")

    def search_image(
        self,
        image: ImageInput,
        k: int = 20,
        text: str | None = None,
        image_weight: float = 0.5,
        min_relevance: float | None = None,
        captions: bool = False,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Images (or with ``captions``, captions) for an image, optionally mixed with words;
        ``filters`` as :meth:`search`."""
        fields = {"k": k, "q": text, "image_weight": image_weight, "min_relevance": min_relevance}
        fields.update(_filters(filters))
        fields["captions"] = "true" if captions else None
        body, kind = _multipart(fields, [("image", *_image_bytes(image))])
        return self._request("POST", "/search", body=body, content_type=kind)["results"]

    def classify(
        self, image: ImageInput, labels: Sequence[str], templates: str | None = None
    ) -> list[dict[str, Any]]:
        """Zero-shot probabilities of ``labels`` for an image, best first."""
        fields = {"labels": ",".join(labels), "templates": templates}
        body, kind = _multipart(fields, [("image", *_image_bytes(image))])
        return self._request("POST", "/classify", body=body, content_type=kind)["results"]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) float32 unit vectors of texts in the collection's model."""
        body = json.dumps({"texts": list(texts)}).encode("utf-8")
        answer = self._request("POST", "/embed", body=body, content_type="application/json")
        return np.asarray(answer["embeddings"], dtype=np.float32)

    def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(n, D) float32 unit vectors of images (paths or bytes)."""
        files = [("images", *_image_bytes(image)) for image in images]
        body, kind = _multipart({}, files)
        answer = self._request("POST", "/embed", body=body, content_type=kind)
        return np.asarray(answer["embeddings"], dtype=np.float32)

    def image(self, image_id: int) -> bytes:
        """The bytes of one image of the collection."""
        return self._request("GET", f"/image/{int(image_id)}", raw=True)
