"""A terminal through the relay, end to end: a started meshd, the Python agent, and a
user side written here (control.ashx for the tunnel request, meshrelay.ashx for the
session), over real TLS on 127.0.0.1."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
from typing import Any, Optional

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import defer, reactor, ssl
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.server import ROOT, ServerProcess, agent_env, fresh_datapath


class Client(WebSocketClientProtocol):
    """Collects frames; ``wait(predicate)`` fires when a frame makes it true."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[bytes, bool]] = []
        self.opened: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.append((payload, isBinary))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"{code} {reason}"))
        if not self.closed.called:
            self.closed.callback(None)

    def json_frames(self) -> list[dict[str, Any]]:
        found = []
        for payload, binary in self.frames:
            if not binary:
                try:
                    found.append(json.loads(payload))
                except ValueError:
                    pass
        return found

    def output(self) -> bytes:
        return b"".join(p for p, binary in self.frames if binary)


async def connect(url: str, headers: dict[str, str] | None = None) -> Client:
    factory = WebSocketClientFactory(url, headers=headers or {})
    factory.protocol = Client
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=0,
                               closeHandshakeTimeout=0)
    holder: list[Client] = []
    original = factory.buildProtocol

    def build(addr: Any) -> Client:
        protocol = original(addr)
        assert isinstance(protocol, Client)
        holder.append(protocol)
        return protocol

    factory.buildProtocol = build  # type: ignore[method-assign]
    connectWS(factory, ssl.CertificateOptions(verify=False))
    while not holder:
        await deferLater(reactor, 0.01, lambda: None)
    await holder[0].opened
    return holder[0]


async def until(check: Any, timeout: float) -> Any:
    for _ in range(int(timeout / 0.1)):
        result = check()
        if result:
            return result
        await deferLater(reactor, 0.1, lambda: None)
    return check()


class AgentSetup:
    """A started meshd with an admin, a group, the Python agent connected to it, and the
    admin's control channel; everything is cleaned up by the test."""

    password = "Relay-Pass-1"

    def __init__(self, test: TestCase, config: Optional[dict[str, Any]] = None) -> None:
        self.test = test
        self.config = config
        self.server: Any = None
        self.control: Any = None
        self.node_id = ""
        self.base = ""
        self.folder = ""
        self.agent: Any = None

    async def start(self) -> "AgentSetup":
        from tests.test_login import admin

        test = self.test
        datapath = fresh_datapath()
        self.datapath = datapath
        extra: list[str] = []
        if self.config is not None:
            with open(datapath + ".json", "w") as f:
                json.dump(self.config, f)
            extra = ["--config", datapath + ".json"]
        server = self.server = ServerProcess(datapath, extra).start()
        test.addCleanup(server.stop)
        test.assertEqual(admin(datapath, "createaccount", "admin", "--pass", self.password,
                               "--siteadmin").returncode, 0)
        meshauth = ",".join(base64.b64encode(x.encode()).decode()
                            for x in ("admin", self.password))
        base = self.base = f"wss://127.0.0.1:{server.port}"
        control = self.control = await connect(base + "/control.ashx",
                                               {"x-meshauth": meshauth})
        test.addCleanup(lambda: control.dropConnection(abort=True)
                        if control.transport else None)
        control.sendMessage(json.dumps({"action": "createmesh", "meshname": "relay",
                                        "meshtype": 2, "responseid": "m"}).encode())
        created = await until(lambda: [f for f in control.json_frames()
                                       if f.get("responseid") == "m"], 20)
        test.assertEqual(created[0].get("result"), "ok", created)
        mesh_id = self.mesh_id = created[0]["meshid"]

        conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                           context=server.ssl_context(), timeout=10)
        conn.request("GET", "/meshsettings?id=" + urllib.parse.quote(mesh_id.split("/")[2]))
        msh = conn.getresponse().read()
        conn.close()
        self.start_agent(msh)
        node_id = None
        for attempt in range(120):
            control.sendMessage(json.dumps({"action": "nodes", "responseid": f"n{attempt}"})
                                .encode())
            answer = await until(lambda: [f for f in control.json_frames()
                                          if f.get("responseid") == f"n{attempt}"], 10)
            nodes = answer[0].get("nodes", {}).get(mesh_id, []) if answer else []
            ready = [n for n in nodes if n.get("conn", 0) & 1 and n.get("agent", {}).get("core")]
            if ready:
                node_id = ready[0]["_id"]
                break
            await deferLater(reactor, 0.5, lambda: None)
        test.assertIsNotNone(node_id, server.log()[-3000:] + self.agent_log())
        assert node_id is not None
        self.node_id = node_id
        return self

    def start_agent(self, msh: bytes) -> None:
        """Start the agent with the group's ``.msh`` (here: meshd's Python agent)."""
        test = self.test
        folder = self.folder = tempfile.mkdtemp(prefix="pyagent-")
        test.addCleanup(shutil.rmtree, folder, True)
        with open(os.path.join(folder, "meshagent.msh"), "wb") as f:
            f.write(msh)
        log = open(os.path.join(folder, "agent.log"), "ab")
        agent = subprocess.Popen(
            [sys.executable, "-m", "agentsrc", "--msh", os.path.join(folder, "meshagent.msh"),
             "--fastkey"], cwd=ROOT, env=agent_env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        log.close()
        self.agent = agent

        def stop() -> None:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(10)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()

        test.addCleanup(stop)

    def agent_log(self) -> str:
        try:
            with open(os.path.join(self.folder, "agent.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    @staticmethod
    def peak_memory(pid: int) -> int:
        """A process's peak resident memory in bytes (Linux ``VmHWM``)."""
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    async def tunnel(self, protocol: int, relay_id: Optional[str] = None) -> Client:
        """A user relay side for ``protocol``, paired with the agent (``c`` received)."""
        control, node_id, test = self.control, self.node_id, self.test
        tag = base64.b16encode(os.urandom(4)).decode()
        control.sendMessage(json.dumps({"action": "authcookie"}).encode())
        cookies = await until(lambda: [f for f in control.json_frames()
                                       if f.get("action") == "authcookie"], 10)
        cookie, rcookie = cookies[-1]["cookie"], cookies[-1]["rcookie"]
        relay_id = relay_id or base64.b64encode(os.urandom(9)).decode().replace(
            "+", "@").replace("/", "$")
        quoted = urllib.parse.quote
        user = await connect(
            f"{self.base}/meshrelay.ashx?browser=1&p={protocol}&nodeid={quoted(node_id)}"
            f"&id={quoted(relay_id)}&auth={quoted(cookie)}")
        test.addCleanup(lambda: user.dropConnection(abort=True) if user.transport else None)
        control.sendMessage(json.dumps({
            "action": "msg", "type": "tunnel", "nodeid": node_id, "usage": protocol,
            "value": f"*/meshrelay.ashx?p={protocol}&nodeid={node_id}&id={relay_id}"
                     f"&rauth={rcookie}",
            "responseid": "t" + tag}).encode())
        routed = await until(lambda: [f for f in control.json_frames()
                                      if f.get("responseid") == "t" + tag], 10)
        test.assertEqual(routed[0]["result"], "OK")
        test.assertTrue(await until(lambda: (b"c", False) in user.frames
                                    or (b"cr", False) in user.frames, 30),
                        self.server.log()[-3000:] + self.agent_log())
        return user


class PythonAgentTerminalTests(TestCase):
    timeout = 180

    async def test_terminal_through_relay(self) -> None:
        """The user asks for a terminal tunnel on control.ashx, joins the relay with its
        auth cookie; the Python agent dials back, runs a shell on a pty, and
        echo RELAY-$((6*7)) prints RELAY-42; closing the user side ends the session."""
        setup = await AgentSetup(self).start()
        server, control = setup.server, setup.control
        user = await setup.tunnel(1)
        user.sendMessage(json.dumps({"ctrlChannel": "102938", "type": "options",
                                     "cols": 100, "rows": 30}).encode(), isBinary=False)
        user.sendMessage(b"1", isBinary=False)
        user.sendMessage(b"echo RELAY-$((6*7))\r", isBinary=True)
        found = await until(lambda: b"RELAY-42" in user.output(), 30)
        self.assertTrue(found, f"terminal said {user.output()[-2000:]!r}\n" + setup.agent_log())
        user.sendClose()
        await user.closed

        def ended() -> bool:
            return "relay " in server.log() and " ended after " in server.log()

        self.assertTrue(await until(ended, 10), server.log()[-3000:])
        control.sendClose()
        await control.closed
        await deferLater(reactor, 0.1, lambda: None)


class RecordingTests(TestCase):
    timeout = 180

    async def test_terminal_session_recorded(self) -> None:
        """With sessionRecording on, a terminal session is announced with "cr", written as a
        .mcrec file (metadata, both directions with their flags, end record) and indexed."""
        from meshd.relay.recording import RecordingError, read_recording
        from meshd.store.sqlite import SQLiteStore

        setup = await AgentSetup(self, {"domains": {"": {"sessionRecording": {
            "protocols": [1]}}}}).start()
        user = await setup.tunnel(1)
        self.assertIn((b"cr", False), user.frames)
        user.sendMessage(b"1", isBinary=False)
        user.sendMessage(b"echo REC-$((6*7))\r", isBinary=True)
        self.assertTrue(await until(lambda: b"REC-42" in user.output(), 30), setup.agent_log())
        user.sendClose()
        await user.closed
        folder = os.path.join(setup.datapath, "recordings")

        def written() -> list[str]:
            try:
                return [n for n in os.listdir(folder) if n.endswith(".mcrec")]
            except OSError:
                return []

        names = await until(written, 10)
        self.assertTrue(names, setup.server.log()[-3000:])
        path = os.path.join(folder, names[0])
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

        async def complete() -> Any:
            with open(path, "rb") as f:
                try:
                    parsed = read_recording(f.read())
                except RecordingError:
                    return None  # still being written
            return parsed if parsed[2] else None

        deadline = reactor.seconds() + 10
        parsed = None
        while parsed is None and reactor.seconds() < deadline:
            parsed = await complete()
            if parsed is None:
                await deferLater(reactor, 0.2, lambda: None)
        assert parsed is not None, "the recording never got its end record"
        metadata, records, ended = parsed
        self.assertEqual((metadata["userid"], metadata["protocol"], metadata["nodeid"]),
                         ("user//admin", "1", setup.node_id))
        typed = b"".join(r.payload for r in records if r.from_user)
        shown = b"".join(r.payload for r in records if not r.from_user)
        self.assertIn(b"echo REC-$((6*7))", typed)
        self.assertIn(b"REC-42", shown)
        store = SQLiteStore(setup.datapath, reactor)
        await store.open()
        self.addCleanup(store.close)
        [index] = await store.find_by_type("recording")
        self.assertEqual((index["file"], index["protocol"], index["nodeid"]),
                         (names[0], 1, setup.node_id))
