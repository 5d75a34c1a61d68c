"""Who is opening ``/control.ashx`` (spec control-protocol §2).

A browser page of another site must not ride on a user's cookie, so a request whose
``Origin`` names another host than ``Host`` is refused first (``invalidorigin``);
meshctrl and agents send no Origin.  Then, first match wins (§2.2):

1. header ``x-meshauth: *`` → the client authenticates later with a ``userAuth``
   message (§2.6);
2. query ``?user=NAME&pass=PASSWORD[&token=N]``;
3. query ``?auth=COOKIE`` (an encrypted cookie from the ``authcookie`` action, 60
   minutes; a bad cookie falls through);
4. header ``x-meshauth: b64(user),b64(pass)[,b64(token)]`` — what meshctrl sends;
5. the web session cookie ``xid`` from ``/login``;
6. nothing usable → close ``noauth``.

A failure is not an HTTP error: the WebSocket opens, the server sends
``{"action":"close","cause":…,"msg":…}`` and closes it, which is what clients show
("Invalid login." in meshctrl).  Names starting with ``~t:`` are login tokens (§2.5):
application passwords that log in as their owner, without a second factor.

Unlike MeshCentral 1.1.55, which counts bad passwords only on the login form, failed
passwords and second factors here count against the same per-address and per-account
limits (``settings.maxInvalidLogin``); a blocked client is closed with ``banned-1``.

With ``settings.force2factor`` (:mod:`~meshd.control.twofactor`), a user who has no
second factor yet is refused with ``tokenrequired`` (and ``otpsetup: true``), except
where the caller offers an enrolment-only session (``enrolment=True``: the control
channel, for logins other than the tool logins ``?user=`` and ``x-meshauth``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from meshd import passwords
from meshd.accounts import MAX_NAME, MAX_PASSWORD, Accounts, is_locked, user_id
from meshd.control.cookies import LoginCookies
from meshd.control.rights import SITERIGHT_NOMESHCMD, is_full_admin, site_rights
from meshd.control.twofactor import check_second_factor, has_second_factor
from meshd.control.twofactor import totp as totp  # re-exported for callers of this module
from meshd.ratelimit import FailureLimiter
from meshd.store.interface import Document, IStore

RunBlocking = Callable[..., "Deferred[Any]"]

TOKEN_PREFIX = "~t:"
AUTH_COOKIE_MINUTES = 60


def close_message(msg: str, cause: str = "noauth", **extra: Any) -> dict[str, Any]:
    return {"action": "close", "cause": cause, "msg": msg, **extra}


def token_required() -> dict[str, Any]:
    return close_message("tokenrequired", email2fa=False, sms2fa=False, msg2fa=False,
                         twoFactorCookieDays=30)


@dataclass(frozen=True)
class AuthResult:
    """Either a user (logged in) or the close frame to send; ``inner``: wait for userAuth."""

    user: Optional[Document] = None
    close: Optional[dict[str, Any]] = None
    inner: bool = False
    method: str = ""
    login_token: Optional[str] = field(default=None)
    #: force2factor and no second factor yet: only enrolment actions are allowed.
    enrolment_only: bool = False
    #: Failed logins on the account since its previous login, to tell the user (once,
    #: on the first control channel of a new web session).
    failed_logins: int = 0
    #: The web session (its record id) a cookie login came from: logging out of it
    #: closes this channel too.
    web_session: Optional[str] = None


def parse_meshauth(value: str) -> Optional[tuple[str, str, Optional[str]]]:
    """``b64(user),b64(pass)[,b64(token)]`` → the three strings, None when malformed."""
    parts = value.split(",")
    if len(parts) not in (2, 3):
        return None
    decoded = []
    for part in parts:
        try:
            decoded.append(base64.b64decode(part.strip() + "=" * (-len(part.strip()) % 4),
                                            validate=True).decode("utf-8"))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
    return decoded[0], decoded[1], (decoded[2] if len(decoded) == 3 else None)


class Authenticator:
    """Checks the credentials of a control channel upgrade or ``userAuth`` message."""

    _log = Logger()

    def __init__(self, *, store: IStore, accounts: Accounts, web_sessions: Any,
                 cookies: LoginCookies, now: Callable[[], float],
                 run_blocking: RunBlocking, limiter: Optional[FailureLimiter] = None,
                 force2factor: bool = False) -> None:
        self._store = store
        self.force2factor = force2factor
        self._accounts = accounts
        self._web_sessions = web_sessions
        self._cookies = cookies
        self._now = now
        self._run_blocking = run_blocking
        self._limiter = limiter

    async def upgrade(self, headers: dict[str, str], params: dict[str, list[str]],
                      peer: str = "", enrolment: bool = False) -> AuthResult:
        """Who opens this WebSocket; ``enrolment``: the caller can run an enrolment-only
        session for a user who must still enrol a second factor (force2factor)."""
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, headers.get("host", "")):
            return AuthResult(close=close_message("invalidorigin", cause="invalidorigin"))
        meshauth = headers.get("x-meshauth")
        if meshauth is not None and meshauth.strip() == "*":
            return AuthResult(inner=True)
        user_param, pass_param = params.get("user"), params.get("pass")
        if user_param and pass_param:
            token: Optional[str] = params["token"][0] if params.get("token") else None
            return await self.password(user_param[0], pass_param[0], token, "noauth-2a",
                                       tools=True, peer=peer)
        auth = params.get("auth")
        if auth:
            user = await self._cookie_user(auth[0], peer)
            if user is not None:
                return self._enrolment_gate(AuthResult(user=user, method="cookie"),
                                            enrolment)
        if meshauth is not None:
            parsed = parse_meshauth(meshauth)
            if parsed is None:
                return AuthResult(close=close_message("noauth-2c"))
            return await self.password(*parsed, failure="noauth-2d", tools=True, peer=peer)
        cookie = _cookie(headers.get("cookie"), "xid")
        if cookie and self._web_sessions is not None:
            record = await self._web_sessions.lookup(cookie)
            if record is not None:
                user = await self._store.get(record.get("userid", ""))
                if user is not None and not is_locked(user):
                    failed = await self._web_sessions.take_failed_logins(record)
                    return self._enrolment_gate(
                        AuthResult(user=user, method="session", failed_logins=failed,
                                   web_session=record.get("_id")),
                        enrolment)
        return AuthResult(close=close_message("noauth"))

    async def password(self, name: Any, password: Any, token: Any, failure: str,
                       tools: bool = False, peer: str = "", enrolment: bool = False
                       ) -> AuthResult:
        """A name and password (or login token); ``failure`` is the close ``msg``;
        ``enrolment`` as for :meth:`upgrade` (never for tool logins)."""
        if not isinstance(name, str) or not isinstance(password, str):
            return AuthResult(close=close_message(failure))
        keys = ["ip:" + peer, "user:" + (name if name.startswith(TOKEN_PREFIX)
                                         else user_id(name))]
        now = self._now()
        if self._limiter is not None and any(self._limiter.blocked_for(key, now) > 0
                                             for key in keys):
            self._log.warn("control channel login refused for {name} from {peer}: too many "
                           "failures", name=name[:64], peer=peer)
            return AuthResult(close=close_message("banned-1", cause="banned"))
        login_token = None
        if name.startswith(TOKEN_PREFIX):
            user = await self._token_user(name, password)
            login_token = name
        else:
            user = await self._accounts.authenticate(name, password, record=not tools)
        if user is None:
            self._failed(keys)
            return AuthResult(close=close_message(failure))
        if login_token is None and has_second_factor(user):
            if token is None:
                return AuthResult(close=token_required())
            if not isinstance(token, (str, int)) or isinstance(token, bool) or \
                    not await check_second_factor(self._store, user, str(token), self._now()):
                self._failed(keys)
                return AuthResult(close=token_required())
        if self._limiter is not None:
            for key in keys:
                self._limiter.success(key)
        if tools and not is_full_admin(user) and site_rights(user) & SITERIGHT_NOMESHCMD:
            return AuthResult(close=close_message("notools", cause="notools"))
        return self._enrolment_gate(
            AuthResult(user=user, method="password", login_token=login_token),
            enrolment and not tools)

    def must_enrol(self, user: Document, login_token: Optional[str] = None) -> bool:
        """force2factor is on and this user (not by a login token) has no second factor."""
        return self.force2factor and login_token is None and not has_second_factor(user)

    def _enrolment_gate(self, result: AuthResult, enrolment: bool) -> AuthResult:
        assert result.user is not None
        if not self.must_enrol(result.user, result.login_token):
            return result
        if not enrolment:
            return AuthResult(close={**token_required(), "otpsetup": True})
        return AuthResult(user=result.user, method=result.method, enrolment_only=True,
                          failed_logins=result.failed_logins, web_session=result.web_session)

    def _failed(self, keys: list[str]) -> None:
        if self._limiter is not None:
            now = self._now()
            for key in keys:
                self._limiter.failure(key, now)

    async def _token_user(self, name: str, password: str) -> Optional[Document]:
        if len(name) > MAX_NAME or len(password) > MAX_PASSWORD:
            return None
        record = await self._store.get("logintoken-" + name)
        if record is None or record.get("type") != "logintoken":
            await self._run_blocking(passwords.hash_password, password, "x")
            return None
        expire = record.get("expire")
        if isinstance(expire, (int, float)) and expire and expire < self._now() * 1000:
            return None
        salt, stored = record.get("salt"), record.get("hash")
        if not isinstance(salt, str) or not isinstance(stored, str):
            return None
        recent = self._accounts.recent_checks
        now = self._now()
        if recent is None or not recent.matches(record["_id"], password, salt, stored, now):
            if not await self._run_blocking(passwords.verify_password, password, salt, stored):
                return None
            if recent is not None:
                recent.remember(record["_id"], password, salt, stored, now)
        user = await self._store.get(record.get("userid", ""))
        if user is None or is_locked(user):
            return None
        return user

    async def _cookie_user(self, text: str, peer: str) -> Optional[Document]:
        payload = await self._cookies.decode(text, AUTH_COOKIE_MINUTES)
        if payload is None:
            self._log.info("auth cookie from {peer} refused: not ours, altered or expired "
                           "({length} characters)", peer=peer, length=len(text))
            return None
        if payload.get("ip") is not None and payload.get("ip") != peer:
            self._log.info("auth cookie from {peer} refused: made for another address",
                           peer=peer)
            return None
        user_id = payload.get("userid")
        if payload.get("a") == 3 and isinstance(payload.get("u"), str):
            user_id = payload["u"]
        elif payload.get("domainid", "") != "":
            return None
        if not isinstance(user_id, str) or not user_id.startswith("user//"):
            return None
        user = await self._store.get(user_id)
        if user is None or is_locked(user):
            self._log.info("auth cookie from {peer} refused: unknown or locked account",
                           peer=peer)
            return None
        return user


def _same_origin(origin: str, host: str) -> bool:
    netloc = urlsplit(origin.strip()).netloc.lower()
    return bool(netloc) and netloc == host.strip().lower()


def _cookie(header: Optional[str], name: str) -> Optional[str]:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None
