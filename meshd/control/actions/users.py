"""User accounts, sessions and login tokens (spec control-protocol §7.2).

Every handler checks the caller's site rights on the server; the strings in ``result``
are MeshCentral's, so meshctrl prints what it prints against MeshCentral.  Unlike
MeshCentral 1.1.55 (§12.2), the last full administrator cannot be removed or demoted.
"""

from __future__ import annotations

import base64
import random
from typing import Any, Optional

from meshd import passwords
from meshd.accounts import AccountError, check_name, check_password
from meshd.control.actions._util import (
    DOMAIN,
    full_id,
    in_domain,
    links_of,
    valid_email,
    valid_int,
    valid_str,
    valid_str_list,
)
from meshd.control.actions.twofactor import _blocked, _failed, _settings_locked, _targets
from meshd.control.hub import mesh_targets, node_targets
from meshd.control.rights import (
    ADDUSER_GRANTABLE,
    SITERIGHT_ADMIN,
    SITERIGHT_LOCKED,
    SITERIGHT_MANAGEUSERS,
    SITERIGHT_NOMESHCMD,
    SITERIGHT_NONEWGROUPS,
    SITERIGHT_RECORDINGS,
    SITERIGHT_USERGROUPS,
    is_full_admin,
    site_rights,
)
from meshd.control.session import Call
from meshd.control.twofactor import ENROL_ID_PREFIX
from meshd.control.views import safe_node, safe_user
from meshd.store.interface import Document

LAST_ADMIN_REMOVE = "Cannot remove the last full administrator"
LAST_ADMIN_DEMOTE = "Cannot demote the last full administrator"


def _manages_users(user: Document) -> bool:
    return is_full_admin(user) or bool(site_rights(user) & SITERIGHT_MANAGEUSERS)


async def _full_admin_count(call: Call) -> int:
    users = await call.store.find_by_type("user", DOMAIN)
    return sum(1 for u in users if is_full_admin(u))


def _tag(call: Call) -> dict[str, Any]:
    return {"tag": call.command["tag"]} if "tag" in call.command else {}


async def users(call: Call) -> None:
    """``{action:"users"}`` → ``{action:"users", users:[safe user…], tag}`` (needs 0x2)."""
    if not _manages_users(call.user):
        call.result("Access denied")
        return
    found = await call.store.find_by_type("user", DOMAIN)
    found.sort(key=lambda u: (u.get("creation", 0), u["_id"]))
    call.send({"action": "users", "users": [safe_user(u) for u in found
                                             if u.get("name") != "~"], **_tag(call)})


async def adduser(call: Call) -> None:
    """``{username, pass, email?, emailVerified?, realname?, siteadmin?, resetNextLogin?,
    randomPassword?, responseid}`` → ``result:"ok"`` or an error with ``msgid``."""
    cmd, user = call.command, call.user

    def fail(text: str, msgid: int) -> None:
        call.result(text, msgid=msgid)

    if cmd.get("randomPassword") is True:
        cmd["pass"] = base64.b64encode(call.hub.random(12)).decode("ascii")
    if not _manages_users(user):
        return fail("Permission denied", 1)
    name, password = cmd.get("username"), cmd.get("pass")
    try:
        if not isinstance(name, str):
            raise AccountError("not a name")
        check_name(name)
    except AccountError:
        return fail("Invalid username", 2)
    try:
        if not isinstance(password, str):
            raise AccountError("not a password")
        check_password(password)
    except AccountError:
        return fail("Invalid password", 3)
    email = cmd.get("email")
    if email is not None and not valid_email(email):
        return fail("Invalid email", 4)
    if cmd.get("domain") not in (None, DOMAIN):
        return fail("Invalid domain", 5)
    siteadmin = cmd.get("siteadmin")
    if siteadmin is not None:
        if not valid_int(siteadmin, 0, SITERIGHT_ADMIN):
            return fail("Invalid site permissions", 6)
        if not is_full_admin(user) and siteadmin & ~ADDUSER_GRANTABLE:
            return fail("Invalid site permissions", 6)
    uid = f"user/{DOMAIN}/{name.lower()}"
    if await call.store.get(uid) is not None:
        return fail("User already exists", 7)
    salt, hashed = await call.hub.run_blocking(passwords.hash_password, password)
    if await call.store.get(uid) is not None:  # created meanwhile by another session
        return fail("User already exists", 7)
    now = int(call.hub.now())
    new: Document = {"type": "user", "_id": uid, "name": name, "creation": now,
                     "domain": DOMAIN}
    if siteadmin is not None:
        new["siteadmin"] = siteadmin
    if email is not None:
        new["email"] = email.lower()
        if cmd.get("emailVerified") is True:
            new["emailVerified"] = True
    new["passchange"] = -1 if cmd.get("resetNextLogin") is True else now
    if valid_str(cmd.get("realname"), 1, 256):
        new["realname"] = cmd["realname"]
    if valid_int(cmd.get("consent"), 1, 0xFFFFFFFF):
        new["consent"] = cmd["consent"]
    if valid_str(cmd.get("phone"), 1, 64):
        new["phone"] = cmd["phone"]
    new["salt"], new["hash"] = salt, hashed
    await call.store.set(new)
    if email is None:
        msgid, arg, msg = 64, name, f"Account created, username is {name}"
    else:
        msgid, arg, msg = 65, email.lower(), f"Account created, email is {email.lower()}"
    call.publish(["*", "server-users"], {
        "etype": "user", "userid": uid, "username": name, "account": safe_user(new),
        "action": "accountcreate", "msgid": msgid, "msgArgs": [arg], "msg": msg})
    call.result("ok")


async def edituser(call: Call) -> None:
    """``{userid|id|username, email?, emailVerified?, realname?, siteadmin?, …}`` →
    ``result:"ok"`` (also when nothing changed)."""
    cmd, user = call.command, call.user
    manager = _manages_users(user)
    if not manager and cmd.get("id") != call.user_id:
        return  # MeshCentral answers nothing here
    target_id = cmd.get("userid")
    if target_id is None and isinstance(cmd.get("username"), str):
        target_id = cmd["username"]
    if target_id is None and isinstance(cmd.get("id"), str):
        target_id = cmd["id"]
    if not manager:
        return call.result("Permission denied")
    target, error = await _target_user(call, target_id)
    if target is None:
        return call.result(error)
    target_id = target["_id"]
    if is_full_admin(target) and not is_full_admin(user):
        return call.result("Permission denied")
    changed = False
    email = cmd.get("email")
    if valid_str(email, 0, 1024) and target.get("email") != email:
        if email == "":
            target.pop("email", None)
            if target.get("emailVerified"):
                target["emailVerified"] = False
        elif not valid_email(email):
            return call.result("Invalid email")
        else:
            target["email"] = email.lower()
        changed = True
    realname = cmd.get("realname")
    if valid_str(realname, 0, 256) and target.get("realname") != realname:
        if realname == "":
            target.pop("realname", None)
        else:
            target["realname"] = realname
        changed = True
    verified = cmd.get("emailVerified")
    if isinstance(verified, bool) and target.get("emailVerified") != verified:
        target["emailVerified"] = verified
        changed = True
    if "quota" in cmd and (cmd["quota"] is None or valid_int(cmd["quota"], 0)) \
            and cmd["quota"] != target.get("quota"):
        if cmd["quota"] is None:
            target.pop("quota", None)
        else:
            target["quota"] = cmd["quota"]
        changed = True
    if cmd.get("resetNextLogin") is True and target.get("passchange") != -1:
        target["passchange"] = -1
        changed = True
    for field in ("consent", "flags", "removeRights"):
        value = cmd.get(field)
        if valid_int(value, 0, 0xFFFFFFFF) and value != target.get(field):
            if value == 0:
                target.pop(field, None)
            else:
                target[field] = value
            changed = True
    phone = cmd.get("phone")
    if valid_str(phone, 0, 64) and phone != target.get("phone"):
        if phone == "":
            target.pop("phone", None)
        else:
            target["phone"] = phone
        changed = True
    siteadmin = cmd.get("siteadmin")
    if valid_int(siteadmin, 0, SITERIGHT_ADMIN) and target_id != call.user_id \
            and target.get("siteadmin", 0) != siteadmin:
        before = site_rights(target)
        if is_full_admin(target) and siteadmin != SITERIGHT_ADMIN \
                and await _full_admin_count(call) <= 1:
            return call.result(LAST_ADMIN_DEMOTE)
        if is_full_admin(user):
            target["siteadmin"] = siteadmin
            changed = True
        else:
            # A user manager may only toggle these bits (and the ones it holds itself).
            may = SITERIGHT_MANAGEUSERS | SITERIGHT_LOCKED | SITERIGHT_NONEWGROUPS | \
                SITERIGHT_NOMESHCMD
            may |= site_rights(user) & (SITERIGHT_USERGROUPS | SITERIGHT_RECORDINGS)
            if (before ^ siteadmin) & ~may & SITERIGHT_ADMIN == 0:
                target["siteadmin"] = siteadmin
                changed = True
    if changed:
        await call.store.set(target)
        call.hub.resubscribe(target_id)
        call.publish(["*", "server-users", call.user_id, target_id], {
            "etype": "user", **call.actor(), "account": safe_user(target),
            "action": "accountchange", "msgid": 66, "msgArgs": [target.get("name")],
            "msg": f"Account changed: {target.get('name')}"})
    rights = target.get("siteadmin")
    if isinstance(rights, int) and rights != SITERIGHT_ADMIN and rights & SITERIGHT_LOCKED:
        call.hub.close_user(target_id)
    call.result("ok")


async def _target_user(call: Call, target_id: Any) -> tuple[Optional[Document], str]:
    """(the user a request names, or None and MeshCentral's error text)."""
    if not valid_str(target_id, 1, 2048):
        return None, "Invalid userid"
    target_id = full_id("user", target_id)
    target = await call.store.get(target_id)
    if target is None or target.get("type") != "user":
        return None, "User does not exists"
    if not in_domain(target_id, "user"):
        return None, "Invalid domain"
    return target, ""


async def deleteuser(call: Call) -> None:
    """``{userid, responseid}`` → ``result:"ok"``; removes every link to the user."""
    cmd, user = call.command, call.user
    if not _manages_users(user):
        return call.result("Permission denied")
    target_id = cmd.get("userid")
    target, error = await _target_user(call, target_id)
    if target is None:
        return call.result(error)
    target_id = target["_id"]
    if is_full_admin(target):
        if not is_full_admin(user):
            return call.result("Permission denied")
        if await _full_admin_count(call) <= 1:
            return call.result(LAST_ADMIN_REMOVE)
    name = target.get("name", "")
    for key in list(links_of(target)):
        linked = await call.store.get(key)
        if linked is None or not isinstance(linked.get("links"), dict) \
                or target_id not in linked["links"]:
            continue
        del linked["links"][target_id]
        if key.startswith("mesh/"):
            await call.store.set(linked)
            call.publish(mesh_targets(linked, [target_id, call.user_id]), {
                "etype": "mesh", **call.actor(), "meshid": key, "name": linked.get("name"),
                "mtype": linked.get("mtype"), "desc": linked.get("desc"),
                "action": "meshchange", "links": linked["links"], "msgid": 72,
                "msgArgs": [name, linked.get("name")],
                "msg": f"Removed user {name} from device group {linked.get('name')}"})
        elif key.startswith("node/"):
            if not linked["links"]:
                del linked["links"]
            await call.store.set(linked)
            mesh = await call.store.get(linked.get("meshid", "")) if linked.get("meshid") \
                else None
            call.publish(node_targets(linked, mesh), {
                "etype": "node", **call.actor(), "action": "changenode", "nodeid": key,
                "msgid": 60, "msgArgs": [linked.get("name")],
                "msg": f"Removed user device rights for {linked.get('name')}",
                "node": safe_node(linked)})
        elif key.startswith("ugrp/"):
            await call.store.set(linked)
            call.publish(["*", key, call.user_id, target_id], {
                "etype": "ugrp", **call.actor(), "ugrpid": key, "name": linked.get("name"),
                "desc": linked.get("desc"), "action": "usergroupchange",
                "links": linked["links"], "msgid": 62,
                "msgArgs": [name, linked.get("name")],
                "msg": f"Removed user {name} from user group {linked.get('name')}"})
    tokens = await call.store.find_by_node("logintoken", ["logintoken-" + target_id])
    await call.store.remove_many([prefix + target_id for prefix in ("ws", "nt", "ntp", "im",
                                                                    ENROL_ID_PREFIX)]
                                 + [t["_id"] for t in tokens])
    await call.store.remove(target_id)
    call.publish(["*", "server-users"], {
        "etype": "user", "userid": target_id, "username": name, "action": "accountremove",
        "msgid": 63, "msg": "Account removed"})
    call.hub.close_user(target_id)
    call.result("ok")


async def wssessioncount(call: Call) -> None:
    """→ ``{action, wssessions:{userid: count}, tag}`` (empty without 0x2)."""
    counts = call.hub.session_counts() if _manages_users(call.user) else {}
    call.send({"action": "wssessioncount", "wssessions": counts, **_tag(call)})


async def userbroadcast(call: Call) -> None:
    """``{msg (1..512), maxtime?, userid?, target?}`` → a notify popup on user sessions."""
    cmd = call.command
    if not _manages_users(call.user):
        return call.result("Permission denied")
    if not valid_str(cmd.get("msg"), 1, 512):
        return call.result("Message is too long")
    notification: dict[str, Any] = {
        "action": "msg", "type": "notify", "domain": DOMAIN, "value": cmd["msg"],
        "title": call.user.get("name"), "icon": 0, "tag": "broadcast",
        "id": random.random()}
    if valid_int(cmd.get("maxtime"), 1):
        notification["maxtime"] = cmd["maxtime"]
    only = cmd.get("userid") if isinstance(cmd.get("userid"), str) else None
    target = cmd.get("target") if isinstance(cmd.get("target"), str) else None
    # TODO(issue 5): sessions on other servers of a cluster.
    for session in list(call.hub.sessions.values()):
        if only is not None and only not in (session.user_id, session.user_id.split("/")[-1]):
            continue
        links = session.user.get("links")
        if target is not None and not (isinstance(links, dict) and target in links):
            continue
        session.send(notification)
    call.result("ok")


async def authcookie(call: Call) -> None:
    """→ ``{action, cookie, rcookie}``: encrypted cookies for ``?auth=`` and relays."""
    cookie = await call.hub.cookies.encode({"userid": call.user_id, "domainid": DOMAIN,
                                            "ip": call.session.peer})
    rcookie = await call.hub.cookies.encode({"ruserid": call.user_id,
                                             "x": call.session.session_id[-12:]})
    call.send({"action": "authcookie", "cookie": cookie, "rcookie": rcookie})


def _token_text(call: Call, size: int) -> str:
    while True:
        text = base64.b64encode(call.hub.random(size)).decode("ascii")
        if "+" not in text and "/" not in text:
            return text


async def create_login_token(call: Call) -> None:
    """``{name (1..100), expire (minutes, 0 never)}`` →
    ``{action, name, tokenUser, tokenPass, created, expire}`` (no responseid, as MeshCentral)."""
    cmd = call.command
    if call.session.login_token is not None:
        return call.result("Access denied")
    if not valid_str(cmd.get("name"), 1, 100):
        return call.result("Invalid name")
    expire_minutes = cmd.get("expire")
    if not isinstance(expire_minutes, (int, float)) or isinstance(expire_minutes, bool) \
            or expire_minutes < 0 or expire_minutes > 10 ** 9:
        return call.result("Invalid expire value")
    token_user = "~t:" + _token_text(call, 12)
    token_pass = _token_text(call, 15)
    salt, hashed = await call.hub.run_blocking(passwords.hash_password, token_pass)
    created = int(call.hub.now() * 1000)
    expire = created + int(expire_minutes * 60000) if expire_minutes > 0 else 0
    await call.store.set({
        "_id": "logintoken-" + token_user, "type": "logintoken",
        "nodeid": "logintoken-" + call.user_id, "userid": call.user_id, "name": cmd["name"],
        "tokenUser": token_user, "salt": salt, "hash": hashed, "domain": DOMAIN,
        "created": created, "expire": expire})
    call.send({"action": "createLoginToken", "name": cmd["name"], "tokenUser": token_user,
               "tokenPass": token_pass, "created": created, "expire": expire})
    call.publish(["*", "server-users", call.user_id], {
        "etype": "user", **call.actor(), "action": "loginTokenAdded", "msgid": 115,
        "msg": "Added login token", "newToken": {"name": cmd["name"], "tokenUser": token_user,
                                                  "created": created, "expire": expire}})


async def login_tokens(call: Call) -> None:
    """``{remove?:[tokenUser…]}`` → ``{action, loginTokens:[{name, tokenUser, created,
    expire}]}``; expired tokens are removed on the way."""
    if call.session.login_token is not None:
        return
    remove = call.command.get("remove")
    if not valid_str_list(remove, 1, 256):
        remove = []
    now_ms = call.hub.now() * 1000
    tokens = await call.store.find_by_node("logintoken", ["logintoken-" + call.user_id])
    tokens.sort(key=lambda t: t.get("created", 0))
    kept: list[dict[str, Any]] = []
    removed: list[Optional[str]] = []
    for token in tokens:
        expire = token.get("expire") or 0
        if (expire and expire < now_ms) or token.get("tokenUser") is None \
                or token.get("tokenUser") in remove:
            await call.store.remove(token["_id"])
            removed.append(token.get("tokenUser"))
        else:
            kept.append({k: v for k, v in token.items() if k not in (
                "_id", "domain", "nodeid", "type", "userid", "salt", "hash")})
    call.send({"action": "loginTokens", "loginTokens": kept})
    if removed:
        call.publish(["*", "server-users", call.user_id], {
            "etype": "user", **call.actor(), "action": "loginTokenChanged",
            "loginTokens": kept, "removed": removed, "nolog": 1})
        for session in list(call.hub.sessions.values()):
            if session.login_token in removed and session.user_id == call.user_id:
                session.close()


async def changepassword(call: Call) -> None:
    """``{oldpass, newpass, responseid?}``: the caller's own password (MeshCentral's
    "Account Settings" dialog) → ``result:"ok"`` or ``Current password not correct.``,
    ``Invalid password``, ``Not allowed`` (login-token session or locked settings), and
    the event ``accountchange`` msgid 74.  MeshCentral answers with notify pop-ups only;
    meshd also answers ``result`` when a ``responseid`` is sent."""
    cmd, user = call.command, call.user
    if call.session.login_token is not None or _settings_locked(user):
        return call.result("Not allowed")
    old, new = cmd.get("oldpass"), cmd.get("newpass")
    try:
        if not isinstance(new, str):
            raise AccountError("not a password")
        check_password(new)
    except AccountError:
        return call.result("Invalid password")
    if _blocked(call):
        return call.result("Too many failed attempts, try again later")
    salt, stored, passtype = user.get("salt"), user.get("hash"), user.get("passtype")
    ok = valid_str(old, 1, 256) and isinstance(salt, str) and isinstance(stored, str) and (
        await call.hub.run_blocking(passwords.verify_password, old, salt, stored)
        if passtype is None else await call.hub.run_blocking(
            passwords.verify_legacy_password, old, salt, stored, passtype))
    if not ok:
        _failed(call)
        return call.result("Current password not correct.")
    user["salt"], user["hash"] = await call.hub.run_blocking(passwords.hash_password, new)
    user.pop("passtype", None)
    user["passchange"] = int(call.hub.now())
    await call.store.set(user)
    name = user.get("name")
    call.publish(_targets(user), {
        "etype": "user", "userid": user["_id"], "username": name, "account": safe_user(user),
        "action": "accountchange", "msgid": 74, "msgArgs": [name],
        "msg": f"Account password changed: {name}"})
    call.result("ok")
