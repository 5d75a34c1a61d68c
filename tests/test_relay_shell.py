"""MeshCentral's ``meshctrl.js shell`` against meshd, driven through a pseudo-terminal
(it puts its stdin in raw mode, so it needs a real tty): the Python agent and the real
MeshAgent each run a shell through meshd's relay; a typed command's output comes back."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
from typing import Any, Optional

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase


class PtyProcess:
    """A child process whose stdin/stdout/stderr are the slave side of a pty."""

    def __init__(self, argv: list[str], cwd: Optional[str] = None, cols: int = 100,
                 rows: int = 30) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                        cwd=cwd, start_new_session=True)
        os.close(slave)
        self.output = b""

    def read_until(self, marker: bytes, timeout: float) -> bool:
        """Read what the child prints until ``marker`` appears (True) or time is up."""
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the child closed the pty
                    return marker in self.output
                if not chunk:
                    return marker in self.output
                self.output += chunk
        return True

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def wait(self, timeout: float) -> Optional[int]:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        try:
            os.close(self.master)
        except OSError:
            pass


def shell_round_trip(test: TestCase, setup: Any, marker: str) -> Any:
    """Start ``meshctrl shell`` on the setup's device, type ``echo <marker>-$((6*7))``,
    expect ``<marker>-42``, then ``exit`` ends meshctrl."""
    from tests.meshctrl import MeshCtrl

    ctl = MeshCtrl(setup.server.port, "admin", setup.password)
    child = PtyProcess(["node", ctl.script, "shell", "--id", setup.node_id.split("/")[-1],
                        *ctl.auth_args()])
    test.addCleanup(child.close)

    def drive() -> None:
        ok = child.read_until(b"Connected.", 30)
        test.assertTrue(ok, child.output.decode(errors="replace") + setup.agent_log())
        # meshctrl sends "1" then puts the tty in raw mode; give the shell a moment.
        time.sleep(1.0)
        child.type(f"echo {marker}-$((6*7))\r".encode())
        found = child.read_until(f"{marker}-42".encode(), 30)
        test.assertTrue(found, child.output.decode(errors="replace") + setup.agent_log())
        child.type(b"exit\r")
        ended = child.read_until(b"Connection Closed.", 20)
        test.assertTrue(ended, child.output.decode(errors="replace"))
        test.assertIsNotNone(child.wait(10), "meshctrl did not exit after the shell ended")

    return deferToThread(drive)


class MeshCtrlShellTests(TestCase):
    timeout = 240

    async def test_shell_python_agent(self) -> None:
        """meshctrl shell through meshd's relay to the Python agent's pty shell."""
        from tests.meshctrl import meshctrl_script
        from tests.test_relay_e2e import AgentSetup

        meshctrl_script()
        setup = await AgentSetup(self).start()
        await shell_round_trip(self, setup, "PYSH")
        setup.control.sendClose()
        await setup.control.closed

    async def test_shell_real_meshagent(self) -> None:
        """meshctrl shell through meshd's relay to the real MeshAgent (MeshCentral's core)."""
        from tests.meshctrl import meshctrl_script
        from tests.test_relay_meshagent import MeshAgentSetup

        meshctrl_script()
        setup = await MeshAgentSetup(self).start()
        await shell_round_trip(self, setup, "MASH")
        setup.control.sendClose()
        await setup.control.closed
