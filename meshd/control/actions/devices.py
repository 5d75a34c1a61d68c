"""Devices: listing, agentless devices, moves, edits, removal, and requests to agents
(spec control-protocol §7.4, §10.3).

A device is ``{type:"node", _id:"node//<64 chars>", meshid, mtype, icon, name, host,
domain, agent?:{id, caps}, intelamt?:{user, pass, tls}, links?:{<userid>:{rights}}}``;
``conn``/``pwr``/``agct`` are never stored: they come from presence when listing.

Requests for an agent (``runcommands``, routed ``msg``, ``toast``, ``poweraction``) are
sent through the agent manager with this session's id; the agent's answer comes back on
the event bus (``"agent:"+nodeid``) and only to the session that asked.  Intel AMT power
actions (``poweraction`` 302/308/310) go to the device's CIRA connection instead
(:mod:`meshd.mps.amtpower`).  Unlike MeshCentral 1.1.55, moving a device between groups
of different types answers an error instead of nothing (§12.4), and an unknown or hidden
device is "Device not found" rather than a hint that it exists.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine, Optional
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.agent.identity import encode_id
from meshd.control.actions._util import (
    DOMAIN,
    full_id,
    in_domain,
    member_ids,
    mesh_by_name,
    short_id,
    node_with_rights,
    unlink_from_members,
    valid_email,
    valid_int,
    valid_str,
    valid_str_list,
    visible_mesh,
    visible_meshes,
)
from meshd.control.hub import mesh_targets, node_targets
from meshd.control.rights import (
    GROUP_ONLY_RIGHTS,
    MESHRIGHT_ADMIN,
    MESHRIGHT_AGENTCONSOLE,
    MESHRIGHT_CHATNOTIFY,
    MESHRIGHT_DEVICEDETAILS,
    MESHRIGHT_EDITMESH,
    MESHRIGHT_MANAGECOMPUTERS,
    MESHRIGHT_MANAGEUSERS,
    MESHRIGHT_REMOTECOMMAND,
    MESHRIGHT_REMOTECONTROL,
    MESHRIGHT_REMOTEVIEWONLY,
    MESHRIGHT_RESETOFF,
    MESHRIGHT_UNINSTALL,
    MESHRIGHT_WAKEDEVICE,
)
from meshd.control.session import Call
from meshd.control.views import dumps, safe_node, safe_user
from meshd.presence import CONN_AGENT
from meshd.store.interface import Document

LOCAL_DEVICE_TYPES = (4, 6, 29)  # Windows, Linux, macOS
WINDOWS_AGENT_IDS = range(1, 5)
_log = Logger()


def _tag(call: Call) -> dict[str, Any]:
    return {"tag": call.command["tag"]} if "tag" in call.command else {}


def _live(call: Call, node: Document) -> Document:
    """The device as a client sees it: no secrets, live connectivity added."""
    return _add_live(call.hub.presence, safe_node(node))


def _add_live(presence: Any, view: Document) -> Document:
    """Add ``conn``/``pwr``/``agct`` from presence: O(1) per device (a dict look-up),
    and the agent's connection only for devices that are connected."""
    conn = presence.state(view["_id"])
    if conn:
        view["conn"] = conn
        view["pwr"] = 1
        agent = presence.get(view["_id"], CONN_AGENT)
        if agent is not None:
            view["agct"] = int(agent.since * 1000)
    return view


async def _name_links(store: Any, nodes: list[Document]) -> None:
    """Give each device link a display name (the user's real name, else name).

    The views share their ``links`` with the stored records (views are shallow), so a
    view whose links get a name gets its own copy of ``links`` and of each named link."""
    wanted = {key for node in nodes if isinstance(node.get("links"), dict)
              for key, link in node["links"].items()
              if key.startswith("user/") and isinstance(link, dict) and not link.get("name")}
    if not wanted:
        return
    names = {u["_id"]: u.get("realname") or u.get("name")
             for u in await store.get_many(sorted(wanted))}
    for node in nodes:
        links = node.get("links")
        if not isinstance(links, dict) or not any(
                isinstance(link, dict) and not link.get("name") and names.get(key)
                for key, link in links.items()):
            continue
        node["links"] = {key: ({**link, "name": names[key]}
                               if isinstance(link, dict) and not link.get("name")
                               and names.get(key) else link)
                         for key, link in links.items()}


async def nodes(call: Call) -> None:
    """``{meshid? | meshname?, id?}`` → ``{action:"nodes", responseid, nodes:{meshid:[node…]},
    tag}``; without a group: every visible group plus devices linked directly."""
    cmd = call.command
    access = await call.access()
    mesh_id = cmd.get("meshid")
    error = None
    if mesh_id is None and isinstance(cmd.get("meshname"), str):
        mesh_id, error = await mesh_by_name(call.store, access, cmd["meshname"])
        if mesh_id is None and error is None:
            error = "Invalid group id"
    extra_nodes: list[str] = []
    mesh_ids: list[str] = []
    if error is None:
        if mesh_id is None:
            mesh_ids = [m["_id"] for m in await visible_meshes(call.store, access)]
            extra_nodes = access.linked_ids("node/")
        elif not valid_str(mesh_id, 0, 128):
            error = "Invalid group id"
        else:
            mesh_id = full_id("mesh", mesh_id)
            if await visible_mesh(call.store, access, mesh_id) is None:
                error = "Invalid group id"
            mesh_ids = [mesh_id]
    if error is not None:
        if call.responseid is not None:
            call.respond(result=error)
        return
    only = cmd.get("id") if isinstance(cmd.get("id"), str) else None
    if only is not None:
        grouped = await _listing(call, mesh_ids, extra_nodes, full_id("node", only))
        call.respond(nodes=grouped, **_tag(call))
        return
    # Every other listing is built once for all the concurrent requests that want the
    # same groups and devices, and sent as the same text.
    key = (DOMAIN, tuple(mesh_ids), tuple(extra_nodes))
    text = await _cached_listing(call.hub, key, mesh_ids, extra_nodes)
    head: dict[str, Any] = {"action": "nodes"}
    if call.responseid is not None:
        head["responseid"] = call.responseid
    tail = f',"tag":{dumps(call.command["tag"])}' if "tag" in call.command else ""
    call.send_text(f'{dumps(head)[:-1]},"nodes":{text}{tail}}}')


#: Listings kept (one per distinct set of groups and devices asked for).
LISTING_CACHE_SIZE = 64


async def _cached_listing(hub: Any, key: Any, mesh_ids: list[str],
                          extra_nodes: list[str]) -> str:
    """The encoded listing for ``key``: reused while no document changed in the store
    and no device connected or disconnected (both checked before building, so a kept
    listing is never older than what its labels say); else built, by one
    :class:`Coalescer` run for all concurrent callers."""
    marker = await hub.store.change_marker()
    live = getattr(hub.presence, "version", None)
    cache = hub.listing_cache
    if marker is not None and live is not None:
        kept = cache.get(key)
        if kept is not None and kept[0] == marker and kept[1] == live:
            cache.move_to_end(key)
            text: str = kept[2]
            return text
    listings = hub.listings
    coalescer = listings.get(key)
    if coalescer is None:
        def idle(done: Coalescer) -> None:
            if listings.get(key) is done:
                del listings[key]

        coalescer = listings[key] = Coalescer(
            lambda: _encoded_listing(hub, mesh_ids, extra_nodes), idle)
    text = await coalescer.run()
    if marker is not None and live is not None:
        cache[key] = (marker, live, text)
        cache.move_to_end(key)
        while len(cache) > LISTING_CACHE_SIZE:
            cache.popitem(last=False)
    return text


class Coalescer:
    """One piece of work shared by concurrent callers, without handing out stale data.

    A caller that comes while no run is going starts one; a caller that comes during a
    run waits for the *next* run, which starts when the current one ends and serves
    everyone who came meanwhile.  It never joins the current run: that run may have
    read the store before the caller came, and so miss a change the caller already saw
    acknowledged.  Under load, N identical requests cost about two runs instead of N.
    ``idle(self)`` is called when no run is going and nobody waits.
    """

    def __init__(self, work: Callable[[], Coroutine[Any, Any, Any]],
                 idle: Callable[["Coalescer"], Any]) -> None:
        self._work = work
        self._idle = idle
        self._running = False
        self._waiting: list[Deferred[Any]] = []

    def run(self) -> "Deferred[Any]":
        waiter: Deferred[Any] = Deferred()
        self._waiting.append(waiter)
        if not self._running:
            self._start()
        return waiter

    def _start(self) -> None:
        waiters, self._waiting = self._waiting, []
        self._running = True

        def done(result: Any) -> None:
            self._running = False
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            if self._running:  # a waiter's next request already started a run
                return
            if self._waiting:
                self._start()
            else:
                self._idle(self)

        Deferred.fromCoroutine(self._work()).addBoth(done)


async def _encoded_listing(hub: Any, mesh_ids: list[str], extra_nodes: list[str]) -> str:
    return dumps(await _listing_of(hub, mesh_ids, extra_nodes, None))


async def _listing(call: Call, mesh_ids: list[str], extra_nodes: list[str],
                   only: Optional[str]) -> dict[str, list[Document]]:
    return await _listing_of(call.hub, mesh_ids, extra_nodes, only)


async def _listing_of(hub: Any, mesh_ids: list[str], extra_nodes: list[str],
                      only: Optional[str]) -> dict[str, list[Document]]:
    """``{meshid: [device view…]}`` of the groups' devices plus the linked devices,
    ordered by group then name.  The records are read once and never changed (views are
    shallow copies), so the views may be shared."""
    store = hub.store
    found = list(await store.find_nodes_by_mesh(mesh_ids, DOMAIN)) if mesh_ids else []
    if extra_nodes:
        seen = {n["_id"] for n in found}
        wanted = [i for i in extra_nodes if i not in seen]
        if wanted:
            found += [n for n in await store.get_many(wanted) if n.get("type") == "node"]
    if only is not None:
        found = [n for n in found if n["_id"] == only]
    order = {mid: index for index, mid in enumerate(mesh_ids)}
    last = len(order)

    def sort_key(node: Document) -> tuple[int, str, str]:
        name = node.get("name", "")
        return (order.get(node.get("meshid", ""), last),
                (name if isinstance(name, str) else str(name)).lower(), node["_id"])

    found.sort(key=sort_key)
    presence = hub.presence
    views = [_add_live(presence, safe_node(node)) for node in found]
    await _name_links(store, views)
    grouped: dict[str, list[Document]] = {}
    for view in views:
        grouped.setdefault(view.pop("meshid", ""), []).append(view)
    return grouped


def _new_device_checks(call: Call) -> Optional[str]:
    cmd = call.command
    if not valid_str(cmd.get("meshid"), 8, 134):
        return "Invalid device group id"
    if not valid_str(cmd.get("devicename"), 1, 256):
        return "Invalid devicename"
    if not valid_str(cmd.get("hostname"), 1, 256):
        return "Invalid hostname"
    return None


async def _group_for_new_device(call: Call, mtype: int, wrong_type: str
                                ) -> tuple[Optional[Document], Optional[str]]:
    access = await call.access()
    mesh_id = full_id("mesh", call.command["meshid"])
    mesh = await visible_mesh(call.store, access, mesh_id)
    if mesh is None:
        return None, "Unknown device group"
    if mesh.get("mtype") != mtype:
        return None, wrong_type
    if not access.mesh_rights(mesh) & MESHRIGHT_MANAGECOMPUTERS:
        return None, "Permission denied"
    if not in_domain(mesh_id, "mesh"):
        return None, "Invalid domain"
    return mesh, None


def _device_error(call: Call, error: str) -> None:
    # MeshCentral reports these errors under another action name (spec §12.3); meshctrl
    # and the web app expect it there.
    if call.responseid is not None:
        call.send({"action": "changeDeviceMesh", "responseid": call.responseid,
                   "result": error})


def _announce_new_device(call: Call, node: Document, mesh: Document) -> None:
    call.publish(mesh_targets(mesh, [node["_id"]]), {
        "etype": "node", **call.actor(), "action": "addnode", "node": safe_node(node),
        "msgid": 84, "msgArgs": [node["name"], mesh.get("name")],
        "msg": f"Added device {node['name']} to device group {mesh.get('name')}"})


async def addlocaldevice(call: Call) -> None:
    """``{meshid, devicename, hostname, type: 4|6|29}`` → ``result:"ok"``."""
    cmd = call.command
    error = _new_device_checks(call)
    if error is None and (not valid_int(cmd.get("type")) or cmd["type"] not in LOCAL_DEVICE_TYPES):
        error = "Invalid type"
    mesh = None
    if error is None:
        mesh, error = await _group_for_new_device(call, 3,
                                                  "Local device agentless mesh only allowed")
    if error is not None or mesh is None:
        return _device_error(call, error or "Unknown device group")
    node: Document = {"type": "node", "_id": f"node/{DOMAIN}/{encode_id(call.hub.random(48))}",
                      "meshid": mesh["_id"], "mtype": 3, "icon": 1, "name": cmd["devicename"],
                      "host": cmd["hostname"], "domain": DOMAIN,
                      "agent": {"id": cmd["type"], "caps": 0}}
    await call.store.set(node)
    _announce_new_device(call, node, mesh)
    call.result("ok")


async def addamtdevice(call: Call) -> None:
    """``{meshid, devicename, hostname, amtusername, amtpassword, amttls: 0|1}`` → ``ok``."""
    cmd = call.command
    error = _new_device_checks(call)
    tls = cmd.get("amttls")
    if tls in ("0", "1"):
        tls = int(tls)
    if error is None:
        if not valid_str(cmd.get("amtusername", ""), 0, 16):
            error = "Invalid amtusername"
        elif not valid_str(cmd.get("amtpassword", ""), 0, 16):
            error = "Invalid amtpassword"
        elif tls not in (0, 1) or isinstance(tls, bool):
            error = "Invalid amttls"
    mesh = None
    if error is None:
        mesh, error = await _group_for_new_device(call, 1,
                                                  "Intel AMT agentless mesh only allowed")
    if error is not None or mesh is None:
        return _device_error(call, error or "Unknown device group")
    amt: dict[str, Any] = {"user": cmd.get("amtusername", ""), "pass": cmd.get("amtpassword", ""),
                           "tls": tls}
    if valid_int(cmd.get("state"), 0, 3):
        amt["state"] = cmd["state"]
    for field, high in (("ver", 16), ("hash", 256), ("realm", 256)):
        if valid_str(cmd.get(field), 1, high):
            amt[field] = cmd[field]
    node: Document = {"type": "node", "_id": f"node/{DOMAIN}/{encode_id(call.hub.random(48))}",
                      "meshid": mesh["_id"], "mtype": 1, "icon": 1, "name": cmd["devicename"],
                      "host": cmd["hostname"], "domain": DOMAIN, "intelamt": amt}
    await call.store.set(node)
    _announce_new_device(call, node, mesh)
    call.result("ok")


async def change_device_mesh(call: Call) -> None:
    """``{nodeids:[…], meshid | meshname}`` → one ``result`` per device: ``ok``,
    ``Device not found``, ``Device already in correct group``, ``Permission denied``,
    ``Device groups are of different types``."""
    cmd = call.command
    access = await call.access()
    mesh_id = cmd.get("meshid")
    error = None
    if mesh_id is None and isinstance(cmd.get("meshname"), str):
        mesh_id, error = await mesh_by_name(call.store, access, cmd["meshname"])
    target: Optional[Document] = None
    if error is None:
        if not valid_str_list(cmd.get("nodeids"), 1, 256):
            error = "Invalid nodeids"
        elif not valid_str(mesh_id, 8, 134):
            error = "Invalid groupid"
        else:
            mesh_id = full_id("mesh", mesh_id)
            target = await visible_mesh(call.store, access, mesh_id)
            if target is None:
                error = "Unknown device group"
            elif not access.mesh_rights(target) & MESHRIGHT_MANAGECOMPUTERS:
                error = "Permission denied"
            elif not in_domain(mesh_id, "mesh"):
                error = "Invalid domain"
    if error is not None or target is None:
        return call.result(error or "Unknown device group")
    for raw_id in cmd["nodeids"]:
        node, source, rights = await node_with_rights(call.store, access, raw_id)
        if node is None:
            call.result("Device not found")
            continue
        if node.get("meshid") == target["_id"]:
            call.result("Device already in correct group")
            continue
        if source is None or source.get("mtype") != target.get("mtype"):
            call.result("Device groups are of different types")
            continue
        if not rights & MESHRIGHT_EDITMESH or not access.mesh_rights(target) & MESHRIGHT_EDITMESH:
            call.result("Permission denied")
            continue
        old_mesh_id = node["meshid"]
        node["meshid"] = target["_id"]
        await call.store.set(node)
        last = await call.store.get("lc" + node["_id"])
        if last is not None and last.get("meshid") != target["_id"]:
            last["meshid"] = target["_id"]
            await call.store.set(last)
        agent = call.hub.presence.get(node["_id"], CONN_AGENT)
        if agent is not None and hasattr(agent.handle, "mesh_key"):
            agent.handle.mesh_key = target["_id"]  # its later events name the new group
        call.publish(mesh_targets(target, [old_mesh_id, node["_id"]]), {
            "etype": "node", **call.actor(), "action": "nodemeshchange", "nodeid": node["_id"],
            "node": _live(call, node), "oldMeshId": old_mesh_id, "newMeshId": target["_id"],
            "msgid": 85, "msgArgs": [node.get("name"), target.get("name")],
            "msg": f"Moved device {node.get('name')} to group {target.get('name')}"})
        call.result("ok")


def _new_amt_credentials(node: Document, wanted: Any) -> bool:
    """Store ``{user, pass}`` as the device's Intel AMT credentials (what power actions
    over CIRA log in with) if they are usable and new; MeshCentral's ``changedevice``
    takes them the same way.  Only for devices that have Intel AMT."""
    amt = node.get("intelamt")
    if not isinstance(amt, dict) or not isinstance(wanted, dict):
        return False
    user, password = wanted.get("user"), wanted.get("pass")
    if not valid_str(user, 0, 64) or not valid_str(password, 0, 64) \
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
        return False
    if (user, password) == (amt.get("user"), amt.get("pass")):
        return False
    node["intelamt"] = {**amt, "user": user, "pass": password}
    return True


async def changedevice(call: Call) -> None:
    """``{nodeid, name?, desc?, icon?, host?, tags?, consent?, …port?,
    intelamt?:{user, pass}}`` → ``result:"ok"``."""
    cmd = call.command
    node_id = cmd.get("nodeid")
    if not valid_str(node_id, 1, 1024) or not in_domain(full_id("node", node_id), "node"):
        return call.result("Invalid nodeid")
    access = await call.access()
    node, mesh, rights = await node_with_rights(call.store, access, node_id)
    if node is None or not rights & MESHRIGHT_MANAGECOMPUTERS:
        return call.result("Access Denied")
    changes: list[str] = []
    if valid_int(cmd.get("icon"), 0, 50) and cmd["icon"] != node.get("icon"):
        node["icon"] = cmd["icon"]
        changes.append("icon")
    if valid_str(cmd.get("name"), 1, 256) and cmd["name"] != node.get("name"):
        node["name"] = cmd["name"]
        changes.append("name")
    if valid_str(cmd.get("host"), 0, 256) and cmd["host"] != node.get("host"):
        node["host"] = cmd["host"]
        changes.append("host")
    if valid_int(cmd.get("consent"), 0, 0xFFFFFFFF):
        old = node.get("consent")
        if cmd["consent"] == 0:
            node.pop("consent", None)
        else:
            node["consent"] = cmd["consent"]
        if old != node.get("consent"):
            changes.append("consent")
    for field, default in (("rdpport", 3389), ("rfbport", 5900), ("sshport", 22),
                           ("httpport", 80), ("httpsport", 443)):
        if valid_int(cmd.get(field), 1, 65535):
            if cmd[field] == default and field in node:
                del node[field]
            else:
                node[field] = cmd[field]
            changes.append(field)
    if valid_str(cmd.get("desc"), 0, 1024) and cmd["desc"] != node.get("desc"):
        node["desc"] = cmd["desc"]
        changes.append("description")
    if _new_amt_credentials(node, cmd.get("intelamt")):
        changes.append("Intel AMT credentials")
    tags = cmd.get("tags")
    if tags == "" and "tags" in node:
        del node["tags"]
        changes.append("tags")
    elif tags:
        if isinstance(tags, str) and len(tags) <= 4096:
            tags = tags.split(",")
        if isinstance(tags, list):
            cleaned = sorted({t.strip() for t in tags
                              if isinstance(t, str) and 0 < len(t.strip()) < 64})
            if cleaned != node.get("tags"):
                node["tags"] = cleaned
                changes.append("tags")
    if changes:
        await call.store.set(node)
        group = mesh.get("name") if mesh else ""
        call.publish(node_targets(node, mesh, [call.user_id]), {
            "etype": "node", **call.actor(), "action": "changenode", "nodeid": node["_id"],
            "msg": f"Changed device {node.get('name')} from group {group}: "
                   + ", ".join(changes),
            "node": _live(call, node), "msgid": 140,
            "msgArgs": [node.get("name"), group, ", ".join(changes)]})
    call.result("ok")


async def removedevices(call: Call) -> None:
    """``{nodeids:[…]}`` → one ``result`` per device: ``ok`` or ``Denied``."""
    cmd = call.command
    if not valid_str_list(cmd.get("nodeids"), 1, 1024):
        return call.result("Invalid nodeid")
    access = await call.access()
    for raw_id in cmd["nodeids"]:
        node_id = full_id("node", raw_id)
        if not in_domain(node_id, "node"):
            call.result("Invalid domain")
            continue
        node, mesh, rights = await node_with_rights(call.store, access, node_id)
        if node is None or not rights & MESHRIGHT_UNINSTALL:
            call.result("Denied")
            continue
        for member_id, member in await unlink_from_members(call.store, node, node_id):
            if member_id.startswith("user/"):
                call.hub.resubscribe(member_id)
                call.publish(["*", "server-users", member_id], {
                    "etype": "user", **call.actor(), "account": safe_user(member),
                    "action": "accountchange", "nolog": 1})
        # The event first: once the device is gone, it would reach nobody.
        call.publish(node_targets(node, mesh), {
            "etype": "node", **call.actor(), "action": "removenode", "nodeid": node_id,
            "msgid": 87, "msgArgs": [node.get("name"), mesh.get("name") if mesh else ""],
            "msg": f"Removed device {node.get('name')} from device group "
                   f"{mesh.get('name') if mesh else ''}"})
        await call.store.remove_many([prefix + node_id for prefix in (
            "", "if", "nt", "lc", "si", "al", "ra", "da", "pmt_")])
        await call.store.remove_node_events(node_id, DOMAIN)
        await call.store.remove_node_power_events(node_id)
        agent = call.hub.presence.get(node_id, CONN_AGENT)
        if agent is not None and hasattr(agent.handle, "close"):
            agent.handle.close()
        call.result("ok")


async def adddeviceuser(call: Call) -> None:
    """``{nodeid, usernames|userids|userid, rights, remove?}`` → ``result:"ok"``."""
    cmd = call.command
    if isinstance(cmd.get("userid"), str):
        cmd["userids"] = [cmd["userid"]]
    node_id = cmd.get("nodeid")
    if not valid_str(node_id, 1, 1024):
        return call.result("Invalid nodeid")
    if not valid_int(cmd.get("rights"), 0, MESHRIGHT_ADMIN) or cmd["rights"] & GROUP_ONLY_RIGHTS:
        return call.result("Invalid rights")
    if not valid_str_list(cmd.get("usernames"), 1, 128) and \
            not valid_str_list(cmd.get("userids"), 1, 128):
        return call.result("Invalid usernames")
    node_id = full_id("node", node_id)
    if not in_domain(node_id, "node"):
        return call.result("Invalid domain")
    access = await call.access()
    node, mesh, rights = await node_with_rights(call.store, access, node_id)
    if node is None:
        return call.result("Invalid nodeid")  # MeshCentral: no answer
    if not rights & MESHRIGHT_MANAGEUSERS:
        return call.result("Permission denied")  # MeshCentral: no answer
    granted: int = cmd["rights"]
    if rights != MESHRIGHT_ADMIN:
        granted &= rights  # nobody grants rights they do not hold
    members = await member_ids(call.store, cmd)
    remove = cmd.get("remove") is True
    targets = ["*", node.get("meshid", ""), node_id]
    node_changed = False
    for member_id in members:
        if not in_domain(member_id) or not member_id.startswith(("user/", "ugrp/")):
            continue
        member = await call.store.get(member_id)
        if member is None:
            continue
        targets.append(member_id)
        member_links = member.setdefault("links", {})
        node_links = node.setdefault("links", {})
        if remove:
            member_links.pop(node_id, None)
            node_links.pop(member_id, None)
            if not member_links:
                del member["links"]
            if not node_links:
                del node["links"]
        else:
            member_links[node_id] = {"rights": granted}
            node_links[member_id] = {"rights": granted}
        node_changed = True
        await call.store.set(member)
        name = member.get("name")
        if member_id.startswith("user/"):
            call.hub.resubscribe(member_id)
            msgid, verb = (81, "Removed") if remove or granted == 0 else (82, "Changed")
            call.publish(["*", "server-users", member_id], {
                "etype": "user", **call.actor(), "action": "accountchange", "msgid": msgid,
                "msgArgs": [name], "msg": f"{verb} user device rights for {name}",
                "account": safe_user(member), "nodeListChange": member_id})
        else:
            call.publish(["*", "server-ugroups", member_id], {
                "etype": "ugrp", "username": call.user.get("name"), "ugrpid": member_id,
                "name": name, "action": "usergroupchange", "links": member.get("links", {}),
                "msgid": 79, "msgArgs": [name], "msg": f"User group changed: {name}"})
    if node_changed:
        await call.store.set(node)
        msgid, verb = (81, "Removed") if remove or granted == 0 else (82, "Changed")
        call.publish(targets, {
            "etype": "node", **call.actor(), "action": "changenode", "nodeid": node_id,
            "msgid": msgid, "msgArgs": [node.get("name")],
            "msg": f"{verb} user device rights for {node.get('name')}",
            "node": _live(call, node)})
    call.result("ok")


# -- device details ------------------------------------------------------------------------

async def _details_node(call: Call) -> tuple[Optional[Document], int]:
    access = await call.access()
    node, _mesh, rights = await node_with_rights(call.store, access, call.command.get("nodeid"))
    return node, rights


async def getsysinfo(call: Call) -> None:
    """``{nodeid, nodeinfo?}`` → the stored system information (or ``noinfo``)."""
    node, rights = await _details_node(call)
    node_id = call.command.get("nodeid")
    if node is None or not rights & MESHRIGHT_DEVICEDETAILS:
        return call.send({"action": "getsysinfo", "nodeid": node_id, **_tag(call),
                          "noinfo": True, "result": "Invalid device id"})
    record = await call.store.get("si" + node["_id"])
    if record is None:
        return call.send({"action": "getsysinfo", "nodeid": node["_id"], **_tag(call),
                          "noinfo": True, "result": "Invalid device id"})
    reply: dict[str, Any] = {k: v for k, v in record.items()
                             if k not in ("_id", "type", "domain", "data", "nodeid")}
    if isinstance(record.get("data"), dict):  # meshd's agent manager nests the agent's data
        reply.update({k: v for k, v in record["data"].items() if k not in ("_id", "type")})
    if rights != MESHRIGHT_ADMIN:
        volumes = reply.get("hardware", {}).get("windows", {}).get("volumes") if isinstance(
            reply.get("hardware"), dict) and isinstance(reply["hardware"].get("windows"),
                                                        dict) else None
        if isinstance(volumes, dict):
            for volume in volumes.values():
                if isinstance(volume, dict):
                    volume.pop("recoveryPassword", None)
    reply.update({"action": "getsysinfo", "nodeid": node["_id"], **_tag(call)})
    if call.command.get("nodeinfo") is True:
        reply["node"] = _live(call, node)
        reply["rights"] = rights
    call.send(reply)


async def getnetworkinfo(call: Call) -> None:
    """``{nodeid}`` → ``{action, nodeid, updateTime, netif, netif2}`` (nulls when unknown)."""
    node, rights = await _details_node(call)
    if node is None or not rights & MESHRIGHT_DEVICEDETAILS:
        return call.send({"action": "getnetworkinfo", "nodeid": call.command.get("nodeid"),
                          **_tag(call), "noinfo": True, "result": "Invalid device id"})
    record = await call.store.get("if" + node["_id"])
    if record is None:
        return call.send({"action": "getnetworkinfo", "nodeid": node["_id"], "netif": None,
                          "netif2": None})
    call.send({"action": "getnetworkinfo", "nodeid": node["_id"],
               "updateTime": record.get("updateTime"), "netif": record.get("netif"),
               "netif2": record.get("netif2")})


async def lastconnect(call: Call) -> None:
    """``{nodeid}`` → ``{action, nodeid, time, addr}`` or ``noinfo``/``No data``."""
    node, _rights = await _details_node(call)
    node_id = call.command.get("nodeid")
    if node is None:
        return call.send({"action": "lastconnect", "nodeid": node_id, **_tag(call),
                          "noinfo": True, "result": "Invalid device id"})
    record = await call.store.get("lc" + node["_id"])
    if record is None:
        return call.send({"action": "lastconnect", "nodeid": node_id, **_tag(call),
                          "noinfo": True, "result": "No data"})
    call.send({"action": "lastconnect", "nodeid": node_id, "time": record.get("time"),
               "addr": record.get("addr")})


# -- requests for agents -------------------------------------------------------------------

async def runcommands(call: Call) -> None:
    """``{nodeids, type 0..4, cmds (≤65535), runAsUser 0..2, reply}`` → per device ``OK``
    (without ``reply``), ``Agent not connected``, ``Access denied``, ``Invalid nodeid``,
    ``Invalid command type``; with ``reply`` the agent's output arrives as
    ``{action:"msg", type:"runcommands", result, responseid, nodeid}``."""
    cmd = call.command
    if not valid_str_list(cmd.get("nodeids"), 1, 1024, 1000):
        return
    if not valid_int(cmd.get("type"), 0, 4):
        return call.result("Invalid command type")
    if not valid_str(cmd.get("cmds"), 0, 65535):
        return call.result("Invalid command")
    run_as = cmd.get("runAsUser") if valid_int(cmd.get("runAsUser"), 0, 2) else 0
    reply = cmd.get("reply") is True
    rid = call.responseid if isinstance(call.responseid, str) else None
    access = await call.access()
    for raw_id in cmd["nodeids"]:
        node_id = full_id("node", raw_id) if isinstance(raw_id, str) else ""
        if not in_domain(node_id, "node"):
            call.result("Invalid domain")
            continue
        node, mesh, rights = await node_with_rights(call.store, access, node_id)
        if node is None:
            call.result("Invalid nodeid")
            continue
        if cmd["type"] == 4:
            if rights & (MESHRIGHT_REMOTECONTROL | MESHRIGHT_AGENTCONSOLE) != \
                    MESHRIGHT_REMOTECONTROL | MESHRIGHT_AGENTCONSOLE:
                call.result("Access denied")
                continue
            call.session.watch_agent(node_id)
            sent = call.hub.send_to_agent(node_id, {
                "action": "msg", "type": "console", "value": cmd["cmds"], "rights": rights,
                "sessionid": call.session.session_id})
            call.result("OK" if sent else "Agent not connected")
            continue
        if not rights & MESHRIGHT_REMOTECOMMAND:
            call.result("Access denied")
            continue
        agent_id = (node.get("agent") or {}).get("id") if isinstance(node.get("agent"), dict) \
            else None
        kind = cmd["type"]
        if isinstance(agent_id, int) and agent_id in WINDOWS_AGENT_IDS:
            kind = 1 if kind == 0 else kind
            ok = kind in (1, 2)
        else:
            kind = 3 if kind == 0 else kind
            ok = kind == 3
        if not ok:
            call.result("Invalid command type")
            continue
        call.session.watch_agent(node_id)
        sent = call.hub.send_to_agent(node_id, {
            "action": "runcommands", "type": kind, "cmds": cmd["cmds"], "runAsUser": run_as,
            "reply": reply, "responseid": rid, "sessionid": call.session.session_id})
        if not sent:
            call.result("Agent not connected")
            continue
        if not reply:
            call.result("OK")
        msgid = {1: 99, 2: 100}.get(kind, 24)
        call.publish(node_targets(node, mesh, ["server-users", call.user_id]), {
            "etype": "node", **call.actor(), "nodeid": node_id, "action": "runcommands",
            "msg": "Running commands", "msgid": msgid, "cmds": cmd["cmds"], "cmdType": kind,
            "runAsUser": run_as})


_ROUTED_TYPES = frozenset({"console", "tunnel", "openUrl", "messagebox", "getclip", "setclip",
                           "ps", "pskill", "services", "userSessions", "cpuinfo", "localapp",
                           "terminal", "alert"})


async def msg(call: Call) -> None:
    """Routed ``{nodeid, type, …}`` for the agent → ``{action:"msg", result:"OK"|"Unable to
    route", responseid}``; the server adds who is asking."""
    cmd = call.command
    node_id = cmd.get("nodeid")
    kind = cmd.get("type")
    if kind == "tunnel":
        # Checked per protocol, with a fresh relay cookie: see meshd.relay.tunnel.
        from meshd.relay.tunnel import route_tunnel

        return await route_tunnel(call)
    if not valid_str(node_id, 1, 1024) or not isinstance(kind, str) or kind not in _ROUTED_TYPES:
        return
    access = await call.access()
    node, _mesh, rights = await node_with_rights(call.store, access, node_id)
    routed = False
    if node is not None and rights & (MESHRIGHT_REMOTECONTROL | MESHRIGHT_REMOTEVIEWONLY):
        if kind != "console" or rights & MESHRIGHT_AGENTCONSOLE:
            message = {k: v for k, v in cmd.items() if k not in ("nodeid", "responseid")}
            message.update({"sessionid": call.session.session_id, "rights": rights,
                            "consent": node.get("consent", 0),
                            "username": call.user.get("name"), "userid": call.user_id,
                            "realname": call.user.get("realname"),
                            "remoteaddr": call.session.peer})
            message = {k: v for k, v in message.items() if v is not None}
            call.session.watch_agent(node["_id"])
            routed = call.hub.send_to_agent(node["_id"], message)
    if call.responseid is not None:
        call.send({"action": "msg", "result": "OK" if routed else "Unable to route",
                   **_tag(call), "responseid": call.responseid})


async def toast(call: Call) -> None:
    """``{nodeids, title?, msg (1..4096)}`` → ``ok`` (``Access Denied`` per device without
    the chat right)."""
    cmd = call.command
    if not valid_str_list(cmd.get("nodeids"), 1, 1024) or not valid_str(cmd.get("msg"), 1, 4096):
        return
    title = cmd.get("title") if valid_str(cmd.get("title"), 0, 512) else ""
    access = await call.access()
    for raw_id in cmd["nodeids"]:
        node, _mesh, rights = await node_with_rights(call.store, access, raw_id)
        if node is None:
            continue
        if not rights & MESHRIGHT_CHATNOTIFY:
            call.result("Access Denied")
            continue
        call.hub.send_to_agent(node["_id"], {
            "action": "toast", "title": title, "msg": cmd["msg"],
            "sessionid": call.session.session_id, "username": call.user.get("name"),
            "userid": call.user_id})
    call.result("ok")


#: Intel AMT power actions done over CIRA: power on (302), off (308), reset (310).
AMT_POWER_ACTIONS = frozenset({302, 308, 310})


async def poweraction(call: Call) -> None:
    """``{nodeids, actiontype}`` → ``ok`` per device, whatever happens next.

    Below 300 the agent does the rest.  302/308/310 are Intel AMT power on/off/reset:
    sent over the device's CIRA connection by :mod:`meshd.mps.amtpower`, which records
    the outcome as an ``amtpower`` device event; the reply does not wait for it."""
    cmd = call.command
    if not valid_str_list(cmd.get("nodeids"), 1, 1024) or not valid_int(cmd.get("actiontype"),
                                                                         0, 1000):
        return
    action_type = cmd["actiontype"]
    needed = MESHRIGHT_WAKEDEVICE if action_type == 302 else MESHRIGHT_RESETOFF
    access = await call.access()
    for raw_id in cmd["nodeids"]:
        node, mesh, rights = await node_with_rights(call.store, access, raw_id)
        if node is not None and rights & needed:
            if action_type < 300:
                call.hub.send_to_agent(node["_id"], {"action": "poweraction",
                                                     "actiontype": action_type})
            elif action_type in AMT_POWER_ACTIONS:
                _amt_power(call, node, mesh, action_type)
        call.result("ok")


def _amt_power(call: Call, node: Document, mesh: Optional[Document], action_type: int) -> None:
    amt_power = call.hub.amt_power
    if amt_power is None:
        _log.info("Intel AMT power action {action_type} on {node_id} ignored: no MPS",
                  action_type=action_type, node_id=node["_id"])
        return
    amt_power.request(node, action_type, user_id=call.user_id, user_name=call.user.get("name"),
                      targets=node_targets(node, mesh, [call.user_id]))


async def wakedevices(call: Call) -> None:
    """``{nodeids}`` → for one device a sentence saying what was done, else ``ok`` each."""
    cmd = call.command
    if not valid_str_list(cmd.get("nodeids"), 1, 1024):
        return
    access = await call.access()
    single = len(cmd["nodeids"]) == 1
    for raw_id in cmd["nodeids"]:
        node, _mesh, rights = await node_with_rights(call.store, access, raw_id)
        if node is None or not rights & MESHRIGHT_WAKEDEVICE:
            call.result("Invalid nodeid" if single else "ok")
            continue
        record = await call.store.get("if" + node["_id"])
        if record is None:
            call.result("No network information for this device" if single else "ok")
            continue
        macs: list[str] = []
        netif2 = record.get("netif2")
        if isinstance(netif2, dict):
            for interfaces in netif2.values():
                for interface in interfaces if isinstance(interfaces, list) else []:
                    mac = interface.get("mac") if isinstance(interface, dict) else None
                    if isinstance(mac, str) and mac and mac != "00:00:00:00:00:00" \
                            and mac not in macs:
                        macs.append(mac)
        if not macs:
            call.result("No known MAC addresses for this device" if single else "ok")
            continue
        # Every connected agent of the same group sends the magic packet on its LAN.
        peers = [n["_id"] for n in await call.store.find_nodes_by_mesh([node["meshid"]], DOMAIN)
                 if n["_id"] != node["_id"]]
        used = sum(1 for peer in peers
                   if call.hub.send_to_agent(peer, {"action": "wakeonlan", "macs": macs}))
        call.result(f"Used {used} device(s) to send wake packets" if single else "ok")


async def webrelay(call: Call) -> None:
    """``{nodeid, port, appid}`` → ``WebRelay Disabled`` (MeshCentral 1.1.55 crashes here)."""
    call.respond(result="WebRelay Disabled")


#: ``inviteAgent`` ``os`` values (MeshCentral's): 0 any, 1 Windows, 2 Linux, 3 macOS,
#: 4 an invitation link, 5 MeshCentral Assistant.  meshd serves its Linux agent's
#: installer and the ``.msh`` settings file MeshCentral's agents install with.
INVITE_LINUX_ONLY = 2
INVITE_LINUX = (0, INVITE_LINUX_ONLY, 4)
MAX_INVITE_NAME = 256
MAX_INVITE_MESSAGE = 4096


async def invite_agent(call: Call) -> None:
    """``{meshid | meshname, email, name?, os?, msg?}`` → ``ok`` once the invitation
    e-mail is on its way: the group's install instructions, sent by the server's mailer.

    As MeshCentral: ``Unsupported feature`` without an e-mail server; ``Invalid group
    identifier``, ``Invalid email``, ``Unknown device group``, ``Invalid group type`` (not an
    agent group), ``Not allowed``.  Unlike MeshCentral 1.1.55, which only asks that the
    group be visible, the caller needs MESHRIGHT_MANAGECOMPUTERS on it (the recipient's
    device joins the group), a hidden group is "Unknown device group" rather than a hint
    that it exists, and the answer comes when the mail server has taken the message
    (``Failed to send e-mail`` otherwise; the session goes on meanwhile).
    """
    cmd = call.command
    access = await call.access()
    mesh_id = cmd.get("meshid")
    if mesh_id is None and isinstance(cmd.get("meshname"), str):
        mesh_id, error = await mesh_by_name(call.store, access, cmd["meshname"])
        if error is not None:
            return call.result(error)
    mailer = call.hub.mailer
    if mailer is None:
        _log.info("inviteAgent from {user_id} refused: no e-mail server (smtp) configured",
                  user_id=call.user_id)
        return call.result("Unsupported feature")
    if not valid_str(mesh_id, 8, 134):
        return call.result("Invalid group identifier")
    mesh_id = full_id("mesh", mesh_id)
    if not in_domain(mesh_id, "mesh"):
        return call.result("Invalid group identifier")
    email = cmd.get("email")
    if not valid_str(email, 4, 1024) or not valid_email(email):
        return call.result("Invalid email")
    name, msg = cmd.get("name"), cmd.get("msg")
    name = name.strip() if isinstance(name, str) else ""
    msg = msg.strip() if isinstance(msg, str) else ""
    if len(name) > MAX_INVITE_NAME:
        return call.result("Invalid name")
    if len(msg) > MAX_INVITE_MESSAGE:
        return call.result("Invalid message")
    os_choice = cmd.get("os", 0)
    if isinstance(os_choice, str) and os_choice.strip().isdigit():
        os_choice = int(os_choice.strip())
    if not valid_int(os_choice, 0, 5):
        os_choice = 0
    mesh = await visible_mesh(call.store, access, mesh_id)
    if mesh is None:
        return call.result("Unknown device group")
    if mesh.get("mtype") != 2:
        return call.result("Invalid group type")
    if not access.mesh_rights(mesh) & MESHRIGHT_MANAGECOMPUTERS:
        return call.result("Not allowed")
    inviter = call.user.get("realname") or call.user.get("name") or short_id(call.user_id)
    title = call.hub.title
    text = invitation_text(server_url=call.hub.public_url(), title=title, mesh=mesh,
                           inviter=str(inviter), name=name, msg=msg, os_choice=os_choice)
    to = email.lower()
    _log.info("{user_id} invites {to} to install an agent in {mesh_id}", user_id=call.user_id,
              to=to, mesh_id=mesh_id)
    sending = mailer.send(to, f"{title} - Invitation", text)
    # The answer comes when the mail server has the message; other requests of this
    # session are handled meanwhile.
    sending.addCallbacks(lambda _: call.result("ok"),
                         lambda _failure: call.result("Failed to send e-mail"))


def invitation_text(*, server_url: str, title: str, mesh: Document, inviter: str, name: str,
                    msg: str, os_choice: int) -> str:
    """The invitation e-mail's body (MeshCentral's ``mesh-invite`` text, with meshd's install
    instructions: the Linux one-line installer and the ``.msh`` settings file, as the web
    app's "add agent" dialog shows them)."""
    group = quote(short_id(mesh["_id"]), safe="")
    lines: list[str] = []
    if name:
        lines += [f"Hello {name},", ""]
    lines += [f"User {inviter} on server {title} ({server_url}/) is requesting you install "
              f"software to start the remote control session.", ""]
    if msg:
        lines += [f"Message: {msg}", ""]
    if os_choice in INVITE_LINUX:
        lines += ["For Linux, cut & paste the following in a terminal to install the agent:", "",
                  f"  curl -fsSk '{server_url}/meshagents/install.sh?id={group}' | sudo sh",
                  ""]
    if os_choice != INVITE_LINUX_ONLY:
        instead = " instead" if os_choice in INVITE_LINUX else ""
        lines += [f"To install MeshCentral's agent (Windows, macOS or Linux){instead}, give "
                  f"it the settings file of the device group \"{mesh.get('name', '')}\":", "",
                  f"  {server_url}/meshsettings?id={group}", ""]
    lines += ["If you did not initiate this request, please ignore this mail.", "",
              "Best regards,", inviter, ""]
    return "\n".join(lines)
