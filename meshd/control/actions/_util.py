"""Checks and look-ups shared by the action handlers."""

from __future__ import annotations

import re
from typing import Any, Optional, TypeGuard

from meshd.control.rights import Access
from meshd.presence import CONN_AGENT, CONN_CIRA, IPresence
from meshd.store.interface import Document, IStore

DOMAIN = ""  # only the default domain is served for now


def valid_str(value: Any, low: int, high: int) -> TypeGuard[str]:
    return isinstance(value, str) and low <= len(value) <= high


def valid_int(value: Any, low: Optional[int] = None, high: Optional[int] = None
              ) -> TypeGuard[int]:
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def valid_str_list(value: Any, low: int, high: int, max_items: int = 1000
                   ) -> TypeGuard[list[str]]:
    return (isinstance(value, list) and 0 < len(value) <= max_items
            and all(valid_str(v, low, high) for v in value))


def full_id(kind: str, value: str) -> str:
    """``bob`` → ``user//bob``; ids that already have a ``/`` are kept."""
    return value if "/" in value else f"{kind}/{DOMAIN}/{value}"


def in_domain(identifier: str, kind: Optional[str] = None) -> bool:
    parts = identifier.split("/")
    return len(parts) == 3 and parts[1] == DOMAIN and (kind is None or parts[0] == kind) \
        and parts[2] != ""


def short_id(identifier: str) -> str:
    return identifier.split("/")[-1]


_EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[^@\s<>(),;:\"\[\]\\]+\.[^@\s<>(),;:\"\[\]\\]+$")


def valid_email(value: Any) -> bool:
    return valid_str(value, 1, 1024) and bool(_EMAIL.match(value))


async def visible_meshes(store: IStore, access: Access) -> list[Document]:
    """Device groups the user is linked to (directly or by a user group), not deleted."""
    ids = access.linked_ids("mesh/")
    meshes = await store.get_many(ids) if ids else []
    return [m for m in meshes if m.get("type") == "mesh" and not m.get("deleted")]


async def mesh_by_name(store: IStore, access: Access, name: str
                       ) -> tuple[Optional[str], Optional[str]]:
    """(meshid, error): only agent groups (mtype 2) the user sees are found by name."""
    found = [m["_id"] for m in await visible_meshes(store, access)
             if m.get("mtype") == 2 and m.get("name") == name]
    if len(found) > 1:
        return None, "Duplicate device groups found"
    return (found[0], None) if found else (None, None)


async def get_mesh(store: IStore, mesh_id: str) -> Optional[Document]:
    mesh = await store.get(mesh_id)
    if mesh is None or mesh.get("type") != "mesh":
        return None
    return mesh


async def member_ids(store: IStore, cmd: dict[str, Any]) -> list[str]:
    """The users a sharing request names: ``userids`` as given, else each of
    ``usernames`` that exists (lower-case name first); unknown names are dropped."""
    if valid_str_list(cmd.get("userids"), 1, 128):
        return [full_id("user", uid) for uid in cmd["userids"]]
    found = []
    for name in cmd["usernames"]:
        for candidate in (f"user/{DOMAIN}/{name.lower()}", f"user/{DOMAIN}/{name}"):
            if await store.get(candidate) is not None:
                found.append(candidate)
                break
    return found


async def visible_mesh(store: IStore, access: Access, mesh_id: str) -> Optional[Document]:
    """The device group if it exists, is not deleted and the user is linked to it."""
    mesh = await get_mesh(store, mesh_id)
    if mesh is None or mesh.get("deleted") or mesh_id not in access.linked_ids("mesh/"):
        return None
    return mesh


async def get_node(store: IStore, node_id: str) -> Optional[Document]:
    node = await store.get(node_id)
    if node is None or node.get("type") != "node":
        return None
    return node


async def node_with_rights(store: IStore, access: Access, node_id: Any
                           ) -> tuple[Optional[Document], Optional[Document], int]:
    """(node, its group, the user's rights on it); (None, None, 0) when not visible."""
    if not valid_str(node_id, 1, 1024):
        return None, None, 0
    node_id = full_id("node", node_id)
    if not in_domain(node_id, "node"):
        return None, None, 0
    node = await get_node(store, node_id)
    if node is None:
        return None, None, 0
    mesh = await get_mesh(store, node.get("meshid", "")) if node.get("meshid") else None
    rights = access.node_rights(node, mesh)
    visible = rights != 0 or node_id in access.linked_ids("node/") or (
        mesh is not None and not mesh.get("deleted")
        and mesh["_id"] in access.linked_ids("mesh/"))
    if not visible:
        return None, None, 0
    return node, mesh, rights


def links_of(doc: Optional[Document]) -> dict[str, Any]:
    """The ``links`` of a record (empty when absent or malformed)."""
    links = doc.get("links") if doc is not None else None
    return links if isinstance(links, dict) else {}


async def unlink_from_members(store: IStore, record: Optional[Document], target_id: str
                              ) -> list[tuple[str, Document]]:
    """Remove ``target_id`` from the ``links`` of every record that ``record`` links to
    (its users, user groups, groups or devices); returns the changed ``(id, record)`` pairs
    in link order, already stored."""
    changed = []
    for member_id in list(links_of(record)):
        member = await store.get(member_id)
        if member is None or not isinstance(member.get("links"), dict) \
                or target_id not in member["links"]:
            continue
        del member["links"][target_id]
        await store.set(member)
        changed.append((member_id, member))
    return changed


def drop_device_connections(presence: IPresence, node_ids: list[str], reason: str) -> None:
    """Close the agent and Intel AMT CIRA connections this server holds for devices that
    were just removed: a removed device must not stay reachable (its agent is refused
    when it comes back, as its device group is gone)."""
    for node_id in node_ids:
        agent = presence.get(node_id, CONN_AGENT)
        if agent is not None and hasattr(agent.handle, "close"):
            agent.handle.close()
        cira = presence.get(node_id, CONN_CIRA)
        if cira is not None and hasattr(cira.handle, "evict"):
            cira.handle.evict(reason)
