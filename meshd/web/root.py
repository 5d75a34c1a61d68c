"""The resource tree of the HTTPS site.

``/``        placeholder home page (the web app comes with its own issue)
``/health``  JSON for monitoring: version, uptime, listeners
"""

from __future__ import annotations

import html
import json
from typing import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

import meshd

# A listener as /health reports it: {"name": "https", "port": 443, "tls": True}.
ListenerInfo = dict


def _security_headers(request: Request) -> None:
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"Referrer-Policy", b"no-referrer")


class HealthResource(Resource):
    """``GET /health``: ``{"status": "ok", "version": ..., "uptime": s, "listeners": [...]}``."""

    isLeaf = True

    def __init__(self, clock: IReactorTime, started_at: float,
                 listeners: Callable[[], Sequence[ListenerInfo]]) -> None:
        super().__init__()
        self._clock = clock
        self._started_at = started_at
        self._listeners = listeners

    def render_GET(self, request: Request) -> bytes:
        _security_headers(request)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        body = {
            "status": "ok",
            "version": meshd.__version__,
            "uptime": round(self._clock.seconds() - self._started_at, 3),
            "listeners": list(self._listeners()),
        }
        return json.dumps(body).encode("utf-8")

    render_HEAD = render_GET


class HomeResource(Resource):
    """``/``: the landing page; other unknown paths are 404."""

    def __init__(self, title: str) -> None:
        super().__init__()
        self._title = title

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request: Request) -> bytes:
        _security_headers(request)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        title = html.escape(self._title)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title></head><body><h1>{title}</h1>"
            f"<p>meshd {html.escape(meshd.__version__)} is running.</p></body></html>\n"
        ).encode("utf-8")

    render_HEAD = render_GET


def build_root(*, clock: IReactorTime, started_at: float, title: str,
               listeners: Callable[[], Sequence[ListenerInfo]]) -> Resource:
    """Mount every HTTPS path in one place."""
    root = HomeResource(title)
    root.putChild(b"health", HealthResource(clock, started_at, listeners))
    return root
