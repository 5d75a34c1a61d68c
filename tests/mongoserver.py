"""A real MongoDB wire-protocol server for the MongoDB store tests.

If ``MESHD_TEST_MONGODB_URL`` is set, tests use that server (and skip the tests that
stop and restart it). Otherwise one ``nx-27017`` server (PyPI package ``nx-27017``,
a MongoDB wire-protocol server backed by SQLite) is started per test process, on a
free port on 127.0.0.1, as::

    python -c "import sys; from nx_27017.nx_27017 import main; sys.exit(main())" \\
        --host 127.0.0.1 --port PORT --data-dir DIR/data \\
        --pid-file DIR/nx-27017.pid --log-file DIR/nx-27017.log

and stopped (its temporary folder removed) at process exit. When it cannot be
started, tests are skipped with the reason, or fail when ``CI=true``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

ENV_URL = "MESHD_TEST_MONGODB_URL"
_LAUNCH = "import sys; from nx_27017.nx_27017 import main; sys.exit(main())"
_START_TIMEOUT = 20.0


class MongoServerUnavailable(Exception):
    """The test MongoDB server could not be started."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class NxServer:
    """One nx-27017 subprocess with its own data folder; restartable on its port."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="meshd-nx27017-")
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "nx-27017.log")

    def _log_tail(self) -> str:
        tails = []
        for name in ("stdout.log", "nx-27017.log"):
            try:
                with open(os.path.join(self.directory, name), "rb") as log:
                    tails.append(log.read()[-1500:].decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(tail for tail in tails if tail) or "(no output)"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.process is not None:
            return
        command = [
            sys.executable, "-c", _LAUNCH,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", os.path.join(self.directory, "data"),
            "--pid-file", os.path.join(self.directory, "nx-27017.pid"),
            "--log-file", self.log_path,
        ]
        with open(os.path.join(self.directory, "stdout.log"), "ab") as output:
            try:
                self.process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
                )
            except OSError as exc:
                raise MongoServerUnavailable(f"cannot run nx-27017: {exc}") from exc
        deadline = time.monotonic() + _START_TIMEOUT
        while not _listening(self.port):
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise MongoServerUnavailable(
                    f"nx-27017 exited with status {code} (is the PyPI package nx-27017 "
                    f"installed?):\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise MongoServerUnavailable(f"nx-27017 did not listen within {_START_TIMEOUT} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


_server: NxServer | None = None
_error: str | None = None


def _start_new_server() -> NxServer:
    for attempt in range(3):  # another process may take the free port first
        server = NxServer()
        atexit.register(server.cleanup)
        try:
            server.start()
        except MongoServerUnavailable:
            server.cleanup()
            if attempt == 2:
                raise
            continue
        return server
    raise AssertionError("unreachable")


def shared_server() -> NxServer:
    """The process-wide nx-27017 server, started on first use."""
    global _server, _error
    if _error is not None:
        raise MongoServerUnavailable(_error)
    if _server is None:
        try:
            _server = _start_new_server()
        except MongoServerUnavailable as exc:
            _error = str(exc)
            raise
    elif _server.process is None:
        _server.start()
    return _server


def mongodb_url() -> tuple[str, NxServer | None]:
    """The URL to test against, and the server when this process runs it."""
    external = os.environ.get(ENV_URL)
    if external:
        return external, None
    server = shared_server()
    return server.url, server


def fresh_database_name() -> str:
    """A database name no other test uses."""
    return f"meshd_test_{uuid.uuid4().hex[:16]}"


def required() -> bool:
    """True on CI, where a missing MongoDB server is a failure, not a skip."""
    return os.environ.get("CI", "").lower() == "true"
