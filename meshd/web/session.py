"""Browser sessions: an opaque cookie, the session record in the store.

The cookie ``xid`` holds 32 random bytes (base64url).  The store keeps only their
SHA-256 (``_id: "websession/<hex>"``), so a copy of the database cannot be used to
take over a session; because the record is in the store, sessions survive a restart
and are shared by every server of a cluster.  A session ends on logout, after
``settings.sessionTime`` minutes without use, or after ``MAX_AGE`` in any case.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Callable, Optional

from meshd.store.interface import Document, IStore

COOKIE_NAME = b"xid"
MAX_AGE = 30 * 86400
_ACCESS_GRANULARITY = 60  # refresh the idle timer at most once a minute per session


def _record_id(token: str) -> str:
    return "websession/" + hashlib.sha256(token.encode("ascii")).hexdigest()


def _valid_token(token: str) -> bool:
    return len(token) == 43 and all(
        c.isalnum() or c in "-_" for c in token) and token.isascii()


class Sessions:
    def __init__(self, store: IStore, *, now: Callable[[], float], idle_seconds: float,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self._store = store
        self._now = now
        self._idle = idle_seconds
        self._random = random

    async def create(self, user: Document, ip: str, failedlogins: int = 0) -> str:
        """A new session for ``user``; returns the cookie value.  ``failedlogins``: failed
        attempts on the account since its previous login, told once (:meth:`take_failed_logins`)."""
        token = base64.urlsafe_b64encode(self._random(32)).rstrip(b"=").decode("ascii")
        now = int(self._now())
        record = {"_id": _record_id(token), "type": "websession", "userid": user["_id"],
                  "domain": user.get("domain", ""), "ip": ip, "created": now, "access": now}
        if failedlogins:
            record["failedlogins"] = failedlogins
        await self._store.set(record)
        return token

    async def take_failed_logins(self, record: Document) -> int:
        """The failed-login count kept in a session record, removed so it is told once."""
        count = record.pop("failedlogins", 0)
        if not count:
            return 0
        await self._store.set(record)
        return int(count) if isinstance(count, int) else 0

    async def lookup(self, token: Optional[str]) -> Optional[Document]:
        """The live session record for a cookie value, or None."""
        if not token or not _valid_token(token):
            return None
        record = await self._store.get(_record_id(token))
        if record is None or record.get("type") != "websession":
            return None
        now = int(self._now())
        if now - record.get("access", 0) > self._idle or now - record.get("created", 0) > MAX_AGE:
            await self._store.remove(record["_id"])
            return None
        if now - record.get("access", 0) >= _ACCESS_GRANULARITY:
            record["access"] = now
            await self._store.set(record)
        return record

    async def destroy(self, token: Optional[str]) -> Optional[Document]:
        """End the session; returns its record if there was one."""
        if not token or not _valid_token(token):
            return None
        record = await self._store.get(_record_id(token))
        if record is not None:
            await self._store.remove(record["_id"])
        return record

    async def destroy_user(self, user_id: str) -> int:
        """End every session of a user (password reset, account removal)."""
        records = await self._store.find_by_type("websession")
        ids = [r["_id"] for r in records if r.get("userid") == user_id]
        if not ids:
            return 0
        return int(await self._store.remove_many(ids))

    async def purge_expired(self) -> int:
        """Remove the records of sessions that have ended by time (run periodically)."""
        now = int(self._now())
        records = await self._store.find_by_type("websession")
        ids = [r["_id"] for r in records
               if now - r.get("access", 0) > self._idle or now - r.get("created", 0) > MAX_AGE]
        if not ids:
            return 0
        return int(await self._store.remove_many(ids))
