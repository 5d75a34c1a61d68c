"""Control channel benchmark: login + ``nodes`` with 5000 devices in the store.

One operation = what ``meshctrl listdevices`` costs the server: open TLS + WebSocket to
``/control.ashx`` with ``x-meshauth`` (password login), read the first frames
(``serverinfo``, ``userinfo``), send ``{"action":"nodes"}`` and read the whole answer.
Measured sequentially, sequentially again with a device edited before each operation
(so nothing kept from an earlier listing can be used), then with 20 clients at once
(each its own process, so the client's GIL is not what is measured); latencies per
operation, p50 and p99.

    python bench/control_nodes.py --meshd           # start meshd, fill it, measure
    python bench/control_nodes.py --meshcentral     # the same against MeshCentral 1.1.55
    python bench/control_nodes.py --meshd --meshcentral   # one after the other

meshd is filled with one device group and N agentless devices added with
``addlocaldevice`` over one control connection (in windows of 100 requests); MeshCentral
with one group made by meshctrl and the same N device records written to its NeDB file
while it is stopped (see :func:`run_meshcentral`); the ``nodes`` answers are the same
shape and within a few percent in size.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.wsclient import WebSocket  # noqa: E402


def Client(port: int, headers: dict[str, str]) -> WebSocket:
    """A control.ashx connection."""
    return WebSocket(port, "/control.ashx", headers)


def meshauth(user: str, password: str) -> dict[str, str]:
    return {"x-meshauth": base64.b64encode(user.encode()).decode() + ","
            + base64.b64encode(password.encode()).decode()}


def login_and_nodes(port: int, user: str, password: str) -> tuple[float, int]:
    """One operation: (seconds, bytes of the nodes answer)."""
    began = time.perf_counter()
    client = Client(port, meshauth(user, password))
    client.until(b"userinfo")
    client.send_json({"action": "nodes", "responseid": "bench"})
    answer = client.until(b"nodes")
    elapsed = time.perf_counter() - began
    client.close()
    return elapsed, len(answer)


def _worker(args: tuple[int, str, str, int, float]) -> list[float]:
    port, user, password, count, start_at = args
    while time.time() < start_at:
        time.sleep(0.001)
    return [login_and_nodes(port, user, password)[0] for _ in range(count)]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def fill(port: int, user: str, password: str, mesh_id: str, devices: int) -> None:
    """Add ``devices`` agentless devices to the group over one control connection."""
    client = Client(port, meshauth(user, password))
    client.until(b"userinfo")
    added = 0
    while added < devices:
        window = min(100, devices - added)
        for i in range(window):
            n = added + i
            client.send_json({"action": "addlocaldevice", "meshid": mesh_id,
                         "devicename": f"bench-{n:05d}", "hostname": f"10.{n >> 16 & 255}."
                         f"{n >> 8 & 255}.{n & 255}", "type": 4, "responseid": f"a{n}"})
        got = 0
        while got < window:
            payload = client.text()
            if b'"responseid":"a' in payload:
                if b'"result":"ok"' not in payload:
                    raise RuntimeError(f"addlocaldevice answered {payload[:200]!r}")
                got += 1
        added += window
    client.close()


def create_group(port: int, user: str, password: str) -> str:
    client = Client(port, meshauth(user, password))
    client.until(b"userinfo")
    client.send_json({"action": "createmesh", "meshname": "bench", "meshtype": 3,
                 "desc": "", "responseid": "g"})
    # Both servers announce the new group in a createmesh event (before the reply).
    while True:
        event = json.loads(client.text()).get("event") or {}
        if event.get("action") == "createmesh" and event.get("meshid"):
            client.close()
            mesh_id: str = event["meshid"]
            return mesh_id


def after_a_change(port: int, user: str, password: str, count: int) -> list[float]:
    """Sequential operations, each right after a device was edited (``changedevice``
    over a second connection, answered before the operation starts, not timed): no
    server can answer from a listing it kept."""
    side = Client(port, meshauth(user, password))
    side.until(b"userinfo")
    side.send_json({"action": "nodes", "responseid": "n"})
    listing = json.loads(side.until(b"nodes"))["nodes"]
    node_id = next(node["_id"] for nodes in listing.values() for node in nodes)
    times = []
    for n in range(count):
        side.send_json({"action": "changedevice", "nodeid": node_id, "desc": f"edit {n}",
                        "responseid": f"c{n}"})
        marker = f'"responseid":"c{n}"'.encode()
        while marker not in side.text():
            pass
        times.append(login_and_nodes(port, user, password)[0])
    side.close()
    return times


def measure(name: str, port: int, user: str, password: str, sequential: int,
            concurrent: int, per_client: int) -> dict[str, Any]:
    login_and_nodes(port, user, password)  # warm up
    seq = [login_and_nodes(port, user, password)[0] for _ in range(sequential)]
    size = login_and_nodes(port, user, password)[1]
    changed = after_a_change(port, user, password, sequential)
    start_at = time.time() + 2.0
    with ProcessPoolExecutor(concurrent) as pool:
        runs = list(pool.map(_worker, [(port, user, password, per_client, start_at)]
                             * concurrent))
    conc = [t for run in runs for t in run]
    result = {"server": name, "answer_bytes": size,
              "sequential_p50_ms": round(statistics.median(seq) * 1000, 1),
              "sequential_p99_ms": round(percentile(seq, 0.99) * 1000, 1),
              "after_change_p50_ms": round(statistics.median(changed) * 1000, 1),
              "after_change_p99_ms": round(percentile(changed, 0.99) * 1000, 1),
              "concurrent": concurrent,
              "concurrent_p50_ms": round(statistics.median(conc) * 1000, 1),
              "concurrent_p99_ms": round(percentile(conc, 0.99) * 1000, 1)}
    print(json.dumps(result), flush=True)
    return result


def run_meshd(args: argparse.Namespace) -> dict[str, Any]:
    from tests.server import ServerProcess, fresh_datapath
    from tests.test_login import admin

    password = "Bench!Pass#2024"
    datapath = fresh_datapath()
    created = admin(datapath, "createaccount", "admin", "--pass", password)
    if created.returncode != 0:
        raise RuntimeError(created.stderr)
    server = ServerProcess(datapath).start()
    try:
        return fill_and_measure("meshd", server.port, "admin", password, args)
    finally:
        server.stop()


def run_meshcentral(args: argparse.Namespace) -> dict[str, Any]:
    """MeshCentral 1.1.55, filled by writing its NeDB file while it is stopped.

    Its ``addlocaldevice`` needs an agentless group (mtype 3), which MeshCentral refuses
    to create in WAN-only mode (what the test server runs: LAN mode would scan and
    multicast), so: meshctrl ``adddevicegroup`` makes an agent group, the server stops,
    N device records in the shape ``addlocaldevice`` writes (but ``mtype`` 2) are
    appended to ``meshcentral.db``, and the server starts again and loads them.
    """
    import subprocess

    from tests.meshcentral import ADMIN, PASSWORD, MeshCentralServer, ensure_installed

    server = MeshCentralServer(ensure_installed())
    server.start()
    try:
        began = time.perf_counter()
        mesh_id = server.add_device_group("bench")
        time.sleep(3)  # MeshCentral writes the group and the user's link a moment later
        server.stop()
        with open(os.path.join(server.data, "meshcentral.db"), "a", encoding="utf-8") as db:
            for n in range(args.devices):
                node_id = "node//" + base64.b64encode(os.urandom(48)).decode().replace(
                    "+", "@").replace("/", "$")
                db.write(json.dumps({
                    "type": "node", "_id": node_id, "meshid": mesh_id, "mtype": 2,
                    "icon": 1, "name": f"bench-{n:05d}",
                    "host": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "domain": "",
                    "agent": {"id": 4, "caps": 0}}, separators=(",", ":")) + "\n")
        open(server.log_path, "wb").close()  # the restart is seen by a fresh log line
        with open(server.log_path, "ab") as log:
            server.process = subprocess.Popen(
                ["node", server.package_dir, "--datapath", server.data],
                cwd=server.directory, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not server._serving():
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"MeshCentral did not restart:\n{server.log_tail()}")
            time.sleep(0.2)
        print(f"MeshCentral 1.1.55: {args.devices} devices written and loaded in "
              f"{time.perf_counter() - began:.1f} s", flush=True)
        size = login_and_nodes(server.port, ADMIN, PASSWORD)[1]
        if size < args.devices * 100:
            raise RuntimeError(f"MeshCentral lists too little after the restart ({size} "
                               f"bytes): it did not load the devices")
        return measure("MeshCentral 1.1.55", server.port, ADMIN, PASSWORD, args.sequential,
                       args.concurrent, args.per_client)
    finally:
        server.cleanup()


def fill_and_measure(name: str, port: int, user: str, password: str,
                     args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    mesh_id = create_group(port, user, password)
    fill(port, user, password, mesh_id, args.devices)
    print(f"{name}: {args.devices} devices added in {time.perf_counter() - began:.1f} s",
          flush=True)
    return measure(name, port, user, password, args.sequential, args.concurrent,
                   args.per_client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meshd", action="store_true")
    parser.add_argument("--meshcentral", action="store_true")
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--sequential", type=int, default=50)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=5)
    args = parser.parse_args()
    runs: list[Callable[[argparse.Namespace], dict[str, Any]]] = []
    if args.meshd:
        runs.append(run_meshd)
    if args.meshcentral:
        runs.append(run_meshcentral)
    if not runs:
        parser.error("give --meshd and/or --meshcentral")
    for run in runs:
        run(args)


if __name__ == "__main__":
    main()
