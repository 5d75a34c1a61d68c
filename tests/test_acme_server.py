"""ACME end to end: a real meshd gets its web certificate from Pebble, hot-swapped, and a
real MeshAgent enrolled under the old certificate keeps working."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from cryptography import x509
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from meshd.store.sqlite import SQLiteStore
from tests.pebble import Pebble, require_pebble
from tests.server import ServerProcess, agent_group, fresh_datapath
from tests.test_meshagent import MeshAgentProcess, eventually
from tests.test_server import tls_connect


class AcmeServerTests(TestCase):
    timeout = 240

    async def test_issuance_hot_swap_and_agent(self) -> None:
        """The server swaps in Pebble's certificate without a restart; an agent that pinned the
        self-signed certificate reconnects under the new one without reinstalling."""
        binary = require_pebble(self)
        datapath = fresh_datapath()
        server = ServerProcess(datapath)
        pebble = Pebble(tempfile.mkdtemp(prefix="pebble-"), server.redirport,
                        binary=binary).start()
        self.addCleanup(pebble.stop)

        # 1. The server with its self-signed certificate; a real agent enrols.
        server.start()
        self.addCleanup(server.stop)
        store = SQLiteStore(datapath, reactor)
        await store.open()
        self.addCleanup(store.close)
        mesh_key, msh = await agent_group(server, store, "acme")
        agent = MeshAgentProcess(msh)
        self.addCleanup(agent.cleanup)
        agent.start()

        async def online() -> Any:
            nodes = await store.find_nodes_by_mesh([mesh_key])
            if nodes and f"agent {nodes[0]['_id']} connected" in server.log():
                return nodes[0]
            return None

        node = await eventually(online)
        self.assertTrue(node, server.log()[-3000:])
        _p, _c, old_der = tls_connect(server.port)

        # 2. Restart with ACME configured: the certificate is ordered and swapped in.
        server.stop()
        with open(datapath + ".json", "w") as f:
            json.dump({"letsencrypt": {"email": "admin@example.com", "names": "localhost",
                                       "directory": pebble.directory_url,
                                       "rsaKeySize": 2048}}, f)
        server.args += ["--config", datapath + ".json"]
        os.environ["REQUESTS_CA_BUNDLE"] = pebble.ca_file
        try:
            server.start()
        finally:
            del os.environ["REQUESTS_CA_BUNDLE"]

        async def renewed() -> bool:
            return "web certificate renewed" in server.log()

        self.assertTrue(await eventually(renewed, 60),
                        server.log()[-4000:] + "\n" + pebble.log())
        _p, _c, new_der = tls_connect(server.port)
        new_cert = x509.load_der_x509_certificate(new_der)
        self.assertNotEqual(new_der, old_der)
        self.assertIn("Pebble", new_cert.issuer.rfc4514_string())
        # Swapped while serving: the process that logged the renewal is still the one up.
        self.assertIsNone(server.process.poll())

        # 3. The agent (still the same install) connects under the new certificate.
        agent.stop()
        connects = server.log().count(f"agent {node['_id']} connected")
        agent.start()

        async def reconnected() -> bool:
            return server.log().count(f"agent {node['_id']} connected") > connects

        self.assertTrue(await eventually(reconnected, 90), server.log()[-3000:])
