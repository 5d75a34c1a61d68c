"""Relay throughput: a stream of 64 KB binary frames through ``/meshrelay.ashx``.

    python bench/relay.py --meshd --meshcentral          # 1 GiB user side -> agent side
    python bench/relay.py --meshd --meshcentral --both --mb 200   # 200 MiB each way at once
    python bench/relay.py --port 443 --user admin --password pw [--pid N]   # a running server

"Raw pair" mode, which works the same against meshd and MeshCentral: the script logs in
on ``/control.ashx`` (``x-meshauth``), asks ``{"action":"authcookie"}`` and gets the user's
login cookie (``cookie``) and relay cookie (``rcookie``); one client process joins the
relay as the user side (``?browser=1&p=5&id=I&auth=cookie``), another as the agent side
(``?p=5&id=I&rauth=rcookie``), exactly as a browser and an agent answering a tunnel do.
When both have received ``c`` the sender writes ``--mb`` MiB in ``--frame`` byte binary
frames and the receiver counts them; the time runs from the start signal to the last
byte received.  ``--both`` runs two such pairs at once, one in each direction.

Printed per server: MiB/s (total bytes relayed / wall time) and the server's CPU
seconds (user + system, from ``/proc``, every process of MeshCentral's process group)
per GiB relayed.  Clients are separate processes (blocking sockets, TLS, frames masked
with a zero key so the client does no XOR work); on a small machine they share the
cores with the server, so compare the two servers, not absolute numbers.

Servers: meshd is ``twistd -n meshd`` started by ``tests/server.py`` (SQLite store, real
TLS on 127.0.0.1); MeshCentral 1.1.55 from npm is started by ``tests/meshcentral.py``.
Not run by the tests.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.wsclient import WebSocket  # noqa: E402

MIB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")


def cookies(port: int, user: str, password: str) -> tuple[str, str]:
    """The user's (login cookie, relay cookie) from control.ashx ``authcookie``."""
    auth = (base64.b64encode(user.encode()).decode() + ","
            + base64.b64encode(password.encode()).decode())
    control = WebSocket(port, "/control.ashx", {"x-meshauth": auth})
    control.send(json.dumps({"action": "authcookie"}).encode(), 1)
    try:
        while True:
            _opcode, payload = control.frame()
            if b'"authcookie"' not in payload:
                if b'"action":"close"' in payload[:100]:
                    raise ConnectionError(payload.decode())
                continue
            message = json.loads(payload)
            if message.get("action") == "authcookie":
                return message["cookie"], message["rcookie"]
    finally:
        control.close()


def side(role: str, port: int, path: str, total: int, frame: int, ready: Any, go: Any,
         done: Any, finished: Any) -> None:
    """One relay side in its own process: connect, wait for ``c``, then send or count."""
    try:
        ws = WebSocket(port, path)
        opcode, payload = ws.frame()
        if opcode != 1 or payload not in (b"c", b"cr"):
            raise ConnectionError(f"expected c, got {payload[:40]!r}")
        ready.put((role, "paired"))
        go.wait()
        began = time.perf_counter()
        if role == "send":
            block = os.urandom(frame)
            data = WebSocket.header(frame) + block
            sent = 0
            while sent < total:
                ws.sock.sendall(data)
                sent += frame
            done.put((role, time.perf_counter() - began, sent))
            finished.wait(600)  # stay open until every receiver has its bytes
        else:
            got = ws.count_binary(total)
            done.put((role, time.perf_counter() - began, got))
        ws.close()
    except Exception as error:  # reported to the parent
        ready.put((role, f"error: {error!r}"))
        done.put((role, -1.0, 0))


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def group_pids(pgid: int) -> list[int]:
    """Every process in a process group (MeshCentral's launcher and its server)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.append(int(name))
    return found


def measure(name: str, port: int, user: str, password: str, pids: list[int], mb: int,
            frame: int, both: bool) -> dict[str, Any]:
    cookie, rcookie = cookies(port, user, password)
    total = mb * MIB
    context = multiprocessing.get_context("fork")
    ready, done = context.Queue(), context.Queue()
    go, finished = context.Event(), context.Event()
    processes = []
    pairs = [("user", "agent")] + ([("agent", "user")] if both else [])
    for n, (sender, receiver) in enumerate(pairs):
        relay_id = base64.b64encode(os.urandom(9)).decode().replace("+", "@").replace("/", "$")
        quoted = relay_id.replace("@", "%40").replace("$", "%24")
        paths = {"user": f"/meshrelay.ashx?browser=1&p=5&id={quoted}&auth={cookie}",
                 "agent": f"/meshrelay.ashx?p=5&id={quoted}&rauth={rcookie}"}
        for role, who in (("recv", receiver), ("send", sender)):
            process = context.Process(target=side, args=(role, port, paths[who], total, frame,
                                                          ready, go, done, finished))
            process.start()
            processes.append(process)
            time.sleep(0.2)  # the receiving side waits first, as an agent would not
    for _ in processes:
        role, state = ready.get(timeout=60)
        if state != "paired":
            go.set()
            raise RuntimeError(f"{name}: {role} side: {state}")
    cpu_before = cpu_seconds(pids)
    began = time.perf_counter()
    go.set()
    receivers = []
    for _ in processes:
        role, seconds, count = done.get(timeout=3600)
        if seconds < 0:
            raise RuntimeError(f"{name}: a {role} side failed")
        if role == "recv":
            receivers.append(count)
            if len(receivers) == len(pairs):
                wall = time.perf_counter() - began
                cpu = cpu_seconds(pids) - cpu_before
                finished.set()
    for process in processes:
        process.join(30)
    relayed = sum(receivers)
    result = {"server": name, "frame": frame, "streams": len(pairs),
              "mib": round(relayed / MIB), "seconds": round(wall, 2),
              "mib_per_s": round(relayed / MIB / wall, 1),
              "cpu_s": round(cpu, 2), "cpu_s_per_gib": round(cpu / (relayed / 1024 / MIB), 2)}
    print(json.dumps(result), flush=True)
    return result


def run_meshd(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tests.server import ServerProcess, fresh_datapath
    from tests.test_login import admin

    password = "Bench!Pass#2024"
    datapath = fresh_datapath()
    created = admin(datapath, "createaccount", "admin", "--pass", password)
    if created.returncode != 0:
        raise RuntimeError(created.stderr)
    server = ServerProcess(datapath).start()
    try:
        assert server.process is not None
        return [measure("meshd", server.port, "admin", password, [server.process.pid],
                        args.mb, args.frame, args.both) for _ in range(args.runs)]
    finally:
        server.stop()


def run_meshcentral(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tests.meshcentral import ADMIN, PASSWORD, MeshCentralServer, ensure_installed

    server = MeshCentralServer(ensure_installed())
    server.start()
    try:
        assert server.process is not None
        pids = group_pids(server.process.pid)
        return [measure("MeshCentral 1.1.55", server.port, ADMIN, PASSWORD, pids, args.mb,
                        args.frame, args.both) for _ in range(args.runs)]
    finally:
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meshd", action="store_true")
    parser.add_argument("--meshcentral", action="store_true")
    parser.add_argument("--port", type=int, help="a running server instead")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password")
    parser.add_argument("--pid", type=int, action="append", default=[],
                        help="server process ids whose CPU time is measured")
    parser.add_argument("--mb", type=int, default=1024, help="MiB per stream")
    parser.add_argument("--frame", type=int, default=65536)
    parser.add_argument("--both", action="store_true", help="a second stream the other way")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    if args.port:
        for _ in range(args.runs):
            measure(f"port {args.port}", args.port, args.user, args.password or "", args.pid,
                    args.mb, args.frame, args.both)
    if args.meshd:
        run_meshd(args)
    if args.meshcentral:
        run_meshcentral(args)
    if not (args.port or args.meshd or args.meshcentral):
        parser.error("say --meshd, --meshcentral or --port")


if __name__ == "__main__":
    main()
