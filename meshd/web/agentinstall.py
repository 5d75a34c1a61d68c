"""Agent installation downloads.

``GET /meshsettings?id=<group id>``  the ``.msh`` settings file for a device group, in
MeshCentral's format (spec agent-protocol §7), so MeshCentral's own agent installs
against meshd unchanged.  As in MeshCentral, knowing the group's random 48-byte id is
what allows the download.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.web.resource import Resource
from twisted.web.server import Request

from meshd.agent import identity
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
    isLeaf = True

    def __init__(self, store: IStore, *, server_id: Callable[[], str], port: int,
                 default_host: str) -> None:
        super().__init__()
        self._store = store
        self._server_id = server_id
        self._port = port
        self._default_host = default_host

    def server_url(self, request: Request) -> str:
        host = request.getHeader(b"host") or b""
        if not host or not _valid_host(host):
            host = self._default_host.encode("idna")
        name = _host_without_port(host).decode("ascii")
        return f"wss://{name}:{self._port}/agent.ashx"

    def render_GET(self, request: Request) -> object:
        return render_async(request, lambda: self._render(request))

    async def _render(self, request: Request) -> bytes:
        values = request.args.get(b"id") if request.args else None
        mesh_id = values[0].decode("ascii", "replace") if values else ""
        try:
            raw = identity.mesh_id_from_str(mesh_id)
        except ValueError:
            raw = b""
        mesh = await self._store.get(identity.mesh_key(mesh_id)) if raw else None
        if mesh is None or mesh.get("type") != "mesh" or mesh.get("deleted"):
            request.setResponseCode(401)
            return b"Unknown device group.\n"
        text = msh_text(mesh, raw, self._server_id(), self.server_url(request))
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Disposition", b'attachment; filename="meshagent.msh"')
        return text.encode("utf-8")
