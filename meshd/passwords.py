"""MeshCentral-compatible password hashing (spec control-protocol §9).

A stored password is ``salt`` + ``hash``, both base64 text, in the user (or login
token) record:

* ``salt`` = base64 of 128 random bytes (a 172-character string);
* ``hash`` = base64 of PBKDF2-HMAC-SHA384(password as UTF-8, **the salt string's
  UTF-8 bytes** (not the decoded bytes), 12000 iterations, 128 bytes).

So accounts created by MeshCentral log in to meshd and the other way round.

Hashing costs tens of milliseconds of CPU on purpose: callers in the reactor thread
must run these functions on a thread pool, e.g.
``deferToThreadPool(reactor, pool, verify_password, password, salt, stored_hash)``,
never inline (a burst of logins would freeze every connection).

Accounts imported from IIS-era MeshCentral may carry ``passtype`` 0 (clear text) or 1
(base64 SHA-1 of the decoded salt followed by the UTF-16LE password); see
:func:`verify_legacy_password`. Callers re-hash such passwords with
:func:`hash_password` after the next good login.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict

ITERATIONS = 12000
KEY_LENGTH = 128
SALT_LENGTH = 128
DIGEST = "sha384"


def new_salt() -> str:
    """A fresh salt: base64 of 128 random bytes."""
    return base64.b64encode(os.urandom(SALT_LENGTH)).decode("ascii")


def _utf8(text: str) -> bytes:
    """UTF-8 as Node.js makes it: a lone surrogate (possible in JSON) becomes U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        units = text.encode("utf-16-le", "surrogatepass")
        return units.decode("utf-16-le", "replace").encode("utf-8")


def _pbkdf2(password: str, salt: str) -> str:
    key = hashlib.pbkdf2_hmac(DIGEST, _utf8(password), _utf8(salt), ITERATIONS, KEY_LENGTH)
    return base64.b64encode(key).decode("ascii")


def hash_password(password: str, salt: str | None = None) -> tuple[str, str]:
    """``(salt, hash)`` for ``password``; a new salt unless one is given.

    Blocking CPU work: call it on a thread pool, not in the reactor thread.
    """
    if salt is None:
        salt = new_salt()
    return salt, _pbkdf2(password, salt)


def verify_password(password: str, salt: str, stored_hash: str) -> bool:
    """Whether ``password`` matches ``salt``/``stored_hash`` (constant-time compare).

    Blocking CPU work: call it on a thread pool, not in the reactor thread.
    """
    if not isinstance(salt, str) or not isinstance(stored_hash, str):
        return False
    computed = _pbkdf2(password, salt).encode("ascii")
    return hmac.compare_digest(computed, _utf8(stored_hash))


def verify_legacy_password(password: str, salt: str, stored: str, passtype: int) -> bool:
    """Check an imported IIS-era password (``passtype`` 0 or 1); False otherwise."""
    if passtype == 0:
        expected = _utf8(password)
    elif passtype == 1:
        try:
            salt_bytes = base64.b64decode(salt, validate=False)
        except (binascii.Error, ValueError):
            return False
        digest = hashlib.sha1(salt_bytes + password.encode("utf-16-le", "surrogatepass"))
        expected = base64.b64encode(digest.digest())
    else:
        return False
    return hmac.compare_digest(expected, _utf8(stored))


class RecentChecks:
    """Remembers for a while that a password matched a stored salt and hash.

    PBKDF2 costs about 20 ms of CPU on purpose; a tool that logs in for every command
    (meshctrl does) would pay it each time.  After a successful check, this keeps a
    keyed hash of (salt, stored hash, password) per account, under a random key that
    exists only in this process's memory; a later login with the same password is then
    checked with one HMAC.  Only successes are kept, so guessing still costs a full
    PBKDF2 per try; a changed password (new salt and hash) no longer matches; an entry
    lives ``seconds`` at most, and at most ``limit`` accounts are kept (the least
    recently used go first).  ``seconds`` 0 keeps nothing.
    """

    def __init__(self, seconds: float, limit: int = 10000, key: bytes | None = None) -> None:
        self.seconds = seconds
        self.limit = limit
        self._key = key if key is not None else os.urandom(32)
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def _digest(self, password: str, salt: str, stored_hash: str) -> bytes:
        message = b"\0".join((_utf8(salt), _utf8(stored_hash), _utf8(password)))
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def matches(self, owner: str, password: str, salt: str, stored_hash: str,
                now: float) -> bool:
        """Whether ``password`` was found right for this salt and hash less than
        ``seconds`` ago."""
        entry = self._entries.get(owner)
        if entry is None:
            return False
        digest, expires = entry
        if now >= expires:
            del self._entries[owner]
            return False
        if not hmac.compare_digest(digest, self._digest(password, salt, stored_hash)):
            return False
        self._entries.move_to_end(owner)
        return True

    def remember(self, owner: str, password: str, salt: str, stored_hash: str,
                 now: float) -> None:
        """Keep a success of a full check."""
        if self.seconds <= 0:
            return
        self._entries[owner] = (self._digest(password, salt, stored_hash), now + self.seconds)
        self._entries.move_to_end(owner)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def forget(self, owner: str) -> None:
        self._entries.pop(owner, None)
