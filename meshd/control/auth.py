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
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
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


def totp(secret: str, counter: int) -> str:
    """RFC 6238 code (SHA-1, 6 digits) of a base32 secret for one 30-second step."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1000000
    return f"{code:06d}"


def has_second_factor(user: Document) -> bool:
    keys = user.get("otpkeys")
    return bool(user.get("otpsecret")) or bool(user.get("otphkeys")) or (
        isinstance(keys, dict) and bool(keys.get("keys")))


class Authenticator:
    """Checks the credentials of a control channel upgrade or ``userAuth`` message."""

    _log = Logger()

    def __init__(self, *, store: IStore, accounts: Accounts, web_sessions: Any,
                 cookies: LoginCookies, now: Callable[[], float],
                 run_blocking: RunBlocking, limiter: Optional[FailureLimiter] = None) -> None:
        self._store = store
        self._accounts = accounts
        self._web_sessions = web_sessions
        self._cookies = cookies
        self._now = now
        self._run_blocking = run_blocking
        self._limiter = limiter

    async def upgrade(self, headers: dict[str, str], params: dict[str, list[str]],
                      peer: str = "") -> AuthResult:
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
                return AuthResult(user=user, method="cookie")
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
                    return AuthResult(user=user, method="session")
        return AuthResult(close=close_message("noauth"))

    async def password(self, name: Any, password: Any, token: Any, failure: str,
                       tools: bool = False, peer: str = "") -> AuthResult:
        """A name and password (or login token); ``failure`` is the close ``msg``."""
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
            user = await self._accounts.authenticate(name, password)
        if user is None:
            self._failed(keys)
            return AuthResult(close=close_message(failure))
        if login_token is None and has_second_factor(user):
            if token is None:
                return AuthResult(close=token_required())
            if not await self._check_second_factor(user, str(token)):
                self._failed(keys)
                return AuthResult(close=token_required())
        if self._limiter is not None:
            for key in keys:
                self._limiter.success(key)
        if tools and not is_full_admin(user) and site_rights(user) & SITERIGHT_NOMESHCMD:
            return AuthResult(close=close_message("notools", cause="notools"))
        return AuthResult(user=user, method="password", login_token=login_token)

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
        if not await self._run_blocking(passwords.verify_password, password, salt, stored):
            return None
        user = await self._store.get(record.get("userid", ""))
        if user is None or is_locked(user):
            return None
        return user

    async def _check_second_factor(self, user: Document, token: str) -> bool:
        token = token.strip()
        secret = user.get("otpsecret")
        if isinstance(secret, str) and len(token) == 6 and token.isdigit():
            step = int(self._now() // 30)
            try:
                if any(hmac.compare_digest(totp(secret, step + delta), token)
                       for delta in range(-2, 3)):
                    return True
            except (binascii.Error, ValueError):
                self._log.warn("user {user_id} has an unreadable TOTP secret",
                               user_id=user["_id"])
        keys = user.get("otpkeys")
        if isinstance(keys, dict) and isinstance(keys.get("keys"), list) and token.isdigit():
            for entry in keys["keys"]:
                if (isinstance(entry, dict) and entry.get("u") is True
                        and str(entry.get("p")) == token):
                    # A backup code works once.
                    entry["u"] = False
                    await self._store.set(user)
                    return True
        return False

    async def _cookie_user(self, text: str, peer: str) -> Optional[Document]:
        payload = await self._cookies.decode(text, AUTH_COOKIE_MINUTES)
        if payload is None:
            return None
        if payload.get("ip") is not None and payload.get("ip") != peer:
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
