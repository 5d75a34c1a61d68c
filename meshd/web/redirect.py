"""The plain-HTTP site: every request is sent to the same host and path over HTTPS.

The ACME http-01 challenge path (``/.well-known/acme-challenge/``) will be answered
here by the ACME service (its own issue); everything else gets a 301.
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request


def _host_without_port(host: bytes) -> bytes:
    if host.startswith(b"["):  # [::1]:80
        end = host.find(b"]")
        return host[: end + 1] if end != -1 else host
    if host.count(b":") == 1:
        return host.split(b":", 1)[0]
    return host


def _valid_host(host: bytes) -> bool:
    allowed = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]_"
    return 0 < len(host) <= 255 and all(c in allowed for c in host)


class RedirectResource(Resource):
    """301 to ``https://<host>[:<https_port>]<path>?<query>``."""

    isLeaf = True

    def __init__(self, https_port: int, default_host: str) -> None:
        super().__init__()
        self._https_port = https_port
        self._default_host = default_host.encode("idna")

    def location(self, request: Request) -> bytes:
        host = request.getHeader(b"host")
        host_bytes = host.encode("latin-1") if isinstance(host, str) else host
        if not host_bytes or not _valid_host(host_bytes):
            host_bytes = self._default_host
        host_bytes = _host_without_port(host_bytes)
        if self._https_port != 443:
            host_bytes += b":%d" % self._https_port
        # request.uri is the path and query exactly as the client sent them.
        uri = request.uri if request.uri.startswith(b"/") else b"/"
        return b"https://" + host_bytes + uri

    def render(self, request: Request) -> bytes:
        request.setResponseCode(301)
        location = self.location(request)
        request.setHeader(b"Location", location)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"Moved to " + location + b"\n"
