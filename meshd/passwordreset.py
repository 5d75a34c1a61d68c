"""Password reset by e-mail ("Forgot your password?"), without any web code.

The flow, when the server has a mailer (the ``smtp`` section):

1. Someone gives an e-mail address (:meth:`PasswordReset.request`).  If exactly one
   account of the default domain has it and is not locked, a random token (32 bytes,
   base64url) is mailed as ``<server>/resetpassword?t=<token>``.
2. The store keeps only the token's SHA-256 (``_id: "pwreset/<hex>"``) with the user id
   and an expiry (``TOKEN_LIFETIME``); a copy of the database cannot be used to reset a
   password.  A new request replaces the account's previous token; expired records are
   dropped whenever a token is issued.
3. :meth:`PasswordReset.lookup` tells whether a token is still good (showing the form
   does not use it up, so mail scanners that open links do no harm);
   :meth:`PasswordReset.consume` removes it, and only the caller that removed it may go
   on, so a token works once even when two posts race.

Who asked is never told whether an address is known: the web page answers the same in
every case and the work happens after the answer (see :mod:`meshd.web.passwordreset`).
Neither the token nor its hash is ever logged.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredLock, gatherResults, succeed
from twisted.logger import Logger

from meshd.accounts import is_locked
from meshd.store.interface import Document, IStore

__all__ = ["PasswordReset", "TOKEN_LIFETIME", "reset_mail_text"]

#: Seconds a mailed link stays usable.
TOKEN_LIFETIME = 15 * 60
_TOKEN_BYTES = 32
_RECORD_TYPE = "pwreset"
_MAX_EMAIL = 254


def _record_id(token: str) -> str:
    return f"{_RECORD_TYPE}/" + hashlib.sha256(token.encode("ascii")).hexdigest()


def valid_token(token: str) -> bool:
    """The shape of a token this module makes (43 base64url characters)."""
    return (isinstance(token, str) and len(token) == 43 and token.isascii()
            and all(c.isalnum() or c in "-_" for c in token))


def reset_mail_text(*, name: str, title: str, server_url: str, token: str,
                    lifetime_minutes: int) -> str:
    """The body of the reset message (as MeshCentral's ``account-reset`` mail says it)."""
    return (
        f"Hello {name},\n\n"
        f"A password reset was requested for the account {name} on {title} "
        f"({server_url}/).\n\n"
        f"To choose a new password, open this link within {lifetime_minutes} minutes:\n\n"
        f"  {server_url}/resetpassword?t={token}\n\n"
        "The link works once. If you did not ask for this, ignore this message: your "
        "password stays as it is.\n"
    )


class PasswordReset:
    """Reset tokens in the store and the mails that carry them.

    ``mailer`` has ``send(to, subject, text) -> Deferred`` (:class:`meshd.mail.Mailer`);
    ``public_url()`` is the server's ``https://name[:port]`` (never taken from a request's
    Host header, which the asker controls); ``now`` gives seconds since the epoch.
    """

    _log = Logger()

    def __init__(self, *, store: IStore, mailer: Any, public_url: Callable[[], str],
                 now: Callable[[], float], title: str, domain: str = "",
                 lifetime: float = TOKEN_LIFETIME,
                 random: Callable[[int], bytes] = os.urandom,
                 close_user: Optional[Callable[[str], None]] = None) -> None:
        self.store = store
        self.mailer = mailer
        self.public_url = public_url
        self.now = now
        self.title = title
        self.domain = domain
        self.lifetime = lifetime
        self._random = random
        #: Ends a user's control channels (the control hub's ``close_user``), if any.
        self.close_user = close_user
        self._issue_lock = DeferredLock()
        self._pending: set["Deferred[Any]"] = set()

    # -- asking for a link ---------------------------------------------------------------

    def request_in_background(self, email: str) -> None:
        """Start :meth:`request`; the caller answers at once, whatever comes of it."""
        work = Deferred.fromCoroutine(self.request(email))
        self._track(work)

    async def request(self, email: str) -> bool:
        """Mail a reset link if exactly one unlocked account has ``email``.

        True when a message was handed to the mailer (not awaited: the mail server's
        delay must not show).  Failures are logged, never raised.
        """
        try:
            user = await self._single_account(email)
            if user is None:
                return False
            token = await self._issue(user)
            text = reset_mail_text(name=str(user.get("name", "")), title=self.title,
                                   server_url=self.public_url(), token=token,
                                   lifetime_minutes=max(1, int(self.lifetime // 60)))
            sending = self.mailer.send(user["email"], f"{self.title} - Account Reset", text)
            sending.addErrback(lambda _failure: None)  # the mailer logged it already
            self._track(sending)
            self._log.info("password reset link for {user_id} sent to its e-mail address",
                           user_id=user["_id"])
            return True
        except Exception:
            self._log.failure("password reset request failed")
            return False

    async def _single_account(self, email: str) -> Optional[Document]:
        if not email or len(email) > _MAX_EMAIL or "@" not in email:
            return None
        found: dict[str, Document] = {}
        for variant in dict.fromkeys([email, email.lower()]):
            for user in await self.store.find_users_by_email(variant, self.domain):
                found[user["_id"]] = user
        if len(found) != 1:
            self._log.info("password reset asked for an address of {count} accounts",
                           count=len(found))
            return None
        [user] = found.values()
        if is_locked(user):
            self._log.info("password reset refused for {user_id}: the account is locked",
                           user_id=user["_id"])
            return None
        return user

    async def _issue(self, user: Document) -> str:
        """A new token for ``user``; its earlier ones, and expired ones, are removed."""
        token = base64.urlsafe_b64encode(self._random(_TOKEN_BYTES)).rstrip(b"=").decode("ascii")
        await self._issue_lock.acquire()
        try:
            now = self.now()
            records = await self.store.find_by_type(_RECORD_TYPE, self.domain)
            doomed = [r["_id"] for r in records
                      if r.get("userid") == user["_id"] or not now < r.get("expires", 0)]
            if doomed:
                await self.store.remove_many(doomed)
            await self.store.set({"_id": _record_id(token), "type": _RECORD_TYPE,
                                  "domain": self.domain, "userid": user["_id"],
                                  "created": int(now), "expires": now + self.lifetime})
        finally:
            self._issue_lock.release()
        return token

    # -- using a link --------------------------------------------------------------------

    async def lookup(self, token: str) -> Optional[Document]:
        """The live record of ``token`` (``userid``, ``expires``), or None; an expired
        record is removed."""
        if not valid_token(token):
            return None
        record = await self.store.get(_record_id(token))
        if record is None or record.get("type") != _RECORD_TYPE:
            return None
        if not self.now() < record.get("expires", 0):
            await self.store.remove(record["_id"])
            return None
        return record

    async def consume(self, token: str) -> Optional[Document]:
        """Use ``token`` up; its record if it was live and this call removed it."""
        record = await self.lookup(token)
        if record is None:
            return None
        if not await self.store.remove(record["_id"]):
            return None  # another request used it first
        return record

    # -- bookkeeping ---------------------------------------------------------------------

    def _track(self, work: "Deferred[Any]") -> None:
        if work.called:
            return
        self._pending.add(work)

        def done(result: object) -> None:
            self._pending.discard(work)

        work.addBoth(done)

    def when_idle(self) -> "Deferred[None]":
        """Fires when every started request and mail has finished (tests, shutdown)."""
        if not self._pending:
            return succeed(None)
        d = gatherResults(list(self._pending), consumeErrors=True)
        return d.addBoth(lambda _: self.when_idle())  # type: ignore[return-value]
