"""Guest device-sharing links: the share record, its link cookie, when it is valid, and
whether its creator may still share (spec control-protocol §7.4, relay.md §3.5–§3.7, §7.2).

A share is created by ``createDeviceShareLink`` and stored as MeshCentral stores it::

    {_id: "deviceshare-<publicid>", type: "deviceshare", xmeshid, nodeid, domain, p,
     publicid, userid, guestName, consent, url[, port][, startTime, expireTime]
     [, startTime, duration, recurring][, viewOnly]}

``p`` is a bit field of what the guest may open (1 terminal, 2 desktop, 4 files, 8 HTTP,
16 HTTPS); times are milliseconds since the epoch, ``duration`` minutes.  A share with
neither ``startTime`` nor ``expireTime`` never expires; a recurring one (1 daily, 2 weekly)
is valid for ``duration`` minutes from ``startTime`` every day or week.

The link is ``https://host:port/sharing?c=<cookie>``: ``{a:6, pid[, e]}`` (``e`` = the
expiry, when fixed) sealed with the server's invitation-link key, so it is not a login
cookie and opens nothing but this share.  The guest presents the same cookie to the relay
(``/meshrelay.ashx?c=…``), which checks the stored record every time: a removed share opens
nothing, whatever the cookie says.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Callable, Optional

from meshd.control.rights import (
    MESHRIGHT_ADMIN,
    MESHRIGHT_DESKLIMITEDINPUT,
    MESHRIGHT_GUESTSHARING,
    MESHRIGHT_NODESKTOP,
    MESHRIGHT_NOFILES,
    MESHRIGHT_NOTERMINAL,
    MESHRIGHT_REMOTECONTROL,
)
from meshd.store.interface import Document

SHARE_TERMINAL = 1
SHARE_DESKTOP = 2
SHARE_FILES = 4
SHARE_HTTP = 8
SHARE_HTTPS = 16
SHARE_ALL = 31

SHARE_COOKIE = 6  # MeshCentral's "new style" sharing cookie: a pointer to the record
RECURRING_PERIOD_MS = {1: 24 * 3600 * 1000, 2: 7 * 24 * 3600 * 1000}  # daily, weekly

#: Relay protocols a share opens, by share bit (relay.md §7.2).
_USAGES = ((SHARE_TERMINAL, (1, 6, 8, 9)), (SHARE_DESKTOP, (2,)), (SHARE_FILES, (5, 10)))
#: The "no" right that forbids sharing what a share bit opens.
_NOT_RIGHTS = ((SHARE_TERMINAL, MESHRIGHT_NOTERMINAL), (SHARE_DESKTOP, MESHRIGHT_NODESKTOP),
               (SHARE_FILES, MESHRIGHT_NOFILES))


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def share_bits(share: Document) -> int:
    p = share.get("p")
    return p & SHARE_ALL if isinstance(p, int) and not isinstance(p, bool) else 0


def usages(bits: int) -> list[int]:
    """The relay protocols a guest of a share with these bits may open, in order."""
    found: list[int] = []
    for bit, protocols in _USAGES:
        if bits & bit:
            found.extend(protocols)
    return found


def may_share(rights: int, bits: int) -> bool:
    """May a user with these device rights share these things (and keep them shared)?

    Remote control and the guest-sharing right, no limited input, and not the "no"
    right of anything shared; full rights may share anything."""
    if rights == MESHRIGHT_ADMIN:
        return True
    if not rights & MESHRIGHT_REMOTECONTROL or not rights & MESHRIGHT_GUESTSHARING \
            or rights & MESHRIGHT_DESKLIMITEDINPUT:
        return False
    return not any(bits & bit and rights & no for bit, no in _NOT_RIGHTS)


def public_id(random: Callable[[int], bytes]) -> str:
    """A share's public id, as MeshCentral makes them: 9 random bytes in base64, ``/``→``@``."""
    return base64.b64encode(random(9)).decode("ascii").replace("/", "@")


def relay_id(random: Callable[[int], bytes]) -> str:
    """A relay session id made by the server (9 random bytes, ``+``→``@``, ``/``→``$``)."""
    text = base64.b64encode(random(9)).decode("ascii")
    return text.replace("+", "@").replace("/", "$")


@dataclass(frozen=True)
class Window:
    """When a share is usable now: ``start``/``end`` in ms (None: unbounded)."""

    start: Optional[float]
    end: Optional[float]

    def state(self, now_ms: float) -> str:
        """``"early"``, ``"open"`` or ``"expired"`` at ``now_ms``."""
        if self.end is not None and now_ms >= self.end:
            return "expired"
        if self.start is not None and now_ms < self.start:
            return "early"
        return "open"


def window(share: Document, now_ms: float) -> Window:
    """The share's validity window that contains ``now_ms``, or the next one (recurring
    shares: the current day's or week's occurrence if it has not ended yet)."""
    start = _number(share.get("startTime"))
    expire = _number(share.get("expireTime"))
    duration = _number(share.get("duration"))
    period = RECURRING_PERIOD_MS.get(share.get("recurring"))  # type: ignore[arg-type]
    if period is not None and start is not None and duration is not None:
        length = duration * 60000
        if now_ms >= start:
            passed = int((now_ms - start) // period)
            if now_ms - (start + passed * period) >= length:
                passed += 1
            start += passed * period
        return Window(start, start + length)
    if start is not None and duration is not None and expire is None:
        return Window(start, start + duration * 60000)
    return Window(start, expire)


def share_cookie_payload(public: str, expire_ms: Optional[float]) -> dict[str, Any]:
    payload: dict[str, Any] = {"a": SHARE_COOKIE, "pid": public}
    if expire_ms is not None:
        payload["e"] = int(expire_ms)
    return payload


async def share_from_cookie(store: Any, invite_cookies: Any, text: Any, now_ms: float
                            ) -> tuple[Optional[Document], str]:
    """(the share a link cookie points to, "") or (None, why it opens nothing).

    The window is not checked here (see :func:`window`); an expiry sealed in the cookie
    is, so a link past its end is refused without a database read."""
    if not isinstance(text, str) or not text:
        return None, "no sharing cookie"
    payload = await invite_cookies.decode(text, 0)
    if payload is None or payload.get("a") != SHARE_COOKIE:
        return None, "not a sharing link of this server"
    pid = payload.get("pid")
    if not isinstance(pid, str) or not 1 <= len(pid) <= 128:
        return None, "not a sharing link of this server"
    sealed = _number(payload.get("e"))
    if sealed is not None and sealed <= now_ms:
        return None, "the sharing link has expired"
    share = await store.get("deviceshare-" + pid)
    if share is None or share.get("type") != "deviceshare" or share.get("publicid") != pid \
            or not isinstance(share.get("nodeid"), str) or share.get("domain", "") != "":
        return None, "the sharing link was removed"
    return share, ""
