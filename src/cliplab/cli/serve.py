"""``cliplab serve DIR [--host 127.0.0.1] [--port 8000] [--token T]``: search a collection
in a browser or through its JSON API.

Loopback by default. Any other address needs a token (``--token`` or ``CLIPLAB_TOKEN``):
every request must then send ``Authorization: Bearer TOKEN``. Cross-origin calls from other
web pages are refused unless ``--cors-origin`` lists their origin.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cliplab.cli.common import add_device, add_runtime


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="a web page and JSON API to search an embedded collection",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("collection", type=Path, help="a directory `cliplab embed` wrote")
    p.add_argument("--host", default="127.0.0.1", help="address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload")
    p.add_argument("--templates", default="imagenet7", help="prompt ensemble of /classify")
    p.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' on every request (default: $CLIPLAB_TOKEN; "
        "required for any address but loopback)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin allowed to call the API from its pages (repeatable; default: none)",
    )
    p.add_argument(
        "--no-batching",
        action="store_true",
        help="one request at a time on the model (default: concurrent requests' queries share "
        "a model pass and their searches run in parallel)",
    )
    add_device(p)
    add_runtime(p)
    p.set_defaults(run=run)


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def run(args: argparse.Namespace) -> int:
    token = args.token if args.token is not None else os.environ.get("CLIPLAB_TOKEN") or None
    if args.host not in LOOPBACK and not token:
        raise ValueError(
            f"refusing to serve on {args.host} without a token: anyone who can reach it could "
            "query the collection and read its images. Give --token (or set CLIPLAB_TOKEN), or "
            "serve on 127.0.0.1"
        )
    if token is not None and len(token) < 16:
        raise ValueError(
            "--token must be at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    try:
        import uvicorn
    except ImportError as e:
        raise ValueError(
            f"serving needs the serve extra: pip install 'cliplab[serve]' ({e})"
        ) from None
    from cliplab.search.query import Searcher
    from cliplab.serve import create_app

    searcher = Searcher(args.collection, device=args.device, runtime=args.runtime)
    app = create_app(
        searcher,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        classify_templates=args.templates,
        token=token,
        cors_origins=args.cors_origin,
        batching=not args.no_batching,
    )
    print(
        f"serving {args.collection} ({len(searcher.collection)} images, queries on the "
        f"{searcher.runtime} runtime) on http://{args.host}:{args.port}/"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
