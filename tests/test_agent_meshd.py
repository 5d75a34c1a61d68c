"""meshd's own Python agent against a real started meshd over real TLS."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from meshd.store.sqlite import SQLiteStore
from tests.server import ROOT, ServerProcess, agent_group, fresh_datapath, server_env
from tests.test_meshagent import eventually


class PythonAgentTests(TestCase):
    timeout = 180

    async def test_online_core_pushed_and_reconnect(self) -> None:
        """The Python agent installs from /meshsettings, comes online, runs the pushed core,
        and reconnects on the skip path after a restart."""
        datapath = fresh_datapath()
        server = ServerProcess(datapath).start()
        self.addCleanup(server.stop)
        store = SQLiteStore(datapath, reactor)
        await store.open()
        self.addCleanup(store.close)
        mesh_key, msh = await agent_group(server, store, "py")
        folder = tempfile.mkdtemp(prefix="pyagent-")
        self.addCleanup(shutil.rmtree, folder, True)
        with open(os.path.join(folder, "meshagent.msh"), "wb") as f:
            f.write(msh)

        def start_agent() -> subprocess.Popen[bytes]:
            log = open(os.path.join(folder, "agent.log"), "ab")
            process = subprocess.Popen(
                [sys.executable, "-m", "agentsrc", "--msh", os.path.join(folder, "meshagent.msh"),
                 "--fastkey"], cwd=ROOT, env=server_env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
            log.close()

            def stop() -> None:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()

            self.addCleanup(stop)
            return process

        def agent_log() -> str:
            with open(os.path.join(folder, "agent.log"), errors="replace") as f:
                return f.read()

        agent = start_agent()

        async def core_reported() -> Any:
            nodes = await store.find_nodes_by_mesh([mesh_key])
            if nodes and nodes[0].get("agent", {}).get("core"):
                return nodes[0]
            return None

        node = await eventually(core_reported, 60)
        self.assertTrue(node, f"server log:\n{server.log()[-3000:]}\nagent log:\n{agent_log()}")
        self.assertIn("pushing core python", server.log())
        self.assertEqual(node["meshid"], mesh_key)

        # Restart: the agent pins the server and reconnects without the server's signature.
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
        connects = server.log().count(f"agent {node['_id']} connected")
        start_agent()

        async def reconnected() -> bool:
            return server.log().count(f"agent {node['_id']} connected") > connects

        self.assertTrue(await eventually(reconnected, 60), agent_log())
        # The second connection found its core current: no second push.
        self.assertEqual(server.log().count("pushing core python"), 1)
