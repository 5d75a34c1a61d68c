"""The ``.msh`` settings file (spec: agent-protocol.md §7), parsed once into frozen settings.

Format, as the real MeshAgent reads it: one ``KEY=VALUE`` per line; blank lines and lines
starting with ``#`` are ignored; blanks around keys and values and a trailing CR are trimmed;
``KEY=`` (empty) means "unset". Keys are case-sensitive, as in the agent's database. A value
starting with ``0x`` is binary in hex (only ``MeshID`` uses that form here).

Keys used by this agent (all others, e.g. MeshCentral's long ``translation=`` line, are kept in
:attr:`Settings.extra` and otherwise ignored):

==============================  ==========================================================
``MeshServer`` (required)       ``wss://host:port/agent.ashx``; several URLs comma-separated.
                                ``ws://`` and ``local`` are refused (no TLS → no handshake).
``MeshID`` (required)           ``0x`` + 96 hex (48 bytes; 64 hex = legacy 32 bytes).
``ServerID`` (required)         96 hex (SHA-384 of the server's agent-certificate key).
``MeshName``, ``MeshType``      informational.
``agentName``                   device name, sent before command 3.
``Tag``                         sent as command 15 after authentication.
``controlChannelIdleTimeout``   seconds without traffic before a WebSocket ping (default 120).
``noUpdateCoreModule=1``        ignore cores pushed by the server; keep the stored/built-in one.
==============================  ==========================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional
from urllib.parse import urlsplit

from meshd.agent.identity import mesh_id_from_msh, parse_server_id

__all__ = [
    "SettingsError",
    "ServerUrl",
    "Settings",
    "parse_msh",
    "read_lines",
    "load_settings",
    "DEFAULT_IDLE_TIMEOUT",
]

DEFAULT_IDLE_TIMEOUT = 120.0
"""Seconds without traffic before the agent sends a WebSocket ping (real agent: 120)."""
MAX_MSH_SIZE = 1024 * 1024
"""A generated ``.msh`` is about 5 KB (most of it the ``translation`` line)."""


class SettingsError(ValueError):
    """The settings file is unreadable or a value is wrong; the message names the key."""


@dataclass(frozen=True)
class ServerUrl:
    """One ``MeshServer`` URL, split for the TCP/TLS connection."""

    url: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, text: str) -> ServerUrl:
        """Parse ``wss://host[:port]/path``; raise :class:`SettingsError` otherwise."""
        value = text.strip()
        if value == "local":
            raise SettingsError("MeshServer=local (multicast discovery) is not supported")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as error:
            raise SettingsError(f"MeshServer: bad URL {value!r}: {error}") from None
        if parts.scheme == "ws":
            raise SettingsError(
                f"MeshServer: {value!r} is ws://; the handshake needs TLS (use wss://)"
            )
        if parts.scheme != "wss" or not parts.hostname:
            raise SettingsError(f"MeshServer: {value!r} is not a wss://host[:port]/path URL")
        path = parts.path or "/agent.ashx"
        if parts.query:
            path += "?" + parts.query
        return cls(url=value, host=parts.hostname, port=port or 443, path=path)


@dataclass(frozen=True)
class Settings:
    """What the agent needs from the ``.msh`` file."""

    servers: tuple[ServerUrl, ...]
    mesh_id: bytes
    server_id: bytes
    mesh_name: Optional[str] = None
    agent_name: Optional[str] = None
    tag: str = ""
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    no_update_core_module: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)


def read_lines(text: str) -> dict[str, str]:
    """The ``KEY=VALUE`` pairs of a ``.msh`` text; later lines win; empty values are dropped."""
    values: dict[str, str] = {}
    for raw in text.split("\n"):
        line = raw.rstrip("\r").strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            continue  # the real agent ignores such lines too
        value = value.strip()
        if value:
            values[key] = value
        else:
            values.pop(key, None)
    return values


def _flag(values: Mapping[str, str], key: str) -> bool:
    value = values.get(key, "0")
    if value not in ("0", "1"):
        raise SettingsError(f"{key} must be 0 or 1, not {value!r}")
    return value == "1"


def parse_msh(text: str) -> Settings:
    """Parse a ``.msh`` text into :class:`Settings`; raise :class:`SettingsError` naming the key."""
    values = read_lines(text)
    for key in ("MeshServer", "MeshID", "ServerID"):
        if key not in values:
            raise SettingsError(f"{key} is missing")
    servers = tuple(
        ServerUrl.parse(part) for part in values["MeshServer"].split(",") if part.strip()
    )
    if not servers:
        raise SettingsError("MeshServer has no URL")
    try:
        mesh_id = mesh_id_from_msh(values["MeshID"])
    except ValueError as error:
        raise SettingsError(f"MeshID: {error}") from None
    try:
        server_id = parse_server_id(values["ServerID"])
    except ValueError as error:
        raise SettingsError(f"ServerID: {error}") from None
    idle_text = values.get("controlChannelIdleTimeout")
    idle_timeout = DEFAULT_IDLE_TIMEOUT
    if idle_text is not None:
        try:
            idle_timeout = float(int(idle_text))
        except ValueError:
            raise SettingsError("controlChannelIdleTimeout must be whole seconds") from None
        if not 5 <= idle_timeout <= 86400:
            raise SettingsError("controlChannelIdleTimeout must be 5..86400 seconds")
    agent_name = values.get("agentName")
    if agent_name is not None and len(agent_name) > 255:
        raise SettingsError("agentName is longer than 255 characters")
    known = {
        "MeshServer", "MeshID", "ServerID", "MeshName", "agentName", "Tag",
        "controlChannelIdleTimeout", "noUpdateCoreModule",
    }
    return Settings(
        servers=servers,
        mesh_id=mesh_id,
        server_id=server_id,
        mesh_name=values.get("MeshName"),
        agent_name=agent_name,
        tag=values.get("Tag", ""),
        idle_timeout=idle_timeout,
        no_update_core_module=_flag(values, "noUpdateCoreModule"),
        extra={key: value for key, value in values.items() if key not in known},
    )


def load_settings(path: str) -> Settings:
    """Read and parse a ``.msh`` file (UTF-8, a BOM tolerated)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MSH_SIZE + 1)
    except OSError as error:
        raise SettingsError(f"cannot read {path}: {error.strerror or error}") from None
    if len(data) > MAX_MSH_SIZE:
        raise SettingsError(f"{path} is larger than {MAX_MSH_SIZE} bytes")
    text = data.decode("utf-8-sig", "replace")
    try:
        return parse_msh(text)
    except SettingsError as error:
        raise SettingsError(f"{os.path.basename(path)}: {error}") from None
