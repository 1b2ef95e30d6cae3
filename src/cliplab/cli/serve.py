"""``cliplab serve DIR [--host 127.0.0.1] [--port 8000]``: search a collection in a browser.

Loopback by default: the app has no authentication, so exposing it (``--host 0.0.0.0``) is
a choice to make knowingly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cliplab.cli.common import add_device


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
    add_device(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as e:
        raise ValueError(
            f"serving needs the serve extra: pip install 'cliplab[serve]' ({e})"
        ) from None
    from cliplab.search.query import Searcher
    from cliplab.serve import create_app

    searcher = Searcher(args.collection, device=args.device)
    app = create_app(
        searcher,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        classify_templates=args.templates,
    )
    print(
        f"serving {args.collection} ({len(searcher.collection)} images) on http://{args.host}:{args.port}/"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
