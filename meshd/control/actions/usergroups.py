"""User groups (spec control-protocol §7.5, §10.4).

A user group is ``{type:"ugrp", _id:"ugrp//<64 chars>", name, desc, domain,
links:{<userid>:{userid, name, rights:1}, <meshid|nodeid>:{rights}}}``; each member
user holds ``links[ugrpid] = {rights: 1}`` and so inherits the group's device rights.
Everything here needs site right USERGROUPS (0x100).
"""

from __future__ import annotations

import random
from typing import Any

from meshd.agent.identity import encode_id
from meshd.control.actions._util import (
    DOMAIN,
    in_domain,
    unlink_from_members,
    valid_str,
    valid_str_list,
)
from meshd.control.hub import mesh_targets, node_targets
from meshd.control.rights import SITERIGHT_USERGROUPS, has_site_right
from meshd.control.session import Call
from meshd.control.views import safe_node, safe_user
from meshd.store.interface import Document


def _tag(call: Call) -> dict[str, Any]:
    return {"tag": call.command["tag"]} if "tag" in call.command else {}


def _allowed(call: Call) -> bool:
    return has_site_right(call.user, SITERIGHT_USERGROUPS)


async def _group(call: Call, ugrp_id: Any) -> Document | None:
    if not isinstance(ugrp_id, str) or not in_domain(ugrp_id, "ugrp"):
        return None
    group = await call.store.get(ugrp_id)
    return group if group is not None and group.get("type") == "ugrp" else None


async def usergroups(call: Call) -> None:
    """→ ``{action:"usergroups", ugroups:{id: group} | null, tag}`` (names only without 0x100)."""
    groups = await call.store.find_by_type("ugrp", DOMAIN)
    groups.sort(key=lambda g: (str(g.get("name", "")).lower(), g["_id"]))
    if _allowed(call):
        shown: dict[str, Any] = {g["_id"]: g for g in groups}
    else:
        shown = {g["_id"]: {"name": g.get("name")} for g in groups}
    call.send({"action": "usergroups", "ugroups": shown or None, **_tag(call)})


async def createusergroup(call: Call) -> None:
    """``{name (1..64), desc?}`` → ``{result:"ok", ugrpid, links:{}}``."""
    cmd = call.command
    if not _allowed(call):
        return call.result("Permission denied")
    if not valid_str(cmd.get("name"), 1, 64):
        return call.result("Invalid group name")
    if cmd.get("desc") is not None and not valid_str(cmd.get("desc"), 0, 1024):
        return call.result("Invalid group description")
    if cmd.get("domain") not in (None, DOMAIN):
        return call.result("Invalid domain")
    ugrp_id = f"ugrp/{DOMAIN}/{encode_id(call.hub.random(48))}"
    group: Document = {"type": "ugrp", "_id": ugrp_id, "name": cmd["name"]}
    if cmd.get("desc") is not None:
        group["desc"] = cmd["desc"]
    group.update({"domain": DOMAIN, "links": {}})
    await call.store.set(group)
    call.publish(["*", ugrp_id, call.user_id], {
        "etype": "ugrp", **call.actor(), "ugrpid": ugrp_id, "name": group["name"],
        "desc": group.get("desc"), "action": "createusergroup", "links": {}, "msgid": 69,
        "msgArgs": [group["name"]], "msg": f"User group created: {group['name']}"})
    call.respond(result="ok", ugrpid=ugrp_id, links={})


async def deleteusergroup(call: Call) -> None:
    """``{ugrpid}`` → ``{result:"ok", ugrpid}``; members and groups are unlinked."""
    cmd = call.command
    if not _allowed(call):
        return call.result("Permission denied")
    if not valid_str(cmd.get("ugrpid"), 1, 1024):
        return call.result("Invalid group id")
    if not in_domain(cmd["ugrpid"], "ugrp"):
        return call.result("Invalid domain id")
    group = await _group(call, cmd["ugrpid"])
    if group is None:
        return call.result("Unknown device group")  # sic, MeshCentral's text
    ugrp_id = group["_id"]
    for key, linked in await unlink_from_members(call.store, group, ugrp_id):
        if key.startswith("user/"):
            call.hub.resubscribe(key)
            call.publish(["*", "server-users", call.user_id, key], {
                "etype": "user", **call.actor(), "account": safe_user(linked),
                "action": "accountchange", "msgid": 67, "msgArgs": [linked.get("name")],
                "msg": f"User group membership changed: {linked.get('name')}"})
        elif key.startswith("mesh/"):
            call.publish(mesh_targets(linked, [call.user_id]), {
                "etype": "mesh", **call.actor(), "meshid": key, "name": linked.get("name"),
                "mtype": linked.get("mtype"), "desc": linked.get("desc"),
                "action": "meshchange", "links": linked["links"], "msgid": 70,
                "msgArgs": [group.get("name"), linked.get("name")],
                "msg": f"Removed user group {group.get('name')} from device group "
                       f"{linked.get('name')}"})
        elif key.startswith("node/"):
            call.publish(node_targets(linked, None, [call.user_id]), {
                "etype": "node", **call.actor(), "action": "changenode", "nodeid": key,
                "node": safe_node(linked), "msgid": 60, "msgArgs": [linked.get("name")],
                "msg": f"Removed user device rights for {linked.get('name')}"})
    await call.store.remove(ugrp_id)
    call.publish(["*", ugrp_id, call.user_id], {
        "etype": "ugrp", **call.actor(), "ugrpid": ugrp_id, "action": "deleteusergroup",
        "msg": f"User group deleted: {group.get('name')}"})
    call.respond(result="ok", ugrpid=ugrp_id)


async def addusertousergroup(call: Call) -> None:
    """``{ugrpid, usernames:[names]}`` → ``{result:"ok", added, failed}``."""
    cmd = call.command
    if not _allowed(call):
        return call.result("Permission denied")
    if not valid_str(cmd.get("ugrpid"), 1, 1024):
        return call.result("Invalid groupid")
    if not valid_str_list(cmd.get("usernames"), 1, 128):
        return call.result("Invalid usernames")
    if not in_domain(cmd["ugrpid"], "ugrp"):
        return call.result("Invalid groupid")
    group = await _group(call, cmd["ugrpid"])
    added = failed = 0
    if group is not None:
        links = group.setdefault("links", {})
        unknown: list[str] = []
        names: list[str] = []
        for name in cmd["usernames"]:
            member = None
            for candidate in (f"user/{DOMAIN}/{name.lower()}", f"user/{DOMAIN}/{name}"):
                member = await call.store.get(candidate)
                if member is not None and member.get("type") == "user":
                    break
                member = None
            if member is None:
                unknown.append(name)
                failed += 1
                continue
            member.setdefault("links", {})[group["_id"]] = {"rights": 1}
            await call.store.set(member)
            call.hub.resubscribe(member["_id"])
            call.publish(["*", "server-users", call.user_id, member["_id"]], {
                "etype": "user", **call.actor(), "account": safe_user(member),
                "action": "accountchange", "msgid": 67, "msgArgs": [member.get("name")],
                "msg": f"User group membership changed: {member.get('name')}"})
            links[member["_id"]] = {"userid": member["_id"], "name": member.get("name"),
                                    "rights": 1}
            names.append(member.get("name", ""))
            added += 1
        if added:
            await call.store.set(group)
            call.publish(["*", group["_id"], call.user_id], {
                "etype": "ugrp", **call.actor(), "ugrpid": group["_id"],
                "name": group.get("name"), "desc": group.get("desc"),
                "action": "usergroupchange", "links": links, "msgid": 71,
                "msgArgs": [names, group.get("name")],
                "msg": f"Added user(s) {','.join(names)} to user group {group.get('name')}"})
        if unknown:
            call.send({"action": "msg", "type": "notify", "id": random.random(),
                       "value": f"User{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(unknown)} not found.",
                       "title": "Device Group", **call.actor(), "tag": "ServerNotify",
                       "titleid": 5, "msgid": 16 if len(unknown) > 1 else 15,
                       "args": [", ".join(unknown)]})
    call.result("ok", added=added, failed=failed)


async def removeuserfromusergroup(call: Call) -> None:
    """``{ugrpid, userid}`` → ``result:"ok"`` (also when the user was not a member)."""
    cmd = call.command
    if not _allowed(call):
        return call.result("Permission denied")
    if not valid_str(cmd.get("ugrpid"), 1, 1024):
        return call.result("Invalid groupid")
    if not valid_str(cmd.get("userid"), 1, 256):
        return call.result("Invalid userid")
    if not in_domain(cmd["ugrpid"], "ugrp"):
        return call.result("Invalid groupid")
    user_id = cmd["userid"]
    if not user_id.startswith("user/"):
        for candidate in (f"user/{DOMAIN}/{user_id.lower()}", f"user/{DOMAIN}/{user_id}"):
            if await call.store.get(candidate) is not None:
                user_id = candidate
                break
    member = await call.store.get(user_id) if in_domain(user_id, "user") else None
    if member is not None and member.get("type") == "user":
        group = await _group(call, cmd["ugrpid"])
        if isinstance(member.get("links"), dict) and cmd["ugrpid"] in member["links"]:
            del member["links"][cmd["ugrpid"]]
            await call.store.set(member)
            call.hub.resubscribe(user_id)
            call.publish(["*", "server-users", call.user_id, user_id], {
                "etype": "user", **call.actor(), "account": safe_user(member),
                "action": "accountchange", "msgid": 67, "msgArgs": [member.get("name")],
                "msg": f"User group membership changed: {member.get('name')}"})
        if group is not None and isinstance(group.get("links"), dict) \
                and user_id in group["links"]:
            del group["links"][user_id]
            await call.store.set(group)
            call.publish(["*", group["_id"], call.user_id, user_id], {
                "etype": "ugrp", **call.actor(), "ugrpid": group["_id"],
                "name": group.get("name"), "desc": group.get("desc"),
                "action": "usergroupchange", "links": group["links"], "msgid": 72,
                "msgArgs": [member.get("name"), group.get("name")],
                "msg": f"Removed user {member.get('name')} from user group "
                       f"{group.get('name')}"})
    call.result("ok")
