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


class AgentPackageTests(TestCase):
    def test_package_reproducible_and_complete(self) -> None:
        """The agent package is byte-for-byte reproducible and holds what the agent imports."""
        import io
        import tarfile

        from meshd.agent import package

        first = package.agent_package()
        package.agent_package.cache_clear()
        self.assertEqual(package.agent_package(), first)
        names = tarfile.open(fileobj=io.BytesIO(first)).getnames()
        for needed in ("agentsrc/main.py", "agentsrc/core/agentcore.py", "meshd/agent/wire.py",
                       "meshd/files.py", "pyproject.toml"):
            self.assertIn(f"meshd-agent-{package.meshd.__version__}/{needed}", names)

    def test_script_embeds_hash_and_msh(self) -> None:
        """The install script carries the package hash and the group's settings."""
        from meshd.agent.package import agent_package_sha384, install_script

        script = install_script(server_url="https://h:1", msh="MeshID=0xAB\nServerID=CD",
                                group_name="G")
        self.assertIn(f"PACKAGE_SHA384={agent_package_sha384()}", script)
        self.assertIn("MeshID=0xAB\nServerID=CD\nMSH", script)
