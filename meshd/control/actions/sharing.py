"""Guest device sharing: ``deviceShares``, ``createDeviceShareLink``, ``removeDeviceShare``
(spec control-protocol §7.4; meshctrl ``devicesharing``).  The share record, its link and
its validity window are described in :mod:`meshd.sharing`; the guest's way in is the relay
(:mod:`meshd.relay.guest`) and the page ``/sharing`` (:mod:`meshd.web.sharing`).

All three need, on the device, remote control and the guest-sharing right and no limited
input (full rights pass); sharing a terminal, desktop or files also needs the absence of
NOTERMINAL, NODESKTOP or NOFILES.  Unlike MeshCentral 1.1.55, which answers "Invalid node
id" and "Access denied" under the action ``deviceShares`` whatever was asked, the answers
come under the action asked (meshctrl prints them the same way).

``createDeviceShareLink`` ``{nodeid, guestname, p, consent, viewOnly?, port?}`` plus one of

* ``expire: 0`` — unlimited (meshctrl without times);
* ``expire: <minutes>`` — from now for that long;
* ``start, end`` — UTC seconds (meshctrl ``--start/--end/--duration``);
* ``start, expire: <minutes>, recurring: 1|2`` — every day / week from ``start``.

The answer is the request itself with ``nodeid`` in full, ``start``/``expire`` turned into
the share's milliseconds, ``publicid``, ``url`` and ``result:"OK"``, as MeshCentral sends
it.  Before it (events first, as for every action here) go ``addedDeviceShare`` (msgid 101
with the window, 131 unlimited, 138/139 recurring) and ``deviceShareUpdate`` (not logged;
unlike MeshCentral, without the links, which only their maker is shown).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from meshd.control.actions._util import (
    DOMAIN,
    full_id,
    in_domain,
    node_with_rights,
    valid_int,
    valid_str,
)
from meshd.control.hub import node_targets
from meshd.control.rights import MESHRIGHT_ADMIN, MESHRIGHT_REMOTEVIEWONLY
from meshd.control.session import Call
from meshd.sharing import may_share, public_id, share_cookie_payload
from meshd.store.interface import Document

MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z: start/end beyond this are not times
MAX_MINUTES = 100 * 366 * 24 * 60
_HIDDEN = ("_id", "domain", "nodeid", "type", "xmeshid")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _node_id(cmd: dict[str, Any]) -> tuple[Optional[str], str]:
    node_id = cmd.get("nodeid")
    if not valid_str(node_id, 8, 128):
        return None, "Invalid node id"
    node_id = full_id("node", node_id)
    if not in_domain(node_id, "node"):
        return None, "Invalid domain"
    return node_id, ""


async def _share_node(call: Call, bits: int = 0
                      ) -> tuple[Optional[Document], Optional[Document], int, str]:
    """(node, group, rights, "") or (None, None, 0, error) for the sharing actions."""
    node_id, error = _node_id(call.command)
    if node_id is None:
        return None, None, 0, error
    access = await call.access()
    node, mesh, rights = await node_with_rights(call.store, access, node_id)
    if node is None:
        return None, None, 0, "Invalid node id"
    if not may_share(rights, bits):
        return None, None, 0, "Access denied"
    return node, mesh, rights, ""


async def _live_shares(call: Call, node_id: str) -> list[Document]:
    """The device's shares; those past their expiry are deleted on the way."""
    now_ms = call.hub.now() * 1000
    shares = []
    for share in await call.store.find_by_node("deviceshare", [node_id], DOMAIN):
        expire = share.get("expireTime")
        if isinstance(expire, (int, float)) and expire < now_ms:
            await call.store.remove(share["_id"])
        else:
            shares.append(share)
    return shares


def _view(share: Document, with_url: bool) -> Document:
    view = {k: v for k, v in share.items() if k not in _HIDDEN}
    if not with_url:
        view.pop("url", None)
    return view


async def device_shares(call: Call) -> None:
    """``{nodeid}`` → ``{action, nodeid, deviceShares:[…]}`` (links of others lose ``url``)."""
    node, _mesh, _rights, error = await _share_node(call)
    if node is None:
        return call.result(error)
    shown = [_view(share, share.get("userid") == call.user_id)
             for share in await _live_shares(call, node["_id"])]
    call.send({"action": "deviceShares", "nodeid": node["_id"], "deviceShares": shown})


async def remove_device_share(call: Call) -> None:
    """``{nodeid, publicid}`` → ``{…, removed}`` then ``OK`` or
    ``Invalid device share identifier.``; live guest sessions of the share are closed by
    the relay when it hears the event (``server-shareremove``)."""
    if not valid_str(call.command.get("publicid"), 1, 128):
        return call.result("Invalid public id")
    node, mesh, _rights, error = await _share_node(call)
    if node is None:
        return call.result(error)
    public = call.command["publicid"]
    removed = None
    for share in await _live_shares(call, node["_id"]):
        if share.get("publicid") == public:
            await call.store.remove(share["_id"])
            removed = share
    if call.responseid is not None:
        call.send({"action": "removeDeviceShare", "responseid": call.responseid,
                   "nodeid": node["_id"], "publicid": public, "removed": removed})
    if removed is None:
        return call.result("Invalid device share identifier.")
    call.publish(node_targets(node, mesh, ["server-users", "server-shareremove",
                                           call.user_id]), {
        "etype": "node", **call.actor(), "nodeid": node["_id"], "action": "removedDeviceShare",
        "msg": "Removed Device Share", "msgid": 102, "msgArgs": [removed.get("guestName")],
        "publicid": public})
    call.result("OK")


def _create_error(cmd: dict[str, Any]) -> str:
    """The first thing wrong with a ``createDeviceShareLink`` request (MeshCentral's texts
    and order), or ""."""
    _node, error = _node_id(cmd)
    if error:
        return error
    expire, start, end = cmd.get("expire"), cmd.get("start"), cmd.get("end")
    recurring, port = cmd.get("recurring"), cmd.get("port")
    if not valid_str(cmd.get("guestname"), 1, 128):
        return "Invalid guest name"
    if expire is not None and not (_number(expire) and 0 <= expire <= MAX_MINUTES):
        return "Invalid expire time"
    if start is not None and not (_number(start) and 0 <= start <= MAX_SECONDS):
        return "Invalid start time"
    if end is not None and not (_number(end) and 0 <= end <= MAX_SECONDS):
        return "Invalid end time"
    if not valid_int(cmd.get("consent"), 0, 256):
        return "Invalid flags"
    if not valid_int(cmd.get("p"), 1, 31):
        return "Invalid protocol"
    if recurring is not None and not valid_int(recurring, 1, 2):
        return "Invalid recurring value"
    if port is not None and not valid_int(port, 1, 65535):
        return "Invalid port value"
    if recurring is not None and (end is not None or start is None or expire is None
                                  or expire <= 0):
        return "Invalid recurring command"
    if expire is None and (start is None or end is None or start > end):
        return "No time specified"
    return ""


async def create_device_share_link(call: Call) -> None:
    """A guest link to one device (see the module docstring)."""
    cmd = call.command
    error = _create_error(cmd)
    if error:
        return call.result(error)
    bits: int = cmd["p"]
    node, mesh, rights, error = await _share_node(call, bits)
    if node is None:
        return call.result(error)
    view_only = cmd.get("viewOnly") is True or (
        rights != MESHRIGHT_ADMIN and bool(rights & MESHRIGHT_REMOTEVIEWONLY))

    now_ms = int(call.hub.now() * 1000)
    start_ms: Optional[int] = None
    expire_ms: Optional[int] = None
    duration: Optional[float] = None
    recurring = cmd.get("recurring")
    if recurring is not None:
        start_ms, duration = int(cmd["start"] * 1000), cmd["expire"]
    elif cmd.get("expire") is not None:
        if cmd["expire"] != 0:
            start_ms, expire_ms = now_ms, now_ms + int(60000 * cmd["expire"])
    else:
        start_ms, expire_ms = int(cmd["start"] * 1000), int(cmd["end"] * 1000)

    public = public_id(call.hub.random)
    while await call.store.get("deviceshare-" + public) is not None:
        public = public_id(call.hub.random)
    cookie = await call.hub.invite_cookies.encode(share_cookie_payload(public, expire_ms))
    url = f"{call.hub.public_url()}/sharing?c={cookie}"

    reply = dict(cmd)
    reply["nodeid"] = node["_id"]
    if start_ms is not None and expire_ms is not None:
        reply["start"], reply["expire"] = start_ms, expire_ms
    elif start_ms is not None:
        reply["start"] = start_ms
    else:
        reply.pop("expire", None)
    if view_only:
        reply["viewOnly"] = True
    reply["url"], reply["publicid"] = url, public
    if call.responseid is not None:
        reply["result"] = "OK"

    share: Document = {
        "_id": "deviceshare-" + public, "type": "deviceshare", "xmeshid": node.get("meshid"),
        "nodeid": node["_id"], "p": bits, "domain": DOMAIN, "publicid": public,
        "userid": call.user_id, "guestName": cmd["guestname"], "consent": cmd["consent"],
        "url": url}
    if valid_int(cmd.get("port"), 1, 65535):
        share["port"] = cmd["port"]
    if start_ms is not None and expire_ms is not None:
        share["startTime"], share["expireTime"] = start_ms, expire_ms
    elif start_ms is not None:
        share["startTime"], share["duration"] = start_ms, duration
    if recurring is not None:
        share["recurring"] = recurring
    if view_only:
        share["viewOnly"] = True
    await call.store.set(share)

    guest = cmd["guestname"]
    targets = node_targets(node, mesh, ["server-users", call.user_id])
    event: dict[str, Any] = {"etype": "node", **call.actor(), "meshid": node.get("meshid"),
                             "nodeid": node["_id"], "action": "addedDeviceShare"}
    if recurring == 1:
        event.update(msg=f"Added device share {guest} recurring daily.", msgid=138,
                     msgArgs=[guest])
    elif recurring == 2:
        event.update(msg=f"Added device share {guest} recurring weekly.", msgid=139,
                     msgArgs=[guest])
    elif expire_ms is not None:
        event.update(msg=f"Added device share: {guest}.", msgid=101,
                     msgArgs=[guest, f"DATETIME:{start_ms}", f"DATETIME:{expire_ms}"])
    else:
        event.update(msg=f"Added device share {guest} with unlimited time.", msgid=131,
                     msgArgs=[guest])
    call.publish(targets, event)
    call.publish(targets, {
        "etype": "node", "nodeid": node["_id"], "action": "deviceShareUpdate",
        "deviceShares": [_view(s, False) for s in await _live_shares(call, node["_id"])],
        "nolog": 1})
    call.send(reply)
