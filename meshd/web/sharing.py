"""``GET /sharing?c=<link cookie>``: the page a guest of a device-sharing link opens.

The link (made by ``createDeviceShareLink``, see :mod:`meshd.sharing`) is checked as the
relay will check it: this server's sharing cookie, a share record that still exists, the
device still there, the window open.  Then ``web/sharing.html`` is served with what the
link shares embedded as JSON — the cookie itself (the guest's only credential, which the
page hands to ``/meshrelay.ashx?c=…``), the device's and the guest's names, the shared
protocols and the window; otherwise a short page says why, with status 404 as MeshCentral
answers (its messages 11 "not valid yet" and 12 "expired").  No login cookie is ever made
for a guest: the page has no control channel.

Responses are never cached and send no referrer (the URL is the credential).
"""

from __future__ import annotations

import html
import os
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from meshd.sharing import (
    SHARE_DESKTOP,
    SHARE_FILES,
    SHARE_TERMINAL,
    share_bits,
    share_from_cookie,
    window,
)
from meshd.store.interface import IStore
from meshd.web.app import app_security_headers, find_web_dir, json_for_html

NOT_VALID = "This sharing link is not valid."
NOT_YET = "This sharing link is not valid yet."
EXPIRED = "This sharing link has expired."
_MESSAGE_PAGE = (
    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
    "<meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title></head>"
    "<body><h1>{title}</h1><p id=\"message\">{message}</p></body></html>\n")
_NO_APP = "The web app is not installed with this server."


class SharingResource(Resource):
    """``/sharing``: the guest page of a device-sharing link."""

    isLeaf = True
    _log = Logger()

    def __init__(self, *, store: IStore, invite_cookies: Any, clock: Any, title: str,
                 web_dir: Optional[str] = None) -> None:
        super().__init__()
        self._store = store
        self._invite_cookies = invite_cookies
        self._clock = clock
        self._title = title
        self._web_dir = web_dir

    def render_GET(self, request: Request) -> Any:
        app_security_headers(request)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        raw = (request.args or {}).get(b"c", [b""])[0]
        cookie = raw.decode("ascii", "replace") if isinstance(raw, bytes) else ""
        d = Deferred.fromCoroutine(self._page(cookie, _address(request)))

        def answer(result: tuple[int, bytes]) -> None:
            code, body = result
            if not request.finished:
                request.setResponseCode(code)
                request.write(body)
                request.finish()

        def failed(failure: Any) -> None:
            self._log.failure("the sharing page failed", failure)
            if not request.finished:
                request.setResponseCode(500)
                request.write(self._message("The sharing page is unavailable right now."))
                request.finish()

        d.addCallbacks(answer, failed)
        return NOT_DONE_YET

    async def _page(self, cookie: str, address: str) -> tuple[int, bytes]:
        now_ms = self._clock.seconds() * 1000
        share, why = await share_from_cookie(self._store, self._invite_cookies, cookie, now_ms)
        if share is None:
            self._log.info("sharing page for {address} refused: {why}", address=address,
                           why=why)
            return 404, self._message(EXPIRED if "expired" in why else NOT_VALID)
        span = window(share, now_ms)
        state = span.state(now_ms)
        if state != "open":
            return 404, self._message(NOT_YET if state == "early" else EXPIRED)
        node = await self._store.get(share["nodeid"])
        if node is None or node.get("type") != "node":
            return 404, self._message(NOT_VALID)
        bits = share_bits(share)
        guest = share.get("guestName") if isinstance(share.get("guestName"), str) else ""
        bootstrap = {
            "title": self._title, "cookie": cookie, "nodeid": node["_id"],
            "deviceName": str(node.get("name", "")), "guestName": guest,
            "terminal": bool(bits & SHARE_TERMINAL), "files": bool(bits & SHARE_FILES),
            "desktop": bool(bits & SHARE_DESKTOP), "viewOnly": share.get("viewOnly") is True,
            "start": span.start, "end": span.end}
        self._log.info("sharing page of share {share_id} for {address}",
                       share_id=share["publicid"], address=address)
        return 200, self._app_page(bootstrap)

    def _app_page(self, bootstrap: dict[str, Any]) -> bytes:
        folder = self._web_dir if self._web_dir is not None else find_web_dir()
        path = os.path.join(folder, "sharing.html") if folder else ""
        if not path or not os.path.isfile(path):
            return self._message(_NO_APP)
        with open(path, encoding="utf-8") as f:
            template = f.read()
        noscript = "<p>This page needs JavaScript.</p>"
        return (template.replace("{{title}}", html.escape(self._title))
                .replace("{{bootstrap}}", json_for_html(bootstrap))
                .replace("{{noscript}}", noscript)).encode("utf-8")

    def _message(self, message: str) -> bytes:
        return _MESSAGE_PAGE.format(title=html.escape(self._title),
                                    message=html.escape(message)).encode("utf-8")

    render_HEAD = render_GET


def _address(request: Request) -> str:
    return str(getattr(request.getClientAddress(), "host", ""))
