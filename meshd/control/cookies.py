"""MeshCentral's encrypted cookies (spec control-protocol §2.4).

A cookie is a JSON object plus ``time`` (unix seconds), encrypted with AES-256-GCM
under the first 32 bytes of the server's 80-byte ``LoginCookieEncryptionKey``; the wire
form is ``IV(12) ‖ tag(16) ‖ ciphertext`` in base64 with ``+``→``@`` and ``/``→``$``.
The key lives in the store (``{_id: "LoginCookieEncryptionKey", key: <160 hex>}``, as
MeshCentral keeps it) so every server of a cluster, and an imported MeshCentral
database, read the same cookies.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any, Callable, Optional

from twisted.internet.defer import DeferredLock
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshd.store.interface import IStore

KEY_ID = "LoginCookieEncryptionKey"
KEY_LENGTH = 80
MAX_COOKIE = 4096
_SKEW = 30  # seconds a cookie may come from the future (clock differences)


def encode_cookie(payload: dict[str, Any], key: bytes, now: float,
                  random: Callable[[int], bytes] = os.urandom) -> str:
    data = dict(payload)
    data["time"] = int(now)
    iv = random(12)
    sealed = AESGCM(key[:32]).encrypt(iv, json.dumps(data, separators=(",", ":")).encode(), None)
    # cryptography appends the tag; MeshCentral puts it before the ciphertext.
    ciphertext, tag = sealed[:-16], sealed[-16:]
    text = base64.b64encode(iv + tag + ciphertext).decode("ascii")
    return text.replace("+", "@").replace("/", "$")


def decode_cookie(text: Any, key: bytes, now: float, timeout_minutes: float
                  ) -> Optional[dict[str, Any]]:
    """The cookie's payload, or None if it is not ours, altered, or too old.

    A payload ``expire`` (minutes, 0 = never) replaces ``timeout_minutes``.
    """
    if not isinstance(text, str) or not 30 < len(text) <= MAX_COOKIE:
        return None
    try:
        raw = base64.b64decode(text.replace("@", "+").replace("$", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 29:
        return None
    iv, tag, ciphertext = raw[:12], raw[12:28], raw[28:]
    try:
        plain = AESGCM(key[:32]).decrypt(iv, ciphertext + tag, None)
        payload = json.loads(plain.decode("utf-8"))
    except (InvalidTag, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict):
        return None
    created = payload.get("time")
    if not isinstance(created, (int, float)) or isinstance(created, bool):
        return None
    expire = payload.get("expire")
    if isinstance(expire, (int, float)) and not isinstance(expire, bool):
        timeout_minutes = expire
    if created > now + _SKEW:
        return None
    if timeout_minutes and now - created > timeout_minutes * 60:
        return None
    return payload


class LoginCookies:
    """A cookie key kept in the store (login cookies by default), created on first use."""

    def __init__(self, store: IStore, now: Callable[[], float],
                 random: Callable[[int], bytes] = os.urandom, key_id: str = KEY_ID) -> None:
        self._store = store
        self._key_id = key_id
        self._now = now
        self._random = random
        self._key: Optional[bytes] = None
        self._lock = DeferredLock()

    async def key(self) -> bytes:
        """The key, loaded (or made) once: the lock makes concurrent first callers share
        one load, so they can never make two different keys."""
        if self._key is not None:
            return self._key
        await self._lock.acquire()
        try:
            if self._key is None:
                self._key = await self._load()
            return self._key
        finally:
            self._lock.release()

    async def _load(self) -> bytes:
        record = await self._store.get(self._key_id)
        key: Optional[bytes] = None
        if record is not None and isinstance(record.get("key"), str):
            try:
                key = bytes.fromhex(record["key"])
            except ValueError:
                key = None
            if key is not None and len(key) < 32:
                key = None
        if key is None:
            key = self._random(KEY_LENGTH)
            await self._store.set({"_id": self._key_id, "key": key.hex(), "time": int(self._now())})
        self._key = key
        return key

    async def encode(self, payload: dict[str, Any]) -> str:
        return encode_cookie(payload, await self.key(), self._now(), self._random)

    async def decode(self, text: Any, timeout_minutes: float) -> Optional[dict[str, Any]]:
        if not isinstance(text, str):
            return None
        return decode_cookie(text, await self.key(), self._now(), timeout_minutes)
