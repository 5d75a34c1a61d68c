"""Interop with MeshCentral's real MeshAgent binary (npm meshcentral@1.1.55) over real TLS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any, Callable, Optional

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from meshd.agent import identity
from meshd.store.sqlite import SQLiteStore
from tests.npmcache import meshagent_binary, meshcentral_package
from tests.server import ServerProcess, agent_env, agent_group, fresh_datapath


class MeshAgentProcess:
    """The real agent in a scratch folder with a .msh for one of our groups."""

    def __init__(self, msh: bytes) -> None:
        self.folder = tempfile.mkdtemp(prefix="meshagent-")
        self.binary = os.path.join(self.folder, "meshagent")
        shutil.copy(meshagent_binary(), self.binary)
        os.chmod(self.binary, 0o755)
        with open(os.path.join(self.folder, "meshagent.msh"), "wb") as f:
            f.write(msh + b"ignoreProxyFile=1\r\n")
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        self.log = open(os.path.join(self.folder, "stdout.log"), "wb")
        self.process = subprocess.Popen([self.binary, "connect"], cwd=self.folder,
                                        env=agent_env(), stdout=self.log,
                                        stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process is not None:
            self.log.close()
        self.process = None

    def node_id(self) -> str:
        """The node id the agent computes from its own certificate (``meshagent -nodeid``,
        which prints the SHA-384 in hex)."""
        out = subprocess.run([self.binary, "-nodeid"], cwd=self.folder, capture_output=True,
                             text=True, timeout=30)
        return identity.encode_id(bytes.fromhex(out.stdout.strip()))

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


async def eventually(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll an async check until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            return result
        await deferLater(reactor, 0.25, lambda: None)


class RealMeshAgentTests(TestCase):
    timeout = 240

    async def test_agent_online_and_core(self) -> None:
        """The real MeshAgent authenticates, shows online, runs MeshCentral's core, answers commands."""
        package = meshcentral_package()
        datapath = fresh_datapath()
        with open(datapath + ".json", "w") as f:
            json.dump({"settings": {"agentCoreDir": os.path.join(package, "agents")}}, f)
        server = ServerProcess(datapath, ["--config", datapath + ".json"]).start()
        self.addCleanup(server.stop)

        store = SQLiteStore(datapath, reactor)
        await store.open()
        self.addCleanup(store.close)
        with open(os.path.join(datapath, "agentserver-cert-public.crt"), "rb") as f:
            server_id = identity.server_id(x509.load_pem_x509_certificate(f.read()))
        # The settings file comes from the server, as an administrator would download it.
        mesh_key, msh = await agent_group(server, store, "interop")
        mesh_raw = identity.mesh_id_from_str(mesh_key)
        self.assertIn(f"ServerID={server_id}\r\n".encode(), msh)
        self.assertIn(f"MeshID={identity.mesh_id_to_msh(mesh_raw)}\r\n".encode(), msh)
        self.assertIn(f"MeshServer=wss://127.0.0.1:{server.port}/agent.ashx\r\n".encode(), msh)

        agent = MeshAgentProcess(msh)
        self.addCleanup(agent.cleanup)
        agent.start()

        async def node_online() -> Any:
            nodes = await store.find_nodes_by_mesh([mesh_key])
            if nodes and f"agent {nodes[0]['_id']} connected" in server.log():
                return nodes[0]
            return None

        node = await eventually(node_online)
        self.assertTrue(node, f"agent never came online:\n{server.log()[-3000:]}")
        self.assertEqual(node["meshid"], mesh_key)
        self.assertEqual(node["agent"]["id"], 6)  # Linux x86-64

        # MeshCentral's core is pushed (or already held) and reports coreinfo.
        async def core_running() -> Any:
            current = await store.get(node["_id"])
            return current if current and current.get("agent", {}).get("core") else None

        current = await eventually(core_running, 90)
        self.assertTrue(current, f"core never reported:\n{server.log()[-3000:]}")
        self.assertIn("osdesc", current)

        # A power event marks the connection in the store's timeline.
        power = await store.get_power_events(node["_id"])
        self.assertIn(1, [event.get("power") for event in power])

        agent.stop()
        node_key = identity.node_key(agent.node_id())
        self.assertEqual(node_key, node["_id"])
