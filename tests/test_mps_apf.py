"""Tests for meshd.mps.apf: the APF codec and incremental parser (no sockets)."""

from __future__ import annotations

import json
import uuid
from typing import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshd.mps import apf
from meshd.mps.apf import ApfParser, ApfProtocolError, Direction, MessageType


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def s(text: bytes) -> bytes:
    return u32(len(text)) + text


SYSTEM_ID = uuid.UUID("12345678-9abc-def0-1122-334455667788")
USER = b"zQbukjKfEEljEFCU"
PFWD = b"pfwd@amt.intel.com"
AUTH = b"auth@amt.intel.com"
JSON_TEXT = b'{"action":"connType","value":2}'

# (name, wire bytes written out by hand from specs/mps-apf.md section 2, message, direction)
VECTORS: list[tuple[str, bytes, apf.Message, Direction]] = [
    ("disconnect", b"\x01" + u32(11) + b"\x00\x00",
     apf.Disconnect(apf.DisconnectReason.BY_APPLICATION), Direction.TO_SERVER),
    ("service request auth", b"\x05" + s(AUTH),
     apf.ServiceRequest("auth@amt.intel.com"), Direction.TO_SERVER),
    ("service accept pfwd", b"\x06" + s(PFWD),
     apf.ServiceAccept("pfwd@amt.intel.com"), Direction.TO_DEVICE),
    ("userauth password",
     b"\x32" + s(USER) + s(PFWD) + s(b"password") + b"\x00" + s(b"P@ssw0rd!"),
     apf.UserAuthRequest("zQbukjKfEEljEFCU", "pfwd@amt.intel.com", "password", b"P@ssw0rd!"),
     Direction.TO_SERVER),
    ("userauth none", b"\x32" + s(USER) + s(PFWD) + s(b"none"),
     apf.UserAuthRequest("zQbukjKfEEljEFCU", "pfwd@amt.intel.com", "none", None),
     Direction.TO_SERVER),
    ("userauth failure", b"\x33" + s(b"password") + b"\x00",
     apf.UserAuthFailure(), Direction.TO_DEVICE),
    ("userauth success", b"\x34", apf.UserAuthSuccess(), Direction.TO_DEVICE),
    ("tcpip-forward", b"\x50" + s(b"tcpip-forward") + b"\x01" + s(b"") + u32(16992),
     apf.TcpipForward("", 16992), Direction.TO_SERVER),
    ("cancel-tcpip-forward",
     b"\x50" + s(b"cancel-tcpip-forward") + b"\x01" + s(b"amt.local") + u32(16993),
     apf.CancelTcpipForward("amt.local", 16993), Direction.TO_SERVER),
    ("udp-send-to",
     b"\x50" + s(b"udp-send-to@amt.intel.com") + b"\x00" + s(b"1.2.3.4") + u32(514)
     + s(b"5.6.7.8") + u32(1024) + s(b"abc"),
     apf.UdpSendTo("1.2.3.4", 514, "5.6.7.8", 1024, b"abc"), Direction.TO_SERVER),
    ("request success port", b"\x51" + u32(16992), apf.RequestSuccess(16992),
     Direction.TO_DEVICE),
    ("request success", b"\x51", apf.RequestSuccess(), Direction.TO_DEVICE),
    ("request failure", b"\x52", apf.RequestFailure(), Direction.TO_DEVICE),
    ("channel open",
     b"\x5a" + s(b"forwarded-tcpip") + u32(4) + u32(32768) + u32(0xFFFFFFFF) + s(b"")
     + u32(16992) + s(b"1.2.3.4") + u32(1028),
     apf.ChannelOpen("forwarded-tcpip", 4, 32768, "", 16992, "1.2.3.4", 1028),
     Direction.TO_DEVICE),
    ("channel open confirmation", b"\x5b" + u32(4) + u32(1) + u32(4096) + u32(0xFFFFFFFF),
     apf.ChannelOpenConfirmation(4, 1, 4096), Direction.TO_SERVER),
    ("channel open failure", b"\x5c" + u32(7) + u32(3) + u32(0) + u32(0),
     apf.ChannelOpenFailure(7, apf.OpenFailureReason.UNKNOWN_CHANNEL_TYPE),
     Direction.TO_DEVICE),
    ("window adjust", b"\x5d" + u32(4) + u32(16384), apf.ChannelWindowAdjust(4, 16384),
     Direction.TO_SERVER),
    ("channel data", b"\x5e" + u32(4) + u32(5) + b"hello", apf.ChannelData(4, b"hello"),
     Direction.TO_SERVER),
    ("channel close", b"\x61" + u32(4), apf.ChannelClose(4), Direction.TO_SERVER),
    ("protocol version",
     b"\xc0" + u32(1) + u32(0) + u32(0)
     + bytes.fromhex("78563412bc9af0de1122334455667788") + bytes(64),
     apf.ProtocolVersion(1, 0, 0, SYSTEM_ID), Direction.TO_SERVER),
    ("keepalive request", b"\xd0" + u32(255), apf.KeepAliveRequest(255), Direction.TO_SERVER),
    ("keepalive reply", b"\xd1" + u32(255), apf.KeepAliveReply(255), Direction.TO_DEVICE),
    ("keepalive options request", b"\xd2" + u32(30) + u32(0),
     apf.KeepAliveOptionsRequest(30, 0), Direction.TO_DEVICE),
    ("keepalive options reply", b"\xd3" + u32(30) + u32(0),
     apf.KeepAliveOptionsReply(30, 0), Direction.TO_SERVER),
    ("json control", b"\xfa" + s(JSON_TEXT),
     apf.JsonControl.from_value({"action": "connType", "value": 2}), Direction.TO_SERVER),
]

# Lengths from the spec's message table.
SPEC_LENGTHS = {"disconnect": 7, "userauth failure": 14, "userauth success": 1,
                "request success port": 5, "request success": 1, "request failure": 1,
                "channel open confirmation": 17, "channel open failure": 17,
                "window adjust": 9, "channel close": 5, "protocol version": 93,
                "keepalive request": 5, "keepalive reply": 5,
                "keepalive options request": 9, "keepalive options reply": 9}


def parser_for(message: apf.Message, direction: Direction) -> ApfParser:
    parser = ApfParser(direction)
    if isinstance(message, apf.RequestSuccess):
        parser.expect_request_reply(message.port is not None)
    elif isinstance(message, apf.RequestFailure):
        parser.expect_request_reply(False)
    return parser


def feed_bytewise(parser: ApfParser, data: bytes) -> list[apf.Message]:
    out: list[apf.Message] = []
    for i in range(len(data)):
        out += parser.feed(data[i:i + 1])
    return out


class VectorTests(unittest.TestCase):
    """Byte layouts from the spec, decoded and encoded."""

    def test_encode_matches_vectors(self) -> None:
        """Every message encodes to the hand-written bytes of the spec."""
        for name, wire, message, _ in VECTORS:
            self.assertEqual(message.encode(), wire, name)

    def test_decode_matches_vectors(self) -> None:
        """decode() of every vector gives the message back."""
        for name, wire, message, _ in VECTORS:
            self.assertEqual(apf.decode(wire), message, name)
            self.assertEqual(type(message).decode(wire), message, name)

    def test_spec_lengths(self) -> None:
        """Fixed-size messages have the spec's lengths (USERAUTH_FAILURE 14, not 15)."""
        vectors = {name: wire for name, wire, _, _ in VECTORS}
        for name, length in SPEC_LENGTHS.items():
            self.assertEqual(len(vectors[name]), length, name)

    def test_channel_open_length(self) -> None:
        """CHANNEL_OPEN is 33 bytes plus its three strings."""
        message = apf.ChannelOpen("forwarded-tcpip", 4, 32768, "host", 16992, "1.2.3.4", 1028)
        self.assertEqual(len(message.encode()), 33 + 15 + 4 + 7)

    def test_fed_whole(self) -> None:
        """Each vector fed in one piece to a parser of its direction yields the message."""
        for name, wire, message, direction in VECTORS:
            parser = parser_for(message, direction)
            self.assertEqual(parser.feed(wire), [message], name)
            self.assertEqual(parser.buffered, 0, name)

    def test_fed_bytewise(self) -> None:
        """Each vector fed one byte at a time yields the message exactly at its last byte."""
        for name, wire, message, direction in VECTORS:
            parser = parser_for(message, direction)
            self.assertEqual(feed_bytewise(parser, wire[:-1]), [], name)
            self.assertEqual(parser.feed(wire[-1:]), [message], name)

    def test_stream_of_device_messages(self) -> None:
        """All device-to-server vectors back to back parse in order, whole and bytewise."""
        messages = [m for _, _, m, d in VECTORS if d is Direction.TO_SERVER]
        stream = b"".join(m.encode() for m in messages)
        self.assertEqual(ApfParser().feed(stream), messages)
        self.assertEqual(feed_bytewise(ApfParser(), stream), messages)

    def test_userauth_split_across_reads(self) -> None:
        """A USERAUTH_REQUEST split anywhere is reassembled (MeshCentral drops the connection)."""
        wire = dict((n, w) for n, w, _, _ in VECTORS)["userauth password"]
        for cut in range(1, len(wire)):
            parser = ApfParser()
            self.assertEqual(parser.feed(wire[:cut]), [])
            self.assertEqual(len(parser.feed(wire[cut:])), 1)

    def test_uuid_is_guid_order(self) -> None:
        """PROTOCOLVERSION carries the system UUID with the first three groups little-endian."""
        message = apf.decode(dict((n, w) for n, w, _, _ in VECTORS)["protocol version"])
        assert isinstance(message, apf.ProtocolVersion)
        self.assertEqual(str(message.system_id), "12345678-9abc-def0-1122-334455667788")

    def test_request_reply_shapes(self) -> None:
        """A device-side parser reads REQUEST_SUCCESS with or without port as it was told."""
        parser = ApfParser(Direction.TO_DEVICE)
        parser.expect_request_reply(True)
        parser.expect_request_reply(False)
        parser.expect_request_reply(False)
        stream = b"\x51" + u32(16992) + b"\x51" + b"\x52"
        self.assertEqual(feed_bytewise(parser, stream),
                         [apf.RequestSuccess(16992), apf.RequestSuccess(), apf.RequestFailure()])

    def test_unsolicited_request_reply(self) -> None:
        """REQUEST_SUCCESS nobody asked for is an error on a device-side parser."""
        self.assertRaises(ApfProtocolError, ApfParser(Direction.TO_DEVICE).feed, b"\x51")

    def test_expect_reply_only_device_side(self) -> None:
        """Only a TO_DEVICE parser takes reply expectations."""
        self.assertRaises(ValueError, ApfParser().expect_request_reply, True)

    def test_dispatch_table_complete(self) -> None:
        """The dispatch table has a reader for every message type."""
        self.assertEqual(set(apf.DECODERS), set(MessageType))

    def test_docstrings_show_layout(self) -> None:
        """Each message class docstring shows its wire layout starting with its type byte."""
        for _, _, message, _ in VECTORS:
            doc = type(message).__doc__ or ""
            self.assertIn(f"u8 {int(message.TYPE)}", doc, type(message).__name__)

    def test_password_not_in_repr(self) -> None:
        """repr() of a USERAUTH_REQUEST does not show the password."""
        message = apf.UserAuthRequest("u", "pfwd@amt.intel.com", "password", b"secret")
        self.assertNotIn("secret", repr(message))

    def test_json_value(self) -> None:
        """JsonControl.value() parses the text; from_value() writes compact JSON."""
        message = apf.JsonControl.from_value({"action": "connType", "value": 2})
        self.assertEqual(message.text.encode(), JSON_TEXT)
        self.assertEqual(message.value(), json.loads(JSON_TEXT))


class MalformedTests(unittest.TestCase):
    """Truncated, oversized and unknown input all raise ApfProtocolError."""

    def assertRejected(self, data: bytes, direction: Direction = Direction.TO_SERVER) -> None:
        """data is rejected by decode(), by a parser in one piece and byte by byte."""
        self.assertRaises(ApfProtocolError, apf.decode, data)
        self.assertRaises(ApfProtocolError, ApfParser(direction).feed, data)
        self.assertRaises(ApfProtocolError, feed_bytewise, ApfParser(direction), data)

    def test_truncated_decode(self) -> None:
        """decode() of any vector missing its last byte(s) is an error, never struct.error."""
        for name, wire, _, _ in VECTORS:
            for cut in range(len(wire)):
                if wire[:cut] == b"\x51":
                    continue  # a complete port-less REQUEST_SUCCESS
                self.assertRaises(ApfProtocolError, apf.decode, wire[:cut])

    def test_class_decode_checks_type(self) -> None:
        """Cls.decode() refuses a valid message of another class."""
        self.assertRaises(ApfProtocolError, apf.ChannelClose.decode, b"\xd0" + u32(1))

    def test_parser_data_limit_range(self) -> None:
        """A parser cannot be built with a data limit above MAX_CHANNEL_DATA."""
        self.assertRaises(ValueError, ApfParser, max_channel_data=apf.MAX_CHANNEL_DATA + 1)

    def test_trailing_bytes_decode(self) -> None:
        """decode() refuses bytes after the message."""
        self.assertRaises(ApfProtocolError, apf.decode, b"\xd0" + u32(1) + b"\x00")

    def test_truncated_stream_waits(self) -> None:
        """A parser holding a truncated message returns nothing and keeps the bytes."""
        wire = apf.ChannelData(4, b"x" * 100).encode()
        parser = ApfParser()
        self.assertEqual(parser.feed(wire[:50]), [])
        self.assertEqual(parser.buffered, 50)

    def test_unknown_types(self) -> None:
        """Type bytes that APF does not define are rejected at once."""
        for code in (0, 2, 7, 49, 53, 83, 95, 96, 98, 191, 212, 249, 251, 255):
            self.assertRejected(bytes((code,)))

    def test_wrong_direction(self) -> None:
        """Server-only messages from a device (and device-only ones to it) are rejected."""
        for data in (b"\x34", b"\x06" + s(PFWD), b"\x52", b"\xd2" + u32(30) + u32(0)):
            self.assertRaises(ApfProtocolError, ApfParser(Direction.TO_SERVER).feed, data)
        for data in (b"\x05" + s(AUTH), b"\xc0"):
            self.assertRaises(ApfProtocolError, ApfParser(Direction.TO_DEVICE).feed, data)

    def test_unknown_global_request(self) -> None:
        """An unknown GLOBAL_REQUEST name is an error, not a desynchronised stream."""
        self.assertRejected(b"\x50" + s(b"keepalive@openssh.com") + b"\x01")

    def test_unknown_auth_method(self) -> None:
        """User-auth methods other than password and none cannot be framed: rejected."""
        self.assertRejected(b"\x32" + s(USER) + s(PFWD) + s(b"publickey") + b"\x00")

    def test_password_change_flag(self) -> None:
        """A non-zero change-password flag is rejected."""
        self.assertRejected(b"\x32" + s(USER) + s(PFWD) + s(b"password") + b"\x01" + s(b"p"))

    def test_invalid_utf8(self) -> None:
        """A string field that is not UTF-8 is rejected."""
        self.assertRejected(b"\x05" + s(b"\xff\xfe"))

    def test_after_failure(self) -> None:
        """A parser that failed keeps failing and holds nothing."""
        parser = ApfParser()
        self.assertRaises(ApfProtocolError, parser.feed, b"\x00")
        self.assertEqual(parser.buffered, 0)
        self.assertRaises(ApfProtocolError, parser.feed, b"\xd0" + u32(1))

    def test_error_carries_parsed(self) -> None:
        """The error lists messages decoded earlier in the same feed."""
        parser = ApfParser()
        try:
            parser.feed(b"\xd0" + u32(1) + b"\x00")
        except ApfProtocolError as error:
            self.assertEqual(error.parsed, [apf.KeepAliveRequest(1)])
        else:
            self.fail("no error")


# Each case: (what, bytes up to and including an oversized length field).
OVERSIZED: list[tuple[str, bytes]] = [
    ("user", b"\x32" + u32(2049)),
    ("service", b"\x32" + s(USER) + u32(2049)),
    ("method", b"\x32" + s(USER) + s(PFWD) + u32(2049)),
    ("password", b"\x32" + s(USER) + s(PFWD) + s(b"password") + b"\x00" + u32(2049)),
    ("service request", b"\x05" + u32(2049)),
    ("global request name", b"\x50" + u32(2049)),
    ("forward address", b"\x50" + s(b"tcpip-forward") + b"\x01" + u32(2049)),
    ("cancel address", b"\x50" + s(b"cancel-tcpip-forward") + b"\x01" + u32(2049)),
    ("udp address", b"\x50" + s(b"udp-send-to@amt.intel.com") + b"\x00" + u32(2049)),
    ("udp data", b"\x50" + s(b"udp-send-to@amt.intel.com") + b"\x00" + s(b"a") + u32(1)
     + s(b"b") + u32(2) + u32(65536)),
    ("channel type", b"\x5a" + u32(2049)),
    ("channel target", b"\x5a" + s(b"forwarded-tcpip") + u32(1) + u32(2) + u32(3) + u32(2049)),
    ("channel source", b"\x5a" + s(b"forwarded-tcpip") + u32(1) + u32(2) + u32(3) + s(b"")
     + u32(16992) + u32(2049)),
    ("open failure text", b"\x5c" + u32(1) + u32(2) + u32(2049)),
    ("channel data", b"\x5e" + u32(4) + u32(apf.MAX_CHANNEL_DATA + 1)),
    ("channel data 4 GiB", b"\x5e" + u32(4) + u32(0xFFFFFFFF)),
    ("json", b"\xfa" + u32(apf.MAX_JSON + 1)),
]


class LimitTests(unittest.TestCase):
    """Length fields are checked before their bodies are buffered."""

    def test_oversized_rejected_on_header(self) -> None:
        """An oversized length field raises as soon as its four bytes arrive."""
        for what, header in OVERSIZED:
            parser = ApfParser()
            feed_bytewise(parser, header[:-1])
            self.assertLess(parser.buffered, len(header), what)
            self.assertRaises(ApfProtocolError, parser.feed, header[-1:])
            self.assertRaises(ApfProtocolError, apf.decode, header)

    def test_limits_are_inclusive(self) -> None:
        """Strings of exactly 2048 bytes and a 1 MiB JSON are accepted."""
        big = "a" * apf.MAX_STRING
        for message in (apf.ServiceRequest(big),
                        apf.UserAuthRequest(big, big, "password", big.encode()),
                        apf.TcpipForward(big, 1),
                        apf.ChannelOpen(big, 1, 2, big, 3, big, 4),
                        apf.JsonControl("1" * apf.MAX_JSON)):
            self.assertEqual(ApfParser().feed(message.encode()), [message])

    def test_channel_data_limit_configurable(self) -> None:
        """A parser built with a smaller data limit enforces it on the header."""
        parser = ApfParser(max_channel_data=32768)
        self.assertEqual(parser.feed(apf.ChannelData(4, b"x" * 32768).encode()),
                         [apf.ChannelData(4, b"x" * 32768)])
        self.assertRaises(ApfProtocolError, parser.feed, b"\x5e" + u32(4) + u32(32769))

    def test_buffer_bounded(self) -> None:
        """While a maximal message trickles in, the buffer never exceeds MAX_MESSAGE."""
        parser = ApfParser()
        wire = apf.JsonControl("1" * apf.MAX_JSON).encode()
        self.assertEqual(len(wire), apf.MAX_MESSAGE)
        for start in range(0, len(wire) - 1, 65536):
            parser.feed(wire[start:min(start + 65536, len(wire) - 1)])
            self.assertLessEqual(parser.buffered, apf.MAX_MESSAGE)
        self.assertEqual(len(parser.feed(wire[-1:])), 1)
        self.assertEqual(parser.buffered, 0)

    def test_constructors_check_fields(self) -> None:
        """Messages refuse out-of-range fields, so encode() never builds bad bytes."""
        bad: list[Callable[[], object]] = [
            lambda: apf.ServiceRequest("a" * 2049),
            lambda: apf.KeepAliveRequest(-1),
            lambda: apf.KeepAliveRequest(2 ** 32),
            lambda: apf.ChannelClose(2 ** 32),
            lambda: apf.UserAuthRequest("u", "s", "password", None),
            lambda: apf.UserAuthRequest("u", "s", "none", b"pw"),
            lambda: apf.UserAuthRequest("u", "s", "publickey", None),
            lambda: apf.UserAuthRequest("u", "s", "password", b"p" * 2049),
            lambda: apf.ProtocolVersion(1, 0, 0, SYSTEM_ID, b"short"),
            lambda: apf.Disconnect(1, 65536),
            lambda: apf.JsonControl("x" * (apf.MAX_JSON + 1)),
            lambda: apf.UdpSendTo("a", 1, "b", 2, b"x" * 65536),
        ]
        for make in bad:
            self.assertRaises(ValueError, make)


# --- property tests ------------------------------------------------------------------

u32s = st.integers(0, apf.U32_MAX)
texts = st.text(max_size=24)
blobs = st.binary(max_size=64)

TO_SERVER_MESSAGES = st.one_of(
    st.builds(apf.Disconnect, u32s, st.integers(0, 0xFFFF)),
    st.builds(apf.ServiceRequest, texts),
    st.builds(apf.UserAuthRequest, texts, texts, st.just("password"), blobs),
    st.builds(apf.UserAuthRequest, texts, texts, st.just("none"), st.none()),
    st.builds(apf.TcpipForward, texts, u32s, st.booleans()),
    st.builds(apf.CancelTcpipForward, texts, u32s, st.booleans()),
    st.builds(apf.UdpSendTo, texts, u32s, texts, u32s, blobs, st.booleans()),
    st.builds(apf.ChannelOpen, texts, u32s, u32s, texts, u32s, texts, u32s, u32s),
    st.builds(apf.ChannelOpenConfirmation, u32s, u32s, u32s, u32s),
    st.builds(apf.ChannelOpenFailure, u32s, u32s, texts, texts),
    st.builds(apf.ChannelWindowAdjust, u32s, u32s),
    st.builds(apf.ChannelData, u32s, blobs),
    st.builds(apf.ChannelClose, u32s),
    st.builds(apf.ProtocolVersion, u32s, u32s, u32s, st.uuids(), st.binary(min_size=64,
                                                                          max_size=64)),
    st.builds(apf.KeepAliveRequest, u32s),
    st.builds(apf.KeepAliveReply, u32s),
    st.builds(apf.KeepAliveOptionsReply, u32s, u32s),
    st.builds(apf.JsonControl, st.text(max_size=64)),
)

TO_DEVICE_ONLY = st.one_of(
    st.builds(apf.ServiceAccept, texts),
    st.builds(apf.UserAuthFailure, texts, st.booleans()),
    st.builds(apf.UserAuthSuccess),
    st.builds(apf.RequestSuccess, st.none() | u32s),
    st.builds(apf.RequestFailure),
    st.builds(apf.KeepAliveOptionsRequest, u32s, u32s),
)

ALL_MESSAGES = TO_SERVER_MESSAGES | TO_DEVICE_ONLY


# Explicit per test, so this module does not change Hypothesis settings for others.
FAST = settings(max_examples=150, deadline=None)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


class PropertyTests(unittest.TestCase):
    """Hypothesis properties of the codec."""

    @FAST
    @given(ALL_MESSAGES)
    def test_round_trip(self, message: apf.Message) -> None:
        """decode(encode(m)) == m for every message."""
        self.assertEqual(apf.decode(message.encode()), message)

    @FAST
    @given(st.lists(TO_SERVER_MESSAGES, max_size=8), st.lists(st.integers(0, 10 ** 6)))
    def test_stream_round_trip(self, messages: list[apf.Message], cuts: list[int]) -> None:
        """Device messages concatenated and cut anywhere parse back to the same list."""
        stream = b"".join(m.encode() for m in messages)
        parser = ApfParser()
        out: list[apf.Message] = []
        for piece in chunked(stream, cuts):
            out += parser.feed(piece)
        self.assertEqual(out, messages)
        self.assertEqual(parser.buffered, 0)

    @FAST
    @given(st.sampled_from(Direction), st.binary(max_size=512),
           st.lists(st.integers(0, 512), max_size=6))
    def test_random_bytes(self, direction: Direction, data: bytes, cuts: list[int]) -> None:
        """Random bytes, in any pieces, raise nothing but ApfProtocolError."""
        self._feed_quietly(ApfParser(direction), data, cuts)

    @FAST
    @given(st.sampled_from(sorted(MessageType)), st.binary(max_size=256),
           st.lists(st.integers(0, 256), max_size=4))
    def test_random_bodies(self, code: int, body: bytes, cuts: list[int]) -> None:
        """A valid type byte followed by random bytes raises nothing but ApfProtocolError."""
        for direction in Direction:
            parser = ApfParser(direction)
            if direction is Direction.TO_DEVICE:
                parser.expect_request_reply(bool(body and body[0] & 1))
            self._feed_quietly(parser, bytes((code,)) + body, cuts)
        try:
            apf.decode(bytes((code,)) + body)
        except ApfProtocolError:
            pass

    @FAST
    @given(ALL_MESSAGES, st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)),
                                  min_size=1, max_size=4))
    def test_mutated_messages(self, message: apf.Message,
                              flips: list[tuple[int, int]]) -> None:
        """Valid encodings with bytes overwritten raise nothing but ApfProtocolError."""
        data = bytearray(message.encode())
        for position, value in flips:
            data[position % len(data)] = value
        try:
            apf.decode(bytes(data))
        except ApfProtocolError:
            pass
        self._feed_quietly(ApfParser(), bytes(data), [position for position, _ in flips])

    def _feed_quietly(self, parser: ApfParser, data: bytes, cuts: list[int]) -> None:
        """Feed data in pieces; ApfProtocolError is an allowed outcome, anything else fails."""
        try:
            for piece in chunked(data, cuts):
                parser.feed(piece)
        except ApfProtocolError:
            pass
