"""The web app: FastAPI over a :class:`cliplab.search.query.Searcher`.

    GET  /health                  the collection, model and index
    GET  /search?like=ID          more like image ID (its stored embedding; filters apply)
    GET  /duplicates              the duplicate groups ``cliplab dedup`` found (live images)
    GET  /search?q=TEXT&k=K       text -> images (``-word`` subtracts; ``min_relevance=R``:
                                  only results at least that relevant, possibly none;
                                  ``after``, ``before``, ``path``, ``camera``, ``bbox``,
                                  ``near``: filters, :mod:`cliplab.search.filters`, applied
                                  inside the search; ``sort=score|date|oldest``); no ``q``
                                  but filters: the images that pass, by date
    POST /search                  image (multipart ``image``) -> images; with ``q``: a mix of
                                  both (``image_weight``); the same filters and sort;
                                  ``captions=true``: the nearest captions instead
    POST /classify                image + ``labels`` ("cat, dog, car"; "animal=cat|dog" gives
                                  a label members it may score by) -> probabilities, with
                                  prompt ensembling (``templates``, a bundled set)
    POST /embed                   ``{"texts": [...]}`` (JSON) or multipart ``images`` ->
                                  ``{"dim", "embeddings"}``: unit vectors, batched
    GET  /image/{id}              the image of one result (only ids of the collection)
    GET  /                        the page: search box, result grid, drop an image, classify

With a token (``cliplab serve --token``, required beyond loopback) every request needs
``Authorization: Bearer TOKEN`` (401 otherwise, before anything else is read); cross-origin
calls from other pages are refused unless their origin is listed (``--cors-origin``).

Bad input is a 4xx with a one-line ``detail``, never a 500: empty or over-long queries, k
out of range, uploads over ``max_upload_bytes`` (413, checked while the body streams in),
non-images (415), truncated images (400), decompression bombs (413), unknown ids (404). The
server reads images only through the collection's own metadata, by id
(:meth:`cliplab.search.collection.Collection.image_bytes`: files and shard members, local or
in object storage): no path from a request ever reaches the file system.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Sequence
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload

from cliplab.data.images import MEDIA_TYPES, open_rgb, probe_image
from cliplab.data.stream import BadSample
from cliplab.search.filters import SORTS, Filter
from cliplab.search.query import MAX_QUERY_CHARS, Searcher
from cliplab.serve.batcher import Batcher
from cliplab.zeroshot import parse_labels

log = logging.getLogger("cliplab.serve")

MAX_K = 200
MAX_LABELS = 100
MAX_LABEL_CHARS = 100
MAX_EMBED_TEXTS = 256
MAX_EMBED_IMAGES = 32
MAX_FILTER_CHARS = 200
#: BadSample reasons of an upload -> HTTP status.
UPLOAD_STATUS = {"decompression-bomb": 413, "not-an-image": 415, "zero-bytes": 400}


class LimitBody:
    """ASGI middleware: a request body over ``limit`` bytes gets 413, by its Content-Length
    or, when there is none (chunked uploads), while it streams in: the body is read here,
    up to the limit, and handed to the app only when it fits."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _plain(send, 413, f"request body over {self.limit} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _plain(send, 413, f"request body over {self.limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # only a disconnect can come now
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class RequireToken:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``
    (compared in constant time); anything else gets 401 before the app sees it."""

    def __init__(self, app: Any, token: str) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                extra = [(b"www-authenticate", b'Bearer realm="cliplab"')]
                await _plain(send, 401, "missing or wrong bearer token", extra)
                return
        await self.app(scope, receive, send)


async def _plain(
    send: Any, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _filter(after: str | None, before: str | None, path: str | None, camera: str | None,
            bbox: str | None, near: str | None, sort: str | None) -> tuple[Filter, str | None]:  # fmt: skip
    """The request's filter and sort, or a 400 saying what is wrong."""
    given = (after, before, path, camera, bbox, near, sort)
    if any(v is not None and len(v) > MAX_FILTER_CHARS for v in given):
        raise HTTPException(400, f"filter values are at most {MAX_FILTER_CHARS} characters")
    if sort is not None and sort not in SORTS:
        raise HTTPException(400, f"sort must be one of {', '.join(SORTS)}")
    try:
        where = Filter.parse(
            after=after, before=before, path=path, camera=camera, bbox=bbox, near=near
        )
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    return where, sort or None


def query_filter(
    after: str | None = None, before: str | None = None, path: str | None = None,
    camera: str | None = None, bbox: str | None = None, near: str | None = None,
    sort: str | None = None,
) -> tuple[Filter, str | None]:  # fmt: skip
    """Filters given as query parameters (``GET /search``)."""
    return _filter(after, before, path, camera, bbox, near, sort)


def form_filter(
    after: Annotated[str | None, Form()] = None, before: Annotated[str | None, Form()] = None,
    path: Annotated[str | None, Form()] = None, camera: Annotated[str | None, Form()] = None,
    bbox: Annotated[str | None, Form()] = None, near: Annotated[str | None, Form()] = None,
    sort: Annotated[str | None, Form()] = None,
) -> tuple[Filter, str | None]:  # fmt: skip
    """Filters given as form fields (``POST /search``)."""
    return _filter(after, before, path, camera, bbox, near, sort)


def _live(collection: Any, i: Any) -> bool:
    return isinstance(i, int) and 0 <= i < len(collection) and not collection.is_deleted(i)


def read_duplicates(collection: Any) -> dict[str, Any] | None:
    """The collection's ``dedup.json`` (``cliplab dedup``) when it was made with this model,
    else None."""
    import json

    try:
        report = json.loads((collection.path / "dedup.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("fingerprint") != collection.fingerprint:
        return None
    return report


def create_app(
    searcher: Searcher,
    *,
    max_upload_bytes: int = 10 * 2**20,
    classify_templates: str = "imagenet7",
    token: str | None = None,
    cors_origins: Sequence[str] = (),
    batching: bool = True,
) -> Any:
    """The ASGI app (FastAPI, wrapped in the body limit) serving ``searcher``'s collection.
    ``token``: every request needs ``Authorization: Bearer <token>`` (401 otherwise).
    ``cors_origins``: the origins other web pages may call it from (none by default: browsers
    refuse cross-origin reads). ``batching``: concurrent requests' queries go through the
    model together (:class:`cliplab.serve.batcher.Batcher`) and searches run in parallel;
    off, one request at a time holds the model (the server before batching)."""
    from cliplab.templates import list_templates, load_templates

    bundled = list_templates()
    if classify_templates not in bundled:
        raise ValueError(f"classify templates must be a bundled set: {', '.join(bundled)}")

    app = FastAPI(title="cliplab search", docs_url=None, redoc_url=None)
    lock = threading.Lock()  # without batching: one request at a time on the model
    classify_lock = threading.Lock()  # zero-shot heads are cached per label list
    refresh_lock = threading.Lock()
    # the batcher runs only the model: images arrive decoded and preprocessed by the request
    # threads (in parallel), so one pass holds no per-image Python work
    batcher = Batcher(searcher.embed_texts, searcher.encode_pixels) if batching else None
    app.state.batcher = batcher

    def current() -> Any:
        """The collection's newest snapshot (a sync may have committed one since)."""
        with refresh_lock:
            searcher.refresh()
            return searcher.collection

    def embed_texts(texts: list[str]) -> Any:
        if batcher is not None:
            return batcher.texts(texts)
        with lock:
            return searcher.embed_texts(texts)

    def embed_images(pictures: list[Any]) -> Any:
        if batcher is not None:
            return batcher.images([searcher.preprocess(p) for p in pictures])
        with lock:
            return searcher.embed_images(pictures)

    page = resources.files("cliplab.serve").joinpath("static", "index.html").read_text("utf-8")

    @app.exception_handler(Exception)
    async def unexpected(request: Any, exc: Exception) -> JSONResponse:  # pragma: no cover
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    def check_k(k: int) -> int:
        if not 1 <= k <= MAX_K:
            raise HTTPException(400, f"k must be between 1 and {MAX_K}, got {k}")
        return k

    async def read_upload(image: UploadFile) -> Any:
        data = await image.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"image over {max_upload_bytes} bytes")
        if not data:
            raise HTTPException(400, "empty upload")
        try:
            return await run_in_threadpool(open_rgb, data)  # decoding off the event loop
        except BadSample as e:
            raise HTTPException(
                UPLOAD_STATUS.get(e.reason, 400), f"unusable image: {e.reason}"
            ) from None

    def hits(found: list[Any]) -> list[dict[str, Any]]:
        return [{**h.to_dict(), "url": f"/image/{h.id}"} for h in found]

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, Any]:
        collection = current()
        state = collection.state or {}
        return {
            "status": "ok",
            "images": collection.live,
            "model": collection.info.get("model"),
            "index": searcher.index.info["plan"]["kind"] if searcher.index else "exact (no index)",
            "captions": collection.has_texts,
            "runtime": searcher.runtime,
            "sync": {k: state[k] for k in ("generation", "synced_at", "last") if k in state}
            or None,
        }

    def check_query(q: str | None, min_relevance: float | None, image_weight: float) -> None:
        if q is not None and len(q) > MAX_QUERY_CHARS:
            raise HTTPException(400, f"query longer than {MAX_QUERY_CHARS} characters")
        if min_relevance is not None and not 0 <= min_relevance <= 1:
            raise HTTPException(400, f"min_relevance must be in [0, 1], got {min_relevance}")
        if not 0 <= image_weight <= 1:
            raise HTTPException(400, f"image_weight must be in [0, 1], got {image_weight}")

    def run_search(q: str | None, picture: Any, k: int, min_relevance: float | None,
                   image_weight: float, where: Filter, sort: str | None,
                   ) -> list[dict[str, Any]]:  # fmt: skip
        current()
        try:
            if q is None and picture is None:  # filters alone: the images that pass, by date
                found = searcher.browse(where, k, sort or "date")
            elif batcher is None:  # the whole request under the model lock
                with lock:
                    found = searcher.search(
                        q, picture, k, min_relevance=min_relevance, image_weight=image_weight,
                        where=where, sort=sort or "score",
                    )  # fmt: skip
            else:  # the model pass is shared with other requests; the search runs here
                vector = searcher.query_vector(
                    q, picture, image_weight=image_weight,
                    embed_texts=embed_texts, embed_images=embed_images,
                )  # fmt: skip
                found = searcher.nearest(
                    vector, k, min_relevance, where=where, sort=sort or "score"
                )
        except ValueError as e:  # an empty query, parts that cancel out
            raise HTTPException(400, str(e)) from None
        return hits(found)

    @app.get("/search")
    def search_text(
        q: Annotated[str, Query(max_length=10 * MAX_QUERY_CHARS)] = "",
        k: int = 20,
        min_relevance: float | None = None,
        like: int | None = None,
        chosen: tuple[Filter, str | None] = Depends(query_filter),  # noqa: B008
    ) -> Any:
        check_k(k)
        where, sort = chosen
        if like is not None:  # more like an image of the collection: its stored embedding
            check_query(None, min_relevance, 0.5)
            current()
            try:
                vector = searcher.vector_of(like)
            except IndexError:
                raise HTTPException(404, f"no image with id {like}") from None
            found = searcher.nearest(vector, k, min_relevance, where=where, sort=sort or "score")
            return {"like": like, "filters": where.to_dict(), "results": hits(found)}
        if not q.strip() and where.empty:
            raise HTTPException(400, "empty query: give q=words (or filters to list images)")
        check_query(q, min_relevance, 0.5)
        words = q if q.strip() else None
        found = run_search(words, None, k, min_relevance, 0.5, where, sort)
        return {"query": q, "filters": where.to_dict(), "results": found}

    @app.post("/search")
    async def search_image(
        image: Annotated[UploadFile, File()],
        k: Annotated[int, Form()] = 20,
        captions: Annotated[bool, Form()] = False,
        q: Annotated[str | None, Form(max_length=10 * MAX_QUERY_CHARS)] = None,
        min_relevance: Annotated[float | None, Form()] = None,
        image_weight: Annotated[float, Form()] = 0.5,
        chosen: tuple[Filter, str | None] = Depends(form_filter),  # noqa: B008
    ) -> Any:
        check_k(k)
        check_query(q, min_relevance, image_weight)
        where, sort = chosen
        picture = await read_upload(image)
        if captions:
            if not (await run_in_threadpool(current)).has_texts:
                raise HTTPException(400, "this collection has no caption embeddings")

            def nearest_captions() -> list[Any]:
                vector = embed_images([picture])[0]
                return searcher.captions_for_image(picture, k, vector=vector)

            return {"results": hits(await run_in_threadpool(nearest_captions))}
        words = q if q and q.strip() else None
        found = await run_in_threadpool(
            run_search, words, picture, k, min_relevance, image_weight, where, sort
        )
        return {"filters": where.to_dict(), "results": found}

    @app.get("/duplicates")
    def duplicates() -> dict[str, Any]:
        collection = current()
        report = read_duplicates(collection)
        if report is None:
            return {"report": False, "exact": [], "near": []}

        def card(i: int) -> dict[str, Any]:
            row = collection.row(i)
            return {"id": i, "key": row["key"], "url": f"/image/{i}"}

        def groups(name: str) -> list[list[dict[str, Any]]]:
            out = []
            for group in report.get(name) or []:
                live = [int(i) for i in group if _live(collection, i)]
                if len(live) > 1:  # a sync may have deleted members since
                    out.append([card(i) for i in live])
            return out

        chosen = report.get("chosen_on") or {}
        return {
            "report": True,
            "threshold": report.get("threshold"),
            "precision": chosen.get("precision"),
            "recall": chosen.get("recall"),
            "generation": report.get("generation"),
            "exact": groups("exact"),
            "near": groups("near"),
        }

    @app.post("/classify")
    async def classify(
        image: Annotated[UploadFile, File()],
        labels: Annotated[str, Form()],
        templates: Annotated[str, Form()] = "",
    ) -> Any:
        try:
            names, members = parse_labels(labels)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        every = [*names, *(m for ms in members or () for m in ms)]  # members are texts too
        if len(every) > MAX_LABELS or any(len(n) > MAX_LABEL_CHARS for n in every):
            raise HTTPException(400, f"at most {MAX_LABELS} labels of {MAX_LABEL_CHARS} characters")
        name = templates or classify_templates
        if name not in bundled:  # never a path: a request must not make the server read files
            raise HTTPException(400, f"templates: one of {', '.join(bundled)}")
        chosen = load_templates(name)
        picture = await read_upload(image)

        def run_classify() -> list[tuple[str, float]]:
            with classify_lock, lock:
                return searcher.classify(picture, names, chosen, members)

        probs = await run_in_threadpool(run_classify)
        return {
            "templates": len(chosen),
            "results": [{"label": n, "probability": round(p, 6)} for n, p in probs],
        }

    @app.post("/embed")
    async def embed(request: Request) -> Any:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise HTTPException(400, "invalid JSON") from None
            texts = body.get("texts") if isinstance(body, dict) else None
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise HTTPException(400, 'give {"texts": ["...", ...]}')
            if not 1 <= len(texts) <= MAX_EMBED_TEXTS:
                raise HTTPException(400, f"1 to {MAX_EMBED_TEXTS} texts per request")
            try:
                vectors = await run_in_threadpool(embed_texts, texts)
            except ValueError as e:
                raise HTTPException(400, str(e)) from None
        elif kind == "multipart/form-data":
            form = await request.form()
            uploads = [f for f in form.getlist("images") if isinstance(f, StarletteUpload)]
            if not 1 <= len(uploads) <= MAX_EMBED_IMAGES:
                raise HTTPException(400, f"1 to {MAX_EMBED_IMAGES} files named 'images'")
            pictures = [await read_upload(f) for f in uploads]  # type: ignore[arg-type]
            vectors = await run_in_threadpool(embed_images, pictures)
        else:
            raise HTTPException(415, "send JSON texts or multipart images")
        return {
            "dim": int(vectors.shape[1]),
            "embeddings": np.round(np.asarray(vectors, dtype=np.float64), 7).tolist(),
        }

    @app.get("/image/{image_id}")
    def image(image_id: int) -> Response:
        collection = current()
        if not 0 <= image_id < len(collection) or collection.is_deleted(image_id):
            raise HTTPException(404, f"no image with id {image_id}")
        data = collection.image_bytes(image_id)
        if data is None:
            raise HTTPException(404, f"image {image_id} is not available")
        try:
            fmt, _, _ = probe_image(data, max_aspect=None, min_size=1)
        except BadSample:
            raise HTTPException(404, f"image {image_id} is no longer readable") from None
        return Response(data, media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"))

    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    limited = LimitBody(app, max_upload_bytes + 64 * 1024)
    return RequireToken(limited, token) if token else limited
