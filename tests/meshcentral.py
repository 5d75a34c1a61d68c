"""A real MeshCentral server (npm ``meshcentral@1.1.55``) on 127.0.0.1, for interop tests.

What it does, in order (spec: agent-protocol.md §9)::

    npm install --prefix <repo>/.cache/meshcentral meshcentral@1.1.55   # once; reused after
    <tmp>/data/config.json   # loopback ports, cert 127.0.0.1, WANonly, no self-update/backup
    node node_modules/meshcentral --datapath <tmp>/data --createaccount admin --pass … --email …
    node node_modules/meshcentral --datapath <tmp>/data --adminaccount admin
    node node_modules/meshcentral --datapath <tmp>/data          # own process group, logged
    node meshctrl.js adddevicegroup --name … --url wss://127.0.0.1:PORT --loginuser admin …
    GET https://127.0.0.1:PORT/meshsettings?id=<group id>           # the group's .msh

The cache folder is git-ignored (``.cache/``); ``MESHD_MESHCENTRAL_CACHE`` points elsewhere.
The server runs in its own session and is stopped by signalling its process group (MeshCentral
is a parent process that relaunches its child server; signalling the group ends both), and its
temporary folder is removed. :class:`MeshCentralUnavailable` says why it could not run (no
node/npm, no registry access, start failure); callers skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any, Optional

from cryptography import x509

from meshd.agent.identity import server_id

__all__ = [
    "VERSION",
    "MeshCentralUnavailable",
    "MeshCentralServer",
    "cache_dir",
    "ensure_installed",
    "shared_server",
    "unavailable",
]

VERSION = "1.1.55"
ENV_CACHE = "MESHD_MESHCENTRAL_CACHE"
ADMIN = "admin"
PASSWORD = "Interop-Test-1!"
INSTALL_TIMEOUT = 300.0
START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 60.0
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MeshCentralUnavailable(Exception):
    """The MeshCentral test server cannot be installed or started (the reason is the text)."""


def cache_dir() -> str:
    """Where the npm package is installed: ``<repo>/.cache/meshcentral`` by default."""
    return os.environ.get(ENV_CACHE) or os.path.join(_REPO, ".cache", "meshcentral")


def _installed_version(package_dir: str) -> Optional[str]:
    try:
        with open(os.path.join(package_dir, "package.json"), encoding="utf-8") as handle:
            version = json.load(handle).get("version")
    except (OSError, ValueError):
        return None
    return version if isinstance(version, str) else None


def ensure_installed() -> str:
    """The ``node_modules/meshcentral`` folder, installing ``meshcentral@VERSION`` if needed."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise MeshCentralUnavailable(
                f"{tool} is not installed (Debian: apt-get install nodejs npm)"
            )
    cache = cache_dir()
    package_dir = os.path.join(cache, "node_modules", "meshcentral")
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".install.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time across test processes
        if _installed_version(package_dir) == VERSION:
            return package_dir
        command = ["npm", "install", "--prefix", cache, f"meshcentral@{VERSION}",
                   "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                    timeout=INSTALL_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise MeshCentralUnavailable(f"npm install failed: {error}") from None
        if result.returncode != 0 or _installed_version(package_dir) != VERSION:
            tail = (result.stderr or result.stdout).decode("utf-8", "replace")[-1500:]
            raise MeshCentralUnavailable(f"npm install meshcentral@{VERSION} failed:\n{tail}")
    return package_dir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class MeshCentralServer:
    """One MeshCentral process tree with its own data folder and loopback ports."""

    def __init__(self, package_dir: str, settings: Optional[dict[str, Any]] = None) -> None:
        self.package_dir = package_dir
        # Extra ``settings`` keys for config.json (e.g. ``mpsPass`` for the CIRA benchmark).
        self.extra_settings = dict(settings or {})
        self.directory = tempfile.mkdtemp(prefix="meshd-meshcentral-")
        self.data = os.path.join(self.directory, "data")
        self.port = _free_port()
        self.redirect_port = _free_port()
        self.mps_port = _free_port()
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.started_in: Optional[float] = None

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "server.log")

    def log_tail(self, size: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read()[-size:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def _node(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        try:
            result = subprocess.run(
                ["node", *args], cwd=self.directory, stdin=subprocess.DEVNULL,
                capture_output=True, timeout=timeout, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise MeshCentralUnavailable(f"node {args[:2]} failed: {error}") from None
        output = result.stdout.decode("utf-8", "replace")
        if result.returncode != 0:
            raise MeshCentralUnavailable(
                f"node {' '.join(args[:2])} exited {result.returncode}: "
                f"{output[-800:]}{result.stderr.decode('utf-8', 'replace')[-800:]}"
            )
        return output

    def start(self) -> None:
        """Configure, create the admin account, start the server, wait until it serves HTTPS."""
        began = time.monotonic()
        os.makedirs(self.data)
        config = {
            "settings": {
                "cert": "127.0.0.1",
                "port": self.port, "portBind": "127.0.0.1",
                "redirPort": self.redirect_port, "redirPortBind": "127.0.0.1",
                "mpsPort": self.mps_port, "mpsPortBind": "127.0.0.1",
                "exactPorts": True, "WANonly": True, "selfUpdate": False, "autoBackup": False,
                "filesPath": os.path.join(self.directory, "files"),
            },
            "domains": {"": {"newAccounts": False}},
        }
        config["settings"].update(self.extra_settings)
        with open(os.path.join(self.data, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle)
        self._node(self.package_dir, "--datapath", self.data,
                   "--createaccount", ADMIN, "--pass", PASSWORD,
                   "--email", "admin@example.invalid")
        self._node(self.package_dir, "--datapath", self.data, "--adminaccount", ADMIN)
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(
                    ["node", self.package_dir, "--datapath", self.data], cwd=self.directory,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                raise MeshCentralUnavailable(f"cannot start MeshCentral: {error}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while not self._serving():
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise MeshCentralUnavailable(
                    f"MeshCentral exited with status {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise MeshCentralUnavailable(
                    f"MeshCentral did not serve HTTPS within {START_TIMEOUT} s:\n{self.log_tail()}")
            time.sleep(0.2)
        self.started_in = time.monotonic() - began

    def _serving(self) -> bool:
        if "HTTPS server running" not in self.log_tail(20000):
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the whole process tree (SIGTERM to its group, then SIGKILL) and wait."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # the parent is gone; make sure no child of its group lingers
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    os.killpg(process.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- the management side ---------------------------------------------------------------------

    def meshctrl(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run ``meshctrl.js`` as the admin user and return its standard output."""
        return self._node(
            os.path.join(self.package_dir, "meshctrl.js"), *args,
            "--url", self.url, "--loginuser", ADMIN, "--loginpass", PASSWORD,
            timeout=timeout,
        )

    def add_device_group(self, name: str) -> str:
        """Create an agent device group; return its id (``mesh//…``)."""
        output = self.meshctrl("adddevicegroup", "--name", name).strip()
        words = output.split()
        if len(words) != 2 or words[0] != "ok" or not words[1].startswith("mesh//"):
            raise MeshCentralUnavailable(f"adddevicegroup answered {output!r}")
        return words[1]

    def mesh_settings(self, mesh_id: str) -> str:
        """The group's ``.msh`` from MeshCentral's own ``/meshsettings?id=`` endpoint."""
        short = mesh_id.split("/")[-1]
        url = f"https://127.0.0.1:{self.port}/meshsettings?id={urllib.parse.quote(short, safe='')}"
        with urllib.request.urlopen(url, context=_unverified(), timeout=30) as response:
            return str(response.read().decode("utf-8"))

    def agent_server_id(self) -> str:
        """ServerID computed from ``agentserver-cert-public.crt`` (96 upper-case hex)."""
        with open(os.path.join(self.data, "agentserver-cert-public.crt"), "rb") as handle:
            return server_id(x509.load_pem_x509_certificate(handle.read()))

    def devices(self) -> list[dict[str, Any]]:
        """``meshctrl listdevices --json``: every device the admin can see."""
        output = self.meshctrl("listdevices", "--json").strip()
        try:
            devices = json.loads(output) if output else []
        except ValueError:
            raise MeshCentralUnavailable(f"listdevices answered {output[:300]!r}") from None
        return devices if isinstance(devices, list) else []

    def device(self, node_id: str) -> Optional[dict[str, Any]]:
        for device in self.devices():
            if device.get("_id") == f"node//{node_id}":
                return device
        return None

    def run_command(self, node_id: str, command: str, timeout: float = 30.0) -> str:
        """``meshctrl runcommand --reply``: the command's output through the agent."""
        return self.meshctrl("runcommand", "--id", node_id, "--run", command, "--reply",
                             timeout=timeout)


_server: Optional[MeshCentralServer] = None
_error: Optional[str] = None


def shared_server() -> MeshCentralServer:
    """The process-wide MeshCentral server, installed and started on first use."""
    global _server, _error
    if _error is not None:
        raise MeshCentralUnavailable(_error)
    if _server is None:
        try:
            server = MeshCentralServer(ensure_installed())
            atexit.register(server.cleanup)
            server.start()
        except MeshCentralUnavailable as error:
            _error = str(error)
            raise
        _server = server
    return _server


def unavailable(reason: str) -> Exception:
    """What a test raises when MeshCentral cannot run: a failure under CI=true, else a skip."""
    from twisted.trial.unittest import FailTest, SkipTest

    if os.environ.get("CI", "").lower() == "true":
        return FailTest(f"MeshCentral interop test cannot run under CI: {reason}")
    return SkipTest(f"MeshCentral {VERSION} not available: {reason}")
