"""Intel AMT CIRA against the real started server: group credentials, login, presence."""

from __future__ import annotations

import http.client
import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from meshd.agent import identity
from meshd.store.sqlite import SQLiteStore
from tests.cira_client import CiraDevice, LoginRefused, client_context, connect_device
from tests.server import ServerProcess, fresh_datapath
from tests.test_login import admin
from tests.test_meshagent import eventually


class MpsServerTests(TestCase):
    timeout = 120

    async def test_device_login_presence_and_stats(self) -> None:
        """A device with its group's CIRA credentials logs in over TLS to the MPS port, is
        recorded as a device, and /health counts it; a wrong password and an unknown
        group's user are refused, and /health shows every counter the issue names
        (connections, auth failures, unknown groups, channels, timeouts)."""
        datapath = fresh_datapath()
        server = ServerProcess(datapath).start()
        self.addCleanup(server.stop)
        store = SQLiteStore(datapath, reactor)
        await store.open()
        self.addCleanup(store.close)
        mesh_id = identity.mesh_id_to_str(os.urandom(48))
        mesh_key = identity.mesh_key(mesh_id)
        await store.set({"_id": mesh_key, "type": "mesh", "mtype": 1, "name": "amt",
                         "domain": ""})
        # The administrator makes the group's credentials with meshd-admin (shown once).
        result = admin(datapath, "ciracredentials", mesh_id)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = dict(line.split(" ", 2)[1:] for line in result.stdout.splitlines()[:2])
        user, password = lines["user"], lines["password"]
        self.assertEqual(len(user), 16)

        bad = connect_device(reactor, "127.0.0.1", server.mpsport,
                             CiraDevice(user, b"wrong-password!!"), client_context(False))
        with self.assertRaises(LoginRefused):
            await bad.ready
        stranger = connect_device(reactor, "127.0.0.1", server.mpsport,
                                  CiraDevice("NoSuchGroupXXXXX", password.encode()),
                                  client_context(False))
        with self.assertRaises(LoginRefused):
            await stranger.ready

        device = connect_device(reactor, "127.0.0.1", server.mpsport,
                                CiraDevice(user, password.encode()), client_context(False))
        await device.ready
        self.addCleanup(device.close)

        async def recorded() -> object:
            nodes = await store.find_nodes_by_mesh([mesh_key])
            return nodes[0] if nodes else None

        node = await eventually(recorded, 30)
        self.assertTrue(node)
        conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                           context=server.ssl_context(), timeout=10)
        conn.request("GET", "/health")
        health = json.loads(conn.getresponse().read())
        conn.close()
        mps = health["mps"]
        self.assertEqual(mps["devices"], 1)
        self.assertGreaterEqual(mps["connections"], 1)
        self.assertGreaterEqual(mps["connectionsTotal"], 3)
        self.assertEqual((mps["badPasswords"], mps["unknownGroups"], mps["authFailures"],
                          mps["authSuccesses"]), (1, 1, 2, 1))
        for key in ("timeouts", "channelsOpened", "channelsConfirmed", "channelsFailed",
                    "channelsClosed", "channelsRefused", "channelsOpen"):
            self.assertEqual(mps[key], 0, key)
        await device.close()
