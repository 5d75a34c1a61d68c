"""User accounts: creation, passwords, site rights, and the login check.

User records keep MeshCentral's shape (spec control-protocol §10.1):
``{"_id": "user/<domain>/<lower-case name>", "type": "user", "name", "domain",
"creation", "login", "access", "passchange" (seconds), "salt", "hash", "siteadmin"?,
"email"?}``, so accounts imported from MeshCentral log in and the other way round.

Password hashing is deliberately slow CPU work; it runs through ``run_blocking``
(a thread pool in the server) and never in the reactor thread.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable, Optional, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from meshd import passwords
from meshd.store.interface import Document, IStore

T = TypeVar("T")
RunBlocking = Callable[..., "Deferred[Any]"]

SITE_ADMIN = 0xFFFFFFFF  # every site right, as MeshCentral's SITERIGHT_ADMIN
SITERIGHT_LOCKED = 0x20  # the account may not log in
MIN_PASSWORD = 8
MAX_PASSWORD = 256
MAX_NAME = 64

_EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


class AccountError(Exception):
    """A request about accounts that cannot be done; the message says why."""


def user_id(name: str, domain: str = "") -> str:
    """MeshCentral's user id: ``user/<domain>/<name in lower case>``."""
    return f"user/{domain}/{name.lower()}"


def check_name(name: str) -> None:
    """Refuse names MeshCentral refuses (space, quote, comma) and ones that break ids."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        raise AccountError(f"a user name has 1 to {MAX_NAME} characters")
    bad = set(' ",/\\') | {chr(c) for c in range(32)} | {"\x7f"}
    if any(c in bad for c in name):
        raise AccountError("a user name may not contain spaces, quotes, commas, slashes or "
                           "control characters")
    if name.startswith("~"):
        raise AccountError("a user name may not start with ~ (reserved for login tokens)")


def check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password has at most {MAX_PASSWORD} characters")


def check_email(email: str) -> None:
    if not _EMAIL.match(email) or len(email) > 254:
        raise AccountError(f"not an e-mail address: {email!r}")


def is_locked(user: Document) -> bool:
    rights = user.get("siteadmin")
    return isinstance(rights, int) and rights != SITE_ADMIN and bool(rights & SITERIGHT_LOCKED)


def public_view(user: Document) -> Document:
    """The user record without secrets, for listings and events."""
    secret = {"salt", "hash", "passtype", "otpsecret", "otpkeys", "otphkeys", "otpekey",
              "otpsms", "otpdev", "otpduo", "passhint"}
    return {k: v for k, v in user.items() if k not in secret}


class Accounts:
    """Account operations on a store; ``now`` gives seconds since the epoch."""

    _log = Logger()

    def __init__(self, store: IStore, *, now: Callable[[], float],
                 run_blocking: RunBlocking,
                 recent_checks: Optional[passwords.RecentChecks] = None) -> None:
        self._store = store
        self._now = now
        self._run_blocking = run_blocking
        #: Successful password checks remembered for a while (settings.passwordCacheSeconds).
        self.recent_checks = recent_checks

    async def count(self, domain: str = "") -> int:
        return int(await self._store.count_by_type("user", domain))

    async def get(self, name: str, domain: str = "") -> Optional[Document]:
        return await self._store.get(user_id(name, domain))

    async def list(self, domain: Optional[str] = None) -> list[Document]:
        users = await self._store.find_by_type("user", domain)
        return sorted((public_view(u) for u in users), key=lambda u: (u.get("domain", ""),
                                                                       u["_id"]))

    async def create(self, name: str, password: str, *, email: Optional[str] = None,
                     site_admin: bool = False, domain: str = "") -> Document:
        """Create an account; the first account of a domain is always site administrator."""
        check_name(name)
        check_password(password)
        if email is not None:
            check_email(email)
        uid = user_id(name, domain)
        if await self._store.get(uid) is not None:
            raise AccountError(f"the account {name} already exists")
        first = await self.count(domain) == 0
        salt, hashed = await self._run_blocking(passwords.hash_password, password)
        now = int(self._now())
        user: Document = {"_id": uid, "type": "user", "name": name, "domain": domain,
                          "creation": now, "login": 0, "access": now, "passchange": now,
                          "salt": salt, "hash": hashed}
        if email is not None:
            user["email"] = email
            user["emailVerified"] = False
        if site_admin or first:
            user["siteadmin"] = SITE_ADMIN
        await self._store.set(user)
        self._log.info("account {user_id} created (site admin: {admin})", user_id=uid,
                       admin="siteadmin" in user)
        return public_view(user)

    async def _update(self, name: str, domain: str, change: Callable[[Document], Awaitable[None]]
                      ) -> Document:
        user = await self._store.get(user_id(name, domain))
        if user is None:
            raise AccountError(f"no account named {name}")
        await change(user)
        await self._store.set(user)
        return public_view(user)

    async def reset_password(self, name: str, password: str, domain: str = "") -> Document:
        """Set a new password (and unlock nothing else)."""
        check_password(password)

        async def change(user: Document) -> None:
            user["salt"], user["hash"] = await self._run_blocking(passwords.hash_password,
                                                                  password)
            user.pop("passtype", None)
            user["passchange"] = int(self._now())

        return await self._update(name, domain, change)

    async def set_site_admin(self, name: str, admin: bool = True, domain: str = "") -> Document:
        async def change(user: Document) -> None:
            if admin:
                user["siteadmin"] = SITE_ADMIN
            else:
                user.pop("siteadmin", None)

        return await self._update(name, domain, change)

    async def authenticate(self, name: str, password: str, domain: str = "",
                           record: bool = True) -> Optional[Document]:
        """The user if ``password`` is right and the account may log in, else None.

        Imported legacy passwords (``passtype``) are upgraded to PBKDF2 on success.
        ``record``: keep the login time (``login``/``pastlogin``); tools that log in for
        every command (meshctrl) do not, as in MeshCentral.
        """
        if not isinstance(name, str) or not isinstance(password, str) or not name:
            return None
        if len(name) > MAX_NAME or len(password) > MAX_PASSWORD:
            return None
        user = await self._store.get(user_id(name, domain))
        if user is None:
            # Spend the same time as a real check, so timing does not tell which names exist.
            await self._run_blocking(passwords.hash_password, password, "x")
            return None
        salt, stored = user.get("salt"), user.get("hash")
        passtype = user.get("passtype")
        if not isinstance(salt, str) or not isinstance(stored, str):
            return None
        recent = self.recent_checks
        if passtype is None:
            if recent is not None and recent.matches(user["_id"], password, salt, stored,
                                                     self._now()):
                ok = True
            else:
                ok = await self._run_blocking(passwords.verify_password, password, salt,
                                              stored)
                if ok and recent is not None:
                    recent.remember(user["_id"], password, salt, stored, self._now())
        else:
            ok = await self._run_blocking(passwords.verify_legacy_password, password, salt,
                                          stored, passtype)
            if ok:
                user["salt"], user["hash"] = await self._run_blocking(passwords.hash_password,
                                                                      password)
                del user["passtype"]
                record = True
        if not ok or is_locked(user):
            return None
        if not record:
            return user
        # As MeshCentral: ``pastlogin`` is the login before this one (failed attempts since
        # then are told to the user).
        previous = user.get("login")
        if isinstance(previous, int) and previous > 0:
            user["pastlogin"] = previous
        user["login"] = user["access"] = int(self._now())
        await self._store.set(user)
        return user
