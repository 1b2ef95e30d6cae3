"""``cliplab serve``: a collection's search as a JSON API and a web page (an application on
top of :mod:`cliplab.search`; the library never imports it)."""

from cliplab.serve.app import create_app

__all__ = ["create_app"]
