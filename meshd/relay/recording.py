"""MeshCentral's ``.mcrec`` session recording format (spec relay.md §6): a sans-IO codec.

A recording is a sequence of records, each a 16-byte big-endian header then the payload::

    u16 type    1 metadata (JSON, first record), 2 data, 3 end (payload "MeshCentralMCREC")
    u16 flags   1 binary frame, 2 sent by the user (browser) side
    u32 size    payload bytes
    u64 time    milliseconds since the epoch (MeshCentral fills the low 6 bytes; the
                high 2 are zero for any date before the year 10889)

The metadata record is JSON with ``magic`` ``"MeshCentralRelaySession"``, ``ver`` 1,
``userid``, ``username``, ``sessionid``, ``ipaddr1``, ``ipaddr2``, ``time``, ``protocol``,
``nodeid`` and, when known, ``devicename``.  Players (MeshCentral's own) read exactly this.

:class:`RecordReader` is fed bytes as they come and yields whole records; a header whose
size exceeds :data:`MAX_RECORD` or an unknown type raises :class:`RecordingError` before
any payload is buffered.  No I/O here: the relay writes :func:`encode_record` output to
its file (the writer, quotas and the index live with the relay's recording policy).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Optional

__all__ = ["END_MAGIC", "MAGIC", "MAX_RECORD", "Record", "RecordReader", "RecordingError",
           "TYPE_DATA", "TYPE_END", "TYPE_METADATA", "FLAG_BINARY", "FLAG_USER",
           "encode_record", "metadata_record", "read_recording", "recording_filename"]

TYPE_METADATA, TYPE_DATA, TYPE_END = 1, 2, 3
FLAG_BINARY, FLAG_USER = 1, 2
MAGIC = "MeshCentralRelaySession"
END_MAGIC = b"MeshCentralMCREC"
HEADER = struct.Struct(">HHIQ")
MAX_RECORD = 64 * 1024 * 1024  # larger than any relay frame (16 MiB)
_TIME_MASK = (1 << 48) - 1


class RecordingError(ValueError):
    """The bytes are not a well-formed ``.mcrec`` recording."""


@dataclass(frozen=True)
class Record:
    """One record: ``kind`` (1/2/3), ``flags``, ``time`` (ms since the epoch), payload."""

    kind: int
    flags: int
    time: int
    payload: bytes

    @property
    def binary(self) -> bool:
        return bool(self.flags & FLAG_BINARY)

    @property
    def from_user(self) -> bool:
        return bool(self.flags & FLAG_USER)

    def encode(self) -> bytes:
        return encode_record(self.kind, self.flags, self.payload, self.time)


def encode_record(kind: int, flags: int, payload: bytes, time_ms: int) -> bytes:
    """One record's bytes (header + payload)."""
    if kind not in (TYPE_METADATA, TYPE_DATA, TYPE_END) or not 0 <= flags <= 0xFFFF:
        raise ValueError("bad record type or flags")
    if len(payload) > MAX_RECORD:
        raise ValueError("record too large")
    return HEADER.pack(kind, flags, len(payload), time_ms & _TIME_MASK) + payload


def metadata_record(*, user_id: Optional[str], user_name: Optional[str], session_id: str,
                    address1: Optional[str], address2: Optional[str], time_text: str,
                    protocol: Optional[int], node_id: Optional[str], time_ms: int,
                    device_name: Optional[str] = None,
                    extra: Optional[Mapping[str, Any]] = None) -> bytes:
    """The first record, MeshCentral's metadata fields in its order.

    ``protocol`` is written as text, as MeshCentral's relay copies it from the URL;
    ``extra`` adds fields or replaces these (its web relay writes ``protocol`` as a
    number and adds ``intelamt``).
    """
    metadata: dict[str, Any] = {
        "magic": MAGIC, "ver": 1, "userid": user_id, "username": user_name,
        "sessionid": session_id, "ipaddr1": address1, "ipaddr2": address2,
        "time": time_text, "protocol": None if protocol is None else str(protocol),
        "nodeid": node_id}
    if device_name is not None:
        metadata["devicename"] = device_name
    if extra:
        metadata.update(extra)
    return encode_record(TYPE_METADATA, 0, json.dumps(metadata).encode(), time_ms)


def recording_filename(*, domain: str, year: int, month: int, day: int, hour: int,
                       minute: int, second: int, user_id: Optional[str],
                       device_name: Optional[str], session_id: str) -> str:
    """``relaysession[-domain]-YYYY-MM-DD-HH-MM-SS[-user][-device]-<id>.mcrec`` (UTC),
    every part made safe as a file name."""
    parts = ["relaysession" + (f"-{_safe(domain)}" if domain else ""),
             f"{year:04d}-{month:02d}-{day:02d}-{hour:02d}-{minute:02d}-{second:02d}"]
    if user_id:
        parts.append(_safe(user_id.split("/")[-1]))
    if device_name:
        parts.append(_safe(device_name))
    parts.append(_safe(session_id))
    return "-".join(parts) + ".mcrec"


def _safe(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._@$" else "_" for c in text)
    return cleaned.strip(".")[:64] or "_"


class RecordReader:
    """Incremental parser: ``feed(bytes) -> list[Record]``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header: Optional[tuple[int, int, int, int]] = None

    def feed(self, data: bytes) -> list[Record]:
        self._buffer += data
        records = []
        while True:
            if self._header is None:
                if len(self._buffer) < HEADER.size:
                    break
                kind, flags, size, time_ms = HEADER.unpack_from(self._buffer)
                if kind not in (TYPE_METADATA, TYPE_DATA, TYPE_END):
                    raise RecordingError(f"unknown record type {kind}")
                if size > MAX_RECORD:
                    raise RecordingError(f"record of {size} bytes is too large")
                del self._buffer[:HEADER.size]
                self._header = (kind, flags, size, time_ms & _TIME_MASK)
            kind, flags, size, time_ms = self._header
            if len(self._buffer) < size:
                break
            payload = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._header = None
            records.append(Record(kind, flags, time_ms, payload))
        return records

    @property
    def pending(self) -> int:
        """Bytes of an unfinished record (0 at a record boundary)."""
        return len(self._buffer) + (HEADER.size if self._header is not None else 0)


def read_recording(data: bytes) -> tuple[dict[str, Any], list[Record], bool]:
    """A whole recording → (metadata, data records, whether it ended properly)."""
    reader = RecordReader()
    records = reader.feed(data)
    if reader.pending:
        raise RecordingError("truncated record")
    if not records or records[0].kind != TYPE_METADATA:
        raise RecordingError("no metadata record first")
    try:
        metadata = json.loads(records[0].payload)
    except ValueError:
        raise RecordingError("metadata is not JSON") from None
    if not isinstance(metadata, dict) or metadata.get("magic") != MAGIC:
        raise RecordingError("not a MeshCentral relay session")
    ended = records[-1].kind == TYPE_END and records[-1].payload == END_MAGIC
    body = [r for r in records[1:] if r.kind == TYPE_DATA]
    return metadata, body, ended
