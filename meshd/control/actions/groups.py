"""Device groups ("meshes") and who may use them (spec control-protocol §7.3, §10.2).

A group is ``{type:"mesh", _id:"mesh//<64 chars>", name, mtype, desc, domain,
links:{<userid|ugrpid>:{name, rights}}, creation (ms), creatorid, creatorname}``; the
same rights are mirrored in each member's ``links[meshid] = {rights}``.

Where MeshCentral 1.1.55 answers nothing (``editmesh`` without the right) meshd answers
``Permission denied``, and a group the caller cannot see is reported as unknown rather
than "Access denied", so a request does not reveal that someone else's group exists.
"""

from __future__ import annotations

import random
from typing import Any, Optional

from meshd.agent.identity import encode_id
from meshd.control.actions._util import (
    DOMAIN,
    drop_device_connections,
    full_id,
    in_domain,
    links_of,
    member_ids,
    mesh_by_name,
    short_id,
    unlink_from_members,
    valid_int,
    valid_str,
    valid_str_list,
    visible_mesh,
    visible_meshes,
)
from meshd.control.hub import mesh_targets
from meshd.control.rights import (
    MESHRIGHT_ADMIN,
    MESHRIGHT_EDITMESH,
    MESHRIGHT_MANAGEUSERS,
    SITERIGHT_NONEWGROUPS,
    Access,
    is_full_admin,
    site_rights,
)
from meshd.control.session import Call
from meshd.control.views import safe_mesh, safe_user
from meshd.store.interface import Document

MESH_TYPES = (1, 2, 3)  # AMT-only, agent, agentless local (4, IP-KVM, is not served)


def _tag(call: Call) -> dict[str, Any]:
    return {"tag": call.command["tag"]} if "tag" in call.command else {}


async def _resolve(call: Call, access: Access, name_field: str = "meshname"
                   ) -> tuple[Any, Optional[str]]:
    """The ``meshid`` of the request, or the one named by ``name_field`` (mtype 2 only)."""
    cmd = call.command
    mesh_id = cmd.get("meshid")
    if mesh_id is None and isinstance(cmd.get(name_field), str):
        mesh_id, error = await mesh_by_name(call.store, access, cmd[name_field])
        if error is not None:
            return None, error
    return mesh_id, None


async def meshes(call: Call) -> None:
    """→ ``{action:"meshes", meshes:[group…], tag}``: the groups the caller sees."""
    access = await call.access()
    found = await visible_meshes(call.store, access)
    call.send({"action": "meshes", "meshes": [safe_mesh(m) for m in found], **_tag(call)})


async def createmesh(call: Call) -> None:
    """``{meshname (1..128), meshtype 1..3, desc?, flags?, consent?}`` →
    ``{result:"ok", meshid, links}`` after events ``accountchange`` and ``createmesh``."""
    cmd, user = call.command, call.user
    mtype = cmd.get("meshtype")
    if isinstance(mtype, str) and mtype.strip().isdigit():
        mtype = int(mtype.strip())
    if not is_full_admin(user) and site_rights(user) & SITERIGHT_NONEWGROUPS:
        return call.result("Permission denied")
    if not valid_str(cmd.get("meshname"), 1, 128):
        return call.result("Invalid group name")
    if cmd.get("desc") is not None and not valid_str(cmd.get("desc"), 0, 1024):
        return call.result("Invalid group description")
    if not valid_int(mtype) or mtype not in MESH_TYPES:
        return call.result("Invalid group type")
    mesh_id = f"mesh/{DOMAIN}/{encode_id(call.hub.random(48))}"
    links = {call.user_id: {"name": user.get("name"), "rights": MESHRIGHT_ADMIN}}
    mesh: Document = {"type": "mesh", "_id": mesh_id, "name": cmd["meshname"], "mtype": mtype}
    if cmd.get("desc") is not None:
        mesh["desc"] = cmd["desc"]
    mesh.update({"domain": DOMAIN, "links": links, "creation": int(call.hub.now() * 1000),
                 "creatorid": call.user_id, "creatorname": user.get("name")})
    if valid_int(cmd.get("flags"), 0, 0xFFFFFFFF):
        mesh["flags"] = cmd["flags"]
    if valid_int(cmd.get("consent"), 0, 0xFFFFFFFF):
        mesh["consent"] = cmd["consent"]
    await call.store.set(mesh)
    user.setdefault("links", {})[mesh_id] = {"rights": MESHRIGHT_ADMIN}
    await call.store.set(user)
    call.session.refresh(user)
    call.publish(["*", "server-users", call.user_id], {
        "etype": "user", **call.actor(), "account": safe_user(user),
        "action": "accountchange", "nolog": 1})
    call.publish(["*", "server-createmesh", mesh_id, call.user_id], {
        "etype": "mesh", **call.actor(), "meshid": mesh_id, "mtype": mtype,
        "mesh": safe_mesh(mesh), "action": "createmesh", "msgid": 76,
        "msgArgs": [cmd["meshname"]], "msg": f"Device group created: {cmd['meshname']}"})
    call.respond(result="ok", meshid=mesh_id, links=links)


async def deletemesh(call: Call) -> None:
    """``{meshid | meshname}`` → ``result:"ok"``: the group is marked deleted, its devices
    removed and disconnected (their agents are refused from then on), every member
    unlinked."""
    access = await call.access()
    mesh_id, error = await _resolve(call, access)
    if error is None and not valid_str(mesh_id, 8, 134):
        error = "Invalid group identifier"
    if error is not None:
        return call.result(error)
    mesh_id = full_id("mesh", mesh_id)
    mesh = await visible_mesh(call.store, access, mesh_id)
    if mesh is None:
        return call.result("Unknown device group")
    if access.mesh_rights(mesh) != MESHRIGHT_ADMIN:
        return call.result("Access denied")
    if not in_domain(mesh_id, "mesh"):
        return call.result("Invalid group")
    name = mesh.get("name")
    # The event first: once the links are gone it would reach nobody.
    call.publish(mesh_targets(mesh, ["server-deletemesh"]), {
        "etype": "mesh", **call.actor(), "mtype": mesh.get("mtype"), "meshid": mesh_id,
        "name": name, "action": "deletemesh", "msgid": 77, "msgArgs": [name],
        "msg": f"Device group deleted: {name}"})
    for member_id, member in await unlink_from_members(call.store, mesh, mesh_id):
        if member_id.startswith("user/"):
            call.hub.resubscribe(member_id)
            if member_id == call.user_id:
                call.session.refresh(member)
            call.publish(["*", "server-users", call.user_id, member_id], {
                "etype": "user", **call.actor(), "account": safe_user(member),
                "action": "accountchange", "msgid": 78, "msgArgs": [member.get("name")],
                "msg": f"Device group membership changed: {member.get('name')}"})
        elif member_id.startswith("ugrp/"):
            call.publish(["*", "server-ugroups", call.user_id, member_id], {
                "etype": "ugrp", **call.actor(), "ugrpid": member_id,
                "name": member.get("name"), "desc": member.get("desc"),
                "action": "usergroupchange", "links": member["links"], "msgid": 79,
                "msgArgs": [member.get("name")],
                "msg": f"User group changed: {member.get('name')}"})
    mesh.pop("invite", None)
    mesh["deleted"] = call.hub.now_datetime()
    devices = [node["_id"] for node in await call.store.find_nodes_by_mesh([mesh_id], DOMAIN)]
    await call.store.set(mesh)
    await call.store.remove_by_mesh(mesh_id)
    drop_device_connections(call.hub.presence, devices, "device group deleted")
    call.result("ok")


async def editmesh(call: Call) -> None:
    """``{meshid | meshidname, meshname?, desc?, flags?, consent?, expireDevs?, invite?}`` →
    ``result:"ok"``; event ``meshchange`` (msgid 142) when something changed."""
    cmd = call.command
    access = await call.access()
    mesh_id, error = await _resolve(call, access, "meshidname")
    if error is None and not valid_str(mesh_id, 8, 134):
        error = "Invalid group identifier"
    if error is not None:
        return call.result(error)
    mesh_id = full_id("mesh", mesh_id)
    mesh = await visible_mesh(call.store, access, mesh_id)
    if mesh is None:
        return call.result("Invalid group identifier ")  # sic, MeshCentral's text
    if not access.mesh_rights(mesh) & MESHRIGHT_EDITMESH or not in_domain(mesh_id, "mesh"):
        return call.result("Permission denied")
    changes: list[str] = []
    ids: list[int] = []

    def changed(first: str, more: str, number: int) -> None:
        changes.append(first if not changes else more)
        ids.append(number)

    if valid_str(cmd.get("meshname"), 1, 128) and cmd["meshname"] != mesh.get("name"):
        changed(f'Device group name changed from "{mesh.get("name")}" to '
                f'"{cmd["meshname"]}"', "", 1)
        mesh["name"] = cmd["meshname"]
    if valid_str(cmd.get("desc"), 0, 1024) and cmd["desc"] != mesh.get("desc"):
        changed(f'Device group "{mesh["name"]}" description changed', "description changed", 2)
        mesh["desc"] = cmd["desc"]
    for field, number, what in (("flags", 3, "flags"), ("consent", 4, "consent")):
        if valid_int(cmd.get(field), 0, 0xFFFFFFFF) and cmd[field] != mesh.get(field):
            changed(f'Device group "{mesh["name"]}" {what} changed', f"{what} changed", number)
            mesh[field] = cmd[field]
    if valid_int(cmd.get("expireDevs"), 0, 2000) and cmd["expireDevs"] != mesh.get("expireDevs"):
        changed(f'Device group "{mesh["name"]}" auto-remove changed', "auto-remove changed", 5)
        if cmd["expireDevs"] == 0:
            mesh.pop("expireDevs", None)
        else:
            mesh["expireDevs"] = cmd["expireDevs"]
    invite = cmd.get("invite")
    if mesh.get("mtype") == 2 and invite is not None:
        if invite == "*":
            if mesh.pop("invite", None) is not None:
                changed(f'Device group "{mesh["name"]}" invite code changed',
                        "invite code changed", 6)
        elif isinstance(invite, dict) and valid_str_list(invite.get("codes"), 1, 128, 64) \
                and valid_int(invite.get("flags"), 0, 2):
            new_invite: dict[str, Any] = {"codes": invite["codes"], "flags": invite["flags"]}
            if valid_int(invite.get("ag"), 0):
                new_invite["ag"] = invite["ag"]
            if new_invite != mesh.get("invite"):
                mesh["invite"] = new_invite
                changed(f'Device group "{mesh["name"]}" invite code changed',
                        "invite code changed", 6)
    if changes:
        await call.store.set(mesh)
        text = changes[0] + "".join(" and " + more for more in changes[1:] if more)
        call.publish(mesh_targets(mesh, [call.user_id, "server-editmesh"]), {
            "etype": "mesh", **call.actor(), "meshid": mesh_id, "name": mesh.get("name"),
            "mtype": mesh.get("mtype"), "desc": mesh.get("desc"), "flags": mesh.get("flags"),
            "consent": mesh.get("consent"), "action": "meshchange", "links": mesh.get("links"),
            "msgid": 142, "msgArgs": [mesh.get("name"), ids], "msg": text,
            "invite": mesh.get("invite"), "expireDevs": cmd.get("expireDevs")})
    call.result("ok")


async def addmeshuser(call: Call) -> None:
    """``{meshid | meshname, meshadmin, usernames:[…] | userids:[…] | userid, remove?}`` →
    ``{result:"Added user bob", success, failed}`` (per-user messages, comma-joined)."""
    cmd = call.command
    access = await call.access()
    if isinstance(cmd.get("userid"), str):
        cmd["userids"] = [cmd["userid"]]
    mesh_id, error = await _resolve(call, access)
    mesh: Optional[Document] = None
    own_rights = 0
    if error is None:
        if not valid_str(mesh_id, 8, 134):
            error = "Invalid groupid"
        elif not valid_int(cmd.get("meshadmin"), 0, MESHRIGHT_ADMIN):
            error = "Invalid group rights"
        elif not valid_str_list(cmd.get("usernames"), 1, 128) and \
                not valid_str_list(cmd.get("userids"), 1, 128):
            error = "Invalid usernames"
        else:
            mesh_id = full_id("mesh", mesh_id)
            mesh = await visible_mesh(call.store, access, mesh_id)
            if mesh is None:
                error = "Unknown group"
            elif not (own_rights := access.mesh_rights(mesh)) & MESHRIGHT_MANAGEUSERS:
                error = "Permission denied"
            elif not in_domain(mesh_id, "mesh"):
                error = "Invalid domain"
    if error is not None or mesh is None:
        return call.result(error or "Unknown group")
    rights: int = cmd["meshadmin"]
    # Unknown names are dropped here, so they end as "Nothing done" (spec §12.11).
    members = await member_ids(call.store, cmd)
    messages: list[str] = []
    success = failed = 0
    unknown: list[str] = []
    for member_id in members:
        if member_id.split("/")[1:2] != [DOMAIN]:
            messages.append("Mismatch domains")
            continue
        member = await call.store.get(member_id) if member_id.startswith(
            ("user/", "ugrp/")) else None
        if member is None or member.get("type") not in ("user", "ugrp"):
            messages.append(f"Unknown user {short_id(member_id)}")
            unknown.append(short_id(member_id))
            failed += 1
            continue
        if member_id == call.user_id:
            messages.append("Can't change self")
            continue
        member_links = member.setdefault("links", {})
        current = member_links.get(mesh_id, {}).get("rights", 0) if isinstance(
            member_links.get(mesh_id), dict) else 0
        if current == MESHRIGHT_ADMIN and own_rights != MESHRIGHT_ADMIN:
            messages.append("Can't change rights of device group administrator")
            continue
        granted = rights
        if cmd.get("remove") is True:
            member_links.pop(mesh_id, None)
        else:
            if own_rights != MESHRIGHT_ADMIN and granted == MESHRIGHT_ADMIN:
                messages.append("Can't set device group administrator, if not administrator")
                continue
            if own_rights != MESHRIGHT_ADMIN:
                # Nobody grants rights they do not hold themselves.
                granted &= own_rights | current
            member_links[mesh_id] = {"rights": granted}
        await call.store.set(member)
        name = member.get("name")
        if member_id.startswith("user/"):
            call.hub.resubscribe(member_id)
            call.publish(["*", "server-users", call.user_id, member_id], {
                "etype": "user", **call.actor(), "account": safe_user(member),
                "action": "accountchange", "msgid": 78, "msgArgs": [name],
                "msg": f"Device group membership changed: {name}"})
        else:
            call.publish(["*", "server-ugroups", call.user_id, member_id], {
                "etype": "ugrp", "username": call.user.get("name"), "ugrpid": member_id,
                "name": name, "desc": member.get("desc"), "action": "usergroupchange",
                "links": member_links, "msgid": 79, "msgArgs": [name],
                "msg": f"User group changed: {name}"})
        mesh_links = mesh.setdefault("links", {})
        if cmd.get("remove") is True:
            mesh_links.pop(member_id, None)
            text = f"Removed user {name} from device group {mesh.get('name')}"
        else:
            mesh_links[member_id] = {"name": name, "rights": granted}
            text = f"Added user {name} to device group {mesh.get('name')}"
        await call.store.set(mesh)
        call.publish(mesh_targets(mesh, [call.user_id, member_id]), {
            "etype": "mesh", "username": name, "userid": call.user_id, "meshid": mesh_id,
            "name": mesh.get("name"), "mtype": mesh.get("mtype"), "desc": mesh.get("desc"),
            "action": "meshchange", "links": mesh_links, "msg": text,
            "invite": mesh.get("invite")})
        verb = "Removed" if cmd.get("remove") is True else "Added"
        messages.append(f"{verb} user {short_id(member_id)}")
        success += 1
    if not success and not failed:
        messages.append("Nothing done")
    if unknown:
        call.send({"action": "msg", "type": "notify", "id": random.random(),
                   "value": f"User{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                            "not found.",
                   "title": "Device Group", "tag": "ServerNotify", "titleid": 5,
                   "msgid": 16 if len(unknown) > 1 else 15, "args": [", ".join(unknown)]})
    call.result(", ".join(messages), success=success, failed=failed)


async def removemeshuser(call: Call) -> None:
    """``{meshid | meshname, userid}`` → ``result:"ok"`` or ``User not in group``."""
    cmd = call.command
    access = await call.access()
    mesh_id, error = await _resolve(call, access)
    raw_member = cmd.get("userid")
    member_id = ""
    mesh: Optional[Document] = None
    if error is None:
        if not valid_str(raw_member, 1, 1024):
            error = "Invalid userid"
        elif not valid_str(mesh_id, 8, 134):
            error = "Invalid groupid"
        else:
            member_id = full_id("user", raw_member)
            if member_id == call.user_id:
                error = "Can't remove self"
            elif not in_domain(member_id):
                error = "Invalid userid"
            else:
                mesh_id = full_id("mesh", mesh_id)
                mesh = await visible_mesh(call.store, access, mesh_id)
                if mesh is None:
                    error = "Unknown device group"
                elif not access.mesh_rights(mesh) & MESHRIGHT_MANAGEUSERS:
                    error = "Permission denied"
                elif not in_domain(mesh_id, "mesh"):
                    error = "Invalid domain"
    if error is not None or mesh is None:
        return call.result(error or "Unknown device group")
    own_rights = access.mesh_rights(mesh)
    member = await call.store.get(member_id) if member_id.startswith(("user/", "ugrp/")) \
        else None
    if member is not None and isinstance(member.get("links"), dict) \
            and mesh_id in member["links"]:
        link = member["links"][mesh_id]
        if isinstance(link, dict) and link.get("rights") == MESHRIGHT_ADMIN \
                and own_rights != MESHRIGHT_ADMIN:
            return call.result("Permission denied")  # MeshCentral: no answer
        del member["links"][mesh_id]
        await call.store.set(member)
        if member_id.startswith("user/"):
            call.hub.resubscribe(member_id)
            call.publish(["*", "server-users", call.user_id, member_id], {
                "etype": "user", **call.actor(), "account": safe_user(member),
                "action": "accountchange", "msgid": 78, "msgArgs": [member.get("name")],
                "msg": f"Device group membership changed: {member.get('name')}"})
        else:
            call.publish(["*", "server-ugroups", call.user_id, member_id], {
                "etype": "ugrp", "username": call.user.get("name"), "ugrpid": member_id,
                "name": member.get("name"), "desc": member.get("desc"),
                "action": "usergroupchange", "links": member["links"], "msgid": 79,
                "msgArgs": [member.get("name")],
                "msg": f"User group changed: {member.get('name')}"})
    mesh_links = links_of(mesh)
    if member_id not in mesh_links:
        return call.result("User not in group")
    del mesh_links[member_id]
    await call.store.set(mesh)
    name = member.get("name") if member is not None else short_id(member_id)
    call.publish(mesh_targets(mesh, [call.user_id, member_id]), {
        "etype": "mesh", "username": call.user.get("name"), "userid": name,
        "meshid": mesh_id, "name": mesh.get("name"), "mtype": mesh.get("mtype"),
        "desc": mesh.get("desc"), "action": "meshchange", "links": mesh_links,
        "msgid": 83, "msgArgs": [name, mesh.get("name")],
        "msg": f"Removed user {name} from device group {mesh.get('name')}",
        "invite": mesh.get("invite")})
    call.result("ok")


async def create_invite_link(call: Call) -> None:
    """``{meshid | meshname, expire (hours), flags (0..2)}`` →
    ``{meshid, url, expire, cookie, responseid, tag}``."""
    cmd = call.command
    access = await call.access()
    mesh_id, error = await _resolve(call, access)
    if error is not None:
        return call.result(error)
    if not valid_str(mesh_id, 8, 134):
        return call.result("Invalid group id")
    mesh_id = full_id("mesh", mesh_id)
    expire = cmd.get("expire")
    if isinstance(expire, str) and expire.isdigit():
        expire = int(expire)
    flags = cmd.get("flags", 0)
    if isinstance(flags, str) and flags.isdigit():
        flags = int(flags)
    if not valid_int(expire, 0, 99999):
        return call.result("Invalid expire time")
    if not valid_int(flags, 0, 2):
        return call.result("Invalid flags")
    mesh = await visible_mesh(call.store, access, mesh_id)
    if mesh is None or mesh.get("mtype") != 2:
        return call.result("Invalid group id")
    if access.mesh_rights(mesh) & MESHRIGHT_MANAGEUSERS == 0 and \
            access.mesh_rights(mesh) != MESHRIGHT_ADMIN:
        return call.result("Permission denied")
    payload: dict[str, Any] = {"a": 4, "mid": mesh_id, "f": flags, "expire": expire * 60}
    if valid_int(cmd.get("agents"), 0):
        payload["ag"] = cmd["agents"]
    cookie = await call.hub.invite_cookies.encode(payload)
    call.respond(meshid=mesh_id, url=f"{call.hub.public_url()}/agentinvite?c={cookie}",
                 expire=expire, cookie=cookie, **_tag(call))
