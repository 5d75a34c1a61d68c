"""The browser app (``web/`` at the top of the repository): where its files are, how they
are served, and the page a logged-in user gets at ``/``.

``GET /``            for a logged-in user: ``web/index.html`` with the user and server
                     facts embedded as a JSON data block (``<``, ``>``, ``&`` escaped, so
                     no value can close the element)
``GET /app/<path>``  the app's static files: ES modules, CSS, images; nothing else (no
                     directory listing, no dot files, no tests)

The app runs under a strict Content-Security-Policy: scripts and styles only from this
server (no inline code), WebSockets only back to this server (``/control.ashx``).

The files are found in a source checkout (``web/`` beside the ``meshd`` package) or, once
installed with ``pip``, under ``<prefix>/share/meshd/web`` (``[options.data_files]``).
"""

from __future__ import annotations

import html
import json
import os
import site
import sys
import sysconfig
from typing import Any, Optional

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

import meshd

APP_PATH = b"app"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}

# Folders of web/ that are never served: tests and build inputs.
PRIVATE_FOLDERS = frozenset({"tests", "node_modules"})


def _candidates() -> list[str]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(meshd.__file__)))
    found = [os.path.join(here, "web")]
    prefixes = [sys.prefix, sysconfig.get_path("data")]
    user_base = getattr(site, "USER_BASE", None)
    if user_base:
        prefixes.append(user_base)
    found += [os.path.join(prefix, "share", "meshd", "web") for prefix in prefixes if prefix]
    return found


def find_web_dir() -> Optional[str]:
    """The folder holding ``index.html`` of the app, or None when it is not installed."""
    override = os.environ.get("MESHD_WEB_DIR")
    for folder in ([override] if override else []) + _candidates():
        if os.path.isfile(os.path.join(folder, "index.html")):
            return folder
    return None


def json_for_html(value: Any) -> str:
    """JSON that is safe inside an HTML element: ``<``, ``>``, ``&`` become ``\\u00XX``."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def app_security_headers(request: Request) -> None:
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode("ascii"))
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"Referrer-Policy", b"no-referrer")


_MISSING_PAGE = (
    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
    "</head><body><h1>{title}</h1><p>Logged in as <strong id=\"user\">{name}</strong>{admin}."
    "</p><p>The web app is not installed with this server.</p>"
    "<p><a href=\"/logout\">Log out</a></p></body></html>\n"
)


def app_page(user: dict[str, Any], title: str, web_dir: Optional[str] = None) -> bytes:
    """``index.html`` for ``user``: the bootstrap data block and the no-script fallback."""
    folder = web_dir if web_dir is not None else find_web_dir()
    name = html.escape(str(user.get("name", "")))
    admin = " (site administrator)" if user.get("siteadmin") == 0xFFFFFFFF else ""
    if folder is None:
        return _MISSING_PAGE.format(title=html.escape(title), name=name, admin=admin
                                    ).encode("utf-8")
    with open(os.path.join(folder, "index.html"), encoding="utf-8") as f:
        template = f.read()
    bootstrap = json_for_html({"title": title, "version": meshd.__version__,
                               "user": {"name": user.get("name", ""),
                                        "siteadmin": user.get("siteadmin", 0)}})
    noscript = (f"<p>Logged in as <strong id=\"user\">{name}</strong>{admin}. "
                "This application needs JavaScript. <a href=\"/logout\">Log out</a></p>")
    page = (template.replace("{{title}}", html.escape(title))
            .replace("{{bootstrap}}", bootstrap)
            .replace("{{noscript}}", noscript))
    return page.encode("utf-8")


class AppFilesResource(Resource):
    """``/app/<path>``: the app's static files, by an allow-list of file types."""

    isLeaf = True

    def __init__(self, web_dir: Optional[str] = None) -> None:
        super().__init__()
        self._web_dir = web_dir

    def _folder(self) -> Optional[str]:
        return self._web_dir if self._web_dir is not None else find_web_dir()

    def _resolve(self, segments: list[bytes]) -> Optional[str]:
        folder = self._folder()
        if folder is None or not segments:
            return None
        parts: list[str] = []
        for raw in segments:
            try:
                part = raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
            if not part or part.startswith(".") or "/" in part or "\\" in part or "\0" in part:
                return None
            parts.append(part)
        if parts[0] in PRIVATE_FOLDERS or parts[-1] == "index.html":
            return None
        if os.path.splitext(parts[-1])[1].lower() not in CONTENT_TYPES:
            return None
        base = os.path.realpath(folder)
        path = os.path.realpath(os.path.join(base, *parts))
        if not path.startswith(base + os.sep) or not os.path.isfile(path):
            return None
        return path

    def render_GET(self, request: Request) -> bytes:
        app_security_headers(request)
        path = self._resolve(list(request.postpath or []))
        if path is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"Not found\n"
        # Revalidate every time (a new server version must never run old modules), cheaply.
        if request.setLastModified(os.path.getmtime(path)) is http.CACHED:
            return b""
        with open(path, "rb") as f:
            body = f.read()
        request.setHeader(b"Content-Type",
                          CONTENT_TYPES[os.path.splitext(path)[1].lower()].encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-cache")
        return body

    render_HEAD = render_GET
