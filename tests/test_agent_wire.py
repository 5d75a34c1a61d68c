"""Tests for meshd.agent.wire: the /agent.ashx frame codec (spec: agent-protocol.md §3, §4)."""

from __future__ import annotations

from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshd.agent import wire
from meshd.agent.wire import (
    AgentCommitDate,
    AgentHash,
    AgentInfo,
    AgentProtocolError,
    AgentTag,
    AgentUpdate,
    AgentUpdateBlock,
    AuthConfirm,
    AuthRequest,
    AuthVerify,
    CompressedCoreModule,
    CoreBinary,
    CoreModule,
    CoreModuleHash,
    CoreOk,
    HostInfo,
    Sender,
    ServerId,
    decode_message,
)

AGENT = Sender.AGENT
SERVER = Sender.SERVER

HWEB = bytes(range(48))
NONCE_A = bytes(range(100, 148))
NONCE_S = bytes(range(200, 248))
# The observed MeshID began c1212efd…; the rest is filler.
MESH_ID = bytes.fromhex("c1212efd") + bytes(range(1, 45))
SERVER_ID = bytes.fromhex("7EC8234A") + bytes(44)
CORE_HASH = bytes.fromhex("04f0decbd56fac57") + bytes(40)


class Vector:
    """A frame, what it decodes to, and who may send it in which phase."""

    def __init__(
        self,
        name: str,
        frame: bytes,
        message: Any,
        sender: Sender,
        authenticated: bool,
        *,
        strict: bool,
        length: Optional[int] = None,
    ) -> None:
        self.name = name
        self.frame = frame
        self.message = message
        self.sender = sender
        self.authenticated = authenticated
        self.strict = strict  # every proper prefix must be an error
        self.length = length  # the length the spec gives, when it gives one


def _agent_info_frame() -> bytes:
    return (
        b"\x00\x03"
        + (1).to_bytes(4, "big")
        + (6).to_bytes(4, "big")
        + (0).to_bytes(4, "big")
        + (1).to_bytes(4, "big")
        + MESH_ID
        + (0x138).to_bytes(4, "big")
        + b"\x00\x02vm"
    )


CERT_A = bytes(1030)  # observed certificate lengths; contents are irrelevant to the codec
CERT_S = bytes(1076)
SIG = bytes(range(256)) + bytes(range(128))  # 384 bytes, as observed

VECTORS = [
    Vector("commit date (observed)", b"\x00\x1e2022-Nov-2 23:01:45-0700\x00",
           AgentCommitDate("2022-Nov-2 23:01:45-0700"), AGENT, False, strict=True, length=27),
    Vector("host info (observed)", b"\x00\x1fDebian GNU/Linux 12 (bookworm) - x64",
           HostInfo("Debian GNU/Linux 12 (bookworm) - x64"), AGENT, False, strict=False),
    Vector("server id", b"\x00\x05" + SERVER_ID, ServerId(SERVER_ID), AGENT, False,
           strict=False, length=50),
    Vector("skip", b"\x00\x04", AuthConfirm(), AGENT, False, strict=True, length=2),
    Vector("agent auth request", b"\x00\x01" + HWEB + NONCE_A, AuthRequest(HWEB, NONCE_A),
           AGENT, False, strict=True, length=98),
    Vector("server auth request", b"\x00\x01" + HWEB + NONCE_S, AuthRequest(HWEB, NONCE_S),
           SERVER, False, strict=True, length=98),
    Vector("agent auth verify", b"\x00\x02\x04\x06" + CERT_A + SIG, AuthVerify(CERT_A, SIG),
           AGENT, False, strict=False, length=4 + 1030 + 384),
    Vector("server auth verify", b"\x00\x02\x04\x34" + CERT_S + SIG, AuthVerify(CERT_S, SIG),
           SERVER, False, strict=False, length=4 + 1076 + 384),
    Vector("agent info (observed shape)", _agent_info_frame(),
           AgentInfo(1, 6, 0, 1, MESH_ID, 0x138, "vm"), AGENT, False, strict=True, length=74),
    Vector("server confirm", b"\x00\x04", AuthConfirm(), SERVER, False, strict=True, length=2),
    Vector("agent tag empty", b"\x00\x0f", AgentTag(b""), AGENT, True, strict=True, length=2),
    Vector("agent tag", b"\x00\x0fsite-7\x00\x00", AgentTag(b"site-7\x00\x00"), AGENT, True,
           strict=False),
    Vector("agent hash request", b"\x00\x0c\x00\x00", AgentHash(), SERVER, True, strict=True,
           length=4),
    Vector("agent hash reply", b"\x00\x0c\x00\x00" + bytes(48), AgentHash(0, bytes(48)),
           AGENT, True, strict=False, length=52),
    Vector("core hash request", b"\x00\x0b\x00\x00", CoreModuleHash(), SERVER, True,
           strict=True, length=4),
    Vector("core hash: no core", b"\x00\x0b\x00\x00", CoreModuleHash(), AGENT, True,
           strict=True, length=4),
    Vector("core hash reply", b"\x00\x0b\x00\x00" + CORE_HASH, CoreModuleHash(0, CORE_HASH),
           AGENT, True, strict=False, length=52),
    Vector("core module", b"\x00\x0a\x00\x00" + CORE_HASH + b"\0\0\0\0var x;",
           CoreModule(0, CORE_HASH, b"\0\0\0\0var x;"), SERVER, True, strict=False),
    Vector("clear core", b"\x00\x0a\x00\x00", CoreModule(), SERVER, True, strict=True, length=4),
    Vector("compressed core", b"\x00\x14\x00\x00" + CORE_HASH + b"\x03\x00",
           CompressedCoreModule(0, CORE_HASH, b"\x03\x00"), SERVER, True, strict=False),
    Vector("core ok", b"\x00\x10\x00\x00", CoreOk(), SERVER, True, strict=True, length=4),
    Vector("update start", b"\x00\x0d\x00\x00", AgentUpdate(), SERVER, True, strict=True),
    Vector("update end", b"\x00\x0d\x00\x00" + CORE_HASH, AgentUpdate(0, CORE_HASH), SERVER,
           True, strict=False, length=52),
    Vector("update block", b"\x00\x0e\x00\x01abc", AgentUpdateBlock(1, b"abc"), SERVER, True,
           strict=False),
    Vector("next block please", b"\x00\x0e\x00\x01", AgentUpdateBlock(1), AGENT, True,
           strict=True, length=4),
    Vector("core binary", b"\x03\xe8\x00\x00xyz", CoreBinary(1000, b"\x00\x00xyz"), AGENT, True,
           strict=False),
]


class VectorTests(unittest.TestCase):
    """Spec vectors decode and encode exactly."""

    def test_decode(self) -> None:
        """Every vector decodes to its message."""
        for vector in VECTORS:
            got = decode_message(vector.frame, vector.authenticated, sender=vector.sender)
            self.assertEqual(got, vector.message, vector.name)

    def test_encode(self) -> None:
        """Every message encodes to its vector's bytes."""
        for vector in VECTORS:
            self.assertEqual(vector.message.encode(), vector.frame, vector.name)

    def test_spec_lengths(self) -> None:
        """Frames have the lengths the spec gives (98, 2, 50, 74, 1418, 52 …)."""
        for vector in VECTORS:
            if vector.length is not None:
                self.assertEqual(len(vector.frame), vector.length, vector.name)

    def test_cert_length_field(self) -> None:
        """Command 2 carries certLen 0x0406 / 0x0434 for the observed 1030/1076-byte certs."""
        self.assertEqual(AuthVerify(CERT_A, SIG).encode()[2:4], b"\x04\x06")
        self.assertEqual(AuthVerify(CERT_S, SIG).encode()[2:4], b"\x04\x34")

    def test_truncation_strict(self) -> None:
        """Fixed-layout vectors cut at any byte boundary raise AgentProtocolError."""
        for vector in VECTORS:
            if not vector.strict:
                continue
            for cut in range(len(vector.frame)):
                with self.assertRaises(AgentProtocolError, msg=f"{vector.name} cut at {cut}"):
                    decode_message(vector.frame[:cut], vector.authenticated, sender=vector.sender)

    def test_truncation_never_silent(self) -> None:
        """Any vector cut short either raises or decodes to something else (never the same)."""
        for vector in VECTORS:
            for cut in range(len(vector.frame)):
                try:
                    got = decode_message(
                        vector.frame[:cut], vector.authenticated, sender=vector.sender
                    )
                except AgentProtocolError:
                    continue
                self.assertNotEqual(got, vector.message, f"{vector.name} cut at {cut}")

    def test_agent_info_fields(self) -> None:
        """The observed AgentInfo decodes to version 1, Linux x86-64 (6), desktop, caps 0x138."""
        info = decode_message(_agent_info_frame(), False)
        assert isinstance(info, AgentInfo)
        self.assertEqual((info.info_version, info.agent_id, info.agent_version), (1, 6, 0))
        self.assertEqual(info.platform, wire.PlatformType.DESKTOP)
        self.assertIn(wire.AgentCapability.TEMPORARY, info.flags)
        self.assertIn(wire.AgentCapability.JAVASCRIPT, info.flags)
        self.assertEqual(info.hostname, "vm")

    def test_platform_out_of_range(self) -> None:
        """A platform type outside 1..8 is recorded as desktop, like MeshCentral."""
        info = AgentInfo(1, 6, 0, 99, MESH_ID, 0, "h")
        self.assertEqual(info.platform, wire.PlatformType.DESKTOP)
        self.assertEqual(AgentInfo(1, 6, 0, 8, MESH_ID, 0, "h").platform, wire.PlatformType.VIRTUAL)

    def test_commit_date_parsed(self) -> None:
        """The observed commit date parses to an aware datetime."""
        parsed = AgentCommitDate("2022-Nov-2 23:01:45-0700").parsed()
        assert parsed is not None
        self.assertEqual((parsed.year, parsed.month, parsed.day, parsed.hour), (2022, 11, 2, 23))
        self.assertIsNone(AgentCommitDate("soon").parsed())

    def test_tag_text(self) -> None:
        """AgentTag.text drops trailing NULs like MeshCentral."""
        self.assertEqual(AgentTag(b"site-7\x00\x00").text, "site-7")


class LimitTests(unittest.TestCase):
    """Lengths, phases and senders are enforced before anything is sliced."""

    def assertRejects(self, frame: bytes, authenticated: bool, sender: Sender = AGENT) -> None:
        with self.assertRaises(AgentProtocolError):
            decode_message(frame, authenticated, sender=sender)

    def test_short_frames(self) -> None:
        """Frames of 0 or 1 byte are errors (no command id)."""
        for frame in (b"", b"\x00", b"{"):
            self.assertRejects(frame, False)
            self.assertRejects(frame, True)

    def test_not_bytes(self) -> None:
        """Only bytes are frames."""
        self.assertRejects("{}", False)  # type: ignore[arg-type]

    def test_unknown_commands(self) -> None:
        """Ids outside the sender's table for the phase are errors."""
        self.assertRejects(b"\x00\x00", False)
        self.assertRejects(b"\x00\x06xx", False)
        self.assertRejects(b"\x00\x0b\x00\x00", False)  # post-auth command before auth
        self.assertRejects(b"\x00\x01" + HWEB + NONCE_A, True)  # handshake command after auth
        self.assertRejects(b"\x00\x11\x00\x00", True)
        self.assertRejects(b"\x03\xe8\x00\x00", False)  # core binary before auth

    def test_direction(self) -> None:
        """Commands only the other side sends are refused."""
        self.assertRejects(b"\x00\x03" + bytes(70), False, SERVER)
        self.assertRejects(b"\x00\x05" + SERVER_ID, False, SERVER)
        self.assertRejects(b"\x00\x0a\x00\x00", True, AGENT)  # core push from an agent
        self.assertRejects(b"\x00\x10\x00\x00", True, AGENT)
        self.assertRejects(b"\x00\x0f", True, SERVER)
        self.assertRejects(b"\x00\x0e\x00\x01data", True, AGENT)  # agent blocks are 4 bytes

    def test_exact_lengths(self) -> None:
        """Commands 1, 4, 5, 11, 12, 16 accept only their exact lengths."""
        self.assertRejects(b"\x00\x01" + bytes(97), False)
        self.assertRejects(b"\x00\x01" + bytes(90), False)
        self.assertRejects(b"\x00\x04\x00", False)
        self.assertRejects(b"\x00\x05" + bytes(49), False)
        self.assertRejects(b"\x00\x0b\x00\x00" + bytes(47), True)
        self.assertRejects(b"\x00\x0c\x00\x00" + bytes(49), True)
        self.assertRejects(b"\x00\x10\x00\x00\x00", True, SERVER)

    def test_legacy_server_id(self) -> None:
        """A 32-byte SHA-256 ServerID (34-byte frame) is accepted."""
        self.assertEqual(decode_message(b"\x00\x05" + bytes(32), False), ServerId(bytes(32)))

    def test_auth_verify_bounds(self) -> None:
        """certLen past the frame, zero, oversized, or leaving no signature is refused."""
        self.assertRejects(b"\x00\x02\x00\x10" + bytes(16), False)  # no signature
        self.assertRejects(b"\x00\x02\x00\x10" + bytes(10), False)  # cert truncated
        self.assertRejects(b"\x00\x02\x00\x00" + bytes(10), False)  # empty cert
        big = wire.MAX_CERT_LEN + 1
        self.assertRejects(b"\x00\x02" + big.to_bytes(2, "big") + bytes(big + 1), False)
        too_long = b"\x00\x02\x00\x01" + bytes(1 + wire.MAX_SIGNATURE_LEN + 1)
        self.assertRejects(too_long, False)

    def test_agent_info_length_mismatch(self) -> None:
        """AgentInfo whose hostname length disagrees with the frame is refused."""
        frame = _agent_info_frame()
        self.assertRejects(frame + b"x", False)
        self.assertRejects(frame[:70] + b"\x00\x03vm", False)
        self.assertRejects(frame[:70] + b"\xff\xff" + bytes(10), False)

    def test_agent_info_bad_utf8(self) -> None:
        """A hostname that is not UTF-8 is decoded with replacement characters."""
        frame = _agent_info_frame()[:70] + b"\x00\x02\xff\xfe"
        info = decode_message(frame, False)
        assert isinstance(info, AgentInfo)
        self.assertEqual(info.hostname, "\ufffd\ufffd")

    def test_commit_date_must_be_ascii(self) -> None:
        """A commit date with non-ASCII bytes or an inner NUL is refused."""
        self.assertRejects(b"\x00\x1e\xc3\xa9\x00", False)
        self.assertRejects(b"\x00\x1eab\x00cd\x00", False)

    def test_oversized_text(self) -> None:
        """Texts of 30/31/15 beyond their limits are refused."""
        self.assertRejects(b"\x00\x1f" + b"a" * (wire.MAX_TEXT_LEN + 1), False)
        self.assertRejects(b"\x00\x1e" + b"a" * (wire.MAX_TEXT_LEN + 1), False)
        self.assertRejects(b"\x00\x0f" + b"a" * (wire.MAX_TAG_LEN + 1), True)

    def test_update_block_limit(self) -> None:
        """An update block beyond 65531 data bytes is refused."""
        self.assertRejects(b"\x00\x0e\x00\x01" + bytes(wire.MAX_UPDATE_BLOCK + 1), True, SERVER)

    def test_core_module_truncated_hash(self) -> None:
        """A core push shorter than its 48-byte hash is refused."""
        self.assertRejects(b"\x00\x0a\x00\x00" + bytes(20), True, SERVER)

    def test_oversized_frame(self) -> None:
        """A frame longer than MAX_FRAME is refused before its command is looked at."""
        self.assertRejects(b"\x00\x0a" + bytes(wire.MAX_FRAME), True, SERVER)

    def test_encode_validation(self) -> None:
        """Constructors refuse fields the wire cannot carry."""
        with self.assertRaises(ValueError):
            AuthRequest(bytes(47), NONCE_A)
        with self.assertRaises(ValueError):
            AuthVerify(b"", SIG)
        with self.assertRaises(ValueError):
            AgentInfo(1, 2**32, 0, 1, MESH_ID, 0, "h")
        with self.assertRaises(ValueError):
            CoreModule(0, None, b"code")
        with self.assertRaises(ValueError):
            CoreBinary(0x7B22, b"\x00\x00")
        with self.assertRaises(ValueError):
            CoreBinary(999, b"\x00\x00")
        with self.assertRaises(ValueError):
            AgentCommitDate("a\0b")
        with self.assertRaises(ValueError):
            CoreOk(70000)


class JsonTests(unittest.TestCase):
    """JSON frames are recognised by their first byte and decoded defensively."""

    def test_json_by_first_byte(self) -> None:
        """A frame starting with '{' is JSON in every phase and from both sides (0x7B22)."""
        frame = b'{"action":"agentName","value":"vm"}'
        self.assertEqual(int.from_bytes(frame[:2], "big"), 31522)
        for authenticated in (False, True):
            for sender in Sender:
                got = decode_message(frame, authenticated, sender=sender)
                self.assertEqual(got, {"action": "agentName", "value": "vm"})

    def test_json_must_be_object(self) -> None:
        """A '{'-frame that is not one JSON object is an error."""
        for frame in (b"{", b"{}x", b'{"a":}', b"{'a':1}", b"{}{}"):
            with self.assertRaises(AgentProtocolError):
                decode_message(frame, True)

    def test_json_constants_rejected(self) -> None:
        """NaN, Infinity and overflowing numbers are refused."""
        for frame in (b'{"a":NaN}', b'{"a":-Infinity}', b'{"a":1e999}'):
            with self.assertRaises(AgentProtocolError):
                decode_message(frame, True)

    def test_json_deep_nesting(self) -> None:
        """Nesting deep enough to exhaust recursion is an AgentProtocolError."""
        frame = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        with self.assertRaises(AgentProtocolError):
            decode_message(frame, True)

    def test_json_huge_integer(self) -> None:
        """An integer beyond Python's digit limit is an AgentProtocolError."""
        with self.assertRaises(AgentProtocolError):
            decode_message(b'{"a":' + b"9" * 5000 + b"}", True)

    def test_json_size_limits(self) -> None:
        """Pre-auth JSON is capped at MAX_PREAUTH_JSON; later frames at MAX_JSON or max_json."""
        frame = b'{"a":"' + b"x" * wire.MAX_PREAUTH_JSON + b'"}'
        with self.assertRaises(AgentProtocolError):
            decode_message(frame, False)
        decoded = decode_message(frame, True)
        assert isinstance(decoded, dict)
        self.assertEqual(len(decoded["a"]), wire.MAX_PREAUTH_JSON)
        with self.assertRaises(AgentProtocolError):
            decode_message(frame, True, max_json=100)

    def test_json_invalid_utf8_replaced(self) -> None:
        """Invalid UTF-8 inside JSON becomes U+FFFD, as Node decodes it."""
        self.assertEqual(decode_message(b'{"a":"\xff"}', True), {"a": "\ufffd"})

    def test_json_lone_surrogates_replaced(self) -> None:
        """Escaped lone surrogates (keys and values, nested) become U+FFFD; pairs survive."""
        got = decode_message(b'{"\\ud800k":["\\udc00",{"x":"\\ud83d\\ude00"}]}', True)
        self.assertEqual(got, {"\ufffdk": ["\ufffd", {"x": "\U0001F600"}]})
        assert isinstance(got, dict)
        encoded = wire.encode_json(got).decode("utf-8")
        self.assertEqual(encoded, '{"\ufffdk":["\ufffd",{"x":"\U0001F600"}]}')

    def test_encode_json(self) -> None:
        """encode_json is compact UTF-8 and refuses NaN."""
        encoded = wire.encode_json({"action": "pong", "v": "é"})
        self.assertEqual(encoded, '{"action":"pong","v":"é"}'.encode())
        with self.assertRaises(ValueError):
            wire.encode_json({"a": float("nan")})


# -- property tests ----------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
h48 = st.binary(min_size=48, max_size=48)
opt_hash = st.none() | h48
short = st.binary(max_size=300)


def _hostname(text: str) -> bool:
    return len(text.encode("utf-8")) <= wire.MAX_HOSTNAME_LEN


_ascii_no_nul = st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=200)

# (message, authenticated, sender) triples covering every class and direction.
messages = st.one_of(
    st.builds(lambda h, n, s: (AuthRequest(h, n), False, s), h48, h48, st.sampled_from(Sender)),
    st.builds(
        lambda c, sig, s: (AuthVerify(c, sig), False, s),
        st.binary(min_size=1, max_size=2000),
        st.binary(min_size=1, max_size=600),
        st.sampled_from(Sender),
    ),
    st.builds(
        lambda a, b, c, d, m, e, h: (AgentInfo(a, b, c, d, m, e, h), False, AGENT),
        u32, u32, u32, u32, h48, u32, st.text(max_size=100).filter(_hostname),
    ),
    st.builds(lambda s: (AuthConfirm(), False, s), st.sampled_from(Sender)),
    st.builds(
        lambda i: (ServerId(i), False, AGENT),
        h48 | st.binary(min_size=32, max_size=32),
    ),
    st.builds(lambda t: (AgentCommitDate(t), False, AGENT), _ascii_no_nul),
    st.builds(lambda t: (HostInfo(t), False, AGENT), st.text(max_size=200)),
    st.builds(
        lambda cls, r, h, m: (cls(r, h, m if h is not None else b""), True, SERVER),
        st.sampled_from([CoreModule, CompressedCoreModule]), u16, opt_hash, short,
    ),
    st.builds(
        lambda cls, r, h, s: (cls(r, h), True, s),
        st.sampled_from([CoreModuleHash, AgentHash]), u16, opt_hash, st.sampled_from(Sender),
    ),
    st.builds(lambda r, h: (AgentUpdate(r, h), True, SERVER), u16, opt_hash),
    st.builds(lambda r, d: (AgentUpdateBlock(r, d), True, SERVER), u16, short),
    st.builds(lambda r: (AgentUpdateBlock(r), True, AGENT), u16),
    st.builds(lambda t: (AgentTag(t), True, AGENT), short),
    st.builds(lambda r: (CoreOk(r), True, SERVER), u16),
    st.builds(
        lambda c, p, s: (CoreBinary(c, p), True, s),
        st.integers(1000, 65535).filter(lambda c: c >> 8 != 0x7B),
        st.binary(min_size=2, max_size=300),
        st.sampled_from(Sender),
    ),
)

interesting_ids = st.sampled_from(
    [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 16, 20, 30, 31, 1000, 0x7B22]
)


class PropertyTests(unittest.TestCase):
    """Hypothesis: the codec round-trips and fails only with AgentProtocolError."""

    @settings(max_examples=400, deadline=None)
    @given(messages)
    def test_round_trip(self, case: tuple[Any, bool, Sender]) -> None:
        """decode(encode(m)) == m for every message class and direction."""
        message, authenticated, sender = case
        self.assertEqual(decode_message(message.encode(), authenticated, sender=sender), message)

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=400), st.booleans(), st.sampled_from(Sender))
    def test_random_bytes(self, frame: bytes, authenticated: bool, sender: Sender) -> None:
        """Random bytes decode or raise AgentProtocolError, nothing else."""
        try:
            decode_message(frame, authenticated, sender=sender)
        except AgentProtocolError:
            pass

    @settings(max_examples=600, deadline=None)
    @given(interesting_ids, st.binary(max_size=400), st.booleans(), st.sampled_from(Sender))
    def test_random_bodies(
        self, command: int, body: bytes, authenticated: bool, sender: Sender
    ) -> None:
        """Random bodies behind every known command id raise only AgentProtocolError."""
        try:
            decode_message(command.to_bytes(2, "big") + body, authenticated, sender=sender)
        except AgentProtocolError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(messages, st.data())
    def test_truncated_messages(self, case: tuple[Any, bool, Sender], data: st.DataObject) -> None:
        """A cut encoding raises AgentProtocolError or decodes to a different message."""
        message, authenticated, sender = case
        frame = message.encode()
        cut = data.draw(st.integers(0, len(frame) - 1))
        try:
            got = decode_message(frame[:cut], authenticated, sender=sender)
        except AgentProtocolError:
            return
        self.assertNotEqual(got, message)

    @settings(max_examples=200, deadline=None)
    @given(st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    ).map(lambda v: {"action": "x", "v": v}))
    def test_json_round_trip(self, value: dict[str, Any]) -> None:
        """JSON objects survive encode_json + decode_message."""
        self.assertEqual(decode_message(wire.encode_json(value), True), value)
