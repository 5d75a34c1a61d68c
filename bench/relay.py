"""Relay throughput through a real tunnel: 64 KB frames, both directions at once.

    python bench/relay.py --meshd --meshcentral            # 200 MiB each way, one tunnel
    python bench/relay.py --meshd --runs 3 --mb 200
    python bench/relay.py --port 443 --user admin --password pw --pid N   # a running server

The method, the same against meshd and MeshCentral (spec relay.md §4, §5, §7):

1. The user logs in on ``/control.ashx`` (``x-meshauth``), creates an agent device group
   (``createmesh``) and fetches its ``.msh`` from ``/meshsettings``.
2. A simulated agent (its own process) connects to ``/agent.ashx`` with a fresh node
   key and does the real binary handshake (``agentsrc.handshake``); it then waits on its
   control channel for the server's ``msg``/``tunnel`` command.
3. The user waits until the device shows as connected (``nodes``), takes its cookies
   (``authcookie``), joins the relay as the user side
   (``/meshrelay.ashx?browser=1&p=5&nodeid=N&id=I&auth=cookie``, its own process) and
   sends ``{"action":"msg","type":"tunnel","nodeid":N,"value":"*/meshrelay.ashx?p=5&
   nodeid=N&id=I&rauth=rcookie"}``.  The server routes it to the agent, which dials the
   relay URL it was given (``*/`` = the server it is connected to).
4. When both sides have ``c``, both send ``--mb`` MiB in ``--frame`` byte binary frames
   and count what the other sends, at the same time over the one tunnel.  Client frames
   are masked with real random keys (several, pre-masked once), so the server unmasks
   every byte as it would for a browser or an agent; the first frame each side receives
   is compared with what the other sent.

Printed per run (a tunnel each; ``--warmup`` MiB go through one first, unmeasured):
MiB/s (bytes relayed in both directions / wall time from the start signal until both
sides have received everything), the server's CPU seconds (user + system from
``/proc``; every process of MeshCentral's process group) per GiB relayed, and the CPU
seconds the two clients used.  The clients (TLS in Python, non-blocking, one thread
each) share the machine's cores with the server, so compare servers measured on the same
machine, not absolute numbers.

Servers: meshd is ``twistd -n meshd`` started by ``tests/server.py`` (SQLite store, real
TLS on 127.0.0.1); MeshCentral 1.1.55 from npm is started by ``tests/meshcentral.py``.
Not run by the tests.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import multiprocessing
import os
import random
import ssl
import sys
import time
import urllib.parse
import urllib.request
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.wsclient import WebSocket  # noqa: E402

MIB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")
PROTOCOL = 5  # files: the relay does not look inside; MeshCentral and meshd treat it alike


# -- the user's control channel ------------------------------------------------------------

class Control:
    """The logged-in user's ``/control.ashx`` (blocking)."""

    def __init__(self, port: int, user: str, password: str) -> None:
        auth = (base64.b64encode(user.encode()).decode() + ","
                + base64.b64encode(password.encode()).decode())
        self.ws = WebSocket(port, "/control.ashx", {"x-meshauth": auth})
        self.port = port

    def ask(self, message: dict[str, Any], action: str,
            match: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Send ``message``; the first answer with this ``action`` (and ``match`` fields)."""
        self.ws.send_json(message)
        marker = b'"action":"' + action.encode() + b'"'
        while True:
            _opcode, payload = self.ws.frame()
            if marker not in payload:
                if b'"action":"close"' in payload[:100]:
                    raise ConnectionError(payload.decode())
                continue
            answer = json.loads(payload)
            if answer.get("action") == action and all(
                    answer.get(k) == v for k, v in (match or {}).items()):
                return dict(answer)

    def create_group(self) -> tuple[str, str]:
        """A new agent device group: (mesh id, its ``.msh`` from ``/meshsettings``)."""
        name = "relay-bench-" + os.urandom(3).hex()
        answer = self.ask({"action": "createmesh", "meshname": name, "meshtype": 2,
                           "responseid": "bench-mesh"}, "createmesh",
                          {"responseid": "bench-mesh"})
        if answer.get("result") != "ok":
            raise RuntimeError(f"createmesh answered {answer}")
        mesh_id = str(answer["meshid"])
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        short = urllib.parse.quote(mesh_id.split("/")[-1], safe="")
        url = f"https://127.0.0.1:{self.port}/meshsettings?id={short}"
        with urllib.request.urlopen(url, context=context, timeout=30) as response:
            return mesh_id, response.read().decode("utf-8")

    def wait_connected(self, mesh_id: str, node_id: str, timeout: float = 60) -> None:
        """Until the device is listed in its group as agent-connected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.ask({"action": "nodes", "responseid": "bench-nodes"}, "nodes")
            for node in answer.get("nodes", {}).get(mesh_id, []):
                if node.get("_id") == node_id and int(node.get("conn", 0)) & 1:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"device {node_id} never showed as connected")

    def cookies(self) -> tuple[str, str]:
        """The user's login cookie and relay cookie (``authcookie``)."""
        answer = self.ask({"action": "authcookie"}, "authcookie")
        return str(answer["cookie"]), str(answer["rcookie"])

    def close(self) -> None:
        self.ws.close()


# -- the simulated agent -------------------------------------------------------------------

def agent_connect(port: int, msh: str) -> tuple[WebSocket, str]:
    """Connect to ``/agent.ashx`` and authenticate as a new device; (socket, node id)."""
    from agentsrc.handshake import AgentHandshake, Confirmed, Refused, Send
    from agentsrc.settings import parse_msh
    from agentsrc.state import make_node_identity
    from meshd.agent.identity import node_id_from_cert, pad_mesh_id
    from meshd.agent.wire import AgentInfo

    settings = parse_msh(msh)
    node = make_node_identity(2048, datetime.datetime.now(datetime.timezone.utc))
    ws = WebSocket(port, "/agent.ashx")
    handshake = AgentHandshake(
        node_key=node.key, node_cert_der=node.certificate_der,
        server_id=settings.server_id, tls_cert_der=ws.peer_certificate(),
        agent_info=AgentInfo(1, 6, 0, 1, pad_mesh_id(settings.mesh_id), 0x118,
                             "relay-bench"),
        now=time.monotonic)
    events: list[Any] = list(handshake.start())
    while True:
        for event in events:
            if isinstance(event, Send):
                ws.send(event.frame, 1 if event.text else 2)
            elif isinstance(event, Refused):
                raise ConnectionError(f"agent handshake refused: {event}")
            elif isinstance(event, Confirmed):
                return ws, "node//" + node_id_from_cert(node.certificate_der)
        _opcode, payload = ws.frame()
        events = handshake.receive(payload)


def agent_tunnel(control: WebSocket) -> str:
    """Serve the agent's control channel until a ``tunnel`` command; its relay path."""
    while True:
        opcode, payload = control.frame()
        if opcode == 2 and payload[:2] == b"\x00\x0b":
            control.send(b"\x00\x0b\x00\x00" + bytes(48), 2)  # core hash: no core
            continue
        if not payload.startswith(b"{"):  # JSON comes in binary frames too
            continue
        message = json.loads(payload)
        if message.get("action") == "msg" and message.get("type") == "tunnel":
            value = str(message["value"])
            if not value.startswith("*/"):
                raise ValueError(f"tunnel to another server: {value[:80]}")
            # As MeshAgent does: same server, '$' and '@' escaped in the query.
            path, _, query = value[1:].partition("?")
            return path + "?" + query.replace("$", "%24").replace("@", "%40")


def payload_of(role: str, frame: int) -> bytes:
    """What ``role`` sends in every frame (random-looking; both sides can compute it)."""
    return random.Random("relay-bench-" + role).randbytes(frame)


def side(role: str, port: int, msh: str, path: str, frames: int, frame: int,
         ready: Any, go: Any, done: Any) -> None:
    """One end of the tunnel in its own process: connect, wait for ``c``, then send and
    receive at once.  ``role`` is "user" (``path`` given) or "agent" (dials from ``msh``)."""
    control: Optional[WebSocket] = None
    try:
        if role == "agent":
            control, node_id = agent_connect(port, msh)
            ready.put((role, "connected", node_id))
            path = agent_tunnel(control)
        ws = WebSocket(port, path)
        if role == "user":
            ready.put((role, "joined", ""))
        opcode, payload = ws.frame()
        if opcode != 1 or payload not in (b"c", b"cr"):
            raise ConnectionError(f"expected c, got {payload[:40]!r}")
        stream = WebSocket.masked_frames(payload_of(role, frame))
        expect = payload_of("agent" if role == "user" else "user", frame)
        ready.put((role, "paired", ""))
        go.wait()
        cpu = time.process_time()
        got, sent_at, received_at = ws.pump(stream, frames, frame, frames * frame, expect)
        done.put((role, sent_at, received_at, got, time.process_time() - cpu))
        ws.close()
    except Exception as error:  # reported to the parent
        ready.put((role, f"error: {error!r}", ""))
        done.put((role, -1.0, -1.0, repr(error), 0.0))
    finally:
        if control is not None:
            control.close()


# -- measuring -----------------------------------------------------------------------------

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


def _expect(ready: Any, role: str, state: str) -> str:
    got_role, got_state, detail = ready.get(timeout=90)
    if got_state.startswith("error") or (got_role, got_state) != (role, state):
        raise RuntimeError(f"{got_role} side: {got_state} (waiting for {role} {state})")
    return str(detail)


def measure(name: str, port: int, user: str, password: str, pids: list[int], mb: int,
            frame: int, show: bool = True) -> dict[str, Any]:
    frames = mb * MIB // frame
    context = multiprocessing.get_context("fork")
    ready, done, go = context.Queue(), context.Queue(), context.Event()
    control = Control(port, user, password)
    processes = []
    try:
        mesh_id, msh = control.create_group()
        agent = context.Process(target=side, args=("agent", port, msh, "", frames, frame,
                                                   ready, go, done))
        agent.start()
        processes.append(agent)
        node_id = _expect(ready, "agent", "connected")
        control.wait_connected(mesh_id, node_id)
        cookie, rcookie = control.cookies()
        relay_id = os.urandom(12).hex()
        quote = urllib.parse.quote
        user_path = (f"/meshrelay.ashx?browser=1&p={PROTOCOL}&nodeid={quote(node_id)}"
                     f"&id={relay_id}&auth={quote(cookie)}")
        user_side = context.Process(target=side, args=("user", port, "", user_path, frames,
                                                       frame, ready, go, done))
        user_side.start()
        processes.append(user_side)
        _expect(ready, "user", "joined")
        answer = control.ask({
            "action": "msg", "type": "tunnel", "nodeid": node_id, "usage": PROTOCOL,
            "value": f"*/meshrelay.ashx?p={PROTOCOL}&nodeid={node_id}&id={relay_id}"
                     f"&rauth={rcookie}", "responseid": "bench-tunnel"},
            "msg", {"responseid": "bench-tunnel"})
        if answer.get("result") != "OK":
            raise RuntimeError(f"tunnel not routed: {answer}")
        states = {ready.get(timeout=60)[:2] for _ in range(2)}
        if states != {("user", "paired"), ("agent", "paired")}:
            raise RuntimeError(f"{name}: pairing failed: {states}")
        cpu_before = cpu_seconds(pids)
        began = time.perf_counter()
        go.set()
        received = []
        client_cpu = 0.0
        for _ in range(2):
            role, sent_at, received_at, count, cpu_used = done.get(timeout=3600)
            if sent_at < 0:
                raise RuntimeError(f"{name}: the {role} side failed: {count}")
            received.append(count)
            client_cpu += cpu_used
        wall = time.perf_counter() - began
        cpu = cpu_seconds(pids) - cpu_before
    finally:
        go.set()
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
        control.close()
    relayed = sum(received)
    result = {"server": name, "frame": frame, "mib_each_way": mb,
              "seconds": round(wall, 2), "mib_per_s": round(relayed / MIB / wall, 1),
              "cpu_s": round(cpu, 2),
              "cpu_s_per_gib": round(cpu / (relayed / 1024 / MIB), 2),
              "client_cpu_s": round(client_cpu, 2)}
    if show:
        print(json.dumps(result), flush=True)
    return result


def runs(name: str, port: int, user: str, password: str, pids: list[int],
         args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--warmup`` MiB each way first (not shown: Node's JIT and both servers' caches
    warm up), then ``--runs`` measured transfers, each through a new tunnel."""
    if args.warmup:
        measure(name, port, user, password, pids, args.warmup, args.frame, show=False)
    return [measure(name, port, user, password, pids, args.mb, args.frame)
            for _ in range(args.runs)]


def run_meshd(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tests.server import ServerProcess, fresh_datapath
    from tests.test_login import admin

    password = "Bench!Pass#2024"
    datapath = fresh_datapath()
    created = admin(datapath, "createaccount", "admin", "--pass", password, "--siteadmin")
    if created.returncode != 0:
        raise RuntimeError(created.stderr)
    server = ServerProcess(datapath).start()
    try:
        assert server.process is not None
        return runs("meshd", server.port, "admin", password, [server.process.pid], args)
    finally:
        server.stop()


def run_meshcentral(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tests.meshcentral import ADMIN, PASSWORD, MeshCentralServer, ensure_installed

    server = MeshCentralServer(ensure_installed())
    server.start()
    try:
        assert server.process is not None
        time.sleep(3)  # let it settle
        pids = group_pids(server.process.pid)
        return runs("MeshCentral 1.1.55", server.port, ADMIN, PASSWORD, pids, args)
    except Exception:
        print(server.log_tail(4000), file=sys.stderr)
        raise
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
    parser.add_argument("--mb", type=int, default=200, help="MiB each way (default 200)")
    parser.add_argument("--frame", type=int, default=65536, help="bytes per frame")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=50,
                        help="MiB each way sent first and not measured (default 50)")
    args = parser.parse_args()
    if args.port:
        runs(f"port {args.port}", args.port, args.user, args.password or "", args.pid, args)
    if args.meshd:
        run_meshd(args)
    if args.meshcentral:
        run_meshcentral(args)
    if not (args.port or args.meshd or args.meshcentral):
        parser.error("say --meshd, --meshcentral or --port")


if __name__ == "__main__":
    main()
