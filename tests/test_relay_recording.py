"""The relay's ``.mcrec`` recording codec (meshd.relay.recording): records encoded and
read back whole and byte by byte, hostile bytes rejected with RecordingError only."""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from meshd.relay.recording import (
    END_MAGIC,
    FLAG_BINARY,
    FLAG_USER,
    MAX_RECORD,
    TYPE_DATA,
    TYPE_END,
    Record,
    RecordingError,
    RecordReader,
    encode_record,
    metadata_record,
    read_recording,
    recording_filename,
)

T0 = 1_700_000_000_000


def sample() -> bytes:
    return b"".join([
        metadata_record(user_id="user//admin", user_name="admin", session_id="Xy9$@",
                        address1="127.0.0.1", address2="127.0.0.1",
                        time_text="11/14/2023, 10:13:20 PM", protocol=1,
                        node_id="node//abc", time_ms=T0, device_name="box"),
        encode_record(TYPE_DATA, FLAG_USER, b"1", T0 + 1),
        encode_record(TYPE_DATA, FLAG_USER | FLAG_BINARY, b"echo typed-text\r", T0 + 2),
        encode_record(TYPE_DATA, FLAG_BINARY, b"typed-text\r\n$ ", T0 + 3),
        encode_record(TYPE_END, 0, END_MAGIC, T0 + 5000),
    ])


class RecordingCodecTests(TestCase):
    def test_header_layout(self) -> None:
        """A record is type, flags, size (u16, u16, u32) and the time in the low 6 bytes
        of a u64, big-endian, then the payload."""
        raw = encode_record(TYPE_DATA, FLAG_USER | FLAG_BINARY, b"ab", T0)
        self.assertEqual(raw[:8], b"\x00\x02\x00\x03\x00\x00\x00\x02")
        self.assertEqual(raw[8:10], b"\x00\x00")
        self.assertEqual(int.from_bytes(raw[10:16], "big"), T0)
        self.assertEqual(raw[16:], b"ab")

    def test_reads_back_whole_and_byte_by_byte(self) -> None:
        """A terminal recording parses back with its metadata, the typed text from the
        user side and the output from the agent side, whole and one byte at a time."""
        data = sample()
        metadata, body, ended = read_recording(data)
        self.assertEqual((metadata["magic"], metadata["ver"], metadata["protocol"],
                          metadata["devicename"]), ("MeshCentralRelaySession", 1, "1", "box"))
        self.assertTrue(ended)
        typed = b"".join(r.payload for r in body if r.from_user and r.binary)
        self.assertIn(b"typed-text", typed)
        self.assertFalse(body[-1].from_user)
        reader = RecordReader()
        records: list[Record] = []
        for i in range(len(data)):
            records.extend(reader.feed(data[i:i + 1]))
        self.assertEqual(records, RecordReader().feed(data))
        self.assertEqual(reader.pending, 0)

    def test_truncated_or_foreign(self) -> None:
        """Truncated files, unknown types, oversized headers and foreign metadata are
        RecordingError."""
        data = sample()
        for bad in (data[:-3], b"\x00\x09" + data[2:], data[16 + 20:],
                    struct.pack(">HHIQ", 2, 0, MAX_RECORD + 1, 0),
                    encode_record(1, 0, json.dumps({"magic": "x"}).encode(), 0)):
            with self.assertRaises(RecordingError):
                read_recording(bad)

    def test_filename(self) -> None:
        """MeshCentral's file name, with unsafe characters replaced."""
        self.assertEqual(
            recording_filename(domain="", year=2024, month=5, day=1, hour=2, minute=3,
                               second=4, user_id="user//admin", device_name="my box/1",
                               session_id="Xy9$@"),
            "relaysession-2024-05-01-02-03-04-admin-my_box_1-Xy9$@.mcrec")
        self.assertTrue(recording_filename(
            domain="c1", year=2024, month=5, day=1, hour=2, minute=3, second=4, user_id=None,
            device_name=None, session_id="../x").startswith("relaysession-c1-2024"))
        self.assertNotIn("/", recording_filename(
            domain="", year=2024, month=5, day=1, hour=2, minute=3, second=4, user_id=None,
            device_name="..", session_id="../x"))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.integers(0, 3),
                              st.integers(0, (1 << 48) - 1), st.binary(max_size=300)),
                    max_size=8))
    def test_round_trip(self, items: list[tuple[int, int, int, bytes]]) -> None:
        """decode(encode(records)) == records."""
        records = [Record(k, f, t, p) for k, f, t, p in items]
        self.assertEqual(RecordReader().feed(b"".join(r.encode() for r in records)), records)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_bytes(self, data: bytes) -> None:
        """Random bytes never raise anything but RecordingError."""
        try:
            read_recording(data)
        except RecordingError:
            pass


class RecorderQuotaTests(TestCase):
    def test_quotas_delete_oldest(self) -> None:
        """Count, size and age quotas delete the oldest recordings first."""
        import os
        import tempfile

        from meshd.config import SessionRecording
        from meshd.relay.recorder import Recorder

        folder = tempfile.mkdtemp()
        now = 1_700_000_000.0
        for i, (age_days, size) in enumerate([(10, 100), (3, 100), (2, 300), (1, 100)]):
            path = os.path.join(folder, f"r{i}.mcrec")
            with open(path, "wb") as f:
                f.write(b"x" * size)
            os.utime(path, (now - age_days * 86400, now - age_days * 86400))
        recorder = Recorder(SessionRecording(max_recording_days=5), folder, domain="",
                            now=lambda: now)
        recorder.apply_quotas()
        self.assertEqual(sorted(os.listdir(folder)), ["r1.mcrec", "r2.mcrec", "r3.mcrec"])
        recorder.policy = SessionRecording(max_recordings=2)
        recorder.apply_quotas()
        self.assertEqual(sorted(os.listdir(folder)), ["r2.mcrec", "r3.mcrec"])
        recorder.policy = SessionRecording(max_recording_size_megabytes=1)
        recorder.apply_quotas()
        self.assertEqual(len(os.listdir(folder)), 2)  # 400 bytes fit in 1 MB

    def test_wants(self) -> None:
        """Only listed protocols are recorded, and only with a user and a device."""
        from meshd.config import SessionRecording
        from meshd.relay.recorder import Recorder

        recorder = Recorder(SessionRecording(protocols=(1,)), "/nonexistent", domain="",
                            now=lambda: 0.0)
        self.assertTrue(recorder.wants(1, "user//a", "node//n"))
        self.assertFalse(recorder.wants(5, "user//a", "node//n"))
        self.assertFalse(recorder.wants(1, None, "node//n"))
        self.assertFalse(recorder.wants(1, "user//a", None))
