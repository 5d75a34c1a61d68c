"""Second-factor enrolment: ``otpauth-*`` as MeshCentral names them, plus meshd's
``otpauth-enrolcode`` (design and the force2factor rules: :mod:`meshd.control.twofactor`).

Wire shapes (MeshCentral 1.1.55's, ``responseid`` echoed when sent):

* ``{action:"otpauth-request"}`` → ``{action, secret, url}`` (``otpauth://`` URI for a QR
  code), or ``{action, err}``: 3 logged in with a login token, 5 settings locked;
* ``{action:"otpauth-setup", secret, token[, password, enrolcode]}`` →
  ``{action, success:true|false}``, then event ``accountchange`` msgid 90;
  meshd adds ``msg`` to a failure saying why;
* ``{action:"otpauth-clear"[, password]}`` → ``{action, success}``, event msgid 91;
* ``{action:"otpauth-getpasswords", subaction?: 1 new codes | 2 remove them}`` →
  ``{action, passwords:[{p, u}…] | null}`` when the user has a second factor; events 92/93;
* ``{action:"otpauth-enrolcode", userid}`` (meshd) → ``{action, userid, code, expire}``
  or ``{action, result:<error>}``: a one-time enrolment code for another user, for
  whoever may edit that user.
"""

from __future__ import annotations

from typing import Any

from meshd import passwords
from meshd.control.actions._util import full_id, in_domain, valid_str
from meshd.control.rights import SITERIGHT_MANAGEUSERS, is_full_admin, site_rights
from meshd.control.session import Call
from meshd.control.twofactor import (
    PENDING_SECRET_SECONDS,
    backup_codes,
    enrol_code_valid,
    has_primary_factor,
    has_second_factor,
    issue_enrol_code,
    key_uri,
    new_secret,
    spend_enrol_code,
    totp_matches,
)
from meshd.control.views import safe_user
from meshd.store.interface import Document

SITERIGHT_LOCKSETTINGS = 0x400  # the user may not change their own account settings


def _settings_locked(user: Document) -> bool:
    return not is_full_admin(user) and bool(site_rights(user) & SITERIGHT_LOCKSETTINGS)


def _targets(user: Document) -> list[str]:
    targets = ["*", "server-users", user["_id"]]
    groups = user.get("groups")
    if isinstance(groups, list):
        targets += ["server-users:" + str(g) for g in groups]
    return targets


def _account_event(call: Call, user: Document, msgid: int, msg: str) -> None:
    call.publish(_targets(user), {
        "etype": "user", "userid": user["_id"], "username": user.get("name"),
        "account": safe_user(user), "action": "accountchange", "msgid": msgid, "msg": msg})


def _answer(call: Call, **fields: Any) -> None:
    reply: dict[str, Any] = {"action": call.action, **fields}
    if call.responseid is not None:
        reply["responseid"] = call.responseid
    call.send(reply)


def _limit_keys(call: Call) -> list[str]:
    return ["ip:" + call.session.peer, "user:" + call.user_id]


def _blocked(call: Call) -> bool:
    limiter = call.hub.limiter
    now = call.hub.now()
    return limiter is not None and any(limiter.blocked_for(k, now) > 0
                                       for k in _limit_keys(call))


def _failed(call: Call) -> None:
    limiter = call.hub.limiter
    if limiter is not None:
        for key in _limit_keys(call):
            limiter.failure(key, call.hub.now())


async def _password_ok(call: Call, password: Any) -> bool:
    salt, stored = call.user.get("salt"), call.user.get("hash")
    if not valid_str(password, 1, 256) or not isinstance(salt, str) \
            or not isinstance(stored, str):
        return False
    return bool(await call.hub.run_blocking(passwords.verify_password, password, salt,
                                            stored))


async def otpauth_request(call: Call) -> None:
    """``{}`` → ``{secret, url}``: a fresh secret, remembered by this session."""
    if call.session.login_token is not None:
        return _answer(call, err=3)
    if _settings_locked(call.user):
        return _answer(call, err=5)
    secret = new_secret(call.hub.random)
    call.session.pending_otp = (secret, call.hub.now() + PENDING_SECRET_SECONDS)
    issuer = call.hub.server_info().get("name") or "meshd"
    _answer(call, secret=secret, url=key_uri(call.user.get("name", ""), issuer, secret))


async def otpauth_setup(call: Call) -> None:
    """``{secret, token[, password, enrolcode]}`` → ``{success}``: the secret becomes the
    user's authenticator once a code of it is shown (and, under force2factor, the
    current password and an enrolment code)."""
    cmd, user, session = call.command, call.user, call.session
    if session.login_token is not None or _settings_locked(user):
        return _answer(call, success=False, msg="Not allowed")
    pending = session.pending_otp
    if pending is None or pending[1] < call.hub.now() or cmd.get("secret") != pending[0]:
        return _answer(call, success=False, msg="Unknown secret, request a new one")
    if _blocked(call):
        return _answer(call, success=False, msg="Too many failed attempts, try again later")
    first = not has_primary_factor(user)
    if call.hub.force2factor or not first:
        # Replacing an authenticator, or any enrolment under force2factor: the password.
        if not await _password_ok(call, cmd.get("password")):
            _failed(call)
            return _answer(call, success=False, msg="Invalid password")
    if call.hub.force2factor and first:
        if not await enrol_code_valid(call.store, user["_id"], cmd.get("enrolcode"),
                                      call.hub.now()):
            _failed(call)
            return _answer(call, success=False, msg="Invalid enrolment code")
    token = cmd.get("token")
    if isinstance(token, int) and not isinstance(token, bool):
        token = str(token)
    if not isinstance(token, str) or not totp_matches(pending[0], token, call.hub.now()):
        _failed(call)
        return _answer(call, success=False, msg="Invalid token")
    user["otpsecret"] = pending[0]
    await call.store.set(user)
    if call.hub.force2factor and first:
        await spend_enrol_code(call.store, user["_id"])
    session.pending_otp = None
    _answer(call, success=True)
    _account_event(call, user, 90, "Added authentication application")


async def otpauth_clear(call: Call) -> None:
    """``{password}`` → ``{success}``: removes the authenticator (and backup codes that
    would be left without a factor to back up)."""
    user = call.user
    if call.session.login_token is not None or _settings_locked(user):
        return
    if not isinstance(user.get("otpsecret"), str):
        return _answer(call, success=False)
    if _blocked(call):
        return _answer(call, success=False, msg="Too many failed attempts, try again later")
    if call.hub.force2factor and not await _password_ok(call, call.command.get("password")):
        # Under force2factor a hijacked session must not strip the account's factor.
        _failed(call)
        return _answer(call, success=False, msg="Invalid password")
    del user["otpsecret"]
    if not has_primary_factor(user):
        user.pop("otpkeys", None)
    await call.store.set(user)
    _answer(call, success=True)
    _account_event(call, user, 91, "Removed authentication application")


async def otpauth_getpasswords(call: Call) -> None:
    """``{subaction?}`` → ``{passwords}``: 1 makes ten new backup codes (only beside a
    TOTP or hardware factor), 2 removes them."""
    user = call.user
    if call.session.login_token is not None:
        return
    subaction = call.command.get("subaction")
    event = None
    if not _settings_locked(user):
        if subaction == 1 and has_primary_factor(user):
            user["otpkeys"] = {"keys": backup_codes(call.hub.random)}
            event = (92, "New 2FA backup codes generated")
        elif subaction == 2 and user.get("otpkeys") is not None:
            del user["otpkeys"]
            event = (93, "2FA backup codes cleared")
        if event is not None:
            await call.store.set(user)
    if has_second_factor(user) or event is not None:
        keys = user.get("otpkeys")
        _answer(call, passwords=keys.get("keys") if isinstance(keys, dict) else None)
    if event is not None:
        _account_event(call, user, *event)


async def otpauth_enrolcode(call: Call) -> None:
    """``{userid}`` → ``{userid, code, expire (ms)}``: a one-time enrolment code for
    another user, shown once; the caller must be allowed to edit that user."""
    user = call.user
    if not (is_full_admin(user) or site_rights(user) & SITERIGHT_MANAGEUSERS):
        return call.result("Permission denied")
    target_id = call.command.get("userid")
    if not valid_str(target_id, 1, 2048):
        return call.result("Invalid userid")
    target_id = full_id("user", target_id)
    if not in_domain(target_id, "user"):
        return call.result("Invalid domain")
    if target_id == call.user_id:
        return call.result("Another administrator must issue your enrolment code")
    target = await call.store.get(target_id)
    if target is None or target.get("type") != "user":
        return call.result("User does not exists")
    if is_full_admin(target) and not is_full_admin(user):
        return call.result("Permission denied")
    code, expire = await issue_enrol_code(call.store, target_id, call.user_id,
                                          call.hub.now(), call.hub.random)
    _answer(call, userid=target_id, code=code, expire=expire)
    call.publish(["*", "server-users", target_id], {
        "etype": "user", **call.actor(), "action": "otpenrolcode", "target": target_id,
        "msg": f"Two-factor enrolment code issued for {target.get('name', target_id)}"})
