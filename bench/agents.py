"""Agent connection benchmark: N simulated MeshAgents against a running server.

Each simulated agent holds its own cached RSA key and certificate (like a real agent's
node certificate) and performs the real binary handshake of spec agent-protocol §3
over TLS + WebSocket: first the full handshake (server signature checked by the
agent), then, after all have disconnected, the reconnect ("skip", command 4) handshake.

Printed figures: handshakes per second (wall clock), server CPU milliseconds per
handshake (from /proc/<pid>/stat), and server RSS growth per connected agent.

    # start a meshd server with a device group and measure it
    python bench/agents.py --meshd -n 1000

    # the same load against MeshCentral 1.1.55 from npm
    python bench/agents.py --meshcentral -n 1000

    # any server: its .msh and its process id
    python bench/agents.py --msh meshagent.msh --pid 12345 -n 1000

The client runs on the same machine and spends CPU too (one RSA signature per full
handshake and one verification); use ``taskset`` to keep client and server apart.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from twisted.internet import defer, ssl, task  # noqa: E402

from meshd.agent import identity  # noqa: E402
from meshd.agent.wire import AgentInfo, AuthRequest, AuthVerify, ServerId  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY_CACHE = os.path.join(ROOT, ".cache", "bench-agents")


def _make_identity(args: tuple[int, str]) -> None:
    bits, path = args
    if os.path.exists(path):
        return
    import datetime

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MeshNodeCertificate")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA384()))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)


def load_identities(count: int, bits: int) -> list[tuple[Any, bytes]]:
    """``count`` cached (key, cert DER) pairs, generated on first use in parallel."""
    folder = os.path.join(KEY_CACHE, str(bits))
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"{i:05d}.pem") for i in range(count)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        print(f"generating {len(missing)} RSA-{bits} agent keys (cached in {folder})...",
              flush=True)
        with ProcessPoolExecutor() as pool:
            list(pool.map(_make_identity, [(bits, p) for p in missing], chunksize=8))
    result = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        key = serialization.load_pem_private_key(data, None)
        cert = x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE"):])
        result.append((key, cert.public_bytes(serialization.Encoding.DER)))
    return result


class BenchAgent(WebSocketClientProtocol):
    """One simulated agent: the handshake, then it stays connected and quiet."""

    def onOpen(self) -> None:
        peer = self.transport.getPeerCertificate()
        der = peer.to_cryptography().public_bytes(serialization.Encoding.DER)
        self.hweb = hashlib.sha384(der).digest()
        self.nonce = os.urandom(48)
        skip = self.factory.skip
        frames = [ServerId(self.factory.server_id).encode()]
        if skip:
            frames.append(b"\x00\x04")
        frames.append(AuthRequest(self.hweb, self.nonce).encode())
        for frame in frames:
            self.sendMessage(frame, isBinary=True)

    def _verify(self) -> bytes:
        key = self.factory.key
        signature = key.sign(self.hweb + self.server_nonce + self.nonce, padding.PKCS1v15(),
                             hashes.SHA384())
        return AuthVerify(self.factory.cert_der, signature).encode()

    def _info(self) -> bytes:
        return AgentInfo(1, 6, 0, 1, self.factory.mesh_id, 0x118, "bench").encode()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if payload[:1] == b"{":
            return
        command = int.from_bytes(payload[:2], "big")
        if command == 1:
            self.server_nonce = payload[50:98]
            if self.factory.skip:
                self.sendMessage(self._info(), isBinary=True)
                self.sendMessage(self._verify(), isBinary=True)
            else:
                self.sendMessage(self._verify(), isBinary=True)
        elif command == 2:
            cert_len = int.from_bytes(payload[2:4], "big")
            cert = x509.load_der_x509_certificate(payload[4:4 + cert_len])
            cert.public_key().verify(payload[4 + cert_len:],  # type: ignore[union-attr]
                                     self.hweb + self.nonce + self.server_nonce,
                                     padding.PKCS1v15(), hashes.SHA384())
            self.sendMessage(self._info(), isBinary=True)
        elif command == 4:
            if not self.factory.done.called:
                self.factory.done.callback(self)
        elif command == 11:
            self.sendMessage(b"\x00\x0b\x00\x00" + bytes(48), isBinary=True)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.factory.done.called:
            self.factory.done.errback(RuntimeError(f"closed before auth: {code} {reason}"))


def server_cpu_ms(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks * 1000.0 / os.sysconf("SC_CLK_TCK")


def server_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def run_phase(reactor: Any, url: str, identities: list[tuple[Any, bytes]],
                    mesh_id: bytes, server_id: bytes, skip: bool, concurrency: int,
                    ) -> tuple[float, list[Any]]:
    connected: list[Any] = []
    queue = list(identities)
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            key, cert_der = queue.pop()
            factory = WebSocketClientFactory(url)
            factory.protocol = BenchAgent
            factory.key, factory.cert_der = key, cert_der
            factory.mesh_id, factory.server_id, factory.skip = mesh_id, server_id, skip
            factory.done = defer.Deferred()
            connectWS(factory, ssl.ClientContextFactory(), timeout=30)
            connected.append(await factory.done)

    await defer.gatherResults([defer.Deferred.fromCoroutine(worker())
                               for _ in range(concurrency)], consumeErrors=True)
    return time.perf_counter() - started, connected


async def close_all(reactor: Any, agents: list[Any]) -> None:
    for agent in agents:
        agent.dropConnection(abort=True)
    await task.deferLater(reactor, 2.0, lambda: None)


def read_msh(path: str) -> dict[str, str]:
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if "=" in line:
                key, value = line.strip().split("=", 1)
                values[key] = value
    return values


async def start_meshd(reactor: Any) -> tuple[Any, dict[str, str]]:
    """A meshd server with RSA-3072 certificates and one device group."""
    from meshd.store.sqlite import SQLiteStore
    from tests.server import ServerProcess
    import tempfile

    datapath = os.path.join(tempfile.mkdtemp(prefix="bench-meshd-"), "data")
    server = ServerProcess(datapath)
    server.args.remove("--fastcert")
    server.start(timeout=120)
    store = SQLiteStore(datapath, reactor)
    await store.open()
    raw = os.urandom(48)
    await store.set({"_id": identity.mesh_key(identity.mesh_id_to_str(raw)), "type": "mesh",
                     "mtype": 2, "name": "bench", "domain": ""})
    await store.close()
    with open(os.path.join(datapath, "agentserver-cert-public.crt"), "rb") as f:
        server_id = identity.server_id(x509.load_pem_x509_certificate(f.read()))
    msh = {"MeshID": identity.mesh_id_to_msh(raw), "ServerID": server_id,
           "MeshServer": f"wss://127.0.0.1:{server.port}/agent.ashx"}
    return server, msh


def start_meshcentral() -> tuple[Any, dict[str, str]]:
    """MeshCentral from npm (tests/meshcentral.py) with one device group."""
    from tests.meshcentral import MeshCentralServer, ensure_installed

    server = MeshCentralServer(ensure_installed())
    server.start()
    text = server.mesh_settings(server.add_device_group("bench"))
    msh = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.strip().split("=", 1)
            msh[key] = value
    return server, msh


def serving_pid(pid: int) -> int:
    """The process doing the work: MeshCentral runs its server in a child process."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return pid
    return serving_pid(children[-1]) if children else pid


async def main(reactor: Any, options: argparse.Namespace) -> None:
    server = None
    if options.meshd:
        server, msh = await start_meshd(reactor)
        pid = server.process.pid
    elif options.meshcentral:
        server, msh = start_meshcentral()
        await task.deferLater(reactor, 5.0, lambda: None)  # let it settle
        pid = serving_pid(server.process.pid)
    else:
        msh = read_msh(options.msh)
        pid = options.pid
    try:
        url = msh["MeshServer"].split(",")[0]
        mesh_id = identity.mesh_id_from_msh(msh["MeshID"])
        server_id = identity.parse_server_id(msh["ServerID"])
        identities = load_identities(options.n, options.bits)
        results: dict[str, Any] = {"agents": options.n, "key_bits": options.bits,
                                   "concurrency": options.concurrency, "url": url}
        rss_before = server_rss_kb(pid)
        for phase, skip in (("full", False), ("reconnect", True)):
            cpu_before = server_cpu_ms(pid)
            elapsed, agents = await run_phase(reactor, url, identities, mesh_id, server_id, skip,
                                              options.concurrency)
            cpu = server_cpu_ms(pid) - cpu_before
            results[phase] = {"handshakes_per_s": round(len(agents) / elapsed, 1),
                              "server_cpu_ms_per_handshake": round(cpu / len(agents), 2)}
            if phase == "full":
                await task.deferLater(reactor, 2.0, lambda: None)
                results["rss_kb_per_agent"] = round((server_rss_kb(pid) - rss_before)
                                                    / len(agents), 1)
            await close_all(reactor, agents)
        print(json.dumps(results, indent=2))
    finally:
        if server is not None:
            server.stop()
            if hasattr(server, "cleanup"):
                server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=500, help="simulated agents (default 500)")
    parser.add_argument("--bits", type=int, default=3072, help="agent key size (default 3072)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="handshakes in flight (default 50)")
    parser.add_argument("--meshd", action="store_true", help="start a meshd server to measure")
    parser.add_argument("--meshcentral", action="store_true",
                        help="start MeshCentral 1.1.55 from npm to measure")
    parser.add_argument("--msh", help="settings file of the server to measure")
    parser.add_argument("--pid", type=int, help="process id of the server to measure")
    options = parser.parse_args()
    if not (options.meshd or options.meshcentral) and not (options.msh and options.pid):
        parser.error("give --meshd, --meshcentral, or --msh and --pid")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, options)))
