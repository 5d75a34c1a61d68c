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
import socket
import ssl
import struct
import sys
import time
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MIB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")


class WebSocket:
    """A small blocking RFC 6455 client over TLS: enough for the relay and control.ashx."""

    def __init__(self, port: int, path: str, headers: Optional[dict[str, str]] = None) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=120)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"no upgrade answer for {path[:60]}")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        self.buffer = bytearray(rest)

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def frame(self) -> tuple[int, bytes]:
        """The next data frame: (opcode, payload); pings are answered."""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(length)
            opcode = first & 0x0F
            if opcode == 8:
                raise ConnectionError(f"closed by the server: {payload!r}")
            if opcode == 9:
                self.send(payload, 10)
                continue
            if opcode in (1, 2):
                return opcode, payload

    def count_binary(self, total: int) -> int:
        """Read frames until ``total`` binary payload bytes arrived; fast path that does not
        copy payloads (the receiving side of the benchmark)."""
        got = 0
        buffer = self.buffer
        view_size = 1 << 20
        while got < total:
            # Header (at most 14 bytes for a server frame: 2 + 8, no mask).
            while len(buffer) < 2:
                buffer += self.sock.recv(view_size)
            second = buffer[1]
            length = second & 0x7F
            need = 2 + (2 if length == 126 else 8 if length == 127 else 0)
            while len(buffer) < need:
                buffer += self.sock.recv(view_size)
            if length == 126:
                length = struct.unpack_from("!H", buffer, 2)[0]
            elif length == 127:
                length = struct.unpack_from("!Q", buffer, 2)[0]
            opcode = buffer[0] & 0x0F
            if opcode == 8:
                raise ConnectionError("closed by the server")
            del buffer[:need]
            left = length
            take = min(left, len(buffer))
            del buffer[:take]
            left -= take
            while left > 0:
                chunk = self.sock.recv(min(view_size, max(left, 65536)))
                if not chunk:
                    raise ConnectionError("closed")
                if len(chunk) > left:
                    buffer += chunk[left:]
                    left = 0
                else:
                    left -= len(chunk)
            if opcode == 2:
                got += length
        return got

    def send(self, payload: bytes, opcode: int = 2) -> None:
        self.sock.sendall(self.header(len(payload), opcode) + payload)

    @staticmethod
    def header(length: int, opcode: int = 2) -> bytes:
        """A masked client frame header with a zero mask key (the payload is unchanged)."""
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        return head + b"\0\0\0\0"

    def close(self) -> None:
        try:
            self.sock.sendall(b"\x88\x80\0\0\0\0")
        except OSError:
            pass
        self.sock.close()


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
