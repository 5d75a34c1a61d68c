"""The relay's frame forwarder (meshd.relay.frames): client frames in, server frames
out; binary frames unmasked and re-headed, everything else kept whole for Autobahn or
handed back, limits checked on the header; fed whole and one byte at a time."""

from __future__ import annotations

import os
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from meshd.relay import frames
from meshd.relay.frames import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    Forward,
    Frame,
    FrameForwarder,
    Handoff,
    Violation,
    server_header,
    unmask_python,
)

KEY = b"\x1f\x8b\x3c\xd4"
LIMIT = 1 << 20


def masked(payload: bytes, opcode: int = 2, fin: bool = True, key: bytes = KEY,
           rsv: int = 0) -> bytes:
    """A client frame as a browser or an agent sends it."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body


def feed_all(data: bytes, one_by_one: bool = False, **limits: Any) -> list[Any]:
    forwarder = FrameForwarder(limits.get("max_frame", LIMIT),
                               limits.get("max_message", LIMIT))
    if not one_by_one:
        return forwarder.feed(data)
    events: list[Any] = []
    for i in range(len(data)):
        if events and type(events[-1]) is Handoff:
            # As the adapter does: once handed back, later bytes go to Autobahn directly.
            events[-1] = Handoff(events[-1].data + data[i:])
            break
        events += forwarder.feed(data[i:i + 1])
    return events


class ForwarderTests(TestCase):
    def both(self, data: bytes, **limits: Any) -> list[Any]:
        whole = feed_all(data, **limits)
        self.assertEqual(feed_all(data, one_by_one=True, **limits), whole)
        return whole

    def test_binary_frames_become_server_frames(self) -> None:
        """Binary frames of each length encoding come out unmasked with a server header
        (same FIN and opcode, no mask), whole and byte by byte."""
        for size in (0, 5, 125, 126, 65535, 65536, 70000):
            payload = os.urandom(size)
            [event] = self.both(masked(payload))
            self.assertEqual(event, Forward(server_header(size, 2) + payload,
                                            len(server_header(size, 2)), True))
            self.assertEqual(event.payload, payload)

    def test_large_frame_grows_with_its_payload(self) -> None:
        """A frame above PREALLOCATE is forwarded intact whatever the read sizes, and its
        header alone does not make the forwarder reserve its size."""
        payload = os.urandom(frames.PREALLOCATE + 12345)
        data = masked(payload)
        for step in (len(data), 16384, 1000):
            forwarder, events = FrameForwarder(LIMIT * 4, LIMIT * 4), list[Any]()
            for i in range(0, len(data), step):
                events += forwarder.feed(data[i:i + step])
            self.assertEqual([e.payload for e in events], [payload])
        forwarder = FrameForwarder(LIMIT * 4, LIMIT * 4)
        forwarder.feed(data[:14])
        self.assertLess(len(forwarder._buffer or b""), 64)

    def test_several_frames_in_one_read(self) -> None:
        """Frames arriving together come out one event each, in order."""
        data = masked(b"one") + masked(b"two", key=b"\x01\x02\x03\x04") + masked(b"x" * 300)
        self.assertEqual([e.payload for e in self.both(data)], [b"one", b"two", b"x" * 300])

    def test_fragmented_binary_message(self) -> None:
        """Fragments are forwarded as fragments: the first binary, then continuations;
        FIN only on the last."""
        data = (masked(b"ab", fin=False) + masked(b"cd", opcode=0, fin=False)
                + masked(b"ef", opcode=0))
        events = self.both(data)
        self.assertEqual([(e.frame[:2], e.payload, e.fin) for e in events],
                         [(b"\x02\x02", b"ab", False), (b"\x00\x02", b"cd", False),
                          (b"\x80\x02", b"ef", True)])

    def test_text_and_control_frames_kept_whole(self) -> None:
        """Text frames, their continuations, ping, pong and close are handed on as the
        client sent them (still masked), between the binary frames around them."""
        text = masked(b"hello", opcode=1, fin=False)
        more = masked(b" world", opcode=0)
        ping, pong = masked(b"p", opcode=9), masked(b"", opcode=10)
        close = masked(struct.pack("!H", 1000), opcode=8)
        data = masked(b"bin") + text + ping + more + pong + masked(b"bin2") + close
        events = self.both(data)
        self.assertEqual(events, [
            Forward(server_header(3, 2) + b"bin", 2, True), Frame(text), Frame(ping),
            Frame(more), Frame(pong), Forward(server_header(4, 2) + b"bin2", 2, True),
            Frame(close)])

    def test_control_frame_inside_binary_message(self) -> None:
        """A ping between two fragments of a binary message goes to Autobahn; the message
        goes on."""
        ping = masked(b"", opcode=9)
        events = self.both(masked(b"a", fin=False) + ping + masked(b"b", opcode=0))
        self.assertEqual([type(e) for e in events], [Forward, Frame, Forward])
        self.assertEqual(events[1], Frame(ping))

    def test_odd_frames_handed_back(self) -> None:
        """Reserved bits, an unmasked frame, a reserved opcode or a stray continuation
        hand every byte from that frame on back to Autobahn, and nothing more is read."""
        unmasked = b"\x82\x03abc"
        for odd in (masked(b"x", rsv=4), unmasked, masked(b"x", opcode=3),
                    masked(b"x", opcode=11), masked(b"x", opcode=0),
                    masked(b"p" * 126, opcode=9), masked(b"p", opcode=9, fin=False)):
            tail = odd + masked(b"after")
            events = self.both(masked(b"before") + tail)
            self.assertEqual(events[0].payload, b"before")
            self.assertEqual(events[1:], [Handoff(tail)])
        forwarder = FrameForwarder(LIMIT, LIMIT)
        forwarder.feed(unmasked)
        self.assertEqual(forwarder.feed(masked(b"more")), [])

    def test_interleaved_messages_refused(self) -> None:
        """A new binary or text frame inside a fragmented binary message is a protocol
        error; a binary frame inside a text message goes to Autobahn, which refuses it."""
        opened = masked(b"a", fin=False)
        for intruder in (masked(b"b"), masked(b"t", opcode=1)):
            events = self.both(opened + intruder)
            self.assertEqual(events[1:], [Violation(CLOSE_PROTOCOL_ERROR,
                                                    "new data frame inside a fragmented "
                                                    "message")])
        text = masked(b"t", opcode=1, fin=False)
        self.assertEqual(self.both(text + masked(b"b")), [Frame(text), Frame(masked(b"b"))])

    def test_limits_checked_on_the_header(self) -> None:
        """A frame above the limit is refused from its header alone (nothing buffered);
        so is a binary message whose fragments add up above the message limit."""
        header = b"\x82\xff" + struct.pack("!Q", 1 << 40) + KEY
        [event] = self.both(header)
        self.assertEqual(event.code, CLOSE_MESSAGE_TOO_BIG)
        [event] = self.both(masked(b"x" * 200, opcode=1), max_frame=100)
        self.assertEqual(event.code, CLOSE_MESSAGE_TOO_BIG)
        data = masked(b"x" * 60, fin=False) + masked(b"y" * 60, opcode=0)
        events = self.both(data, max_frame=100, max_message=100)
        self.assertEqual(type(events[0]), Forward)
        self.assertEqual(events[1].code, CLOSE_MESSAGE_TOO_BIG)

    def test_bad_lengths_refused(self) -> None:
        """Lengths that are not minimally encoded, or have the top bit set, are errors."""
        for header in (b"\x82\xfe\x00\x05", b"\x82\xff" + struct.pack("!Q", 5),
                       b"\x82\xff" + struct.pack("!Q", 1 << 63)):
            [event] = self.both(header + KEY + b"xxxxx")
            self.assertEqual(event.code, CLOSE_PROTOCOL_ERROR)

    def test_unmaskers_agree(self) -> None:
        """The native unmasker and the portable one give the same bytes at any offset."""
        data = os.urandom(5000)
        for start, length in ((0, 5000), (3, 4990), (7, 1), (0, 0)):
            native, portable = bytearray(data), bytearray(data)
            frames.unmask(native, start, length, KEY)
            unmask_python(portable, start, length, KEY)
            self.assertEqual(native, portable)


_frame_specs = st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=700),
                                  st.binary(min_size=4, max_size=4)), max_size=8)


class ForwarderPropertyTests(TestCase):
    @settings(max_examples=150, deadline=None)
    @given(_frame_specs, st.lists(st.integers(1, 900), min_size=1, max_size=20))
    def test_frames_survive_any_split(self, specs: list[tuple[int, bytes, bytes]],
                                      cuts: list[int]) -> None:
        """Whatever the read sizes, binary payloads come out unmasked and text frames
        come out as sent, in order."""
        data = b"".join(masked(p, opcode=o, key=k) for o, p, k in specs)
        forwarder, events, position, i = FrameForwarder(LIMIT, LIMIT), [], 0, 0
        while position < len(data):
            size = cuts[i % len(cuts)]
            events += forwarder.feed(data[position:position + size])
            position, i = position + size, i + 1
        expected = [Forward(server_header(len(p), 2) + p, len(server_header(len(p), 2)),
                            True) if o == 2 else Frame(masked(p, opcode=o, key=k))
                    for o, p, k in specs]
        self.assertEqual(events, expected)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_random_bytes(self, data: bytes) -> None:
        """Random bytes give events only (never an exception), and a Handoff or a
        Violation is the last one."""
        events = FrameForwarder(1000, 2000).feed(data)
        for event in events[:-1]:
            self.assertIn(type(event), (Forward, Frame))
