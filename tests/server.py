"""Start the real server (``twistd -n meshd``) as a subprocess for integration tests.

One server started with :func:`shared_server` serves every test that only reads from
it; it is stopped when the test process exits.  Tests that need their own server
(start-up failures, restarts, signals) start a :class:`ServerProcess` and stop it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; run()"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MESHD_LOG_FILE", None)
    return env


_AGENT_HOME: Optional[str] = None


def agent_env() -> dict[str, str]:
    """The environment of agents started by the tests: :func:`server_env` with a home
    folder of their own, so the shells they open for terminal tests do not run the
    machine user's ``~/.bashrc`` (a version manager's start-up there can hold a lock
    that a killed shell leaves behind, and every later shell then waits for it)."""
    global _AGENT_HOME
    if _AGENT_HOME is None or not os.path.isdir(_AGENT_HOME):
        _AGENT_HOME = tempfile.mkdtemp(prefix="meshd-test-home-")
        atexit.register(shutil.rmtree, _AGENT_HOME, True)
        for name in (".bashrc", ".profile"):
            open(os.path.join(_AGENT_HOME, name), "w").close()
    env = server_env()
    env["HOME"] = _AGENT_HOME
    return env


def run_twistd(args: list[str], timeout: float = 60,
               cwd: Optional[str] = None) -> subprocess.CompletedProcess[str]:
    """Run twistd to completion (for start-up failures)."""
    return subprocess.run(TWISTD + args, cwd=cwd or ROOT, env=server_env(), text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


class ServerProcess:
    """``twistd -n meshd`` on free loopback ports with its own data folder."""

    def __init__(self, datapath: str, extra: Optional[list[str]] = None,
                 https: bool = True) -> None:
        self.datapath = datapath
        self.port = free_port()
        self.redirport = free_port()
        self.mpsport = free_port()
        self.https = https
        self.args = ["-n", "--pidfile=", "meshd", "--datapath", datapath,
                     "--port", str(self.port), "--redirport", str(self.redirport),
                     "--mpsport", str(self.mpsport), "--cert", "127.0.0.1",
                     "--bind", "127.0.0.1", "--fastcert"] + (extra or [])
        os.makedirs(os.path.dirname(os.path.abspath(datapath)), exist_ok=True)
        self.log_path = datapath.rstrip("/") + ".log"
        self.cwd = ROOT
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self, timeout: float = 60) -> "ServerProcess":
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(TWISTD + self.args, cwd=self.cwd, env=server_env(),
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"meshd exited with {self.process.returncode}:\n{self.log()}")
            if self.health_ok():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"meshd did not answer /health in {timeout} s:\n{self.log()}")

    def health_ok(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
                if self.https:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    conn: socket.socket = ctx.wrap_socket(raw)
                else:
                    conn = raw
                conn.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                return conn.recv(64).startswith(b"HTTP/1.0 200")
        except (OSError, ssl.SSLError):
            return False

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> Optional[int]:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the server's root certificate."""
        ctx = ssl.create_default_context(
            cafile=os.path.join(self.datapath, "root-cert-public.crt"))
        return ctx


_shared: Optional[ServerProcess] = None
_shared_dir: Optional[str] = None


def _cleanup() -> None:
    if _shared is not None:
        _shared.stop()
    if _shared_dir is not None:
        shutil.rmtree(_shared_dir, ignore_errors=True)


def shared_server() -> ServerProcess:
    """The one server shared by read-only integration tests (started on first use)."""
    global _shared, _shared_dir
    if _shared is None or _shared.process is None or _shared.process.poll() is not None:
        _shared_dir = tempfile.mkdtemp(prefix="meshd-test-")
        _shared = ServerProcess(os.path.join(_shared_dir, "data")).start()
        atexit.register(_cleanup)
    return _shared


def fresh_datapath() -> str:
    """A data folder with certificates already made (copied from the shared server's)."""
    server = shared_server()
    target = tempfile.mkdtemp(prefix="meshd-test-")
    data = os.path.join(target, "data")
    shutil.copytree(server.datapath, data, ignore=shutil.ignore_patterns("*.db*"))
    atexit.register(shutil.rmtree, target, True)
    return data


async def agent_group(server: ServerProcess, store: object, name: str) -> tuple[str, bytes]:
    """Create an agent device group in the server's store; return its key and the ``.msh``
    the server serves for it (what an administrator downloads to install agents)."""
    import http.client
    import urllib.parse

    from meshd.agent import identity

    raw = os.urandom(48)
    mesh_id = identity.mesh_id_to_str(raw)
    mesh_key = identity.mesh_key(mesh_id)
    await store.set({"_id": mesh_key, "type": "mesh", "mtype": 2,  # type: ignore[attr-defined]
                     "name": name, "domain": ""})
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=server.ssl_context(),
                                       timeout=10)
    conn.request("GET", "/meshsettings?id=" + urllib.parse.quote(mesh_id))
    response = conn.getresponse()
    msh = response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"/meshsettings answered {response.status}")
    return mesh_key, msh


class PythonAgent:
    """meshd's Python agent (``python -m agentsrc``) in its own folder, for tests.

    ``start()`` may be called again after ``stop()`` (the agent keeps its state folder,
    so it reconnects as the same device); ``cleanup()`` stops it and removes the folder.
    """

    def __init__(self, msh: bytes | str) -> None:
        self.folder = tempfile.mkdtemp(prefix="pyagent-")
        self.msh_path = os.path.join(self.folder, "meshagent.msh")
        with open(self.msh_path, "wb") as f:
            f.write(msh.encode("utf-8") if isinstance(msh, str) else msh)
        self.log_path = os.path.join(self.folder, "agent.log")
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "PythonAgent":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agentsrc", "--msh", self.msh_path, "--fastkey"],
                cwd=ROOT, env=agent_env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
