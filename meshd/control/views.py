"""What a client may see of stored records, and the JSON text of a frame.

Records are stored in MeshCentral's shapes (spec control-protocol §10); before one goes
to a client its secrets are removed or reduced to markers, as MeshCentral's
``CloneSafeUser``/``CloneSafeMesh``/``CloneSafeNode`` do (spec §3, §7.4):

* users lose ``hash``, ``salt``, ``type``, ``domain`` …; 2FA secrets become counts or 1;
* groups and devices keep their shape, passwords become ``1``.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

from meshd.store.interface import Document

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


def dumps(message: Any) -> str:
    """The text of a frame (compact, as MeshCentral's ``JSON.stringify``)."""
    return json.dumps(message, default=_json_default, separators=(",", ":"),
                      ensure_ascii=False)


def safe_user(user: Document) -> Document:
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
        result[key] = copy.deepcopy(value)
    return result


def safe_mesh(mesh: Document) -> Document:
    result = copy.deepcopy(mesh)
    amt = result.get("amt")
    if isinstance(amt, dict) and amt.get("password") is not None:
        amt["password"] = 1
    kvm = result.get("kvm")
    if isinstance(kvm, dict) and kvm.get("pass") is not None:
        kvm["pass"] = 1
    result.pop("deleted", None)
    return result


def safe_node(node: Document) -> Document:
    result = copy.deepcopy(node)
    amt = result.get("intelamt")
    if isinstance(amt, dict):
        for secret in ("pass", "mpspass"):
            if amt.get(secret) is not None:
                amt[secret] = 1
    if result.get("pmt") is not None:
        result["pmt"] = 1
    result.pop("ssh", None)
    result.pop("rdp", None)
    for live in ("conn", "pwr", "agct", "cict"):
        result.pop(live, None)
    return result


def safe_event(event: Document) -> Document:
    """A stored event as ``events`` lists it: no backend fields, ISO time."""
    result = {k: v for k, v in event.items() if k not in ("_id", "domain", "ids", "node")}
    when = result.get("time")
    if isinstance(when, datetime):
        result["time"] = iso_time(when)
    return result
