"""Site rights and device-group rights (spec control-protocol §6), and who sees what.

Two bit fields decide everything a user may do:

* ``user["siteadmin"]`` holds the **site rights** (``SITERIGHT_*``); absent means none,
  ``SITERIGHT_ADMIN`` (all bits) is a full administrator.
* ``links[...]["rights"]`` hold the **device-group / device rights** (``MESHRIGHT_*``):
  a user's rights on a group are the OR of the user's own link and the links of every
  user group the user belongs to; on a device, the group's rights OR the device's own
  links.  A full-rights link short-circuits to ``MESHRIGHT_ADMIN``; ``removeRights``
  (a mask on the user) is then taken away.

:class:`Access` answers these questions for one user; it is built per action from the
user record and the user groups it is linked to, so a change made by someone else is
seen by the very next action.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from meshd.store.interface import Document, IStore

# -- device group / device rights (links[...].rights) -------------------------------------
MESHRIGHT_EDITMESH = 0x1
MESHRIGHT_MANAGEUSERS = 0x2
MESHRIGHT_MANAGECOMPUTERS = 0x4
MESHRIGHT_REMOTECONTROL = 0x8
MESHRIGHT_AGENTCONSOLE = 0x10
MESHRIGHT_SERVERFILES = 0x20
MESHRIGHT_WAKEDEVICE = 0x40
MESHRIGHT_SETNOTES = 0x80
MESHRIGHT_REMOTEVIEWONLY = 0x100
MESHRIGHT_NOTERMINAL = 0x200
MESHRIGHT_NOFILES = 0x400
MESHRIGHT_NOAMT = 0x800
MESHRIGHT_DESKLIMITEDINPUT = 0x1000
MESHRIGHT_LIMITEVENTS = 0x2000
MESHRIGHT_CHATNOTIFY = 0x4000
MESHRIGHT_UNINSTALL = 0x8000
MESHRIGHT_NODESKTOP = 0x10000
MESHRIGHT_REMOTECOMMAND = 0x20000
MESHRIGHT_RESETOFF = 0x40000
MESHRIGHT_GUESTSHARING = 0x80000
MESHRIGHT_DEVICEDETAILS = 0x100000
MESHRIGHT_RELAY = 0x200000
MESHRIGHT_ADMIN = 0xFFFFFFFF

# -- site rights (user.siteadmin) ---------------------------------------------------------
SITERIGHT_SERVERBACKUP = 0x1
SITERIGHT_MANAGEUSERS = 0x2
SITERIGHT_SERVERRESTORE = 0x4
SITERIGHT_FILEACCESS = 0x8
SITERIGHT_SERVERUPDATE = 0x10
SITERIGHT_LOCKED = 0x20
SITERIGHT_NONEWGROUPS = 0x40
SITERIGHT_NOMESHCMD = 0x80
SITERIGHT_USERGROUPS = 0x100
SITERIGHT_RECORDINGS = 0x200
SITERIGHT_LOCKSETTINGS = 0x400
SITERIGHT_ALLEVENTS = 0x800
SITERIGHT_NONEWDEVICES = 0x1000
SITERIGHT_ADMIN = 0xFFFFFFFF

#: Site rights a user manager (not a full admin) may grant with ``adduser``:
#: locked, no new groups, no tools.
ADDUSER_GRANTABLE = SITERIGHT_LOCKED | SITERIGHT_NONEWGROUPS | SITERIGHT_NOMESHCMD

#: Device rights that only make sense on a group: a user→device link may not carry them.
GROUP_ONLY_RIGHTS = MESHRIGHT_EDITMESH | MESHRIGHT_MANAGEUSERS | MESHRIGHT_MANAGECOMPUTERS


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def site_rights(user: Document) -> int:
    """The user's site-rights bit field (0 when absent or malformed)."""
    return _int(user.get("siteadmin")) & SITERIGHT_ADMIN


def is_full_admin(user: Document) -> bool:
    return user.get("siteadmin") == SITERIGHT_ADMIN


def has_site_right(user: Document, right: int) -> bool:
    """Whether the user holds a (positive) site right; full admins hold them all."""
    return is_full_admin(user) or bool(site_rights(user) & right)


def link_rights(links: Any, key: str) -> int:
    if not isinstance(links, dict):
        return 0
    link = links.get(key)
    return _int(link.get("rights")) & MESHRIGHT_ADMIN if isinstance(link, dict) else 0


def user_group_ids(user: Document) -> list[str]:
    links = user.get("links")
    if not isinstance(links, dict):
        return []
    return [key for key in links if key.startswith("ugrp/")]


def subscription_ids(user: Document) -> set[str]:
    """The event-bus ids a session of this user listens to (spec §8.1)."""
    ids = {user["_id"], "server-allusers"}
    if is_full_admin(user) or site_rights(user) & SITERIGHT_ALLEVENTS:
        ids.add("*")
    elif site_rights(user) & SITERIGHT_MANAGEUSERS:
        ids.add("server-users")
    links = user.get("links")
    if isinstance(links, dict):
        ids.update(links)
    return ids


class Access:
    """What one user may see and do, from the user and the user groups it belongs to."""

    def __init__(self, user: Document, user_groups: Iterable[Document] = ()) -> None:
        self.user = user
        self.user_id: str = user["_id"]
        self.user_groups = [g for g in user_groups if isinstance(g, dict)]
        remove = _int(user.get("removeRights")) & MESHRIGHT_ADMIN
        self._remove = remove

    @classmethod
    async def load(cls, store: IStore, user: Document) -> "Access":
        groups = await store.get_many(user_group_ids(user)) if user_group_ids(user) else []
        return cls(user, groups)

    @property
    def full_admin(self) -> bool:
        return is_full_admin(self.user)

    def site(self, right: int) -> bool:
        return has_site_right(self.user, right)

    def _apply_remove(self, rights: int) -> int:
        if rights and self._remove:
            return rights & ~self._remove & MESHRIGHT_ADMIN
        return rights

    def _linked_rights(self, key: str) -> int:
        rights = link_rights(self.user.get("links"), key)
        if rights == MESHRIGHT_ADMIN:
            return rights
        for group in self.user_groups:
            rights |= link_rights(group.get("links"), key)
            if rights == MESHRIGHT_ADMIN:
                return rights
        return rights

    def mesh_rights(self, mesh: Optional[Document]) -> int:
        """Rights on a device group (0 for a missing or deleted group)."""
        if mesh is None or mesh.get("deleted"):
            return 0
        return self._apply_remove(self._linked_rights(mesh["_id"]))

    def node_rights(self, node: Optional[Document], mesh: Optional[Document]) -> int:
        """Rights on a device: its group's rights OR its own links."""
        if node is None:
            return 0
        rights = self._linked_rights(mesh["_id"]) if (
            mesh is not None and not mesh.get("deleted")) else 0
        if rights != MESHRIGHT_ADMIN:
            rights |= self._linked_rights(node["_id"])
        return self._apply_remove(rights)

    def linked_ids(self, prefix: str) -> list[str]:
        """Ids with this prefix (``mesh/``, ``node/``) linked to the user or its groups."""
        found: dict[str, None] = {}
        for links in [self.user.get("links")] + [g.get("links") for g in self.user_groups]:
            if isinstance(links, dict):
                for key in links:
                    if key.startswith(prefix):
                        found[key] = None
        return list(found)
