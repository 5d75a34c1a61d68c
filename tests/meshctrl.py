"""Run MeshCentral's own ``meshctrl.js`` (npm ``meshcentral@1.1.55``) against a server.

meshctrl exits 0 even when the server refused (spec control-protocol §13), so callers
read what it prints.  Under ``CI=true`` a missing Node.js or npm package fails the test;
elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional

from twisted.trial.unittest import SkipTest

from tests import npmcache


def _unavailable(reason: str) -> Exception:
    if os.environ.get("CI") == "true":
        return RuntimeError(reason)
    return SkipTest(reason)


def meshctrl_script() -> str:
    """The path of meshctrl.js, installing the npm package on first use."""
    if shutil.which("node") is None:
        raise _unavailable("node is not installed (Debian package nodejs)")
    path = os.path.join(npmcache.meshcentral_package(), "meshctrl.js")
    if not os.path.exists(path):
        raise _unavailable(f"{path} is missing from the npm package")
    return path


class MeshCtrl:
    """meshctrl.js bound to one server and one login."""

    def __init__(self, port: int, user: str, password: str, cwd: Optional[str] = None) -> None:
        self.script = meshctrl_script()
        self.port = port
        self.user = user
        self.password = password
        self.cwd = cwd

    def auth_args(self, user: Optional[str] = None, password: Optional[str] = None
                  ) -> list[str]:
        return ["--url", f"wss://127.0.0.1:{self.port}",
                "--loginuser", user if user is not None else self.user,
                "--loginpass", password if password is not None else self.password]

    def start(self, *args: str, user: Optional[str] = None, password: Optional[str] = None
              ) -> "subprocess.Popen[str]":
        """Start a long-running command (``showevents``); the caller stops it."""
        return subprocess.Popen(["node", self.script, *args, *self.auth_args(user, password)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL, cwd=self.cwd)

    def run(self, *args: str, user: Optional[str] = None, password: Optional[str] = None,
            timeout: float = 20, raw_auth: bool = False) -> str:
        """Run one command to its end and return what it printed (stdout and stderr)."""
        command = ["node", self.script, *args]
        if not raw_auth:
            command += self.auth_args(user, password)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                    stdin=subprocess.DEVNULL, cwd=self.cwd)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            raise AssertionError(f"meshctrl {' '.join(args)} did not finish in {timeout} s; "
                                 f"printed: {out!r}") from None
        return result.stdout + result.stderr
