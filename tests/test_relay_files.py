"""Remote files (relay protocol 5) on the Python agent (agentsrc.core.files): the
FileSession fed frames directly, then end to end through a started meshd's relay — with a
user side written here and with MeshCentral's own ``meshctrl.js upload``/``download``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from agentsrc.core.files import (
    BLOCK,
    MAX_WINDOW,
    FileSession,
    child_path,
    files_allowed,
    json_date,
    request_path,
)


class Harness:
    """A FileSession whose frames and server log lines are collected."""

    def __init__(self, test: TestCase) -> None:
        self.frames: list[tuple[bytes, bool]] = []
        self.logged: list[dict[str, Any]] = []
        self.clock = Clock()
        self.session = FileSession(lambda p, b: self.frames.append((p, b)), reactor=self.clock,
                                   log=Logger(), request={"userid": "user//admin",
                                                          "username": "admin"},
                                   server_log=self.logged.append)
        test.addCleanup(self.session.close)
        self.folder = tempfile.mkdtemp(prefix="files-")
        test.addCleanup(shutil.rmtree, self.folder, True)

    def command(self, **message: Any) -> None:
        self.session.received(json.dumps(message).encode(), False)

    def replies(self) -> list[dict[str, Any]]:
        out = []
        for payload, _binary in self.frames:
            if payload[:1] == b"{":
                out.append(json.loads(payload))
        return out

    def blocks(self) -> list[bytes]:
        return [p for p, binary in self.frames if binary and p[:1] != b"{"]


class PathTests(TestCase):
    def test_request_path(self) -> None:
        """Paths get a leading / and are normalised; NUL bytes and non-strings refused."""
        self.assertEqual(request_path("tmp/x/"), "/tmp/x")
        self.assertEqual(request_path("//tmp/../etc"), "/etc")
        self.assertEqual(request_path(""), "/")
        self.assertIsNone(request_path("/tmp/\0x"))
        self.assertIsNone(request_path(7))

    def test_child_path_is_one_component(self) -> None:
        """A name inside a command cannot climb out of or reach below its folder."""
        self.assertEqual(child_path("/tmp", "a.txt"), "/tmp/a.txt")
        for bad in ("..", ".", "", "a/b", "../etc", "/etc", "x\0", None, 3):
            self.assertIsNone(child_path("/tmp", bad), bad)

    def test_rights(self) -> None:
        """Files need REMOTECONTROL and not NOFILES, unless rights are full."""
        self.assertTrue(files_allowed(0xFFFFFFFF))
        self.assertTrue(files_allowed(8))
        self.assertFalse(files_allowed(8 | 1024))
        self.assertFalse(files_allowed(256))
        self.assertFalse(files_allowed(None))

    def test_json_date(self) -> None:
        """Dates are written as JavaScript's Date.toJSON() does."""
        self.assertEqual(json_date(1700000000.25), "2023-11-14T22:13:20.250Z")


class FolderTests(TestCase):
    def test_ls(self) -> None:
        """ls lists folders (t 2) and files (t 3, with size) with dates; reqid echoed;
        a missing folder gives dir null."""
        h = Harness(self)
        os.mkdir(os.path.join(h.folder, "sub"))
        with open(os.path.join(h.folder, "f.bin"), "wb") as f:
            f.write(b"x" * 1234)
        os.symlink("/nonexistent-target", os.path.join(h.folder, "broken"))
        h.command(action="ls", path=h.folder, reqid=7)
        reply = h.replies()[-1]
        self.assertTrue(h.frames[-1][1], "ls answers in a binary frame")
        self.assertEqual(reply["path"], h.folder)
        self.assertEqual(reply["reqid"], 7)
        entries = {e["n"]: e for e in reply["dir"]}
        self.assertEqual(set(entries), {"sub", "f.bin"})
        self.assertEqual(entries["sub"]["t"], 2)
        self.assertEqual((entries["f.bin"]["t"], entries["f.bin"]["s"]), (3, 1234))
        self.assertRegex(entries["f.bin"]["d"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        h.command(action="ls", path=h.folder + "/missing", reqid=8)
        self.assertIsNone(h.replies()[-1]["dir"])

    def test_mkdir_rename_rm(self) -> None:
        """mkdir, rename and a recursive rm do what they say and are logged to the server;
        a non-recursive rm of a full folder leaves it."""
        h = Harness(self)
        h.command(action="mkdir", path=h.folder + "/a")
        with open(os.path.join(h.folder, "a", "inner"), "w") as f:
            f.write("x")
        h.command(action="rename", path=h.folder, oldname="a", newname="b")
        self.assertTrue(os.path.isdir(os.path.join(h.folder, "b")))
        h.command(action="rm", path=h.folder, delfiles=["b"])
        self.assertTrue(os.path.isdir(os.path.join(h.folder, "b")))
        h.command(action="rm", path=h.folder, delfiles=["b"], rec=True)
        self.assertEqual(os.listdir(h.folder), [])
        self.assertEqual([m["msgid"] for m in h.logged], [44, 48, 46])
        self.assertEqual(h.logged[-1]["msgArgs"][1], 2)
        self.assertEqual(h.logged[0]["userid"], "user//admin")

    def test_names_cannot_escape(self) -> None:
        """rm and rename refuse names that are not one component: nothing outside the
        named folder is touched."""
        h = Harness(self)
        inner = os.path.join(h.folder, "inner")
        os.mkdir(inner)
        with open(os.path.join(h.folder, "keep"), "w") as f:
            f.write("k")
        h.command(action="rm", path=inner, delfiles=["../keep", "..", "/etc"], rec=True)
        h.command(action="rename", path=inner, oldname="../keep", newname="stolen")
        self.assertTrue(os.path.exists(os.path.join(h.folder, "keep")))
        self.assertEqual(os.listdir(inner), [])

    def test_recursive_rm_does_not_follow_links(self) -> None:
        """A recursive delete removes a link to a folder, not the folder's content."""
        h = Harness(self)
        outside = tempfile.mkdtemp(prefix="outside-")
        self.addCleanup(shutil.rmtree, outside, True)
        with open(os.path.join(outside, "precious"), "w") as f:
            f.write("p")
        os.mkdir(os.path.join(h.folder, "d"))
        os.symlink(outside, os.path.join(h.folder, "d", "link"))
        h.command(action="rm", path=h.folder, delfiles=["d"], rec=True)
        self.assertFalse(os.path.lexists(os.path.join(h.folder, "d")))
        self.assertTrue(os.path.exists(os.path.join(outside, "precious")))

    def test_bad_input_is_ignored(self) -> None:
        """Non-JSON, non-objects, unknown actions and wrong types are ignored quietly."""
        h = Harness(self)
        for payload in (b"\xff\xfe", b"[1]", b'{"action":"zap"}', b'{"action":"rm",'
                        b'"path":3,"delfiles":"x"}', b'{"action":"ls","path":[1]}'):
            h.session.received(payload, False)
        self.assertEqual(h.replies(), [{"path": None, "dir": None, "reqid": None}])


class UploadTests(TestCase):
    def test_upload_acks_each_frame_and_unescapes(self) -> None:
        """upload → uploadstart; each binary frame written and acked (a leading 0 byte
        dropped); uploaddone closes → uploaddone; the file has exactly the bytes."""
        h = Harness(self)
        h.command(action="upload", reqid="up", path=h.folder, name="u.bin", size=5)
        self.assertEqual(h.replies()[-1], {"action": "uploadstart", "reqid": "up"})
        h.session.received(b"\x00{ab", True)
        h.session.received(b"\x00\x00cd", True)
        h.session.received(b"ef", True)
        acks = [r for r in h.replies() if r.get("action") == "uploadack"]
        self.assertEqual(len(acks), 3)
        h.command(action="uploaddone")
        self.assertEqual(h.replies()[-1], {"action": "uploaddone", "reqid": "up"})
        with open(os.path.join(h.folder, "u.bin"), "rb") as f:
            self.assertEqual(f.read(), b"{ab\x00cdef")
        self.assertEqual(h.logged[-1]["msgArgs"], [os.path.join(h.folder, "u.bin"), 8])

    def test_upload_refused_names(self) -> None:
        """An upload whose name climbs out of the folder, or to an unwritable place, gets
        uploaderror with its reqid."""
        h = Harness(self)
        h.command(action="upload", reqid=1, path=h.folder, name="../x")
        h.command(action="upload", reqid=2, path=h.folder + "/no/such/dir", name="x")
        self.assertEqual([r["action"] for r in h.replies()], ["uploaderror", "uploaderror"])
        self.assertEqual([r["reqid"] for r in h.replies()], [1, 2])

    def test_upload_cancel_deletes(self) -> None:
        """uploadcancel closes and deletes the partial file."""
        h = Harness(self)
        h.command(action="upload", reqid="c", path=h.folder, name="part")
        h.session.received(b"abc", True)
        h.command(action="uploadcancel")
        self.assertEqual(h.replies()[-1], {"action": "uploadcancel", "reqid": "c"})
        self.assertEqual(os.listdir(h.folder), [])

    def test_close_keeps_written_bytes(self) -> None:
        """A tunnel that ends mid-upload (meshctrl never sends uploaddone) leaves the file
        closed with what was acknowledged."""
        h = Harness(self)
        h.command(action="upload", reqid="up", path=h.folder, name="k")
        h.session.received(b"data", True)
        h.session.close()
        with open(os.path.join(h.folder, "k"), "rb") as f:
            self.assertEqual(f.read(), b"data")

    def test_uploadhash(self) -> None:
        """uploadhash answers the file's SHA-384 (computed in slices), or null."""
        h = Harness(self)
        data = os.urandom(3 * 1024 * 1024 + 5)
        with open(os.path.join(h.folder, "h"), "wb") as f:
            f.write(data)
        h.command(action="uploadhash", reqid=4, path=h.folder, name="h", tag="t")
        self.assertEqual(h.replies(), [])
        h.clock.advance(0)
        h.clock.advance(0)
        h.clock.advance(0)
        self.assertEqual(h.replies()[-1], {"action": "uploadhash", "reqid": 4,
                                           "path": h.folder, "name": "h", "tag": "t",
                                           "hash": hashlib.sha384(data).hexdigest()})
        h.command(action="uploadhash", reqid=5, path=h.folder, name="none")
        self.assertIsNone(h.replies()[-1]["hash"])


class FakeManager:
    def __init__(self) -> None:
        self.reactor = Clock()
        self.log = Logger()
        self.ended_tunnels: list[Any] = []
        self.sent: list[dict[str, Any]] = []

    def ended(self, tunnel: Any) -> None:
        self.ended_tunnels.append(tunnel)

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def sessions_changed(self) -> None:
        pass


class TunnelFilesTests(TestCase):
    def tunnel(self, rights: Any) -> Any:
        from agentsrc.core.tunnel import Tunnel

        manager = FakeManager()
        tunnel = Tunnel(manager, {"rights": rights, "userid": "user//u"})  # type: ignore
        tunnel.state = "waiting"
        tunnel._message(b"c", False)
        tunnel._message(b"5", False)
        return tunnel, manager

    def test_nofiles_closes_the_tunnel(self) -> None:
        """With NOFILES (or without REMOTECONTROL) "5" closes the tunnel; nothing runs."""
        for rights in (8 | 1024, 256, None):
            tunnel, manager = self.tunnel(rights)
            self.assertEqual(manager.ended_tunnels, [tunnel])
            self.assertIsNone(tunnel._files)

    def test_files_session_started_and_closed(self) -> None:
        """With the right, "5" starts a files session that the tunnel's end closes."""
        tunnel, manager = self.tunnel(8)
        session = tunnel._files
        self.assertIsNotNone(session)
        tunnel._closed("gone")
        self.assertTrue(session.closed)


class DownloadTests(TestCase):
    def download(self, h: Harness, size: int, window: Any = None) -> bytes:
        data = os.urandom(size)
        path = os.path.join(h.folder, f"d{size}")
        with open(path, "wb") as f:
            f.write(data)
        h.command(action="download", sub="start", id=path, path=path)
        self.assertEqual((json.loads(h.frames[-1][0]), h.frames[-1][1]),
                         ({"action": "download", "sub": "start", "id": path}, False))
        ack: dict[str, Any] = {} if window is None else {"ack": window}
        h.command(action="download", sub="startack", id=path, **ack)
        return data

    def test_blocks_window_and_end_flag(self) -> None:
        """startack opens a window of 8 blocks of 4+16380 bytes; each ack sends one more;
        the first short block carries the end flag; the bytes are the file's."""
        h = Harness(self)
        size = BLOCK * 10 + 100
        data = self.download(h, size)
        self.assertEqual(len(h.blocks()), 8)
        while True:
            last = h.blocks()[-1]
            if struct.unpack(">I", last[:4])[0] == 0x01000001:
                break
            h.command(action="download", sub="ack", id=os.path.join(h.folder, f"d{size}"))
        blocks = h.blocks()
        self.assertEqual(len(blocks), 11)
        self.assertTrue(all(struct.unpack(">I", b[:4])[0] == 0x01000000 for b in blocks[:-1]))
        self.assertEqual(b"".join(b[4:] for b in blocks), data)
        self.assertEqual(h.logged[-1]["msgid"], 49)

    def test_exact_multiple_ends_with_empty_block(self) -> None:
        """A file of a whole number of blocks ends with a 4-byte last block."""
        h = Harness(self)
        self.download(h, BLOCK * 2, window=5)
        self.assertEqual([len(b) for b in h.blocks()], [BLOCK + 4, BLOCK + 4, 4])

    def test_window_is_capped(self) -> None:
        """A client asking for a huge window gets at most MAX_WINDOW blocks in flight."""
        h = Harness(self)
        self.download(h, BLOCK * 40, window=1000)
        self.assertEqual(len(h.blocks()), MAX_WINDOW)

    def test_missing_or_special_files_cancel(self) -> None:
        """A missing file, a folder or a device is answered with a text cancel."""
        h = Harness(self)
        for path in (h.folder + "/none", h.folder, "/dev/zero"):
            h.command(action="download", sub="start", id=path, path=path)
            self.assertEqual((json.loads(h.frames[-1][0]), h.frames[-1][1]),
                             ({"action": "download", "sub": "cancel", "id": path}, False))

    def test_stop(self) -> None:
        """stop (or the web app's cancel) ends a download: later acks send nothing."""
        h = Harness(self)
        size = BLOCK * 20
        self.download(h, size, window=1)
        path = os.path.join(h.folder, f"d{size}")
        h.command(action="download", sub="cancel", id=path)
        h.command(action="download", sub="ack", id=path)
        self.assertEqual(len(h.blocks()), 1)


def relay_replies(user: Any) -> list[dict[str, Any]]:
    """JSON messages the agent sent on the relay (text or binary frames)."""
    found = []
    for payload, _binary in user.frames:
        if payload[:1] == b"{":
            try:
                found.append(json.loads(payload))
            except ValueError:
                pass
    return found


class RelayFilesTests(TestCase):
    timeout = 240

    async def test_files_through_relay(self) -> None:
        """Through a started meshd's relay, the Python agent's files protocol lists,
        creates, uploads (escaped binary frames, acked), downloads (acked blocks),
        renames and deletes recursively; a 3 MB file comes back byte-identical."""
        from tests.test_relay_e2e import AgentSetup, until

        setup = await AgentSetup(self).start()
        user = await setup.tunnel(5)
        user.sendMessage(b"5", isBinary=False)
        folder = tempfile.mkdtemp(prefix="relayfiles-")
        self.addCleanup(shutil.rmtree, folder, True)

        def send(**message: Any) -> None:
            user.sendMessage(json.dumps(message).encode(), isBinary=False)

        async def reply(check: Any, timeout: float = 20) -> dict[str, Any]:
            found = await until(lambda: [r for r in relay_replies(user) if check(r)], timeout)
            self.assertTrue(found, setup.agent_log()[-3000:])
            return found[-1]

        send(action="mkdir", path=folder + "/made")
        send(action="ls", path=folder, reqid=1)
        listing = await reply(lambda r: r.get("reqid") == 1)
        self.assertEqual([(e["n"], e["t"]) for e in listing["dir"]], [("made", 2)])

        # Upload: 64 KB frames, at most 4 unacknowledged; frames starting with 0 or "{"
        # are escaped with a 0 byte, as meshctrl does.
        data = os.urandom(3 * 1024 * 1024) + b"{tail"
        chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
        chunks[1] = b"\x00" + chunks[1][1:]
        data = b"".join(chunks)
        send(action="upload", reqid="up", path=folder + "/made", name="big.bin",
             size=len(data))
        await reply(lambda r: r.get("action") == "uploadstart")
        sent = 0
        for chunk in chunks:
            while sent - len([r for r in relay_replies(user)
                              if r.get("action") == "uploadack"]) >= 4:
                await deferLater(reactor, 0.005, lambda: None)
            frame = b"\x00" + chunk if chunk[:1] in (b"\x00", b"{") else chunk
            user.sendMessage(frame, isBinary=True)
            sent += 1
        send(action="uploaddone")
        await reply(lambda r: r.get("action") == "uploaddone")
        with open(os.path.join(folder, "made", "big.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(),
                             hashlib.sha256(data).hexdigest())

        # Download: start → start, startack → blocks, one ack per block.
        user.frames.clear()
        path = folder + "/made/big.bin"
        send(action="download", sub="start", id="d1", path=path)
        await reply(lambda r: r.get("action") == "download" and r.get("sub") == "start")
        send(action="download", sub="startack", id="d1")
        received: list[bytes] = []
        seen = 0
        for _ in range(6000):
            blocks = [p for p, binary in user.frames if binary and p[:1] == b"\x01"]
            for block in blocks[seen:]:
                received.append(block[4:])
                if block[3] & 1 == 0:
                    send(action="download", sub="ack", id="d1")
            seen = len(blocks)
            if blocks and blocks[-1][3] & 1:
                break
            await deferLater(reactor, 0.005, lambda: None)
        self.assertEqual(hashlib.sha256(b"".join(received)).hexdigest(),
                         hashlib.sha256(data).hexdigest())

        send(action="rename", path=folder, oldname="made", newname="renamed")
        send(action="ls", path=folder + "/renamed", reqid=2)
        listing = await reply(lambda r: r.get("reqid") == 2)
        self.assertEqual([(e["n"], e["s"]) for e in listing["dir"]], [("big.bin", len(data))])
        send(action="rm", path=folder, delfiles=["renamed"], rec=True)
        send(action="ls", path=folder, reqid=3)
        listing = await reply(lambda r: r.get("reqid") == 3)
        self.assertEqual(listing["dir"], [])
        user.sendClose()
        await user.closed
        setup.control.sendClose()
        await setup.control.closed
        await deferLater(reactor, 0.1, lambda: None)


def file_sha256(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            hasher.update(block)
    return hasher.hexdigest()


class MeshCtrlFilesTests(TestCase):
    timeout = 300

    async def test_meshctrl_upload_download_round_trip(self) -> None:
        """meshctrl.js upload then download of a 200 MB file (MESHD_TEST_FILE_MB sets
        another size) through meshd and the Python agent: SHA-256 identical both ways, and
        neither the agent nor meshd ever held the file in memory."""
        from twisted.internet.threads import deferToThread

        from tests.meshctrl import MeshCtrl, meshctrl_script
        from tests.test_relay_e2e import AgentSetup

        meshctrl_script()
        setup = await AgentSetup(self).start()
        work = tempfile.mkdtemp(prefix="meshctrl-files-")
        self.addCleanup(shutil.rmtree, work, True)
        remote = os.path.join(work, "remote")
        os.mkdir(remote)
        local = os.path.join(work, "payload.bin")
        megabytes = int(os.environ.get("MESHD_TEST_FILE_MB", "200"))
        hasher = hashlib.sha256()
        with open(local, "wb") as f:
            for _ in range(megabytes):
                block = os.urandom(1024 * 1024)
                hasher.update(block)
                f.write(block)
        digest = hasher.hexdigest()
        ctl = MeshCtrl(setup.server.port, "admin", setup.password, cwd=work)
        short_id = setup.node_id.split("/")[-1]
        out = await deferToThread(ctl.run, "upload", "--id", short_id, "--file", local,
                                  "--target", remote, timeout=180)
        if "Unexpected server response: 403" in out:
            # Seen rarely under CI load and not yet explained: the relay refused meshctrl's
            # auth cookie (the server log says why since then).  Kept visible in the log,
            # retried once so the file path itself stays tested.
            print("meshctrl relay login refused once; server log:\n"
                  + setup.server.log()[-2000:])
            out = await deferToThread(ctl.run, "upload", "--id", short_id, "--file", local,
                                      "--target", remote, timeout=180)
        self.assertIn("Upload done", out, out + setup.agent_log()[-3000:] + setup.server.log()[-4000:])
        self.assertEqual(file_sha256(os.path.join(remote, "payload.bin")), digest)
        back = os.path.join(work, "back.bin")
        out = await deferToThread(ctl.run, "download", "--id", short_id, "--file",
                                  os.path.join(remote, "payload.bin"), "--target", back,
                                  timeout=180)
        self.assertIn("Download completed", out, out + setup.agent_log()[-3000:])
        self.assertEqual(file_sha256(back), digest)
        if sys.platform.startswith("linux"):
            limit = 150 * 1024 * 1024
            for name, pid in (("agent", setup.agent.pid), ("meshd", setup.server.process.pid)):
                peak = setup.peak_memory(pid)
                self.assertLess(peak, limit, f"{name} peaked at {peak >> 20} MiB")
        setup.control.sendClose()
        await setup.control.closed
