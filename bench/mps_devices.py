"""Connect N simulated Intel AMT CIRA devices at once to an MPS and print the figures.

    python bench/mps_devices.py                 # 1000 devices against the whole meshd server
    python bench/mps_devices.py --meshcentral   # the same load against MeshCentral 1.1.55
    python bench/mps_devices.py --factory       # meshd's MPS factory alone, in a child process
    python bench/mps_devices.py -n 200 --in-process
    python bench/mps_devices.py --port 4433 --user <16 chars> --password <pw> [--pid <server pid>]

By default meshd runs as it does in production: ``twistd -n meshd --config <file>`` with a
fresh data folder on the embedded SQLite store, every listener on 127.0.0.1 (web, redirect,
MPS).  The script then does what an administrator does: ``meshd-admin createaccount``, an
Intel AMT-only device group made over ``/control.ashx`` (``createmesh``, meshtype 1) and the
group's CIRA credentials from ``meshd-admin ciracredentials``.  Every new device is thus
written to the store (device record, event) and announced on the bus, as in real use.
``--factory`` measures only meshd's ``MpsServerFactory`` on a MemoryStore (this script with
``--serve`` in a child process); ``--in-process`` runs that factory in the benchmark's own
process.

Every device is started in the same reactor turn; each does TLS, PROTOCOLVERSION, auth
service, USERAUTH, pfwd service and two forwards, then one keep-alive.  Printed: connect
(TLS handshake done), auth (USERAUTH_SUCCESS) and ready (forwards answered) latency
p50/p99/max from the moment the device was started, failures, wall time, and the server's
RSS (VmRSS, peak VmHWM) idle (set up, before the devices) and with the devices connected;
for meshd the MPS counters of ``/health`` as well.

``--meshcentral`` installs ``meshcentral@1.1.55`` from npm (``tests/meshcentral.py``, cached
in ``.cache/meshcentral``), starts it on loopback ports with ``settings.mpsPass`` set (so
MeshCentral checks the device password; without it any password is accepted), creates an
Intel AMT-only device group with ``meshctrl adddevicegroup --amtonly`` and logs the devices
in as MeshCentral expects: user = the first 16 characters of the group id (``@``/``$`` as
``X``), password = mpsPass.  Its RSS is the sum over MeshCentral's process group (the
launcher process and the server process it starts).

Not run by the tests; numbers depend on the machine (docs/performance.md has both servers
measured one after the other on one machine).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
    target = max(soft, min(target, max(wanted, soft)))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def rss_kib(pid: int) -> dict[str, int]:
    figures = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                figures[key] = int(value.split()[0])
    return figures


async def start_server(reactor: Any) -> tuple[Any, str, str, Any]:
    """An MPS on 127.0.0.1:0 with one AMT-only group; returns (port, user, password, factory)."""
    from meshd.events import LocalEventBus
    from meshd.mps.cira import create_cira_credentials
    from meshd.mps.protocol import MpsServerFactory
    from meshd.presence import LocalPresence
    from meshd.store.memory import MemoryStore
    from tests.cira_client import server_context

    store = MemoryStore()
    await store.open()
    mesh_id = "mesh//BenchGroupAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    await store.set({"_id": mesh_id, "type": "mesh", "name": "bench", "mtype": 1,
                     "domain": "", "links": {}})
    user, password = await create_cira_credentials(store, mesh_id, now=reactor.seconds)
    factory = MpsServerFactory(store, LocalPresence(), LocalEventBus(), reactor,
                               server_id="bench")
    port = reactor.listenSSL(0, factory, server_context(), backlog=4096,
                             interface="127.0.0.1")
    return port, user, password, factory


def group_rss_kib(pgid: int) -> dict[str, int]:
    """RSS summed over every process of a process group (MeshCentral's launcher + server)."""
    total = {"VmRSS": 0, "VmHWM": 0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            for key, value in rss_kib(int(entry)).items():
                total[key] += value
        except (OSError, ValueError, IndexError):
            continue
    return total


MESHCENTRAL_MPS_PASS = "Bench-Mps-Pass-1!"
MESHD_ADMIN_PASSWORD = "Bench!Mps#Pass-2024"
#: Pause between the server's set-up and the idle RSS reading.
SETTLE_SECONDS = 2.0
#: A device not ready (or a keep-alive not answered) after this long counts as failed.
READY_TIMEOUT = 120.0


def meshd_admin(datapath: str, *args: str) -> str:
    """Run ``meshd-admin --datapath D ARGS`` and return its output (raises on failure)."""
    from tests.server import ROOT, server_env

    result = subprocess.run([sys.executable, "-m", "meshd.admin", "--datapath", datapath,
                             *args], cwd=ROOT, env=server_env(), text=True,
                            capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"meshd-admin {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def create_amt_group(port: int, user: str, password: str) -> str:
    """An Intel AMT-only device group made over /control.ashx, as the web app does."""
    from bench.wsclient import WebSocket

    meshauth = ",".join(base64.b64encode(x.encode()).decode() for x in (user, password))
    client = WebSocket(port, "/control.ashx", {"x-meshauth": meshauth})
    try:
        client.until(b"userinfo")
        client.send_json({"action": "createmesh", "meshname": "bench", "meshtype": 1,
                          "desc": "", "responseid": "g"})
        while True:
            message = json.loads(client.text())
            event = message.get("event") or {}
            if event.get("action") == "createmesh" and event.get("meshid"):
                return str(event["meshid"])
            if message.get("responseid") == "g" and message.get("result") != "ok":
                raise RuntimeError(f"createmesh answered {message!r}")
    finally:
        client.close()


class MeshdServer:
    """meshd as a whole (``twistd -n meshd --config <file>``) with a fresh data folder."""

    def __init__(self) -> None:
        from tests.server import ServerProcess

        self.folder = tempfile.mkdtemp(prefix="bench-mps-meshd-")
        self.datapath = os.path.join(self.folder, "data")
        self.server = ServerProcess(self.datapath)
        self.config_path = os.path.join(self.folder, "config.json")
        with open(self.config_path, "w") as f:
            json.dump({"settings": {
                "cert": "127.0.0.1", "portBind": "127.0.0.1", "dataPath": self.datapath,
                "port": self.server.port, "redirPort": self.server.redirport,
                "mpsPort": self.server.mpsport, "fastCert": True}}, f, indent=2)
        self.server.args = ["-n", "--pidfile=", "meshd", "--config", self.config_path]
        self.started_in = 0.0

    def start(self) -> tuple[int, str, str]:
        """Start, then make an administrator, an AMT-only group and its CIRA credentials;
        returns (MPS port, CIRA user, CIRA password)."""
        began = time.monotonic()
        self.server.start(timeout=120)
        self.started_in = time.monotonic() - began
        meshd_admin(self.datapath, "createaccount", "admin", "--pass", MESHD_ADMIN_PASSWORD,
                    "--siteadmin")
        mesh_id = create_amt_group(self.server.port, "admin", MESHD_ADMIN_PASSWORD)
        output = meshd_admin(self.datapath, "ciracredentials", mesh_id)
        lines = dict(line.split(" ", 2)[1:] for line in output.splitlines()[:2])
        return self.server.mpsport, lines["user"], lines["password"]

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def mps_stats(self) -> dict[str, int]:
        """The MPS counters of /health."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(f"https://127.0.0.1:{self.server.port}/health",
                                    context=context, timeout=30) as response:
            stats: dict[str, int] = json.loads(response.read())["mps"]
        return stats

    def cleanup(self) -> None:
        self.server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_meshcentral() -> tuple[Any, int, str, str]:
    """MeshCentral 1.1.55 with mpsPass and an AMT-only group: (server, port, user, password)."""
    from tests.meshcentral import MeshCentralServer, ensure_installed

    server = MeshCentralServer(ensure_installed(), settings={"mpsPass": MESHCENTRAL_MPS_PASS})
    try:
        server.start()
        output = server.meshctrl("adddevicegroup", "--name", "bench", "--amtonly").split()
        if len(output) != 2 or output[0] != "ok" or not output[1].startswith("mesh//"):
            raise RuntimeError(f"adddevicegroup answered {output!r}")
    except BaseException:
        server.cleanup()
        raise
    user = output[1][len("mesh//"):][:16].replace("@", "X").replace("$", "X")
    return server, server.mps_port, user, MESHCENTRAL_MPS_PASS


def serve() -> None:
    """Child mode: run the server, print one JSON line, stop when stdin closes."""
    from twisted.internet import defer, reactor, stdio
    from twisted.internet.protocol import Protocol

    raise_fd_limit(65536)

    class StopOnEof(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    async def main() -> None:
        port, user, password, _ = await start_server(reactor)
        print(json.dumps({"port": port.getHost().port, "user": user, "password": password,
                          "pid": os.getpid()}), flush=True)
        stdio.StandardIO(StopOnEof())

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()))
    reactor.run()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def describe(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:8s} no samples"
    ms = [v * 1000 for v in values]
    return (f"{name:8s} p50 {percentile(ms, 0.50):8.1f} ms   p99 {percentile(ms, 0.99):8.1f} ms"
            f"   max {max(ms):8.1f} ms")


async def run_devices(reactor: Any, host: str, port: int, user: str, password: str,
                      count: int) -> dict[str, Any]:
    from twisted.internet import defer

    from tests.cira_client import CiraDevice, client_context, connect_device

    context = client_context(verify=False)
    devices = [CiraDevice(user, password.encode(), uuid.uuid4()) for _ in range(count)]
    started = time.perf_counter()
    for device in devices:
        device.times["start"] = time.perf_counter()
        connect_device(reactor, host, port, device, context)
    waiting = [d.ready.addTimeout(READY_TIMEOUT, reactor) for d in devices]
    results = await defer.DeferredList(waiting, consumeErrors=True)
    ready_wall = time.perf_counter() - started
    ok = [device for device, (success, _) in zip(devices, results) if success]
    failures: dict[str, int] = {}
    for success, value in results:
        if not success:
            key = type(value.value).__name__
            failures[key] = failures.get(key, 0) + 1
    alive = await defer.DeferredList([d.keepalive(1).addTimeout(READY_TIMEOUT, reactor)
                                      for d in ok], consumeErrors=True)
    return {
        "devices": devices, "ok": ok, "failures": failures, "wall": ready_wall,
        "keepalives": sum(1 for success, _ in alive if success),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--devices", type=int, default=1000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int,
                        help="an MPS already running (needs --user, --password)")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--pid", type=int, help="server process id, for its RSS")
    parser.add_argument("--factory", action="store_true",
                        help="measure meshd's MPS factory alone (MemoryStore) in a child "
                             "process instead of the whole server")
    parser.add_argument("--in-process", action="store_true",
                        help="run the MPS factory in this process (RSS then includes the "
                             "clients)")
    parser.add_argument("--meshcentral", action="store_true",
                        help="start MeshCentral 1.1.55 (npm) and measure it instead of meshd")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return

    from twisted.internet import defer, reactor, task

    raise_fd_limit(args.devices * 2 + 256)
    child: Optional[subprocess.Popen[str]] = None
    meshcentral: Any = None
    meshd: Optional[MeshdServer] = None
    outcome: dict[str, Any] = {}
    rss = rss_kib

    async def bench() -> None:
        nonlocal child, meshcentral, meshd, rss
        host, port, user, password, pid = args.host, args.port, args.user, args.password, args.pid
        factory = None
        if port is None and args.meshcentral:
            meshcentral, port, user, password = start_meshcentral()
            pid = meshcentral.process.pid
            rss = group_rss_kib
            print(f"server   MeshCentral 1.1.55 started in {meshcentral.started_in:.1f} s")
        elif port is None and args.in_process:
            listening, user, password, factory = await start_server(reactor)
            port, pid = listening.getHost().port, os.getpid()
        elif port is None and not args.factory:
            meshd = MeshdServer()
            port, user, password = meshd.start()
            pid = meshd.pid
            print(f"server   meshd (twistd -n meshd --config, SQLite store) started in "
                  f"{meshd.started_in:.1f} s")
        elif port is None:
            child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert child.stdout is not None
            info = json.loads(child.stdout.readline())
            port, user, password, pid = info["port"], info["user"], info["password"], info["pid"]
        elif not (user and password):
            parser.error("--port needs --user and --password")
        if pid:
            await task.deferLater(reactor, SETTLE_SECONDS, lambda: None)  # idle: settled
        before = rss(pid) if pid else {}
        result = await run_devices(reactor, host, port, user, password, args.devices)
        after = rss(pid) if pid else {}
        devices = result["devices"]
        ok = result["ok"]
        print(f"devices  {len(ok)}/{len(devices)} ready in {result['wall']:.2f} s wall, "
              f"{result['keepalives']} keep-alives answered, failures {result['failures'] or 0}")
        for name, key in (("connect", "tls"), ("auth", "auth"), ("ready", "ready")):
            print(describe(name, [d.times[key] - d.times["start"] for d in ok
                                  if key in d.times]))
        if after:
            print(f"server   RSS idle {before.get('VmRSS', 0) / 1024:.1f} MiB -> "
                  f"{after['VmRSS'] / 1024:.1f} MiB with {len(ok)} devices "
                  f"(peak {after['VmHWM'] / 1024:.1f} MiB)")
        if factory is not None:
            print(f"server   stats {json.dumps(factory.stats_dict())}")
        if meshd is not None:
            print(f"server   /health mps {json.dumps(meshd.mps_stats())}")
        for device in devices:
            device.close()
        await defer.DeferredList([d.closed for d in devices], consumeErrors=True)
        outcome["ok"] = len(ok) == len(devices)

    def done(result: Any) -> None:
        if child is not None:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(10)
        if meshcentral is not None:
            meshcentral.cleanup()
        if meshd is not None:
            meshd.cleanup()
        if isinstance(result, Exception) or hasattr(result, "getTraceback"):
            print(result.getTraceback() if hasattr(result, "getTraceback") else result)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(bench()).addBoth(done))
    reactor.run()
    sys.exit(0 if outcome.get("ok") else 1)


if __name__ == "__main__":
    main()
