"""``getDeviceDetails``: every visible device with its system, network and last-connection
records, as JSON or as MeshCentral's CSV (meshctrl ``listdevices --details [--csv]``).

Rights as MeshCentral: a user gets the devices of the groups it is linked to plus the
devices linked to it directly; system and network information only where it holds
``MESHRIGHT_DEVICEDETAILS``.  meshd also keeps BitLocker recovery passwords from anyone
without full rights on the device, as ``getsysinfo`` does.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from meshd.control.actions._util import (
    DOMAIN,
    full_id,
    in_domain,
    valid_str,
    visible_meshes,
)
from meshd.control.actions.devices import _add_live
from meshd.control.rights import MESHRIGHT_ADMIN, MESHRIGHT_DEVICEDETAILS
from meshd.control.session import Call
from meshd.control.views import dumps, safe_node
from meshd.store.interface import Document

MAX_NODEIDS = 10000

CSV_HEADER = (
    "id,name,rname,host,icon,ip,osdesc,groupname,av,update,firewall,bitlocker,avdetails,"
    "tags,lastbootuptime,cpu,osbuild,biosDate,biosVendor,biosVersion,biosSerial,biosMode,"
    "boardName,boardVendor,boardVersion,productUuid,tpmversion,tpmmanufacturer,"
    "tpmmanufacturerversion,tpmisactivated,tpmisenabled,tpmisowned,totalMemory,agentOpenSSL,"
    "agentCommitDate,agentCommitHash,agentCompileTime,netIfCount,macs,addresses,"
    "lastConnectTime,lastConnectAddr\r\n")


def _sysinfo(record: Optional[Document], rights: int) -> Optional[Document]:
    """The stored system information as MeshCentral keeps it (meshd's agent manager nests
    the agent's data under ``data``), recovery passwords only for full rights."""
    if record is None:
        return None
    info = {k: v for k, v in record.items() if k != "data"}
    if isinstance(record.get("data"), dict):
        info.update({k: v for k, v in record["data"].items() if k not in ("_id", "type")})
    hardware = info.get("hardware")
    windows = hardware.get("windows") if isinstance(hardware, dict) else None
    volumes = windows.get("volumes") if isinstance(windows, dict) else None
    if rights != MESHRIGHT_ADMIN and isinstance(volumes, dict) and any(
            isinstance(v, dict) and "recoveryPassword" in v for v in volumes.values()):
        info["hardware"] = dict(hardware)  # type: ignore[arg-type]
        info["hardware"]["windows"] = dict(windows)  # type: ignore[arg-type]
        info["hardware"]["windows"]["volumes"] = {
            name: ({k: v for k, v in vol.items() if k != "recoveryPassword"}
                   if isinstance(vol, dict) else vol) for name, vol in volumes.items()}
    return info


async def _visible_nodes(call: Call, wanted: Optional[list[str]]
                         ) -> list[tuple[Document, Optional[Document], int]]:
    """(device, its group, rights) for every device the user sees, by group then name;
    with ``wanted``, only those of them (unknown or invisible ids are left out)."""
    access = await call.access()
    store = call.store
    meshes = {m["_id"]: m for m in await visible_meshes(store, access)}
    found = list(await store.find_nodes_by_mesh(list(meshes), DOMAIN)) if meshes else []
    seen = {n["_id"] for n in found}
    direct = [i for i in access.linked_ids("node/") if i not in seen]
    if direct:
        found += [n for n in await store.get_many(direct) if n.get("type") == "node"]
    if wanted is not None:
        ids = {full_id("node", i) for i in wanted}
        found = [n for n in found if n["_id"] in ids]
    others = sorted({n["meshid"] for n in found if isinstance(n.get("meshid"), str)}
                    - set(meshes))
    if others:
        meshes.update({m["_id"]: m for m in await store.get_many(others)
                       if m.get("type") == "mesh"})
    order = {mid: index for index, mid in enumerate(meshes)}

    def sort_key(node: Document) -> tuple[int, str, str]:
        name = node.get("name", "")
        return (order.get(node.get("meshid", ""), len(order)),
                (name if isinstance(name, str) else str(name)).lower(), node["_id"])

    found.sort(key=sort_key)
    result = []
    for node in found:
        mesh = meshes.get(node.get("meshid", ""))
        rights = access.node_rights(node, mesh)
        if rights or node["_id"] in access.linked_ids("node/") or (
                mesh is not None and mesh["_id"] in access.linked_ids("mesh/")):
            result.append((node, mesh, rights))
    return result


async def get_device_details(call: Call) -> None:
    """``{nodeids?, type: "csv"|"json"}`` → ``{action, data: <text>, type}``; bad input is
    ignored (no answer), as MeshCentral."""
    cmd = call.command
    nodeids = cmd.get("nodeids")
    if nodeids is not None and not (
            isinstance(nodeids, list) and 0 < len(nodeids) <= MAX_NODEIDS
            and all(valid_str(i, 1, 1024) for i in nodeids)):
        return
    kind = cmd.get("type")
    if not valid_str(kind, 3, 4):
        return
    if nodeids is not None:
        nodeids = [i for i in nodeids if in_domain(full_id("node", i), "node")]
    visible = await _visible_nodes(call, nodeids)
    ids = [n["_id"] for n, _m, _r in visible]
    records = {d["_id"]: d for d in await call.store.get_many(
        [p + i for i in ids for p in ("si", "if", "lc")])} if ids else {}
    results: list[tuple[dict[str, Any], Optional[Document]]] = []
    for node, mesh, rights in visible:
        view = _add_live(call.hub.presence, safe_node(node))
        entry: dict[str, Any] = {"node": view}
        sys = _sysinfo(records.get("si" + node["_id"]), rights)
        if sys is not None:
            entry["sys"] = sys
        entry["net"] = records.get("if" + node["_id"])
        if not rights & MESHRIGHT_DEVICEDETAILS:
            entry.pop("sys", None)
            entry.pop("net", None)
        last = records.get("lc" + node["_id"])
        if last is not None:
            entry["lastConnect"] = {k: v for k, v in last.items()
                                    if k not in ("_id", "type", "meshid", "domain")}
        results.append((entry, mesh))
    if kind == "csv":
        data = CSV_HEADER + "".join(_csv_row(e, m) for e, m in results)
    else:
        for entry, mesh in results:
            if mesh is not None:
                entry["node"]["groupname"] = mesh.get("name")
        data = dumps([e for e, _m in results])
    call.send({"action": "getDeviceDetails", "data": data, "type": kind})


# -- CSV, column for column as MeshCentral 1.1.55 writes it --------------------------------

def csv_clean(value: Any) -> str:
    text = value if isinstance(value, str) else _js(value)
    for ch in ('"', ",", "\r", "\n"):
        text = text.replace(ch, "")
    return f'"{text}"'


def _js(value: Any) -> str:
    """A value as JavaScript's string concatenation writes it."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _opt(source: dict[str, Any], key: str) -> str:
    value = source.get(key)
    return csv_clean(value) if value else ""


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        match = re.match(r"\s*([+-]?\d+)", value)
        return int(match.group(1)) if match else 0
    return 0


def _node_fields(n: dict[str, Any], mesh: Optional[Document]) -> list[str]:
    out = [csv_clean(n.get("_id")), csv_clean(n.get("name")), csv_clean(n.get("rname") or ""),
           csv_clean(n.get("host") or ""), _js(n.get("icon") or 1),
           _js(n.get("ip")) if n.get("ip") else "",
           csv_clean(n["osdesc"]) if n.get("osdesc") else "",
           csv_clean(mesh.get("name") if mesh is not None else "")]
    wsc = n.get("wsc")
    if isinstance(wsc, dict):
        out += [csv_clean(wsc.get("antiVirus") or ""), csv_clean(wsc.get("autoUpdate") or ""),
                csv_clean(wsc.get("firewall") or "")]
    else:
        out += ["", "", ""]
    volumes = n.get("volumes")
    if isinstance(volumes, dict):
        out.append(csv_clean("|".join(
            f"{name}/{_js(_d(vol).get('volumeStatus'))}" for name, vol in volumes.items()
            if "protectionStatus" in _d(vol))))
    else:
        out.append("")
    av = n.get("av")
    if isinstance(av, (dict, list)):
        items = av.values() if isinstance(av, dict) else av
        out.append(csv_clean("|".join(
            f"{a['product']}/{'enabled' if a.get('enabled') else 'disabled'}/"
            f"{'updated' if a.get('updated') else 'notupdated'}"
            for a in items if isinstance(a, dict) and isinstance(a.get("product"), str))))
    else:
        out.append("")
    tags = n.get("tags")
    if isinstance(tags, (dict, list)):
        items = tags.values() if isinstance(tags, dict) else tags
        out.append(csv_clean("|".join(_js(t) for t in items)))
    else:
        out.append("")
    boot = n.get("lastbootuptime")
    out.append(_js(boot) if isinstance(boot, (int, float)) and not isinstance(boot, bool)
               else "")
    return out


def _tpm_fields(hardware: dict[str, Any]) -> list[str]:
    tpm = _d(hardware.get("tpm"))
    return [_opt(tpm, "SpecVersion"), _opt(tpm, "ManufacturerId"),
            _opt(tpm, "ManufacturerVersion")] + [
        csv_clean("true") if tpm.get(key) else "" for key in ("IsActivated", "IsEnabled",
                                                               "IsOwned")]


def _sys_fields(sys: Optional[dict[str, Any]]) -> list[str]:
    hardware = _d(_d(sys).get("hardware"))
    ids = _d(hardware.get("identifiers"))
    if isinstance(hardware.get("windows"), dict):
        win = hardware["windows"]
        cpu = win.get("cpu")
        first = cpu[0] if isinstance(cpu, list) and cpu and isinstance(cpu[0], dict) else {}
        out = [csv_clean(first["Name"]) if isinstance(first.get("Name"), str) else "",
               _opt(_d(win.get("osinfo")), "BuildNumber")]
        out += [_opt(ids, k) for k in ("bios_date", "bios_vendor", "bios_version",
                                       "bios_serial", "bios_mode", "board_name",
                                       "board_vendor", "board_version", "product_uuid")]
        out += _tpm_fields(hardware)
        memory = win.get("memory")
        if memory:
            items = memory.values() if isinstance(memory, dict) else memory
            total = sum(_parse_int(_d(m).get("Capacity")) for m in items
                        if _d(m).get("Capacity"))
            out.append(csv_clean(str(total)))
        else:
            out.append("")
        return out
    if isinstance(hardware.get("mobile"), dict):
        mobile = hardware["mobile"]
        return ["", "", "", "", _opt(mobile, "bootloader"), "", "", _opt(mobile, "model"),
                _opt(mobile, "brand"), "", _opt(mobile, "id"), "", "", "", "", "", "", ""]
    if isinstance(hardware.get("linux"), dict):
        linux = hardware["linux"]
        serial = _opt(linux, "product_serial") or _opt(ids, "bios_serial")
        out = [_opt(ids, "cpu_name"), "", _opt(linux, "bios_date"), _opt(linux, "bios_vendor"),
               _opt(linux, "bios_version"), serial, _opt(ids, "bios_mode"),
               _opt(linux, "board_name"), _opt(linux, "board_vendor"),
               _opt(linux, "board_version"), _opt(linux, "product_uuid")]
        out += _tpm_fields(hardware)
        devices = _d(linux.get("memory")).get("Memory_Device") if linux.get("memory") else None
        if devices:
            items = devices.values() if isinstance(devices, dict) else devices
            total = sum(_parse_int(_d(m).get("Size")) for m in items if _d(m).get("Size"))
            out.append(csv_clean(str(total * 1024 ** 3)))
        else:
            out.append("")
        return out
    return [""] * 18


def _agent_fields(sys: Optional[dict[str, Any]]) -> list[str]:
    vers = _d(_d(_d(sys).get("hardware")).get("agentvers"))
    if not vers:
        return ["", "", "", ""]
    return [_opt(vers, k) for k in ("openssl", "commitDate", "commitHash", "compileTime")]


def _net_fields(net: Optional[dict[str, Any]]) -> list[str]:
    netif2 = _d(net).get("netif2")
    if not netif2 or not isinstance(netif2, dict):
        return ["", "", ""]
    macs: list[str] = []
    addresses: list[str] = []
    for interfaces in netif2.values():
        if isinstance(interfaces, list):
            for item in interfaces:
                if isinstance(_d(item).get("mac"), str):
                    macs.append(item["mac"])
                if isinstance(_d(item).get("address"), str):
                    addresses.append(item["address"])
    return [str(len(netif2)), csv_clean(" ".join(macs)), csv_clean(" ".join(addresses))]


def _csv_row(entry: dict[str, Any], mesh: Optional[Document]) -> str:
    sys, net = entry.get("sys"), entry.get("net")
    fields = _node_fields(entry["node"], mesh) + _sys_fields(sys) + _agent_fields(sys) \
        + _net_fields(net)
    last = entry.get("lastConnect")
    if last is not None:
        fields += [_js(last["time"]) if last.get("time") else "",
                   csv_clean(last["addr"]) if isinstance(last.get("addr"), str) else ""]
    else:
        fields += ["", ""]
    return ",".join(fields) + "\r\n"
