"""Second factors: TOTP codes, backup codes and enrolment under ``settings.force2factor``.

What MeshCentral 1.1.55 does (meshuser.js ``otpauth-*``, webserver.js): a user asks for a
secret (``otpauth-request``), proves they hold it with one code (``otpauth-setup``), and
from then on a login needs a 6-digit TOTP code (SHA-1, 30 s, ±2 steps) or one of ten
8-digit backup codes (``otpauth-getpasswords``).  Its ``force2factor`` is only a feature
bit telling the web page to insist on enrolment right after a password login — so
whoever holds a stolen password and logs in before the owner enrols *their own*
authenticator, and the account is theirs for good.

meshd closes that hole.  With ``settings.force2factor``:

* a user without a second factor who logs in with a password gets an **enrolment-only
  session**: the first frames, then nothing but ``otpauth-request`` and
  ``otpauth-setup`` (every other request is refused).  Tool logins (``x-meshauth``,
  ``?user=``: meshctrl) and the relays, which cannot enrol, are refused with
  ``tokenrequired``;
* ``otpauth-setup`` then needs, besides the secret and a code of it, the user's
  **current password** (so a hijacked session cookie cannot enrol) and a **one-time
  enrolment code** that an administrator issued for this user (``otpauth-enrolcode``,
  a meshd action) and handed over out of band.  The code is random (80 bits), stored
  only as its SHA-256, expires after :data:`ENROL_CODE_MINUTES`, works once and is
  replaced when a new one is issued.  A stolen password alone therefore enrols nothing;
  failed attempts count against the login limits (``settings.maxInvalidLogin``);
* the secret must be the one the server generated for this session
  (``otpauth-request``), so a client cannot plant a secret chosen or known in advance;
* replacing or removing an enrolled authenticator needs the current password, and
  backup codes can only be made while a TOTP (or hardware) factor exists, so they
  never stand in for enrolment.  Login tokens (``~t:``) still log in without a second
  factor, as in MeshCentral, but cannot be created from an enrolment-only session.

Administrators enrol before turning ``force2factor`` on (enrolment without it works as
in MeshCentral), or have another administrator issue them a code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from typing import Any, Callable, Optional
from urllib.parse import quote

from meshd.store.interface import Document, IStore

#: How long an enrolment code issued by an administrator stays valid.
ENROL_CODE_MINUTES = 24 * 60
#: How long a secret from ``otpauth-request`` may be confirmed with ``otpauth-setup``.
PENDING_SECRET_SECONDS = 10 * 60
ENROL_ID_PREFIX = "otpenrol-"
TOTP_WINDOW = 2  # steps of 30 s either side, as MeshCentral's otplib window
BACKUP_CODES = 10

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


def totp(secret: str, counter: int) -> str:
    """RFC 6238 code (SHA-1, 6 digits) of a base32 secret for one 30-second step."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1000000
    return f"{code:06d}"


def totp_matches(secret: str, token: str, now: float) -> bool:
    """Whether ``token`` is the secret's code within ±2 steps of ``now``.

    A numeric token of fewer than 6 digits is zero-padded: meshctrl turns ``--token
    012345`` into the number 12345 (spec control-protocol, appendix A).
    """
    token = token.strip()
    if not token.isdigit() or len(token) > 6:
        return False
    token = token.zfill(6)
    step = int(now // 30)
    try:
        return any(hmac.compare_digest(totp(secret, step + delta), token)
                   for delta in range(-TOTP_WINDOW, TOTP_WINDOW + 1))
    except (binascii.Error, ValueError):
        return False


def new_secret(random: Callable[[int], bytes]) -> str:
    """A base32 TOTP secret of 160 bits (RFC 4226's recommended key length)."""
    return base64.b32encode(random(20)).decode("ascii").rstrip("=")


def valid_secret(value: Any) -> bool:
    if not isinstance(value, str) or not 16 <= len(value) <= 128:
        return False
    try:
        base64.b32decode(value.upper() + "=" * (-len(value) % 8))
    except (binascii.Error, ValueError):
        return False
    return True


def key_uri(user_name: str, issuer: str, secret: str) -> str:
    """The ``otpauth://`` URI authenticator apps read from a QR code."""
    label = quote(f"{issuer}:{user_name}", safe=":@")
    return (f"otpauth://totp/{label}?secret={secret}&period=30&digits=6&algorithm=SHA1"
            f"&issuer={quote(issuer, safe='')}")


def has_primary_factor(user: Document) -> bool:
    """A TOTP secret or a hardware key: what backup codes may stand beside."""
    hkeys = user.get("otphkeys")
    return isinstance(user.get("otpsecret"), str) and bool(user["otpsecret"]) or (
        isinstance(hkeys, list) and bool(hkeys))


def has_second_factor(user: Document) -> bool:
    """Whether a login of this user needs a second factor."""
    keys = user.get("otpkeys")
    return has_primary_factor(user) or (isinstance(keys, dict) and bool(keys.get("keys")))


def backup_codes(random: Callable[[int], bytes]) -> list[dict[str, Any]]:
    """Ten distinct 8-digit codes in MeshCentral's shape ``{p: int, u: True}``."""
    codes: list[int] = []
    while len(codes) < BACKUP_CODES:
        value = 10000000 + int.from_bytes(random(8), "big") % 90000000
        if value not in codes:
            codes.append(value)
    return [{"p": code, "u": True} for code in codes]


async def check_second_factor(store: IStore, user: Document, token: str, now: float
                              ) -> Optional[str]:
    """A TOTP code of the user's secret, or an unused backup code (then spent): which
    one matched, as login events name it (``otp``, ``backup``), or None."""
    token = token.strip()
    secret = user.get("otpsecret")
    if isinstance(secret, str) and totp_matches(secret, token, now):
        return "otp"
    keys = user.get("otpkeys")
    if isinstance(keys, dict) and isinstance(keys.get("keys"), list) and token.isdigit() \
            and len(token) == 8:
        for entry in keys["keys"]:
            if (isinstance(entry, dict) and entry.get("u") is True
                    and hmac.compare_digest(str(entry.get("p")), token)):
                # A backup code works once.
                entry["u"] = False
                await store.set(user)
                return "backup"
    return None


# -- enrolment codes -------------------------------------------------------------------


def _normal_code(code: str) -> str:
    return "".join(c for c in code.upper() if c not in "- ")


def _code_hash(user_id: str, code: str) -> str:
    return hashlib.sha256(f"{user_id}\n{_normal_code(code)}".encode("utf-8")).hexdigest()


async def issue_enrol_code(store: IStore, user_id: str, issuer_id: str, now: float,
                           random: Callable[[int], bytes]) -> tuple[str, int]:
    """A new one-time enrolment code for ``user_id`` (replacing any earlier one):
    ``(code, expire_ms)``.  Only its hash is stored."""
    raw = random(16)
    text = "".join(_CODE_ALPHABET[b % len(_CODE_ALPHABET)] for b in raw)  # 32 | 256: no bias
    code = "-".join(text[i:i + 4] for i in range(0, 16, 4))
    expire = int((now + ENROL_CODE_MINUTES * 60) * 1000)
    await store.set({"_id": ENROL_ID_PREFIX + user_id, "type": "otpenrol", "userid": user_id,
                     "domain": user_id.split("/")[1], "hash": _code_hash(user_id, code),
                     "created": int(now * 1000), "expire": expire, "by": issuer_id})
    return code, expire


async def enrol_code_valid(store: IStore, user_id: str, code: Any, now: float) -> bool:
    if not isinstance(code, str) or not 1 <= len(code) <= 64:
        return False
    record: Optional[Document] = await store.get(ENROL_ID_PREFIX + user_id)
    if record is None or record.get("type") != "otpenrol" or record.get("userid") != user_id:
        return False
    expire = record.get("expire")
    if not isinstance(expire, (int, float)) or expire < now * 1000:
        return False
    stored = record.get("hash")
    return isinstance(stored, str) and hmac.compare_digest(stored, _code_hash(user_id, code))


async def spend_enrol_code(store: IStore, user_id: str) -> None:
    await store.remove(ENROL_ID_PREFIX + user_id)
