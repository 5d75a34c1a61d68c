"""What the core reports about the machine: ``coreinfo``, ``sysinfo`` and ``netinfo`` data.

Shapes follow the real MeshAgent core (spec: agent-protocol.md §5.1), which MeshCentral's UI and
meshd read:

* netinfo: ``{"netif2": {ifname: [{"mac", "type", "status", "address", "family", "netmask",
  "gateway"?, "index"}]}}`` — like Node's ``os.networkInterfaces()`` plus type and status.
  Family is ``"IPv4"``/``"IPv6"``; type ``ethernet``/``wireless``/``loopback``/``tunnel``/
  ``other``; status ``up``/``down``.
* sysinfo: ``{"hardware": {"identifiers": {...}, "linux": {...}, "agentvers": {...},
  "network": {"dns": [...]}}, "hash": hex SHA-384 of the JSON without "hash"}``.

Interfaces come from libc ``getifaddrs`` (ctypes) so no third-party package is needed; where it
is missing (not POSIX) the lists are empty. Every reader is best-effort: a file that cannot be
read is left out, never an error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import platform
import socket
import struct
from typing import Any, Optional

__all__ = [
    "os_description",
    "arch_label",
    "is_root",
    "network_interfaces",
    "system_information",
]


def _read(path: str, limit: int = 65536) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace").strip()
    except OSError:
        return None


def os_description() -> str:
    """A human OS name, e.g. ``Debian GNU/Linux 12 (bookworm)`` (``PRETTY_NAME``)."""
    text = _read("/etc/os-release") or _read("/usr/lib/os-release")
    if text:
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "PRETTY_NAME":
                value = value.strip().strip('"').strip("'")
                if value:
                    return value
    return f"{platform.system()} {platform.release()}".strip()


def arch_label() -> str:
    """The architecture as the real agent prints it (``x64``, ``x86``, ``arm64``, ``arm``)."""
    machine = platform.machine().lower()
    return {
        "x86_64": "x64",
        "amd64": "x64",
        "i386": "x86",
        "i686": "x86",
        "aarch64": "arm64",
        "arm64": "arm64",
    }.get(machine, "arm" if machine.startswith("arm") else machine or "unknown")


def is_root() -> bool:
    """True if the agent runs as root."""
    geteuid = getattr(os, "geteuid", None)
    return bool(geteuid is not None and geteuid() == 0)


# -- network interfaces (getifaddrs) -----------------------------------------------------------


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.c_void_p),
    ("ifa_netmask", ctypes.c_void_p),
    ("ifa_dstaddr", ctypes.c_void_p),
    ("ifa_data", ctypes.c_void_p),
]

_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_AF_PACKET = 17  # Linux link-layer addresses (MAC)
_AF_LINK = 18  # BSD/macOS link-layer addresses
_BSD_SOCKADDR = platform.system() in ("Darwin", "FreeBSD", "OpenBSD", "NetBSD")


def _family(pointer: int) -> int:
    raw = ctypes.string_at(pointer, 2)
    return raw[1] if _BSD_SOCKADDR else struct.unpack("=H", raw)[0]


def _ip(pointer: Optional[int], family: int) -> Optional[str]:
    if not pointer:
        return None
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, ctypes.string_at(pointer + 4, 4))
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, ctypes.string_at(pointer + 8, 16))
    return None


def _mac(pointer: int, family: int) -> Optional[str]:
    if family == _AF_PACKET and not _BSD_SOCKADDR:
        halen = ctypes.string_at(pointer + 11, 1)[0]
        raw = ctypes.string_at(pointer + 12, min(halen, 8))
    elif family == _AF_LINK and _BSD_SOCKADDR:
        header = ctypes.string_at(pointer, 8)
        name_len, addr_len = header[5], header[6]
        raw = ctypes.string_at(pointer + 8 + name_len, addr_len)
    else:
        return None
    if len(raw) != 6:
        return None
    return ":".join(f"{byte:02x}" for byte in raw)


def _getifaddrs() -> list[tuple[str, int, int, Optional[str], Optional[str]]]:
    """``(name, flags, family, address or MAC, netmask)`` for every entry (copied out)."""
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path, use_errno=True)
        getifaddrs, freeifaddrs = libc.getifaddrs, libc.freeifaddrs
    except (OSError, AttributeError, TypeError):
        return []
    head = ctypes.POINTER(_IfAddrs)()
    if getifaddrs(ctypes.byref(head)) != 0:
        return []
    rows: list[tuple[str, int, int, Optional[str], Optional[str]]] = []
    try:
        node = head
        while node:
            entry = node.contents
            if entry.ifa_addr:
                name = (entry.ifa_name or b"").decode("utf-8", "replace")
                family = _family(entry.ifa_addr)
                if family in (socket.AF_INET, socket.AF_INET6):
                    value = _ip(entry.ifa_addr, family)
                    mask = _ip(entry.ifa_netmask, family)
                else:
                    value, mask = _mac(entry.ifa_addr, family), None
                rows.append((name, entry.ifa_flags, family, value, mask))
            node = entry.ifa_next
    finally:
        freeifaddrs(head)
    return rows


def _link_type(name: str, flags: int) -> str:
    if flags & _IFF_LOOPBACK:
        return "loopback"
    if os.path.exists(f"/sys/class/net/{name}/wireless"):
        return "wireless"
    kind = _read(f"/sys/class/net/{name}/type")
    if kind == "1":
        return "ethernet"
    if kind in ("768", "769", "776", "778", "65534"):
        return "tunnel"
    return "ethernet" if kind is None and not _BSD_SOCKADDR else "other"


def _ipv4_gateways() -> dict[str, str]:
    """Default IPv4 gateway per interface, from ``/proc/net/route`` (Linux)."""
    text = _read("/proc/net/route")
    gateways: dict[str, str] = {}
    if not text:
        return gateways
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 3 or fields[1] != "00000000":
            continue
        try:
            address = socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
        except (ValueError, struct.error):
            continue
        gateways.setdefault(fields[0], address)
    return gateways


def network_interfaces() -> dict[str, list[dict[str, Any]]]:
    """The ``netif2`` map: interface name → its addresses."""
    rows = _getifaddrs()
    macs: dict[str, str] = {}
    flags_by_name: dict[str, int] = {}
    for name, flags, family, value, _mask in rows:
        flags_by_name[name] = flags_by_name.get(name, 0) | flags
        if family not in (socket.AF_INET, socket.AF_INET6) and value:
            macs[name] = value
    gateways = _ipv4_gateways()
    try:
        indexes = {name: index for index, name in socket.if_nameindex()}
    except (OSError, AttributeError):
        indexes = {}
    result: dict[str, list[dict[str, Any]]] = {}
    for name, flags, family, address, netmask in rows:
        if family not in (socket.AF_INET, socket.AF_INET6) or not address:
            continue
        all_flags = flags_by_name.get(name, flags)
        entry: dict[str, Any] = {
            "address": address,
            "netmask": netmask or "",
            "mac": macs.get(name) or _read(f"/sys/class/net/{name}/address") or "00:00:00:00:00:00",
            "family": "IPv4" if family == socket.AF_INET else "IPv6",
            "type": _link_type(name, all_flags),
            "status": "up" if all_flags & _IFF_UP else "down",
        }
        if name in indexes:
            entry["index"] = indexes[name]
        if family == socket.AF_INET and name in gateways:
            entry["gateway"] = gateways[name]
        result.setdefault(name, []).append(entry)
    return result


# -- sysinfo -------------------------------------------------------------------------------------

_DMI_FIELDS = (
    "bios_date", "bios_vendor", "bios_version", "board_name", "board_vendor", "board_version",
    "board_serial", "product_name", "product_version", "product_uuid", "product_serial",
    "sys_vendor",
)


def _cpu_name() -> Optional[str]:
    text = _read("/proc/cpuinfo", 1 << 20)
    if text:
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or None


def _boot_time() -> Optional[str]:
    text = _read("/proc/stat", 1 << 20)
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("btime "):
            try:
                import datetime

                stamp = datetime.datetime.fromtimestamp(int(line.split()[1]), datetime.timezone.utc)
            except (ValueError, OverflowError, OSError):
                return None
            return stamp.strftime("%Y-%m-%d %H:%M:%S")
    return None


def _memory_kb() -> Optional[int]:
    text = _read("/proc/meminfo")
    if text:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                try:
                    return int(line.split()[1])
                except (IndexError, ValueError):
                    return None
    return None


def _dns_servers() -> list[str]:
    text = _read("/etc/resolv.conf") or ""
    servers = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append(fields[1])
    return servers


def system_information(agent_versions: dict[str, str]) -> dict[str, Any]:
    """The ``sysinfo`` data with its ``hash`` (hex SHA-384 of the JSON without it)."""
    identifiers: dict[str, Any] = {}
    for field in _DMI_FIELDS:
        value = _read(f"/sys/class/dmi/id/{field}", 1024)
        if value:
            identifiers[field] = value
    cpu = _cpu_name()
    if cpu:
        identifiers["cpu_name"] = cpu
    hardware: dict[str, Any] = {"identifiers": identifiers}
    system = platform.system().lower()
    details: dict[str, Any] = {"os": os_description(), "kernel": platform.release(),
                               "arch": platform.machine()}
    boot = _boot_time()
    if boot:
        details["LastBootUpTime"] = boot
    memory = _memory_kb()
    if memory:
        details["total_memory_kb"] = memory
    hardware[system if system in ("linux", "darwin", "windows") else "linux"] = details
    hardware["agentvers"] = dict(agent_versions)
    hardware["network"] = {"dns": _dns_servers()}
    results: dict[str, Any] = {"hardware": hardware}
    encoded = json.dumps(results, separators=(",", ":"), sort_keys=False).encode("utf-8")
    results["hash"] = hashlib.sha384(encoded).hexdigest()
    return results
