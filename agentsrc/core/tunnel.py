"""Relay tunnels: the server's ``msg``/``tunnel`` → a WebSocket to the relay → a session.

Server → agent on the control channel (spec agent-protocol.md §6, relay.md §7)::

    {"action":"msg","type":"tunnel","value":"*/meshrelay.ashx?p=1&nodeid=…&id=…&rauth=…",
     "usage":1,"servertlshash":"<hex SHA-384>","rights":r,"consent":c,"userid":…,
     "username":…,"sessionid":…}

The agent replaces ``*/`` with its server's ``scheme://host:port/``, escapes ``$``/``@``,
dials, and pins the relay's certificate (``servertlshash``, or the control channel's hashes
when the bootstrap offers them as ``context.tls_hashes``).  On the relay, in order:

1. server → agent text ``c`` (or ``cr``): the user side is there;
2. user → agent JSON control frames ``{"ctrlChannel":"102938","type":…}`` (``options`` with
   ``cols``/``rows``, ``termsize``, ``close``…) at any time;
3. user → agent the protocol as text (``"1"`` admin terminal, ``"8"`` user terminal,
   ``"5"`` files);
4. then data: keystrokes in (binary or text), terminal output out (binary frames); or the
   file manager's JSON commands and upload/download blocks (:mod:`.files`).

A terminal needs the REMOTECONTROL right (8) and not NOTERMINAL (512), unless the rights are
full; files need REMOTECONTROL and not NOFILES (1024), likewise; a request carrying
``soptions.usages`` (a guest of a sharing link: ``guestname``, ``guestuserid``) may open only
those protocols; a refused protocol closes the tunnel without running anything.  The shell runs on a
real pty; ``termsize`` resizes it (the kernel signals SIGWINCH).  When the shell exits the
relay socket is closed; when the relay closes the shell is hung up.  Flow control: each side
is registered as the other's producer, so a slow relay pauses reading the pty and a slow
pty pauses reading the relay.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import struct
import termios
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from twisted.internet.error import ProcessDone
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.python.failure import Failure

from .files import FileSession, files_allowed
from .wsclient import WebSocketClient, parse_url

__all__ = ["MAX_TUNNELS", "Tunnel", "TunnelManager", "relay_url"]

MAX_TUNNELS = 32
CTRL_CHANNEL = "102938"
RIGHT_FULL = 0xFFFFFFFF
RIGHT_REMOTE_CONTROL = 8
RIGHT_NO_TERMINAL = 512
TERMINAL_PROTOCOLS = (1, 8)
FILES_PROTOCOL = 5
MAX_CONTROL_FRAME = 64 * 1024


def relay_url(value: str, server_url: str) -> str:
    """The relay URL to dial: ``*/`` = the control channel's scheme, host and port."""
    if value.startswith("*/"):
        parts = urlsplit(server_url)
        value = f"{parts.scheme}://{parts.netloc}/{value[2:]}"
    return value.replace("$", "%24").replace("@", "%40")


def terminal_allowed(rights: Any) -> bool:
    if not isinstance(rights, int) or isinstance(rights, bool):
        return False
    if rights == RIGHT_FULL:
        return True
    return bool(rights & RIGHT_REMOTE_CONTROL) and not rights & RIGHT_NO_TERMINAL


def user_shell() -> str:
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    for candidate in (shell, os.environ.get("SHELL", ""), "/bin/bash", "/bin/sh"):
        if candidate and os.access(candidate, os.X_OK) and not candidate.endswith(
                ("/nologin", "/false")):
            return candidate
    return "/bin/sh"


def set_window_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class _Shell(ProcessProtocol):
    """The shell on a pty: output to the tunnel, exit closes it."""

    def __init__(self, tunnel: "Tunnel") -> None:
        self._tunnel = tunnel

    def outReceived(self, data: bytes) -> None:
        self._tunnel.shell_output(data)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self._tunnel.shell_ended(0 if reason.check(ProcessDone) else None)


class Tunnel:
    """One relay session of this agent."""

    def __init__(self, manager: "TunnelManager", request: dict[str, Any]) -> None:
        self._manager = manager
        self._reactor = manager.reactor
        self._log = manager.log
        self.request = request
        self.rights = request.get("rights")
        self.ws: Optional[WebSocketClient] = None
        self.state = "connecting"  # → waiting (for c) → active → protocol chosen → closed
        self.protocol: Optional[int] = None
        self.size: tuple[int, int] = (80, 25)
        self._shell: Any = None
        self._files: Optional[FileSession] = None

    # -- dialing -------------------------------------------------------------------------

    def start(self, url: str, pinned: Optional[frozenset[str]]) -> None:
        from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint

        tls, host, port, path = parse_url(url)
        self.ws = WebSocketClient(host, port, path, pinned=pinned if tls else None,
                                  on_open=self._opened, on_message=self._message,
                                  on_close=self._closed)
        if tls:
            from twisted.internet import ssl

            options = ssl.CertificateOptions(verify=False)
            endpoint: Any = SSL4ClientEndpoint(self._reactor, host, port, options, timeout=30)
        else:
            endpoint = TCP4ClientEndpoint(self._reactor, host, port, timeout=30)
        ws = self.ws
        d = endpoint.connect(Factory.forProtocol(lambda: ws))
        d.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        self._log.warn("relay connection failed: {why}", why=failure.getErrorMessage())
        self._closed("connect failed")

    def _opened(self) -> None:
        self.state = "waiting"

    # -- relay messages ------------------------------------------------------------------

    def _message(self, payload: bytes, binary: bool) -> None:
        if self.state == "waiting":
            if not binary and payload in (b"c", b"cr"):
                self.state = "active"
            return
        if self.state != "active":
            return
        if payload[:1] == b"{" and len(payload) <= MAX_CONTROL_FRAME and self._control(payload):
            return
        if self.protocol is None:
            if binary:
                return
            self._choose(payload)
            return
        if self._shell is not None:
            self._shell.write(payload)
        elif self._files is not None:
            self._files.received(payload, binary)

    def _control(self, payload: bytes) -> bool:
        """A ``ctrlChannel`` JSON frame: handled here (True), else it is data."""
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return False
        if not isinstance(message, dict) or str(message.get("ctrlChannel")) != CTRL_CHANNEL:
            return False
        kind = message.get("type")
        if kind in ("options", "termsize"):
            cols, rows = message.get("cols"), message.get("rows")
            if isinstance(cols, int) and isinstance(rows, int) and 0 < cols <= 1000 \
                    and 0 < rows <= 1000:
                self.size = (cols, rows)
                self._resize()
        elif kind == "close":
            self.close()
        elif kind == "ping":
            self._send_json({"ctrlChannel": CTRL_CHANNEL, "type": "pong"})
        return True

    def _choose(self, payload: bytes) -> None:
        try:
            protocol = int(payload.decode("ascii").strip())
        except (ValueError, UnicodeDecodeError):
            return self.close()
        self.protocol = protocol
        soptions = self.request.get("soptions")
        allowed = soptions.get("usages") if isinstance(soptions, dict) else None
        if isinstance(allowed, list) and protocol not in allowed:
            # A guest of a sharing link may open only what the share allows.
            self._log.info("tunnel protocol {protocol} not among the allowed {usages}",
                           protocol=protocol, usages=allowed)
            return self.close()
        if protocol in TERMINAL_PROTOCOLS:
            if not terminal_allowed(self.rights):
                self._log.info("terminal refused: rights {rights}", rights=self.rights)
                return self.close()
            return self._start_terminal()
        if protocol == FILES_PROTOCOL:
            if not files_allowed(self.rights):
                self._log.info("files refused: rights {rights}", rights=self.rights)
                return self.close()
            return self._start_files()
        self._log.info("tunnel protocol {protocol} not supported", protocol=protocol)
        self.close()

    # -- files ---------------------------------------------------------------------------

    def _start_files(self) -> None:
        self._files = FileSession(self._send_frame, reactor=self._reactor, log=self._log,
                                  request=self.request, server_log=self._manager.send)
        self._log.info("files session started for {user}",
                       user=str(self.request.get("username")))

    def _send_frame(self, payload: bytes, binary: bool) -> None:
        if self.ws is not None:
            self.ws.send(payload, binary=binary)

    # -- terminal ------------------------------------------------------------------------

    def _start_terminal(self) -> None:
        shell = user_shell()
        env = dict(os.environ)
        env.update({"TERM": "xterm-256color", "SHELL": shell})
        home = env.get("HOME")
        try:
            self._shell = self._reactor.spawnProcess(
                _Shell(self), shell, [shell, "-i"] if shell.endswith("sh") else [shell],
                env=env, path=home if home and os.path.isdir(home) else None, usePTY=True)
        except Exception:
            self._log.failure("cannot start the terminal")
            return self.close()
        self._resize()
        self._log.info("terminal started for {user} ({shell})",
                       user=str(self.request.get("username")), shell=shell)
        ws_transport = self.ws.transport if self.ws is not None else None
        if ws_transport is not None:
            # Back-pressure both ways: a full relay socket pauses the pty and vice versa.
            try:
                ws_transport.registerProducer(  # type: ignore[attr-defined]
                    self._shell, True)
                self._shell.registerProducer(ws_transport, True)
            except RuntimeError:
                self._log.failure("cannot chain the terminal's flow control")
        self._manager.sessions_changed()

    def _resize(self) -> None:
        if self._shell is None:
            return
        try:
            set_window_size(self._shell.fileno(), *self.size)
        except (OSError, AttributeError):
            pass

    def shell_output(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.send(data, binary=True)

    def shell_ended(self, code: Optional[int]) -> None:
        self._log.info("terminal ended")
        self._shell = None
        self.close()

    # -- ending --------------------------------------------------------------------------

    def _send_json(self, message: dict[str, Any]) -> None:
        if self.ws is not None:
            self.ws.send(json.dumps(message).encode(), binary=False)

    def close(self) -> None:
        if self.ws is not None and self.ws.transport is not None:
            self.ws.close()
            # The relay answers by dropping the connection; do not wait for ever.
            transport = self.ws.transport
            self._reactor.callLater(5, lambda: transport.abortConnection()  # type: ignore
                                    if getattr(transport, "connected", False) else None)
        else:
            self._closed("closed")

    def _closed(self, why: str) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        files, self._files = self._files, None
        if files is not None:
            files.close()
        shell, self._shell = self._shell, None
        if shell is not None:
            try:
                shell.signalProcess("HUP")
            except Exception:
                pass
            try:
                shell.loseConnection()
            except Exception:
                pass
        self._manager.ended(self)


class TunnelManager:
    """The core's tunnels; ``handle(message)`` takes a ``msg``/``tunnel`` request."""

    def __init__(self, context: Any, send: Callable[[dict[str, Any]], None]) -> None:
        self.context = context
        self.reactor = context.reactor
        self.log = context.log
        self._send = send
        self.tunnels: list[Tunnel] = []

    def send(self, message: dict[str, Any]) -> None:
        """One JSON message to the server on the control channel."""
        self._send(message)

    def handle(self, message: dict[str, Any]) -> None:
        """``{"action":"msg","type":"tunnel","value":…,"servertlshash":…,"rights":…}``."""
        value = message.get("value")
        if not isinstance(value, str) or len(value) > 8192:
            return
        if len(self.tunnels) >= MAX_TUNNELS:
            self.log.warn("too many tunnels; request ignored")
            return
        try:
            url = relay_url(value, str(self.context.server_url))
            parse_url(url)
        except ValueError:
            self.log.warn("tunnel request with a bad relay URL ignored")
            return
        pinned = set(getattr(self.context, "tls_hashes", None) or ())
        tls_hash = message.get("servertlshash")
        if isinstance(tls_hash, str):
            pinned.add(tls_hash.replace(":", "").lower())
        tunnel = Tunnel(self, message)
        self.tunnels.append(tunnel)
        tunnel.start(url, frozenset(h.lower() for h in pinned))

    def ended(self, tunnel: Tunnel) -> None:
        if tunnel in self.tunnels:
            self.tunnels.remove(tunnel)
            if tunnel.protocol in TERMINAL_PROTOCOLS:
                self.sessions_changed()

    def sessions_changed(self) -> None:
        """``{"action":"sessions","type":"terminal","value":{user: count}}``, as the real
        core reports them."""
        counts: dict[str, int] = {}
        for tunnel in self.tunnels:
            if tunnel.protocol in TERMINAL_PROTOCOLS and tunnel.state == "active":
                user = str(tunnel.request.get("userid", ""))
                counts[user] = counts.get(user, 0) + 1
        self._send({"action": "sessions", "type": "terminal", "value": counts})

    def stop(self) -> None:
        for tunnel in list(self.tunnels):
            tunnel.close()
