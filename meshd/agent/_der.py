"""A minimal, bounds-checked DER reader: just enough to walk certificates and PKCS#7 blobs.

Only definite lengths and low tag numbers (< 31) are accepted, which covers every structure
read here (X.509, CMS SignedData). Every malformed input raises :class:`DerError`; nothing
slices beyond the buffer or the enclosing element.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DerError", "Tlv", "read_tlv", "children", "expect"]

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
OID = 0x06
CONTEXT_0 = 0xA0
CONTEXT_1 = 0xA1

_MAX_LENGTH_OCTETS = 4


class DerError(ValueError):
    """The bytes are not the DER structure that was expected."""


@dataclass(frozen=True, slots=True)
class Tlv:
    """One element: ``buf[start:body]`` is its header, ``buf[body:end]`` its contents."""

    tag: int
    start: int
    body: int
    end: int


def read_tlv(buf: bytes, pos: int, end: int) -> Tlv:
    """Read the element starting at ``pos``, which must lie entirely before ``end``."""
    if pos + 2 > end:
        raise DerError("truncated element header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not supported")
    first = buf[pos + 1]
    body = pos + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > _MAX_LENGTH_OCTETS or body + count > end:
            raise DerError("bad length octets")
        length = int.from_bytes(buf[body : body + count], "big")
        body += count
    if length > end - body:
        raise DerError("element runs past its container")
    return Tlv(tag, pos, body, body + length)


def children(buf: bytes, parent: Tlv) -> list[Tlv]:
    """All elements directly inside ``parent`` (a constructed element)."""
    result: list[Tlv] = []
    pos = parent.body
    while pos < parent.end:
        item = read_tlv(buf, pos, parent.end)
        result.append(item)
        pos = item.end
    return result


def expect(item: Tlv, tag: int, what: str) -> Tlv:
    """Return ``item`` if it has ``tag``, else raise a :class:`DerError` naming ``what``."""
    if item.tag != tag:
        raise DerError(f"{what}: expected tag 0x{tag:02x}, got 0x{item.tag:02x}")
    return item
