"""What a client may see of stored records, and the JSON text of a frame.

Records are stored in MeshCentral's shapes (spec control-protocol §10); before one goes
to a client its secrets are removed or reduced to markers, as MeshCentral's
``CloneSafeUser``/``CloneSafeMesh``/``CloneSafeNode`` do (spec §3, §7.4):

* users lose ``hash``, ``salt``, ``type``, ``domain`` …; 2FA secrets become counts or 1;
* groups and devices keep their shape, passwords become ``1``.

The views are shallow: a new top-level dict, with every value that is not changed shared
with the record (no deep copies: listing 5000 devices must not copy each one twice).
Nested dicts that a view changes are copied first, so the record is never altered; a
caller that changes a nested value of a view copies it first too.  Views are meant to be
encoded (:func:`dumps`) or published at once, both of which snapshot them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from meshd.store.interface import Document

try:  # optional: a much faster encoder for large answers (``nodes``, ``events``)
    import orjson as _orjson

    _ORJSON_OPTIONS = _orjson.OPT_PASSTHROUGH_DATETIME
except ImportError:  # pragma: no cover - depends on the installation
    _orjson = None  # type: ignore[assignment]
    _ORJSON_OPTIONS = 0

_USER_DROP = frozenset({"hash", "salt", "type", "domain", "passhint", "subscriptions",
                        "passtype", "otpsms", "otpmsg"})
_USER_MARK = frozenset({"otpsecret", "otpekey", "otpdev", "otpduo"})


def iso_time(value: datetime) -> str:
    """JavaScript's ``Date.toISOString()``: UTC, milliseconds, ``Z``."""
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _dumps_std(message: Any) -> str:
    return json.dumps(message, default=_json_default, separators=(",", ":"),
                      ensure_ascii=False)


def _orjson_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def dumps(message: Any) -> str:
    """The text of a frame (compact, as MeshCentral's ``JSON.stringify``).

    With ``orjson`` installed it encodes (about ten times faster than :mod:`json` on a
    5000-device ``nodes`` answer); whatever it refuses (non-string keys, integers beyond
    64 bits, lone surrogates) goes through :mod:`json`.  The texts differ only in how
    floats with exponents are spelled (``1e16``, not ``1e+16``) and in NaN/Infinity,
    which become ``null`` as in JavaScript instead of invalid JSON."""
    if _orjson is not None:
        try:
            return _orjson.dumps(message, default=_orjson_default,
                                 option=_ORJSON_OPTIONS).decode("utf-8")
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    return _dumps_std(message)


def safe_user(user: Document) -> Document:
    """The user as a client may see it (a new top-level dict; unchanged values shared)."""
    result: Document = {}
    for key, value in user.items():
        if key in _USER_DROP:
            continue
        if key in _USER_MARK:
            if value:
                result[key] = 1
            continue
        if key == "otpkeys":
            result[key] = 1 if value else 0
            continue
        if key in ("otphkeys", "webpush"):
            result[key] = len(value) if isinstance(value, list) else 0
            continue
        result[key] = value
    return result


def safe_mesh(mesh: Document) -> Document:
    """The group as a client may see it (a new top-level dict; unchanged values shared)."""
    result = dict(mesh)
    amt = result.get("amt")
    if isinstance(amt, dict) and amt.get("password") is not None:
        result["amt"] = {**amt, "password": 1}
    kvm = result.get("kvm")
    if isinstance(kvm, dict) and kvm.get("pass") is not None:
        result["kvm"] = {**kvm, "pass": 1}
    result.pop("deleted", None)
    return result


_NODE_DROP = ("ssh", "rdp", "conn", "pwr", "agct", "cict")


def safe_node(node: Document) -> Document:
    """The device as a client may see it, without live state (``conn``…): a new top-level
    dict whose unchanged values are shared with ``node``; a nested dict that must change
    (``intelamt`` secrets) is copied first, so ``node`` itself is never altered."""
    result = dict(node)
    amt = result.get("intelamt")
    if isinstance(amt, dict) and (amt.get("pass") is not None
                                  or amt.get("mpspass") is not None):
        amt = result["intelamt"] = dict(amt)
        for secret in ("pass", "mpspass"):
            if amt.get(secret) is not None:
                amt[secret] = 1
    if result.get("pmt") is not None:
        result["pmt"] = 1
    for key in _NODE_DROP:
        if key in result:
            del result[key]
    return result


def safe_event(event: Document) -> Document:
    """A stored event as ``events`` lists it: no backend fields, ISO time."""
    result = {k: v for k, v in event.items() if k not in ("_id", "domain", "ids", "node")}
    when = result.get("time")
    if isinstance(when, datetime):
        result["time"] = iso_time(when)
    return result
