"""Agent installation downloads.

``GET /meshsettings?id=<group id>``  the ``.msh`` settings file for a device group, in
MeshCentral's format (spec agent-protocol §7), so MeshCentral's own agent installs
against meshd unchanged.
``GET /meshagents/install.sh?id=<group id>``  a Linux install script for meshd's Python
agent in that group (see :mod:`meshd.agent.package`).
``GET /meshagents/meshd-agent.tar.gz``  the Python agent package the script installs.

As in MeshCentral, knowing the group's random 48-byte id is what allows the download.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.web.resource import Resource
from twisted.web.server import Request

from meshd.agent import identity
from meshd.agent.package import agent_package, install_script
from meshd.store.interface import IStore
from meshd.web.login import render_async
from meshd.web.redirect import _host_without_port, _valid_host


def msh_text(mesh: dict[str, Any], mesh_raw: bytes, server_id: str, server_url: str) -> str:
    """The settings file: MeshName, MeshType, MeshID, ServerID, MeshServer (CRLF lines)."""
    name = str(mesh.get("name", "")).replace("\r", " ").replace("\n", " ")
    lines = ["", f"MeshName={name}", f"MeshType={int(mesh.get('mtype', 2))}",
             f"MeshID={identity.mesh_id_to_msh(mesh_raw)}", f"ServerID={server_id}",
             f"MeshServer={server_url}", ""]
    return "\r\n".join(lines)


class MeshSettingsResource(Resource):
    """``/meshsettings``; subclasses reuse the group look-up for other downloads."""

    isLeaf = True

    def __init__(self, store: IStore, *, server_id: Callable[[], str], port: int,
                 default_host: str, domain: str = "") -> None:
        super().__init__()
        self._store = store
        self._server_id = server_id
        self._port = port
        self._default_host = default_host
        self._domain = domain

    def server_url(self, request: Request) -> str:
        host = request.getHeader(b"host") or b""
        if not host or not _valid_host(host):
            host = self._default_host.encode("idna")
        name = _host_without_port(host).decode("ascii")
        path = f"{self._domain}/agent.ashx" if self._domain else "agent.ashx"
        return f"wss://{name}:{self._port}/{path}"

    def render_GET(self, request: Request) -> object:
        return render_async(request, lambda: self._render(request))

    async def _render(self, request: Request) -> bytes:
        found = await self.group(request)
        if found is None:
            request.setResponseCode(401)
            return b"Unknown device group.\n"
        mesh, raw = found
        text = msh_text(mesh, raw, self._server_id(), self.server_url(request))
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Disposition", b'attachment; filename="meshagent.msh"')
        return text.encode("utf-8")

    async def group(self, request: Request) -> Optional[tuple[dict[str, Any], bytes]]:
        """The device group named by ``?id=``, or None."""
        values = request.args.get(b"id") if request.args else None
        mesh_id = values[0].decode("ascii", "replace") if values else ""
        try:
            raw = identity.mesh_id_from_str(mesh_id)
        except ValueError:
            raw = b""
        mesh = await self._store.get(identity.mesh_key(mesh_id, self._domain)) if raw else None
        if mesh is None or mesh.get("type") != "mesh" or mesh.get("deleted"):
            return None
        return mesh, raw


class InstallScriptResource(MeshSettingsResource):
    """``/meshagents/install.sh?id=``: installs the Python agent for one group."""

    async def _render(self, request: Request) -> bytes:
        found = await self.group(request)
        if found is None:
            request.setResponseCode(401)
            return b"Unknown device group.\n"
        mesh, raw = found
        msh = msh_text(mesh, raw, self._server_id(), self.server_url(request))
        url = self.server_url(request).replace("wss://", "https://", 1)
        web = url[:url.index("/", len("https://"))]
        script = install_script(server_url=web, msh=msh.replace("\r\n", "\n").strip(),
                                group_name=str(mesh.get("name", "")))
        request.setHeader(b"Content-Type", b"text/x-shellscript; charset=utf-8")
        return script.encode("utf-8")


class AgentPackageResource(Resource):
    """``/meshagents/meshd-agent.tar.gz``."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/gzip")
        request.setHeader(b"Content-Disposition", b'attachment; filename="meshd-agent.tar.gz"')
        return agent_package()


def mesh_agents_resource(store: IStore, *, server_id: Callable[[], str], port: int,
                         default_host: str, domain: str = "") -> Resource:
    """``/meshagents/``: the install script and the agent package."""
    folder = Resource()
    folder.putChild(b"install.sh", InstallScriptResource(
        store, server_id=server_id, port=port, default_host=default_host, domain=domain))
    folder.putChild(b"meshd-agent.tar.gz", AgentPackageResource())
    return folder
