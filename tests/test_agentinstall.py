"""Tests for meshd.web.agentinstall (the .msh download), without sockets."""

from __future__ import annotations

from urllib.parse import quote

from treq.testing import StubTreq
from twisted.trial.unittest import TestCase

from meshd.agent import identity
from meshd.store.memory import MemoryStore
from meshd.web.agentinstall import MeshSettingsResource


class MeshSettingsTests(TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.raw = bytes(range(48))
        self.mesh_id = identity.mesh_id_to_str(self.raw)
        self.store.set({"_id": identity.mesh_key(self.mesh_id), "type": "mesh", "mtype": 2,
                        "name": "Office\r\nMeshServer=evil", "domain": ""})
        self.treq = StubTreq(MeshSettingsResource(self.store, server_id=lambda: "AB" * 48,
                                                  port=8443, default_host="mesh.example.com"))

    async def test_msh(self) -> None:
        """The file has MeshCentral's keys, CRLF lines, and the server URL from the Host."""
        response = await self.treq.get("https://mesh.example.com:8443/meshsettings?id="
                                       + quote(self.mesh_id))
        self.assertEqual(response.code, 200)
        text = (await response.content()).decode()
        self.assertEqual(text.split("\r\n"), [
            "", "MeshName=Office  MeshServer=evil", "MeshType=2",
            "MeshID=" + identity.mesh_id_to_msh(self.raw), "ServerID=" + "AB" * 48,
            "MeshServer=wss://mesh.example.com:8443/agent.ashx", ""])

    async def test_unknown_group(self) -> None:
        """An unknown or malformed group id is a 401."""
        for value in ("nope", quote(identity.mesh_id_to_str(bytes(48))), ""):
            response = await self.treq.get("https://h.example.com/meshsettings?id=" + value)
            self.assertEqual(response.code, 401, value)
