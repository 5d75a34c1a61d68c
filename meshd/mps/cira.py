"""CIRA logins: device-group credentials, device identity and the MPS counters.

Who needs what (``specs/mps-apf.md`` section 4.2):

* An Intel AMT device logs in with a **16-character user name** that names its device
  group: the group id after ``mesh/<domain>/`` with every ``@`` and ``$`` replaced by
  ``X`` (AMT refuses those characters), first 16 characters (:func:`cira_username`).
* The **password** is checked, unlike MeshCentral (spec 11.2).  Each group that should
  accept CIRA gets credentials from :func:`create_cira_credentials`: a random
  16-character password, shown once to the administrator who provisions it into AMT, and
  stored only as a salted HMAC-SHA-384 in its own document (never in the group record,
  which is sent to browsers)::

      {_id: "ciracred/<user>", type: "ciracred", meshid, domain, user, salt, hash,
       alg: "hmac-sha384", created: <ms>}

  The password is machine-generated with ~100 bits of entropy, so a fast salted hash is
  as strong as PBKDF2 here and keeps a burst of 1000 logins off the thread pool.  The
  document carries ``meshid``, so ``IStore.remove_by_mesh`` drops it with the group.
  Optionally a server-wide ``settings.mpsPass`` is accepted for every AMT group, as
  MeshCentral does (then a group needs no credentials document at all).
* The device's SMBIOS UUID (PROTOCOLVERSION) selects the device: node id =
  ``node/<domain>/`` + base64(UUID bytes x 3) with ``+``->``@``, ``/``->``$``
  (:func:`cira_node_id`).  In an AMT-only group (``mtype`` 1) an unknown UUID creates the
  device (``max_devices`` per domain); in an agent group (``mtype`` 2) the device whose
  ``intelamt.uuid`` is the UUID is used, else one is created.  A known device in
  *another* group is only accepted if it was created by a login to the group whose
  credentials were used (``intelamt.ciramesh``), so an admin can move it; otherwise one
  group's password cannot claim another group's devices.

:class:`CiraAuthenticator` does all of this asynchronously and returns the
:class:`~meshd.mps.machine.AuthResult` that the protocol adapter hands to the (synchronous)
state machine.  :class:`MpsStats` holds the counters reported on ``/health``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import string
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

from twisted.logger import Logger

from meshd.events import IEventBus, publish_and_store
from meshd.mps.machine import AuthResult, Credentials
from meshd.store.interface import Document, IStore

__all__ = [
    "AMT_GROUP_TYPES",
    "CREDENTIALS_PREFIX",
    "CiraAuthenticator",
    "MpsStats",
    "USERNAME_LENGTH",
    "cira_credentials_info",
    "cira_node_id",
    "cira_username",
    "create_cira_credentials",
    "remove_cira_credentials",
    "verify_cira_password",
]

USERNAME_LENGTH = 16
PASSWORD_LENGTH = 16
CREDENTIALS_PREFIX = "ciracred/"
CREDENTIALS_TYPE = "ciracred"
HASH_ALGORITHM = "hmac-sha384"
MTYPE_AMT_ONLY = 1
MTYPE_AGENT = 2
AMT_GROUP_TYPES = frozenset({MTYPE_AMT_ONLY, MTYPE_AGENT})

# AMT wants a "strong" password: upper, lower, digit and a symbol.  Symbols that break
# quoting in AMT tools and shells (quotes, backslash, colon, comma, space) are left out.
_SYMBOLS = "!#%()*+-./;<=>?@[]^_{}~"
_ALPHABET = string.ascii_letters + string.digits + _SYMBOLS


@dataclass
class MpsStats:
    """MeshCentral's ``mpsstats``, trimmed to what an operator acts on.

    Gauges: ``connections`` (TLS connections open now), ``devices`` (logged-in devices
    now), ``channels_open``.  Everything else counts since start.  :meth:`as_dict` gives
    the camelCase keys of MeshCentral's ``mpsstats``.
    """

    connections: int = 0
    devices: int = 0
    connections_total: int = 0
    http_requests: int = 0
    auth_requests: int = 0
    auth_successes: int = 0
    auth_failures: int = 0
    bad_usernames: int = 0
    unknown_groups: int = 0
    bad_passwords: int = 0
    refused_devices: int = 0
    device_limit: int = 0
    devices_added: int = 0
    auth_errors: int = 0
    replaced: int = 0
    timeouts: int = 0
    protocol_errors: int = 0
    disconnects: int = 0
    channels_opened: int = 0
    channels_confirmed: int = 0
    channels_failed: int = 0
    channels_closed: int = 0
    channels_refused: int = 0
    channels_open: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a fresh JSON-ready dict with camelCase keys (for ``/health``)."""
        return {_camel(name): value for name, value in asdict(self).items()}


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


# --- names -----------------------------------------------------------------------------


def _split_id(doc_id: str, kind: str) -> tuple[str, str]:
    """``kind/<domain>/<suffix>`` -> (domain, suffix); ValueError otherwise."""
    parts = doc_id.split("/", 2) if isinstance(doc_id, str) else []
    if len(parts) != 3 or parts[0] != kind or not parts[2]:
        raise ValueError(f"not a {kind} id: {doc_id!r}")
    return parts[1], parts[2]


def cira_username(mesh_id: str) -> str:
    """The CIRA user name of a device group: its id suffix, ``@``/``$`` -> ``X``, 16 chars.

    ``mesh//f8eM5VPkC$P93u1J...`` -> ``f8eM5VPkCXP93u1J``.  ValueError if the suffix is
    shorter than 16 characters (such a group cannot be named to AMT).
    """
    _, suffix = _split_id(mesh_id, "mesh")
    name = suffix.replace("@", "X").replace("$", "X")[:USERNAME_LENGTH]
    if len(name) != USERNAME_LENGTH:
        raise ValueError(f"group id {mesh_id!r} is too short for a CIRA user name")
    return name


def cira_node_id(domain: str, system_id: uuid.UUID) -> str:
    """``node/<domain>/`` + base64(the 16 UUID bytes, canonical order, three times)."""
    encoded = base64.b64encode(system_id.bytes * 3).decode("ascii")
    return f"node/{domain}/" + encoded.replace("+", "@").replace("/", "$")


def domain_of(doc_id: str) -> str:
    """The domain part of ``mesh/<domain>/...`` or ``node/<domain>/...``."""
    parts = doc_id.split("/", 2)
    return parts[1] if len(parts) == 3 else ""


# --- credentials -----------------------------------------------------------------------


def _new_password() -> str:
    """16 random characters with at least one upper, lower, digit and symbol."""
    while True:
        password = "".join(secrets.choice(_ALPHABET) for _ in range(PASSWORD_LENGTH))
        if (any(c.isupper() for c in password) and any(c.islower() for c in password)
                and any(c.isdigit() for c in password)
                and any(c in _SYMBOLS for c in password)):
            return password


def _hash(salt: str, password: bytes) -> str:
    return base64.b64encode(
        hmac.new(salt.encode("ascii"), password, hashlib.sha384).digest()).decode("ascii")


def verify_cira_password(record: Document, password: bytes) -> bool:
    """Whether ``password`` matches a ``ciracred`` document (constant-time)."""
    salt, stored = record.get("salt"), record.get("hash")
    if record.get("alg") != HASH_ALGORITHM or not isinstance(salt, str) \
            or not isinstance(stored, str):
        return False
    return hmac.compare_digest(_hash(salt, password).encode("ascii"), stored.encode("ascii"))


async def _amt_group(store: IStore, mesh_id: str) -> Document:
    mesh = await store.get(mesh_id)
    if mesh is None or mesh.get("type") != "mesh" or mesh.get("deleted"):
        raise ValueError(f"no device group {mesh_id}")
    if mesh.get("mtype") not in AMT_GROUP_TYPES:
        raise ValueError(f"device group {mesh_id} cannot hold Intel AMT devices")
    return mesh


async def create_cira_credentials(store: IStore, mesh_id: str, *,
                                  now: Optional[Callable[[], float]] = None) -> tuple[str, str]:
    """Give a device group (new) CIRA credentials; returns ``(user, password)``.

    The clear password is returned once, for the administrator to provision into AMT,
    and only its salted hash is stored; calling again replaces it (devices provisioned
    with the old one are then refused).  ValueError if the group does not exist, is not
    an Intel AMT group (``mtype`` 1 or 2), or another group has the same user name.
    """
    mesh = await _amt_group(store, mesh_id)
    user = cira_username(mesh_id)
    existing = await store.get(CREDENTIALS_PREFIX + user)
    if existing is not None and existing.get("meshid") != mesh_id:
        raise ValueError(f"CIRA user name {user} is already used by {existing.get('meshid')}")
    password = _new_password()
    salt = base64.b64encode(os.urandom(24)).decode("ascii")
    created = int((now() if now is not None else 0) * 1000)
    await store.set({
        "_id": CREDENTIALS_PREFIX + user, "type": CREDENTIALS_TYPE, "meshid": mesh_id,
        "domain": mesh.get("domain", domain_of(mesh_id)), "user": user, "salt": salt,
        "hash": _hash(salt, password.encode("utf-8")), "alg": HASH_ALGORITHM,
        "created": created,
    })
    return user, password


async def cira_credentials_info(store: IStore, mesh_id: str) -> Optional[dict[str, Any]]:
    """``{"user", "created"}`` of a group's CIRA credentials (never the hash), or None."""
    try:
        user = cira_username(mesh_id)
    except ValueError:
        return None
    record = await store.get(CREDENTIALS_PREFIX + user)
    if record is None or record.get("meshid") != mesh_id:
        return None
    return {"user": user, "created": record.get("created")}


async def remove_cira_credentials(store: IStore, mesh_id: str) -> bool:
    """Remove a group's CIRA credentials; whether there were any."""
    if await cira_credentials_info(store, mesh_id) is None:
        return False
    return bool(await store.remove(CREDENTIALS_PREFIX + cira_username(mesh_id)))


# --- the login check -------------------------------------------------------------------


class CiraAuthenticator:
    """Turns a CIRA login into an :class:`AuthResult`, creating the device if it is new.

    ``authenticate`` never raises for a bad login (it returns a refusal, counted in
    ``stats``); it raises only when the store fails, which the adapter turns into a
    "temporarily unavailable" disconnect.
    """

    _log = Logger()

    def __init__(self, store: IStore, bus: IEventBus, stats: MpsStats, *,
                 now: Callable[[], float], mps_pass: Optional[str] = None,
                 max_devices: Optional[int] = None) -> None:
        self._store = store
        self._bus = bus
        self._stats = stats
        self._now = now
        self._mps_pass = mps_pass.encode("utf-8") if mps_pass else None
        self._max_devices = max_devices

    async def authenticate(self, credentials: Credentials, peer: str) -> AuthResult:
        """Check the user name and password, then find or create the device."""
        user = credentials.username
        if len(user) != USERNAME_LENGTH:
            self._stats.bad_usernames += 1
            return AuthResult.reject(f"user name length {len(user)}, not 16",
                                     console="Username length not 16")
        group, record = await self._find_group(user)
        if group is None:
            self._stats.unknown_groups += 1
            return AuthResult.reject(f"no device group for user {user}",
                                     console="Device group not found")
        if not self._password_ok(record, credentials.password):
            self._stats.bad_passwords += 1
            return AuthResult.reject(f"wrong password for user {user}")
        return await self._bind_device(group, credentials.system_id, peer)

    async def _find_group(self, user: str) -> tuple[Optional[Document], Optional[Document]]:
        """The live AMT group named by ``user`` and its credentials document (if any)."""
        record = await self._store.get(CREDENTIALS_PREFIX + user)
        if record is not None:
            mesh_id = record.get("meshid")
            mesh = await self._store.get(mesh_id) if isinstance(mesh_id, str) and mesh_id \
                else None
            if mesh is not None and self._usable_group(mesh) \
                    and cira_username(mesh["_id"]) == user:
                return mesh, record
            return None, None
        if self._mps_pass is None:
            return None, None
        # MeshCentral compatibility: with mpsPass, any AMT group is reachable by its name.
        for mesh in await self._store.find_by_type("mesh"):
            if not self._usable_group(mesh):
                continue
            try:
                if cira_username(mesh["_id"]) == user:
                    return mesh, None
            except ValueError:
                continue
        return None, None

    @staticmethod
    def _usable_group(mesh: Optional[Document]) -> bool:
        return (mesh is not None and mesh.get("type") == "mesh" and not mesh.get("deleted")
                and mesh.get("mtype") in AMT_GROUP_TYPES)

    def _password_ok(self, record: Optional[Document], password: bytes) -> bool:
        if record is not None and verify_cira_password(record, password):
            return True
        return self._mps_pass is not None and hmac.compare_digest(password, self._mps_pass)

    async def _bind_device(self, group: Document, system_id: uuid.UUID,
                           peer: str) -> AuthResult:
        """The device this UUID is in ``group`` (spec 4.2), created if it is new."""
        mesh_id = group["_id"]
        domain = group.get("domain", domain_of(mesh_id))
        node_id = cira_node_id(domain, system_id)
        node = await self._store.get(node_id)
        if node is None and group.get("mtype") == MTYPE_AGENT:
            wanted = str(system_id)
            for candidate in await self._store.find_nodes_by_mesh([mesh_id], domain):
                amt = candidate.get("intelamt")
                if isinstance(amt, dict) and str(amt.get("uuid", "")).lower() == wanted:
                    node = candidate
                    break
        if node is not None:
            return await self._existing(node, group)
        return await self._create(node_id, group, domain, system_id, peer)

    async def _existing(self, node: Document, group: Document) -> AuthResult:
        mesh_id = group["_id"]
        node_mesh = node.get("meshid")
        amt = node.get("intelamt")
        if not isinstance(amt, dict):
            amt = {}
        if node.get("type") != "node":
            self._stats.refused_devices += 1
            return AuthResult.reject(f"{node['_id']} is not a device")
        if node_mesh != mesh_id:
            # Moved by an administrator after a login created it: follow it, if its new
            # group can hold AMT devices.  Anything else is another group's device.
            current = await self._store.get(node_mesh) if isinstance(node_mesh, str) else None
            if amt.get("ciramesh") != mesh_id or not self._usable_group(current):
                self._stats.refused_devices += 1
                return AuthResult.reject(
                    f"device {node['_id']} belongs to {node_mesh}, not {mesh_id}",
                    console="Device belongs to another device group")
        name = node.get("name")
        return AuthResult.accept(node["_id"], str(node_mesh),
                                 name if isinstance(name, str) else "")

    async def _create(self, node_id: str, group: Document, domain: str,
                      system_id: uuid.UUID, peer: str) -> AuthResult:
        mesh_id = group["_id"]
        if self._max_devices is not None:
            count = await self._store.count_by_type("node", domain)
            if count >= self._max_devices:
                self._stats.device_limit += 1
                return AuthResult.reject(f"device limit {self._max_devices} reached",
                                         console="Device limit reached")
        # No reverse DNS lookup (MeshCentral's crashed, spec 11.1); the address will do.
        node: Document = {
            "_id": node_id, "type": "node", "meshid": mesh_id, "mtype": group["mtype"],
            "icon": 1, "name": peer, "host": peer, "domain": domain,
            "intelamt": {"user": "", "pass": "", "tls": 0, "state": 2,
                         "uuid": str(system_id), "ciramesh": mesh_id},
        }
        if group["mtype"] == MTYPE_AGENT:
            node["agent"] = {"ver": 0, "id": 0, "caps": 0}
        await self._store.set(node)
        self._stats.devices_added += 1
        self._log.info("CIRA device {node_id} added to {mesh_id} from {peer}",
                       node_id=node_id, mesh_id=mesh_id, peer=peer)
        group_name = group.get("name", "")
        event = {
            "etype": "node", "action": "addnode", "node": node, "msgid": 84,
            "msgArgs": [peer, group_name],
            "msg": f"Added device {peer} to device group {group_name}", "domain": domain,
        }
        stored = publish_and_store(self._bus, self._store, ["*", mesh_id], event, self._now)
        if stored is not None:
            stored.addErrback(lambda failure: self._log.failure(
                "could not store the addnode event of {node_id}", failure, node_id=node_id))
        return AuthResult.accept(node_id, mesh_id, peer)
