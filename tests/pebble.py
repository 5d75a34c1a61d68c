"""Run Let's Encrypt's test ACME server, Pebble (Debian package ``pebble``), for a test.

    pebble = Pebble(workdir, http_port=challenge_port).start()
    ... AcmeService(..., directory=pebble.directory_url, ca_bundle=pebble.ca_file) ...
    pebble.stop()

Pebble listens on two free loopback ports (ACME directory, management API) with its own
configuration file. Its HTTPS certificate is made here by a throwaway test CA (Debian does
not ship Pebble's ``test/certs``), and ``ca_file`` is that CA for the client to trust.
Validation of http-01 challenges goes to ``http://<name>:<http_port>/``, so names must
resolve to 127.0.0.1 through the system resolver (``localhost`` does, from /etc/hosts;
Pebble's ``-dnsserver`` option only serves its dns-01 and CAA look-ups, not the http-01
fetch). Pebble accepts ``localhost`` as an identifier.

Environment given to Pebble: ``PEBBLE_VA_NOSLEEP=1`` (no random validation delay),
``PEBBLE_WFE_NONCEREJECT=0`` (no random ``badNonce``), ``PEBBLE_AUTHZREUSE=0`` (every order
is really validated, so a renewal or a failure test never rides on an earlier success).

:func:`pebble_binary` finds the program; :func:`require_pebble` skips a test without it, or
fails it when ``CI=true`` (CI installs the package, so a missing one is a setup bug).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from typing import Optional

from twisted.trial.unittest import SkipTest, TestCase

from tests.certutil import make_ca, make_leaf, write_pem
from tests.server import free_port

__all__ = ["Pebble", "free_port", "pebble_binary", "require_pebble"]


def pebble_binary() -> Optional[str]:
    """The ``pebble`` program (PATH, then Debian's /usr/bin/pebble), or None."""
    found = shutil.which("pebble")
    if found:
        return found
    return "/usr/bin/pebble" if os.access("/usr/bin/pebble", os.X_OK) else None


def require_pebble(test: TestCase) -> str:
    """The pebble binary; skip the test without it (fail it under CI=true)."""
    binary = pebble_binary()
    if binary is None:
        reason = ("pebble (Let's Encrypt's test ACME server) is not installed; "
                  "install it with: apt-get install pebble")
        if os.environ.get("CI") == "true":
            test.fail(reason)
        raise SkipTest(reason)
    return binary


class Pebble:
    """One Pebble process with its own configuration and TLS certificate in ``workdir``."""

    def __init__(self, workdir: str, http_port: int, *, validity_seconds: Optional[int] = None,
                 binary: Optional[str] = None) -> None:
        self.workdir = os.path.abspath(workdir)
        self.http_port = http_port
        self.validity_seconds = validity_seconds
        self.binary = binary or pebble_binary() or "pebble"
        self.port = free_port()
        self.management_port = free_port()
        self.ca_file = os.path.join(workdir, "pebble-https-ca.pem")
        self.log_path = os.path.join(workdir, "pebble.log")
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self, timeout: float = 15.0) -> "Pebble":
        os.makedirs(self.workdir, exist_ok=True)
        ca_cert, ca_key = make_ca("meshd tests: Pebble HTTPS CA")
        cert, key = make_leaf(ca_cert, ca_key, "localhost", sans=("localhost", "127.0.0.1"))
        write_pem(self.ca_file, ca_cert)
        cert_file = write_pem(os.path.join(self.workdir, "pebble-https-cert.pem"), cert)
        key_file = write_pem(os.path.join(self.workdir, "pebble-https-key.pem"), key)
        settings: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(cert_file),
            "privateKey": str(key_file),
            "httpPort": self.http_port,
            "tlsPort": free_port(),  # tls-alpn-01 is not used; keep it off port 5001
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity_seconds is not None:
            settings["certificateValidityPeriod"] = self.validity_seconds
        config_path = os.path.join(self.workdir, "pebble-config.json")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump({"pebble": settings}, f, indent=2)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                   PEBBLE_AUTHZREUSE="0")
        log = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen([self.binary, "-config", config_path],
                                            cwd=self.workdir, env=env, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pebble exited with {self.process.returncode}:\n"
                                   f"{self.log()}")
            if self._directory_answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pebble did not serve {self.directory_url} in {timeout} s:\n"
                           f"{self.log()}")

    def _directory_answers(self) -> bool:
        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            with urllib.request.urlopen(self.directory_url, context=context, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def root_pem(self) -> bytes:
        """Pebble's issuing root (management API), to check an issued chain against."""
        context = ssl.create_default_context(cafile=self.ca_file)
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=5) as r:
            return bytes(r.read())

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop Pebble (TERM, then KILL after 5 s) and reap it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
