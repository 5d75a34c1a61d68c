"""The relay's frame forwarder: client WebSocket frames in, server frames out (sans-IO).

Once two relay sides are paired, their binary frames are not interpreted, only moved:
this codec reads the client frames of one side (RFC 6455 §5.2: masked, any size up to
the limit) and turns each binary data frame into the server frame the other side gets
(same payload unmasked, same FIN and opcode, no mask) without Autobahn's message
reassembly, UTF-8 machinery and re-framing.  Who sends what:

* binary data frames (opcode 2, and the continuation frames of a binary message) ->
  :class:`Forward`: the complete server frame, built in one buffer (header, then the
  payload copied in as it arrives and unmasked in place once complete);
* text data frames (and their continuations), ping, pong and close -> :class:`Frame`: the
  complete client frame as received (still masked), for the full WebSocket
  implementation, which validates text, answers pings and runs the closing handshake;
* anything it does not handle (reserved bits, an unmasked client frame, a reserved
  opcode, a continuation outside a message, a control frame that is fragmented or longer
  than 125 bytes) -> :class:`Handoff` with every byte from that frame on: the full
  implementation takes over and fails the connection as it should;
* a new data frame inside a fragmented binary message (Autobahn never saw that message
  open), a length that is not minimally encoded, a frame or binary message above the
  limits -> :class:`Violation`.  (A binary frame inside a text message goes to Autobahn,
  which knows that message is open and refuses it.)

A client frame: ``FIN|RSV1-3|opcode (1 byte), MASK|len7 (1), [len16 (2) | len64 (8)],
mask key (4), payload XOR key``; the server frame it becomes: the same first byte, len7
without MASK, the same extended length, the payload in clear.

Limits are checked on the header, before any payload is buffered (a frame larger than
``max_frame``, or a binary message growing beyond ``max_message``, is refused at once).
At most one frame is held: the one being received, in a buffer allocated at its header
up to :data:`PREALLOCATE` bytes and grown with its payload beyond.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_MESSAGE_TOO_BIG = 1009

_OPCODE_CONTINUATION = 0
_OPCODE_TEXT = 1
_OPCODE_BINARY = 2
PREALLOCATE = 1024 * 1024  # larger frames get a buffer that grows with their payload
_UNPACK_16 = struct.Struct("!H").unpack_from
_UNPACK_64 = struct.Struct("!Q").unpack_from


def _load_unmask() -> Callable[[bytearray, int, int, bytes], None]:
    """``unmask(buffer, start, length, key)``: XOR ``buffer[start:start + length]`` in place
    with the 4-byte ``key``.  Autobahn's native (SSE2) masker when it is built, called
    directly on our buffer; else Autobahn's masker object; else Python integers."""
    try:
        from _nvx_xormasker import ffi, lib  # Autobahn's NVX extension (CFFI)
    except ImportError:
        ffi = lib = None
    if lib is not None:
        new, process, free = lib.nvx_xormask_new, lib.nvx_xormask_process, \
            lib.nvx_xormask_free
        from_buffer = ffi.from_buffer

        def unmask_native(buffer: bytearray, start: int, length: int, key: bytes) -> None:
            masker = new(from_buffer("uint8_t[]", key))
            if masker == ffi.NULL:
                raise MemoryError("no memory for the WebSocket unmasker")
            try:
                process(masker, from_buffer("uint8_t[]", buffer, require_writable=True)
                        + start, length)
            finally:
                free(masker)

        return unmask_native
    try:
        from autobahn.websocket.xormasker import create_xor_masker
    except ImportError:  # pragma: no cover - Autobahn is a dependency
        return unmask_python

    def unmask_autobahn(buffer: bytearray, start: int, length: int, key: bytes) -> None:
        end = start + length
        buffer[start:end] = create_xor_masker(key, length).process(bytes(buffer[start:end]))

    return unmask_autobahn


def unmask_python(buffer: bytearray, start: int, length: int, key: bytes) -> None:
    """The portable version: one big-integer XOR."""
    end = start + length
    mask = (key * (length // 4 + 1))[:length]
    buffer[start:end] = (int.from_bytes(buffer[start:end], "little")
                         ^ int.from_bytes(mask, "little")).to_bytes(length, "little")


unmask: Callable[[bytearray, int, int, bytes], None] = _load_unmask()


def server_header(length: int, opcode: int, fin: bool = True) -> bytes:
    """The header of an unmasked (server-to-client) frame."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


@dataclass(frozen=True, slots=True)
class Forward:
    """A binary data frame for the other side: ``frame`` is the whole server frame,
    its payload starts at ``start``; ``fin`` ends the message."""

    frame: bytes
    start: int
    fin: bool

    @property
    def payload(self) -> bytes:
        return self.frame[self.start:]


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete client frame (still masked) for the full WebSocket implementation."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Handoff:
    """Everything from here on belongs to the full WebSocket implementation."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the protocol: fail the connection with ``code``."""

    code: int
    reason: str


Event = Union[Forward, Frame, Handoff, Violation]

# Where the parser is inside the current message.
_NO_MESSAGE, _BINARY_MESSAGE, _OTHER_MESSAGE = 0, 1, 2


class FrameForwarder:
    """Feeds on one side's client bytes; see the module docstring."""

    def __init__(self, max_frame: int, max_message: int) -> None:
        self._max_frame = max_frame
        self._max_message = max_message
        self._head = b""  # the start of a frame header split across reads
        self._message = _NO_MESSAGE
        self._message_bytes = 0
        # The frame being received.
        self._buffer: Optional[bytearray] = None
        self._filled = 0  # bytes of _buffer already written
        self._end = 0  # its size when complete
        self._forward = False  # a binary frame (else a frame kept whole, still masked)
        self._start = 0  # where the payload starts in _buffer
        self._key = b""
        self._fin = False
        self._done = False  # after a Handoff or a Violation nothing more is read

    def feed(self, data: bytes) -> list[Event]:
        """The events the bytes ``data`` complete, in order."""
        if self._done:
            return []
        events: list[Event] = []
        if self._head:
            data, self._head = self._head + data, b""
        view: Any = None
        position, size = 0, len(data)
        while position < size:
            buffer = self._buffer
            if buffer is not None:
                filled = self._filled
                take = min(self._end - filled, size - position)
                if view is None:
                    view = memoryview(data)
                if len(buffer) == self._end:  # allocated whole
                    buffer[filled:filled + take] = view[position:position + take]
                else:  # a large frame grows as its payload arrives
                    buffer += view[position:position + take]
                self._filled = filled + take
                position += take
                if self._filled == self._end:
                    events.append(self._complete(buffer))
                continue
            event = self._header(data, position, size)
            if event is None:  # need more bytes for the header
                self._head = data[position:]
                break
            if isinstance(event, int):
                position = event
                if self._buffer is not None and self._filled == self._end:
                    events.append(self._complete(self._buffer))  # an empty payload
                continue
            if isinstance(event, Handoff):
                event = Handoff(data[position:])
            events.append(event)
            self._done = True
            break
        return events

    def _complete(self, buffer: bytearray) -> Event:
        self._buffer = None
        if not self._forward:
            return Frame(bytes(buffer))
        start = self._start
        if len(buffer) > start:
            unmask(buffer, start, len(buffer) - start, self._key)
        return Forward(bytes(buffer), start, self._fin)

    def _header(self, data: bytes, position: int, size: int
                ) -> Union[None, int, Handoff, Violation]:
        """Parse the header at ``position``: the payload's position (and the frame set up),
        None when the header is incomplete, or what ends forwarding."""
        if size - position < 2:
            return None
        first, second = data[position], data[position + 1]
        length = second & 0x7F
        header_length = 6 if length < 126 else 8 if length == 126 else 14
        if first & 0x70 or not second & 0x80:
            return Handoff(b"")  # reserved bits or an unmasked frame: Autobahn refuses it
        if size - position < header_length:
            return None
        if length == 126:
            length = _UNPACK_16(data, position + 2)[0]
            if length < 126:
                return Violation(CLOSE_PROTOCOL_ERROR, "non-minimal frame length")
        elif length == 127:
            length = _UNPACK_64(data, position + 2)[0]
            if length < 65536 or length >> 63:
                return Violation(CLOSE_PROTOCOL_ERROR, "invalid frame length")
        opcode = first & 0x0F
        fin = bool(first & 0x80)
        payload_at = position + header_length
        if opcode == _OPCODE_BINARY or (opcode == _OPCODE_CONTINUATION
                                        and self._message == _BINARY_MESSAGE):
            if opcode == _OPCODE_BINARY and self._message != _NO_MESSAGE:
                if self._message == _OTHER_MESSAGE:
                    return self._other_frame(data, position, payload_at, length, fin, opcode)
                return Violation(CLOSE_PROTOCOL_ERROR,
                                 "new data frame inside a fragmented message")
            if length > self._max_frame:
                return Violation(CLOSE_MESSAGE_TOO_BIG,
                                 f"frame of {length} bytes exceeds {self._max_frame}")
            total = (self._message_bytes if opcode == _OPCODE_CONTINUATION else 0) + length
            if total > self._max_message:
                return Violation(CLOSE_MESSAGE_TOO_BIG,
                                 f"message exceeds {self._max_message} bytes")
            self._message = _NO_MESSAGE if fin else _BINARY_MESSAGE
            self._message_bytes = 0 if fin else total
            self._start_frame(server_header(length, opcode, fin), length, forward=True)
            self._start, self._fin = self._filled, fin
            self._key = data[payload_at - 4:payload_at]
            return payload_at
        if opcode == _OPCODE_TEXT and self._message == _BINARY_MESSAGE:
            return Violation(CLOSE_PROTOCOL_ERROR,
                             "new data frame inside a fragmented message")
        if opcode > 10 or 2 < opcode < 8 or (opcode == _OPCODE_CONTINUATION
                                            and self._message == _NO_MESSAGE):
            return Handoff(b"")  # reserved opcode / stray continuation: Autobahn refuses it
        if opcode >= 8 and (length > 125 or not fin):
            return Handoff(b"")  # a control frame too long or fragmented: the same
        return self._other_frame(data, position, payload_at, length, fin, opcode)

    def _other_frame(self, data: bytes, position: int, payload_at: int, length: int,
                     fin: bool, opcode: int) -> Union[int, Violation]:
        """Text, continuation of text, ping, pong, close: kept whole for Autobahn."""
        if length > self._max_frame:
            return Violation(CLOSE_MESSAGE_TOO_BIG,
                             f"frame of {length} bytes exceeds {self._max_frame}")
        if opcode < 8:
            self._message = _NO_MESSAGE if fin else _OTHER_MESSAGE
        self._start_frame(data[position:payload_at], length, forward=False)
        return payload_at

    def _start_frame(self, head: bytes, length: int, forward: bool) -> None:
        """The buffer of a frame whose payload follows: allocated whole up to
        :data:`PREALLOCATE` bytes, else grown as the payload arrives (a header alone
        must not make the server reserve a large buffer)."""
        if length <= PREALLOCATE:
            buffer = bytearray(len(head) + length)
            buffer[:len(head)] = head
        else:
            buffer = bytearray(head)
        self._buffer, self._filled, self._end = buffer, len(head), len(head) + length
        self._forward = forward
