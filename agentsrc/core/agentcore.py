"""The core's control-channel logic: JSON actions in, JSON replies and reports out.

Sent by the core on its own (agent → server, spec §5.1):

* at start: ``{"action":"coreinfo","value":"Python core <v>[, <hash8>]","caps":10,
  "osdesc":"<OS>","root":<bool>}``;
* :data:`NETINFO_DELAY` s after start, then whenever it changes (checked every
  :data:`NETINFO_INTERVAL` s): ``{"action":"netinfo","netif2":{…}}``.

Handled (server → agent, dispatched by :data:`Core._actions`; each handler's docstring shows the
message): ``ping``, ``pong``, ``serverInfo``, ``sysinfo``, ``runcommands``, ``msg`` with type
``console`` and ``tunnel`` (relay sessions: :mod:`.tunnel`). Anything else is logged at debug level and ignored, like the real core.
"""

from __future__ import annotations

import json
import platform
from typing import Any, Callable, Optional

from . import CORE_VERSION, sysinfo
from .commands import ShellJob
from .tunnel import TunnelManager

__all__ = ["Core", "CORE_CAPS", "NETINFO_DELAY", "NETINFO_INTERVAL"]

CORE_CAPS = 8 | 2  # console and terminal (spec agent-protocol §3.2 capability bits)
"""Capabilities the core reports in ``coreinfo``: 8 = console (no desktop/terminal/files yet)."""
NETINFO_DELAY = 5.0
NETINFO_INTERVAL = 60.0
RIGHT_REMOTE_CONTROL = 8
RIGHT_AGENT_CONSOLE = 16

_CONSOLE_HELP = "Available commands: help, info, sysinfo, netinfo, osinfo."

Handler = Callable[[dict[str, Any]], None]


class Core:
    """One authenticated connection's core."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._reactor = context.reactor
        self._log = context.log
        self._job: Optional[ShellJob] = None
        self._netinfo_call: Any = None
        self._last_netinfo: Optional[dict[str, Any]] = None
        self._server_info: dict[str, Any] = {}
        self._running = False
        self._actions: dict[str, Handler] = {
            "ping": self._on_ping,
            "pong": self._on_pong,
            "serverInfo": self._on_server_info,
            "sysinfo": self._on_sysinfo,
            "runcommands": self._on_runcommands,
            "msg": self._on_msg,
        }
        self._msg_types: dict[str, Handler] = {"console": self._on_console,
                                               "tunnel": self._on_tunnel}
        self._tunnels = TunnelManager(context, self._send)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The ``coreinfo`` value: core version, and the pushed core's hash prefix."""
        core_hash = getattr(self._context, "core_hash", None)
        if core_hash:
            return f"Python core {CORE_VERSION}, {core_hash[:8]}"
        return f"Python core {CORE_VERSION} (built-in)"

    def start(self) -> None:
        """Report ``coreinfo`` and schedule the first ``netinfo``."""
        self._running = True
        self._send(
            {
                "action": "coreinfo",
                "value": self.version,
                "caps": CORE_CAPS,
                "osdesc": sysinfo.os_description(),
                "root": sysinfo.is_root(),
            }
        )
        self._netinfo_call = self._reactor.callLater(NETINFO_DELAY, self._report_netinfo)

    def stop(self) -> None:
        """Cancel timers and kill a running command."""
        self._running = False
        if self._netinfo_call is not None and self._netinfo_call.active():
            self._netinfo_call.cancel()
        self._netinfo_call = None
        if self._job is not None:
            job, self._job = self._job, None
            job.kill()
        self._tunnels.stop()

    def handle_json(self, message: dict[str, Any]) -> None:
        """Dispatch one JSON message from the server by its ``action``."""
        action = message.get("action")
        handler = self._actions.get(action) if isinstance(action, str) else None
        if handler is None:
            self._log.debug("core ignores action {action!r}", action=str(action)[:64])
            return
        handler(message)

    def handle_binary(self, code: int, payload: bytes) -> None:
        """Binary core commands (ids >= 1000): none are defined for the Python core yet."""
        self._log.debug("core ignores binary command {code}", code=code)

    # -- reports ---------------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if self._running:
            self._context.send_json(message)

    def _report_netinfo(self) -> None:
        """``{"action":"netinfo","netif2":{…}}`` now if changed; then again later."""
        self._netinfo_call = None
        if not self._running:
            return
        try:
            interfaces = sysinfo.network_interfaces()
        except Exception:
            self._log.failure("cannot read the network interfaces")
            interfaces = None
        if interfaces is not None and interfaces != self._last_netinfo:
            self._last_netinfo = interfaces
            self._send({"action": "netinfo", "netif2": interfaces})
        self._netinfo_call = self._reactor.callLater(NETINFO_INTERVAL, self._report_netinfo)

    def _system_information(self) -> dict[str, Any]:
        versions = {
            "meshd-agent": getattr(self._context, "agent_version", "?"),
            "core": CORE_VERSION,
            "python": platform.python_version(),
        }
        return sysinfo.system_information(versions)

    # -- handlers --------------------------------------------------------------------------------

    def _on_ping(self, message: dict[str, Any]) -> None:
        """``{"action":"ping"}`` → ``{"action":"pong"}``."""
        self._send({"action": "pong"})

    def _on_pong(self, message: dict[str, Any]) -> None:
        """``{"action":"pong"}``: nothing to do."""

    def _on_server_info(self, message: dict[str, Any]) -> None:
        """``{"action":"serverInfo",…}``: kept (e.g. ``termlaunchcommand``)."""
        self._server_info = {k: v for k, v in message.items() if k != "action"}

    def _on_sysinfo(self, message: dict[str, Any]) -> None:
        """``{"action":"sysinfo"[,"hash":h]}`` → ``{"action":"sysinfo","data":{…,"hash"}}``
        only if the hash differs from the server's."""
        try:
            results = self._system_information()
        except Exception:
            self._log.failure("cannot collect system information")
            return
        if results.get("hash") == message.get("hash"):
            return
        reply: dict[str, Any] = {"action": "sysinfo", "data": results}
        if isinstance(message.get("sessionid"), str):
            reply["sessionid"] = message["sessionid"]
        self._send(reply)

    def _on_runcommands(self, message: dict[str, Any]) -> None:
        """``{"action":"runcommands","type":3,"cmds":…,"runAsUser":0,"reply":b,
        "responseid":…}`` → ``msg/console`` chunks, then ``msg/runcommands`` if ``reply``."""
        reply = message.get("reply") is True
        sessionid = message.get("sessionid") if isinstance(message.get("sessionid"), str) else None
        ids: dict[str, Any] = {}
        if sessionid is not None:
            ids["sessionid"] = sessionid
        if "responseid" in message and isinstance(message["responseid"], (str, type(None))):
            ids["responseid"] = message["responseid"]

        def console(text: str) -> None:
            out: dict[str, Any] = {"action": "msg", "type": "console", "value": text}
            if sessionid is not None:
                out["sessionid"] = sessionid
            self._send(out)

        def finish(result: str) -> None:
            if reply:
                self._send({"action": "msg", "type": "runcommands", "result": result, **ids})

        cmds = message.get("cmds")
        if not isinstance(cmds, str):
            return
        if self._job is not None:
            console("Run commands can't execute, already busy.")
            finish("Run commands can't execute, already busy.")
            return
        kind = message.get("type")
        if kind != 3:
            text = f"Run commands of type {kind!r} are not supported on this agent."
            console(text)
            finish(text)
            return
        if message.get("runAsUser") == 2:
            text = "Run commands as the logged-in user only: not supported on this agent."
            console(text)
            finish(text)
            return
        if not reply:
            console(f"Run commands ({message.get('runAsUser', 0)}): {cmds}")

        def done(result: str, code: Optional[int]) -> None:
            if self._job is not job:
                return  # stopped meanwhile
            self._job = None
            self._log.info("runcommands finished with status {code}", code=code)
            if reply:
                finish(result)
            else:
                console("Run commands completed.")

        job = ShellJob(cmds, console, done)
        self._job = job
        try:
            job.start(self._reactor)
        except Exception:
            self._log.failure("cannot start the shell")
            self._job = None
            finish("Run commands failed to start.")

    def _on_msg(self, message: dict[str, Any]) -> None:
        """``{"action":"msg","type":<type>,…}``: dispatched by ``type``."""
        kind = message.get("type")
        handler = self._msg_types.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self._log.debug("core ignores msg type {kind!r}", kind=str(kind)[:64])
            return
        handler(message)

    def _on_tunnel(self, message: dict[str, Any]) -> None:
        """``{"action":"msg","type":"tunnel","value":"*/meshrelay.ashx?…","servertlshash":h,
        "rights":r,…}``: dial the relay and serve the session (see :mod:`.tunnel`)."""
        self._tunnels.handle(message)

    def _on_console(self, message: dict[str, Any]) -> None:
        """``{"action":"msg","type":"console","value":"<line>","rights":r,"sessionid":s}`` →
        ``{"action":"msg","type":"console","value":"<answer>","sessionid":s}``; needs rights
        8 (remote control) and 16 (agent console), as in the real core."""
        rights = message.get("rights")
        if not isinstance(rights, int) or isinstance(rights, bool):
            return
        if rights & RIGHT_REMOTE_CONTROL == 0 or rights & RIGHT_AGENT_CONSOLE == 0:
            return
        line = message.get("value")
        if not isinstance(line, str):
            return
        words = line.strip().split()
        command = words[0].lower() if words else ""
        if command in ("", "help"):
            answer = _CONSOLE_HELP
        elif command == "info":
            answer = (
                f"Current Core: {self.version}\nPlatform: {platform.system().lower()}\n"
                f"Capabilities: {CORE_CAPS}\nServer URL: {self._context.server_url}\n"
                f"Node id: {self._context.node_id}"
            )
        elif command == "osinfo":
            answer = f"{sysinfo.os_description()} - {sysinfo.arch_label()}"
        elif command == "sysinfo":
            answer = json.dumps(self._system_information(), indent=1)
        elif command == "netinfo":
            answer = json.dumps(sysinfo.network_interfaces(), indent=1)
        else:
            answer = f"Unknown command \"{command}\", type \"help\" for the list of commands."
        reply: dict[str, Any] = {"action": "msg", "type": "console", "value": answer}
        if isinstance(message.get("sessionid"), str):
            reply["sessionid"] = message["sessionid"]
        self._send(reply)
