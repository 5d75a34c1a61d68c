"""Interop: the Python agent (``meshd-agent``) against a real MeshCentral 1.1.55 from npm.

The server comes from :mod:`tests.meshcentral` (installed once into ``.cache/meshcentral``,
started once per test process on free loopback ports). The agent runs as its own process,
``python -m agentsrc --msh <file> --fastkey``, with the ``.msh`` that MeshCentral's
``/meshsettings`` endpoint serves for a new device group; MeshCentral's own view
(``meshctrl listdevices``) and ``meshctrl runcommand --reply`` are the judges.
Skipped when Node/npm or the npm registry are unavailable, except under ``CI=true`` (fails).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Optional

from twisted.trial import unittest

from agentsrc.settings import parse_msh
from meshd.agent.identity import mesh_id_from_str
from tests.meshcentral import (
    MeshCentralServer,
    MeshCentralUnavailable,
    shared_server,
    unavailable,
)

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 30.0


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


class AgentProcess:
    """``python -m agentsrc`` in a scratch folder, its log in ``agent.log``."""

    def __init__(self, folder: str, msh: str) -> None:
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.msh_path = os.path.join(folder, "meshagent.msh")
        with open(self.msh_path, "w", encoding="utf-8") as handle:
            handle.write(msh)
        self.log_path = os.path.join(folder, "agent.log")
        self.process: Optional[subprocess.Popen[bytes]] = None
        path = _REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
        self.env = dict(os.environ, PYTHONPATH=path)

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "agentsrc", "--msh", self.msh_path, "--fastkey", *extra]

    def node_id(self) -> str:
        """The agent's node id (``--show-id`` creates the identity on first use)."""
        result = subprocess.run(self.command("--show-id"), cwd=self.folder, env=self.env,
                                capture_output=True, timeout=60, check=True)
        return result.stdout.decode().strip()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=self.folder, env=self.env,
                                            stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""


class MeshCentralInteropTests(unittest.TestCase):
    """agentsrc against MeshCentral 1.1.55: online, runcommands, skip path, pinning."""

    server: MeshCentralServer
    mesh_id = ""
    msh = ""
    _prepared = False
    _error: Optional[str] = None

    @classmethod
    def _prepare(cls) -> None:
        """Once per process (trial has no setUpClass): the server, a group and its .msh."""
        cls._prepared = True
        try:
            cls.server = shared_server()
            cls.mesh_id = cls.server.add_device_group("interop")
            cls.msh = cls.server.mesh_settings(cls.mesh_id)
        except (MeshCentralUnavailable, OSError) as error:
            cls._error = str(error)

    def setUp(self) -> None:
        if not self._prepared:
            type(self)._prepare()
        if self._error is not None:
            raise unavailable(self._error)

    def agent(self, msh: Optional[str] = None) -> AgentProcess:
        agent = AgentProcess(os.path.abspath(self.mktemp()), msh if msh is not None else self.msh)
        self.addCleanup(agent.stop)
        return agent

    def online(self, node_id: str) -> Optional[dict[str, Any]]:
        device = self.server.device(node_id)
        return device if device is not None and int(device.get("conn", 0)) & 1 else None

    def test_msh_pins_the_agent_certificate(self) -> None:
        """MeshCentral's .msh parses; its ServerID is the key hash of agentserver-cert."""
        settings = parse_msh(self.msh)
        self.assertEqual(settings.server_id.hex().upper(), self.server.agent_server_id())
        self.assertEqual(settings.mesh_id, mesh_id_from_str(self.mesh_id))
        self.assertEqual(settings.servers[0].port, self.server.port)

    def test_online_runcommand_reconnect(self) -> None:
        """The agent comes online, runs a command for meshctrl, and reconnects on the skip path."""
        agent = self.agent()
        node_id = agent.node_id()
        agent.start()
        device = wait_until(lambda: self.online(node_id), "the agent to show online")
        self.assertEqual(device["meshid"], self.mesh_id)
        self.assertEqual(device["agent"]["id"], 6)
        self.assertEqual(device["rname"], socket.gethostname())
        wait_until(lambda: (self.server.device(node_id) or {}).get("agent", {}).get("core"),
                   "coreinfo to reach MeshCentral")
        device = self.server.device(node_id) or {}
        self.assertTrue(device["agent"]["core"].startswith("Python core"))
        output = self.server.run_command(node_id, "echo hello-from-agent; echo $((6*7))")
        self.assertEqual(output.strip().splitlines(), ["hello-from-agent", "42"])
        self.assertIn("full handshake", agent.log())
        agent.stop()
        wait_until(lambda: not self.online(node_id), "the agent to show offline")
        agent.start()
        wait_until(lambda: self.online(node_id), "the agent to be back online")
        wait_until(lambda: "reconnect (skip) handshake" in agent.log(), "the skip path in the log")
        self.assertNotIn("refusing", agent.log())

    def test_wrong_server_id_refused(self) -> None:
        """With another ServerID the agent refuses MeshCentral, logs why and never comes online."""
        settings = parse_msh(self.msh)
        wrong = bytes(b ^ 0xFF for b in settings.server_id).hex().upper()
        agent = self.agent(self.msh.replace(settings.server_id.hex().upper(), wrong))
        node_id = agent.node_id()
        agent.start()
        wait_until(lambda: "server-id-mismatch" in agent.log(), "the refusal in the log")
        self.assertIn("refusing server", agent.log())
        self.assertNotIn("authenticated to", agent.log())
        self.assertIsNone(self.server.device(node_id))
