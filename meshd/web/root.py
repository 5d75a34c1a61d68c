"""The resource tree of the HTTPS site.

``/``        the login page, or the web app once logged in (:mod:`meshd.web.login`)
``/health``  JSON for monitoring: version, uptime, listeners
``/app/``    the browser app's static files (:mod:`meshd.web.app`)
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

import meshd
from meshd.web.app import APP_PATH, AppFilesResource

if TYPE_CHECKING:
    from meshd.web.login import WebAuth

# A listener as /health reports it: {"name": "https", "port": 443, "tls": True}.
ListenerInfo = dict


def _escape(value: bytes | str) -> str:
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text.encode("unicode-escape").decode("ascii").replace('"', '\\"')


def access_log_line(timestamp: str, request: Request) -> str:
    """The combined-log-format line, without query strings: they can carry login tokens."""
    address = request.getClientAddress()
    host = getattr(address, "host", "-")
    path = request.uri.split(b"?", 1)[0]
    referrer = (request.getHeader(b"referer") or b"-").split(b"?", 1)[0]
    agent = request.getHeader(b"user-agent") or b"-"
    return '"%s" - - %s "%s %s %s" %d %s "%s" "%s"' % (
        host, timestamp, _escape(request.method), _escape(path), _escape(request.clientproto),
        request.code, request.sentLength or "-", _escape(referrer), _escape(agent))


def _security_headers(request: Request) -> None:
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"Referrer-Policy", b"no-referrer")


class HealthResource(Resource):
    """``GET /health``: ``{"status": "ok", "version", "uptime", "listeners", "store"}``.

    The answer is 503 with ``"status": "degraded"`` while the database is unavailable.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime, started_at: float,
                 listeners: Callable[[], Sequence[ListenerInfo]],
                 store: Optional[Any] = None,
                 status: Optional[dict[str, Callable[[], Any]]] = None) -> None:
        super().__init__()
        self._clock = clock
        self._started_at = started_at
        self._listeners = listeners
        self._store = store
        self._status = status or {}

    def render_GET(self, request: Request) -> object:
        _security_headers(request)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if self._store is None or self._store.is_healthy:
            return self._body(request)
        # Unhealthy: ask the database once, so a recovered database shows at once.
        d = self._store.get_setting("meshd.health")

        def answer(_: object) -> None:
            if not request.finished:
                request.write(self._body(request))
                request.finish()

        d.addBoth(answer)
        return NOT_DONE_YET

    def _body(self, request: Request) -> bytes:
        body: dict[str, Any] = {
            "status": "ok",
            "version": meshd.__version__,
            "uptime": round(self._clock.seconds() - self._started_at, 3),
            "listeners": list(self._listeners()),
        }
        for name, counters in self._status.items():
            body[name] = counters()
        if self._store is not None:
            healthy = bool(self._store.is_healthy)
            body["store"] = {"backend": self._store.backend, "healthy": healthy}
            if not healthy:
                body["status"] = "degraded"
                request.setResponseCode(503)
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
               listeners: Callable[[], Sequence[ListenerInfo]],
               auth: Optional["WebAuth"] = None,
               extra: Optional[dict[bytes, Resource]] = None,
               status: Optional[dict[str, Callable[[], Any]]] = None) -> Resource:
    """Mount every HTTPS path in one place (``extra``: the WebSocket endpoints)."""
    root: Resource
    if auth is None:
        root = HomeResource(title)
    else:
        from meshd.web.login import (
            CreateAccountResource,
            LandingResource,
            LoginResource,
            LogoutResource,
        )
        root = LandingResource(auth)
        root.putChild(b"login", LoginResource(auth))
        root.putChild(b"logout", LogoutResource(auth))
        root.putChild(b"createaccount", CreateAccountResource(auth))
        if auth.password_reset is not None:  # only with a mailer: otherwise 404
            from meshd.web.passwordreset import (
                ForgotPasswordResource,
                ResetPasswordResource,
            )
            root.putChild(b"forgotpassword", ForgotPasswordResource(auth))
            root.putChild(b"resetpassword", ResetPasswordResource(auth))
    root.putChild(APP_PATH, AppFilesResource())
    root.putChild(b"health", HealthResource(clock, started_at, listeners,
                                            auth.store if auth is not None else None, status))
    for path, resource in (extra or {}).items():
        root.putChild(path, resource)
    return root
