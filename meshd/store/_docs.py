"""Value rules every backend shares, so they all behave the same.

* ``normalize`` makes the canonical deep copy of a value: tuples become lists, datetimes
  become UTC-aware with millisecond precision (what BSON keeps), and anything that
  MongoDB, SQLite's JSON1 and NeDB could not all store is refused by path.
* ``to_json``/``from_json`` are the SQLite text form; datetimes are written as NeDB
  writes them, ``{"$$date": <ms>}``, so NeDB lines and our rows read the same way.
* ``escape_links``/``unescape_links`` apply MeshCentral's escaping of the keys of
  ``links``, ``ssh`` and ``rdp`` (``%`` ``.`` ``$`` ``,`` as ``%25`` ``%2E`` ``%24``
  ``%2C``; spec control-protocol §10), which MongoDB needs because mesh ids contain
  ``$``. Only the MongoDB backend stores escaped keys; callers always see them plain.
"""

from __future__ import annotations

import json
import re
import math
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from meshd.store.interface import Document

UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_DATE_KEY = "$$date"
_DATE_MARK = "\"$$date\""  # how a date looks in JSON text
_LONG_NUMBER = re.compile(r"\d{19}")
_ESCAPED_FIELDS = ("links", "ssh", "rdp")


# -- time ----------------------------------------------------------------------------


def to_utc(value: datetime) -> datetime:
    """The same instant, UTC-aware, truncated to milliseconds; naive means UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    else:
        value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def datetime_to_ms(value: datetime) -> int:
    """Milliseconds since the Unix epoch (what JavaScript's ``Date`` holds)."""
    return (to_utc(value) - _EPOCH) // timedelta(milliseconds=1)


def ms_to_datetime(ms: int) -> datetime:
    """The UTC-aware datetime of a JavaScript millisecond timestamp."""
    return _EPOCH + timedelta(milliseconds=ms)


def require_datetime(value: Any, what: str) -> datetime:
    """``value`` as a normalised datetime, or TypeError naming ``what``."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    return to_utc(value)


# -- values --------------------------------------------------------------------------


def normalize(value: Any, path: str = "value") -> Any:
    """The canonical deep copy of ``value``; TypeError/ValueError name the bad path."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"{path}: string is not valid Unicode text") from exc
        return value
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{path}: integer does not fit in 64 bits")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: NaN and infinities cannot be stored")
        return value
    if isinstance(value, datetime):
        return to_utc(value)
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: keys must be str, not {type(key).__name__}")
            result[key] = normalize(item, f"{path}.{key}")
        return result
    if isinstance(value, (list, tuple)):
        return [normalize(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise TypeError(f"{path}: cannot store a {type(value).__name__}")


def require_id(doc_id: Any, what: str = "_id") -> str:
    """``doc_id`` if it is a non-empty str, else TypeError/ValueError."""
    if not isinstance(doc_id, str):
        raise TypeError(f"{what} must be a str, not {type(doc_id).__name__}")
    if not doc_id:
        raise ValueError(f"{what} must not be empty")
    return doc_id


def require_ids(doc_ids: Any, what: str) -> list[str]:
    """A list of non-empty str ids (a lone str is refused: it is a common slip)."""
    if isinstance(doc_ids, (str, bytes)) or not isinstance(doc_ids, (list, tuple, set, frozenset)):
        raise TypeError(f"{what} must be a sequence of str")
    return [require_id(doc_id, what) for doc_id in doc_ids]


def normalize_document(doc: Any) -> Document:
    """A main-collection document: a dict with a non-empty str ``_id``."""
    if not isinstance(doc, Mapping):
        raise TypeError(f"a document must be a dict, not {type(doc).__name__}")
    require_id(doc.get("_id"))
    result: Document = normalize(doc, "document")
    return result


def normalize_event(event: Any) -> Document:
    """An event: ``ids`` (list of str), ``time`` (datetime) and ``domain`` (str).

    A caller's ``_id`` is dropped: backends number events themselves.
    """
    if not isinstance(event, Mapping):
        raise TypeError(f"an event must be a dict, not {type(event).__name__}")
    result: Document = normalize(event, "event")
    result.pop("_id", None)
    ids = result.get("ids")
    if not isinstance(ids, list) or not all(isinstance(target, str) for target in ids):
        raise TypeError("event['ids'] must be a list of str")
    require_datetime(result.get("time"), "event['time']")
    if not isinstance(result.get("domain"), str):
        raise TypeError("event['domain'] must be a str")
    return result


def normalize_power_event(event: Any) -> Document:
    """A power event: ``time`` (datetime) and ``nodeid`` (str, ``"*"`` for the server)."""
    if not isinstance(event, Mapping):
        raise TypeError(f"a power event must be a dict, not {type(event).__name__}")
    result: Document = normalize(event, "power event")
    result.pop("_id", None)
    require_datetime(result.get("time"), "power event['time']")
    require_id(result.get("nodeid"), "power event['nodeid']")
    return result


def check_field_name(field: Any) -> str:
    """A top-level field name usable by every backend (no dots, no leading ``$``)."""
    require_id(field, "field")
    if "." in field or field.startswith("$") or field == "_id":
        raise ValueError(f"cannot increment field {field!r}")
    return str(field)


def check_limit(limit: Any) -> int | None:
    """``None`` or a non-negative int."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError("limit must be a non-negative int or None")
    return limit


# -- JSON text (SQLite) --------------------------------------------------------------

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; json still works
    _orjson = None  # type: ignore[assignment]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {_DATE_KEY: datetime_to_ms(value)}
    raise TypeError(f"cannot encode a {type(value).__name__}")


def _json_object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _DATE_KEY in obj and isinstance(obj[_DATE_KEY], (int, float)):
        return ms_to_datetime(int(obj[_DATE_KEY]))
    return obj


def to_json(doc: Any) -> str:
    """Compact JSON text of a normalised value."""
    return json.dumps(doc, default=_json_default, separators=(",", ":"), ensure_ascii=False)


def _restore_dates(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _DATE_KEY in value:
            return _json_object_hook(value)
        return {key: _restore_dates(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_restore_dates(item) for item in value]
    return value


def from_json(text: str) -> Any:
    """The value of :func:`to_json` text (or of an NeDB line).

    orjson parses several times faster than :mod:`json` (listing thousands of devices is
    mostly this); dates are restored in a second walk only when the text has any.  Text
    orjson refuses (NaN, lone surrogates), or with numbers of 19 digits or more (orjson
    turns integers beyond 64 bits into floats), goes to :mod:`json`.
    """
    if not _LONG_NUMBER.search(text):
        return from_stored_json(text)
    return json.loads(text, object_hook=_json_object_hook)


def from_stored_json(text: str) -> Any:
    """The value of :func:`to_json` text that this store wrote itself.

    Such text holds only normalised values, so no integer has more than 64 bits and
    orjson reads it exactly: the search for long numbers that :func:`from_json` needs
    for foreign text (a regular expression over every character, most of the cost of
    listing thousands of devices) is skipped.
    """
    if _orjson is not None:
        try:
            value = _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass
        else:
            return _restore_dates(value) if _DATE_MARK in text else value
    return json.loads(text, object_hook=_json_object_hook)


# -- MeshCentral key escaping (MongoDB) ----------------------------------------------


def escape_key(key: str) -> str:
    """MeshCentral's escaping of one ``links``/``ssh``/``rdp`` key."""
    if not any(char in key for char in "%.$,"):
        return key
    return key.replace("%", "%25").replace(".", "%2E").replace("$", "%24").replace(",", "%2C")


def unescape_key(key: str) -> str:
    """Undo :func:`escape_key`."""
    if "%" not in key:
        return key
    return key.replace("%2C", ",").replace("%2E", ".").replace("%24", "$").replace("%25", "%")


def _map_link_keys(doc: dict[str, Any], convert: Any) -> dict[str, Any]:
    result = dict(doc)
    for field in _ESCAPED_FIELDS:
        if field in result:
            result[field] = _map_keys(result[field], convert)
    return result


def escape_links(doc: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy with the keys of ``links``, ``ssh`` and ``rdp`` escaped."""
    return _map_link_keys(doc, escape_key)


def unescape_links(doc: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy with the keys of ``links``, ``ssh`` and ``rdp`` unescaped."""
    return _map_link_keys(doc, unescape_key)


def _map_keys(value: Any, convert: Any) -> Any:
    if isinstance(value, dict):
        return {convert(key): item for key, item in value.items()}
    return value


def escape_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event as MeshCentral stores it: keys of ``links`` and of the embedded
    ``mesh`` record's ``links``/``ssh``/``rdp`` escaped."""
    result = dict(event)
    if "links" in result:
        result["links"] = _map_keys(result["links"], escape_key)
    if isinstance(result.get("mesh"), dict):
        result["mesh"] = escape_links(result["mesh"])
    return result


def unescape_event(event: dict[str, Any]) -> dict[str, Any]:
    """Undo :func:`escape_event`."""
    result = dict(event)
    if "links" in result:
        result["links"] = _map_keys(result["links"], unescape_key)
    if isinstance(result.get("mesh"), dict):
        result["mesh"] = unescape_links(result["mesh"])
    return result
