"""``runcommands``: run a shell script for the server and stream its output back.

Request (server → agent; spec: agent-protocol.md §5.2)::

    {"action":"runcommands","type":3,"cmds":"…","runAsUser":0,"reply":true,
     "responseid":"…"[,"sessionid":"…"]}

type 3 is ``/bin/sh`` (Linux/BSD/macOS); 1 (cmd.exe) and 2 (PowerShell) are Windows-only.
As in the real core the script goes to the shell's standard input with CRs removed and
``exit`` appended. Output (standard output and error, in arrival order):

* every chunk: ``{"action":"msg","type":"console","value":"<text>"[,"sessionid"]}``;
* at the end, if ``reply``: ``{"action":"msg","type":"runcommands","result":"<all output>",
  "responseid":…[,"sessionid"]}``.

Better than the real core: a refused request (busy, unsupported type, "only as user") still
gets its ``reply`` instead of leaving the caller waiting, and the collected output is capped
(:data:`MAX_OUTPUT`).
"""

from __future__ import annotations

import codecs
import os
from typing import Any, Callable, Optional

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

__all__ = ["MAX_OUTPUT", "SHELL", "ShellJob"]

MAX_OUTPUT = 4 * 1024 * 1024
"""Characters of output kept for the reply and streamed (the rest is dropped, with a note)."""
SHELL = "/bin/sh"
TRUNCATED_NOTE = "\n[output truncated]\n"


class ShellJob(ProcessProtocol):
    """One ``/bin/sh`` run fed ``script`` on stdin; reports output chunks and the end."""

    def __init__(
        self,
        script: str,
        on_output: Callable[[str], None],
        on_done: Callable[[str, Optional[int]], None],
        max_output: int = MAX_OUTPUT,
    ) -> None:
        self._script = script.replace("\r", "") + "\nexit\n"
        self._on_output = on_output
        self._on_done = on_done
        self._max_output = max_output
        self._collected: list[str] = []
        self._size = 0
        self._truncated = False
        self._decoders = {
            1: codecs.getincrementaldecoder("utf-8")("replace"),
            2: codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self.finished = False

    def start(self, reactor: Any, env: Optional[dict[str, str]] = None) -> None:
        """Spawn the shell through ``reactor`` (IReactorProcess)."""
        reactor.spawnProcess(
            self, SHELL, ["sh"], env=dict(os.environ) if env is None else env, path=None
        )

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._script.encode("utf-8"))
        self.transport.closeStdin()

    def _text(self, fd: int, data: bytes) -> None:
        text = self._decoders[fd].decode(data)
        if not text or self._truncated:
            return
        room = self._max_output - self._size
        if len(text) > room:
            text = text[:room] + TRUNCATED_NOTE
            self._truncated = True
        self._size += len(text)
        self._collected.append(text)
        self._on_output(text)

    def outReceived(self, data: bytes) -> None:
        self._text(1, data)

    def errReceived(self, data: bytes) -> None:
        self._text(2, data)

    def processEnded(self, reason: Failure) -> None:
        for fd in (1, 2):
            self._text(fd, b"")
            tail = self._decoders[fd].decode(b"", final=True)
            if tail and not self._truncated:
                self._collected.append(tail)
                self._on_output(tail)
        code: Optional[int] = None
        if isinstance(reason.value, ProcessDone):
            code = 0
        elif isinstance(reason.value, ProcessTerminated):
            code = reason.value.exitCode
        self.finished = True
        self._on_done("".join(self._collected), code)

    def kill(self) -> None:
        """Stop the shell (the connection or core is going away)."""
        if self.finished or self.transport is None:
            return
        try:
            self.transport.signalProcess("KILL")
        except Exception:  # already gone: ProcessExitedAlready, OSError
            pass
