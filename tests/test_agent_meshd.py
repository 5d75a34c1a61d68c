"""meshd's own Python agent against a real started meshd over real TLS."""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.parse
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from meshd.agent import identity
from meshd.store.sqlite import SQLiteStore
from tests.server import PythonAgent, ServerProcess, agent_group, fresh_datapath
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
        agent = PythonAgent(msh).start()
        self.addCleanup(agent.cleanup)

        async def core_reported() -> Any:
            nodes = await store.find_nodes_by_mesh([mesh_key])
            if nodes and nodes[0].get("agent", {}).get("core"):
                return nodes[0]
            return None

        node = await eventually(core_reported, 60)
        self.assertTrue(node, f"server log:\n{server.log()[-3000:]}\nagent log:\n{agent.log()}")
        self.assertIn("pushing core python", server.log())
        self.assertEqual(node["meshid"], mesh_key)

        # Restart: the agent pins the server and reconnects without the server's signature.
        agent.stop()
        connects = server.log().count(f"agent {node['_id']} connected")
        agent.start()

        async def reconnected() -> bool:
            return server.log().count(f"agent {node['_id']} connected") > connects

        self.assertTrue(await eventually(reconnected, 60), agent.log())
        # The second connection found its core current: no second push.
        self.assertEqual(server.log().count("pushing core python"), 1)


class StopTests(TestCase):
    timeout = 180

    async def test_stop_marks_agents_offline(self) -> None:
        """Stopping the server records its connected agents going offline (a power event)
        before the store closes, and logs no failed write."""
        datapath = fresh_datapath()
        server = ServerProcess(datapath).start()
        self.addCleanup(server.stop)
        store = SQLiteStore(datapath, reactor)
        await store.open()
        mesh_key, msh = await agent_group(server, store, "stop")
        agent = PythonAgent(msh).start()
        self.addCleanup(agent.cleanup)

        async def online() -> Any:
            nodes = await store.find_nodes_by_mesh([mesh_key])
            return nodes[0] if nodes and f"agent {nodes[0]['_id']} connected" in server.log() \
                else None

        node = await eventually(online, 60)
        self.assertTrue(node, server.log()[-3000:])
        await store.close()
        # twistd ends by the signal it was stopped with, after a clean shutdown.
        self.assertIn(server.stop(), (0, -15))
        store = SQLiteStore(datapath, reactor)
        await store.open()
        self.addCleanup(store.close)
        timeline = await store.get_power_events(node["_id"])
        self.assertEqual([event["power"] for event in timeline
                          if event["nodeid"] == node["_id"]][-2:], [1, 0], timeline)
        self.assertNotIn("not stored", server.log())


class PythonAgentCommandTests(TestCase):
    timeout = 180

    async def test_runcommand_through_meshctrl(self) -> None:
        """meshctrl's runcommand reaches the Python agent through meshd; --reply returns output."""
        import json
        import time as _time

        from tests.meshctrl import MeshCtrl, meshctrl_script
        from tests.test_login import admin

        meshctrl_script()
        datapath = fresh_datapath()
        server = ServerProcess(datapath).start()
        self.addCleanup(server.stop)
        password = "Agent-Cmd-Pass-1"
        self.assertEqual(admin(datapath, "createaccount", "admin", "--pass", password,
                               "--siteadmin").returncode, 0)
        ctl = MeshCtrl(server.port, "admin", password, cwd=tempfile.mkdtemp())
        out = ctl.run("adddevicegroup", "--name", "python-agents").strip()
        self.assertTrue(out.startswith("ok mesh//"), out)
        mesh_id = out.split(" ", 1)[1]

        conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                           context=server.ssl_context(), timeout=10)
        conn.request("GET", "/meshsettings?id=" + urllib.parse.quote(mesh_id.split("/")[2]))
        msh = conn.getresponse().read()
        conn.close()
        agent = PythonAgent(msh).start()
        self.addCleanup(agent.cleanup)
        node = None
        deadline = _time.monotonic() + 60
        while node is None and _time.monotonic() < deadline:
            try:
                nodes = json.loads(ctl.run("listdevices", "--id", mesh_id, "--json"))
            except ValueError:
                nodes = []
            ready = [n for n in nodes if n.get("conn", 0) & 1 and n.get("agent", {}).get("core")]
            node = ready[0] if ready else None
            if node is None:
                _time.sleep(0.5)
        self.assertIsNotNone(node, server.log()[-3000:])
        assert node is not None
        out = ctl.run("runcommand", "--id", node["_id"], "--run", "echo py-$((6*7))", "--reply",
                      timeout=60)
        self.assertEqual(out.strip(), "py-42")


class DomainAgentTests(TestCase):
    timeout = 120

    async def test_agent_in_other_domain(self) -> None:
        """A group of another domain installs from /<domain>/meshsettings and its agent
        connects to /<domain>/agent.ashx, recorded under that domain."""
        import json

        datapath = fresh_datapath()
        with open(datapath + ".json", "w") as f:
            json.dump({"domains": {"": {}, "customer1": {"title": "Customer 1"}}}, f)
        server = ServerProcess(datapath, ["--config", datapath + ".json"]).start()
        self.addCleanup(server.stop)
        store = SQLiteStore(datapath, reactor)
        await store.open()
        self.addCleanup(store.close)
        raw = os.urandom(48)
        mesh_id = identity.mesh_id_to_str(raw)
        mesh_key = identity.mesh_key(mesh_id, "customer1")
        await store.set({"_id": mesh_key, "type": "mesh", "mtype": 2, "name": "c1",
                         "domain": "customer1"})
        conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                           context=server.ssl_context(), timeout=10)
        conn.request("GET", "/customer1/meshsettings?id=" + urllib.parse.quote(mesh_id))
        msh = conn.getresponse().read()
        conn.close()
        self.assertIn("/customer1/agent.ashx\r\n".encode(), msh)
        agent = PythonAgent(msh).start()
        self.addCleanup(agent.cleanup)

        async def online() -> Any:
            nodes = await store.find_nodes_by_mesh([mesh_key])
            return nodes[0] if nodes else None

        node = await eventually(online, 60)
        self.assertTrue(node, server.log()[-3000:])
        self.assertTrue(node["_id"].startswith("node/customer1/"))
        self.assertEqual(node["domain"], "customer1")
