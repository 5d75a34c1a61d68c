"""/control.ashx over a real socket: authentication on the upgrade, refusals as JSON
close frames, inner authentication, frame limits.  Uses the meshctrl module's server.

The client is a deliberately small blocking WebSocket client (RFC 6455) so the tests
see exactly which frames the server sends.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import ssl
import struct
from typing import Any, Optional
from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from meshd.control.hub import MAX_MESSAGE
from tests.meshctrl import MeshCtrl
from tests.test_control_meshctrl import PASSWORD, control_server
from tests.test_login import login


class WebSocketClient:
    """Just enough of a WebSocket client: text/binary frames out (masked), frames in."""

    def __init__(self, port: int, path: str = "/control.ashx",
                 headers: Optional[dict[str, str]] = None) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock = context.wrap_socket(raw)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"no upgrade answer: {self.buffer!r}")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()

    def send(self, payload: bytes, opcode: int = 1) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if length < 65536 \
            else (int.from_bytes(payload, "big") ^ int.from_bytes(
                (mask * (length // 4 + 1))[:length], "big")).to_bytes(length, "big")
        self.sock.sendall(header + mask + masked)

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(json.dumps(message).encode())

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def frame(self) -> tuple[int, bytes]:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8))[0]
        return first & 0x0F, self._read(length)

    def message(self) -> dict[str, Any]:
        """The next text frame as JSON (skipping pings)."""
        while True:
            opcode, payload = self.frame()
            if opcode == 1:
                result: dict[str, Any] = json.loads(payload)
                return result
            if opcode == 8:
                raise EOFError(f"closed: {payload!r}")

    def close_code(self) -> Optional[int]:
        """Read until the server's close frame; its status code (None when it has none)."""
        while True:
            opcode, payload = self.frame()
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def meshauth(user: str, password: str) -> dict[str, str]:
    return {"x-meshauth": base64.b64encode(user.encode()).decode() + "," +
            base64.b64encode(password.encode()).decode()}


class UpgradeAuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = control_server()

    def connect(self, path: str = "/control.ashx", headers: Optional[dict[str, str]] = None
                ) -> WebSocketClient:
        client = WebSocketClient(self.server.port, path, headers)
        self.addCleanup(client.close)
        self.assertEqual(client.status, 101)
        return client

    def test_no_credentials(self) -> None:
        """Without credentials the socket opens, says noauth, and closes without status."""
        client = self.connect()
        self.assertEqual(client.message(), {"action": "close", "cause": "noauth",
                                            "msg": "noauth"})
        self.assertIsNone(client.close_code())

    def test_bad_meshauth(self) -> None:
        """A wrong password closes with noauth-2d, a malformed header with noauth-2c."""
        self.assertEqual(self.connect(headers=meshauth("admin", "wrong")).message()["msg"],
                         "noauth-2d")
        self.assertEqual(self.connect(headers={"x-meshauth": "YWRtaW4="}).message()["msg"],
                         "noauth-2c")

    def test_meshauth_first_frames(self) -> None:
        """x-meshauth logs in: serverinfo, userinfo, traceinfo; ping is answered."""
        client = self.connect(headers=meshauth("admin", PASSWORD))
        self.assertEqual([client.message()["action"] for _ in range(3)],
                         ["serverinfo", "userinfo", "traceinfo"])
        client.send_json({"action": "ping"})
        self.assertEqual(client.message(), {"action": "pong"})

    def test_inner_auth(self) -> None:
        """x-meshauth: * waits for userAuth; a bad one closes with noauth-2c."""
        client = self.connect(headers={"x-meshauth": "*"})
        client.send_json({"action": "userAuth",
                          "username": base64.b64encode(b"admin").decode(),
                          "password": base64.b64encode(PASSWORD.encode()).decode()})
        self.assertEqual(client.message()["action"], "serverinfo")
        self.assertEqual(client.message()["userinfo"]["_id"], "user//admin")
        client = self.connect(headers={"x-meshauth": "*"})
        client.send_json({"action": "userAuth", "username": "YWRtaW4=", "password": "eA=="})
        self.assertEqual(client.message()["msg"], "noauth-2c")

    def test_web_session_cookie(self) -> None:
        """The xid cookie of a form login opens the control channel as that user."""
        response = login(self.server, "admin", PASSWORD)
        cookie = response.cookie()
        self.assertIsNotNone(cookie)
        client = self.connect(headers={"Cookie": f"xid={cookie}"})
        client.message()
        self.assertEqual(client.message()["userinfo"]["_id"], "user//admin")

    def test_auth_cookie(self) -> None:
        """A cookie from the authcookie action logs in with ?auth=."""
        client = self.connect(headers=meshauth("admin", PASSWORD))
        for _ in range(3):
            client.message()
        client.send_json({"action": "authcookie"})
        answer = client.message()
        while answer.get("action") != "authcookie":
            answer = client.message()
        second = self.connect("/control.ashx?auth=" + quote(answer["cookie"]))
        second.message()
        self.assertEqual(second.message()["userinfo"]["_id"], "user//admin")
        self.assertEqual(self.connect("/control.ashx?auth=bogus" + "A" * 40).message()["msg"],
                         "noauth")

    def test_oversize_frame_closes_that_connection_only(self) -> None:
        """A frame above the limit closes the connection (1009); the server goes on."""
        client = self.connect(headers=meshauth("admin", PASSWORD))
        for _ in range(3):
            client.message()
        try:
            client.send(b" " * (MAX_MESSAGE + 1))
        except OSError:
            pass  # the server refused on the frame header and closed before the body
        try:
            code: Optional[int] = client.close_code()
        except (EOFError, OSError):
            code = 1009  # closed before our reads caught the close frame
        self.assertEqual(code, 1009)
        again = self.connect(headers=meshauth("admin", PASSWORD))
        self.assertEqual(again.message()["action"], "serverinfo")

    def test_binary_and_garbage_ignored(self) -> None:
        """Binary frames and garbage text get no answer; the session stays usable."""
        client = self.connect(headers=meshauth("admin", PASSWORD))
        for _ in range(3):
            client.message()
        client.send(b"\x00\x01\x02", opcode=2)
        client.send(b"not json")
        client.send(b'{"action": "nosuchaction", "responseid": 1}')
        client.send_json({"action": "ping"})
        self.assertEqual(client.message(), {"action": "pong"})


class LoginKeyTests(SynchronousTestCase):
    def test_meshctrl_loginkey(self) -> None:
        """meshctrl --loginkey works with the server's key (160 hex) and with a cookie."""
        server = control_server()
        ctl = MeshCtrl(server.port, "admin", PASSWORD)
        client = WebSocketClient(server.port, headers=meshauth("admin", PASSWORD))
        self.addCleanup(client.close)
        client.send_json({"action": "authcookie"})
        answer = client.message()
        while answer.get("action") != "authcookie":
            answer = client.message()
        with sqlite3.connect(f"file:{server.datapath}/meshd.db?mode=ro", uri=True) as db:
            [(text,)] = db.execute("SELECT doc FROM documents WHERE id = ?",
                                   ("LoginCookieEncryptionKey",)).fetchall()
        key = json.loads(text)["key"]
        self.assertEqual(len(key), 160)
        url = ["--url", f"wss://127.0.0.1:{server.port}"]
        for loginkey in (key, answer["cookie"]):
            out = ctl.run("userinfo", "--json", *url, "--loginuser", "admin",
                          "--loginkey", loginkey, raw_auth=True)
            self.assertEqual(json.loads(out)["_id"], "user//admin")
        out = ctl.run("userinfo", *url, "--loginkey", os.urandom(80).hex(), raw_auth=True)
        self.assertEqual(out.strip(), "Invalid login, check the login key and that this "
                                      "computer has the correct time.")
