"""Login, logout, first-run and meshd-admin against the real server over real HTTPS."""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
import json
import subprocess
import sys
import uuid
from typing import Optional
from urllib.parse import urlencode

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meshd.store.sqlite import SQLiteStore
from tests.server import ROOT, ServerProcess, fresh_datapath, server_env, shared_server


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: str) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def cookie(self) -> Optional[str]:
        """The xid cookie value set by this response, if any."""
        for header in self.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            if name == "xid":
                return rest.split(";", 1)[0]
        return None


def request(server: ServerProcess, method: str, path: str, fields: Optional[dict] = None,
            cookie: Optional[str] = None, headers: Optional[dict] = None) -> Response:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                       context=server.ssl_context(), timeout=30)
    all_headers = dict(headers or {})
    body = None
    if fields is not None:
        body = urlencode(fields)
        all_headers["Content-Type"] = "application/x-www-form-urlencoded"
    if cookie:
        all_headers["Cookie"] = f"xid={cookie}"
    conn.request(method, path, body=body, headers=all_headers)
    response = conn.getresponse()
    result = Response(response.status, response.headers, response.read().decode("utf-8"))
    conn.close()
    return result


def admin(datapath: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshd.admin", "--datapath", datapath, *args],
                          cwd=ROOT, env=server_env(), text=True, capture_output=True,
                          input=stdin, timeout=60)


def login(server: ServerProcess, name: str, password: str) -> Response:
    return request(server, "POST", "/login", {"username": name, "password": password})


class AdminCliTests(SynchronousTestCase):
    """meshd-admin against the data folder of a running server."""

    def test_create_list_reset_admin(self) -> None:
        """Accounts made with meshd-admin while the server runs can log in at once."""
        server = shared_server()
        name = "cli" + uuid.uuid4().hex[:8]
        result = admin(server.datapath, "createaccount", name, "--pass", "first password",
                       "--email", f"{name}@example.com")
        self.assertEqual(result.returncode, 0, result.stderr)
        # The shared server's first account is its site administrator.
        self.assertIn(result.stdout.strip(), (f"created account {name}",
                                              f"created account {name} (site administrator)"))
        self.assertEqual(login(server, name, "first password").status, 303)
        listing = admin(server.datapath, "listaccounts", "--json").stdout.splitlines()
        [mine] = [json.loads(line) for line in listing if f"//{name}\"" in line]
        self.assertEqual(mine["email"], f"{name}@example.com")
        self.assertNotIn("hash", mine)
        result = admin(server.datapath, "resetaccount", name, stdin="second password\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(login(server, name, "first password").status, 401)
        self.assertEqual(login(server, name, "second password").status, 303)
        self.assertEqual(admin(server.datapath, "adminaccount", name).stdout.strip(),
                         f"{name} is now site administrator")

    def test_certinfo(self) -> None:
        """certinfo shows each certificate with its SHA-384 and the agents' ServerID."""
        server = shared_server()
        result = admin(server.datapath, "certinfo")
        self.assertEqual(result.returncode, 0, result.stderr)
        for heading in ("web certificate:", "MPS certificate:", "agent certificate:",
                        "root certificate:", "ServerID:"):
            self.assertIn(heading, result.stdout)
        with open(os.path.join(server.datapath, "webserver-cert-public.crt")) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        self.assertIn(hashlib.sha384(der).hexdigest(), result.stdout)

    def test_errors(self) -> None:
        """Errors are one line on stderr with a non-zero exit code."""
        server = shared_server()
        result = admin(server.datapath, "resetaccount", "nosuchuser", "--pass", "12345678")
        self.assertEqual((result.returncode, result.stderr),
                         (1, "meshd-admin: no account named nosuchuser\n"))
        result = admin(server.datapath, "createaccount", "x", "--pass", "short")
        self.assertEqual((result.returncode, result.stderr),
                         (1, "meshd-admin: a password needs at least 8 characters\n"))
        result = admin(server.datapath + "-missing", "listaccounts")
        self.assertEqual(result.returncode, 1)
        self.assertIn("no data folder", result.stderr)


class LoginTests(SynchronousTestCase):
    """Form login on the shared server."""

    def setUp(self) -> None:
        self.server = shared_server()
        self.name = "u" + uuid.uuid4().hex[:8]
        self.password = "pw-" + uuid.uuid4().hex
        result = admin(self.server.datapath, "createaccount", self.name, "--pass", self.password)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_good_password(self) -> None:
        """The right password gives a secure HttpOnly SameSite session cookie and the landing page."""
        response = login(self.server, self.name.upper(), self.password)
        self.assertEqual(response.status, 303)
        self.assertEqual(response.headers["Location"], "/")
        [set_cookie] = [h for h in response.headers.get_all("Set-Cookie") or []
                        if h.startswith("xid=")]
        flags = {part.strip().lower() for part in set_cookie.split(";")[1:]}
        self.assertTrue({"secure", "httponly", "samesite=lax", "path=/"} <= flags, flags)
        page = request(self.server, "GET", "/", cookie=response.cookie())
        self.assertIn(f'Logged in as <strong id="user">{self.name}</strong>', page.body)

    def test_bad_password(self) -> None:
        """A wrong password is a 401 with the form and a message, and sets no cookie."""
        response = login(self.server, self.name, "wrong-" + self.password)
        self.assertEqual(response.status, 401)
        self.assertIn("Invalid user name or password.", response.body)
        self.assertIsNone(response.cookie())
        self.assertNotIn(self.password, self.server.log())
        self.assertNotIn("wrong-" + self.password, self.server.log())

    def test_logout(self) -> None:
        """Logout ends the session: the old cookie no longer logs in."""
        cookie = login(self.server, self.name, self.password).cookie()
        response = request(self.server, "GET", "/logout", cookie=cookie)
        self.assertEqual(response.status, 303)
        self.assertEqual(response.cookie(), "")
        page = request(self.server, "GET", "/", cookie=cookie)
        self.assertNotIn("Logged in as", page.body)
        self.assertIn('action="/login"', page.body)

    def test_forged_cookie(self) -> None:
        """A made-up cookie is not a session."""
        page = request(self.server, "GET", "/", cookie="A" * 43)
        self.assertNotIn("Logged in as", page.body)

    def test_cross_site_post_refused(self) -> None:
        """A login form posted from another origin is refused."""
        response = request(self.server, "POST", "/login",
                           {"username": self.name, "password": self.password},
                           headers={"Origin": "https://evil.example.com"})
        self.assertEqual(response.status, 403)

    def test_new_accounts_off(self) -> None:
        """With accounts present and newAccounts off, /createaccount is refused."""
        response = request(self.server, "POST", "/createaccount",
                           {"username": "intruder", "password1": "12345678",
                            "password2": "12345678"})
        self.assertEqual(response.status, 401)


class OwnServerTests(TestCase):
    """Tests that need a server of their own."""

    def start(self, config: Optional[dict] = None) -> ServerProcess:
        datapath = fresh_datapath()
        extra: list[str] = []
        if config is not None:
            with open(datapath + ".json", "w") as f:
                json.dump(config, f)
            extra = ["--config", datapath + ".json"]
        server = ServerProcess(datapath, extra).start()
        self.addCleanup(server.stop)
        return server

    def test_first_visitor_creates_admin(self) -> None:
        """On a server without accounts the first visitor creates the site administrator."""
        server = self.start()
        page = request(server, "GET", "/")
        self.assertIn("no account yet", page.body)
        response = request(server, "POST", "/createaccount",
                           {"username": "boss", "email": "boss@example.com",
                            "password1": "boss password", "password2": "boss password"})
        self.assertEqual(response.status, 303)
        page = request(server, "GET", "/", cookie=response.cookie())
        self.assertIn("boss</strong> (site administrator)", page.body)
        again = request(server, "POST", "/createaccount",
                        {"username": "second", "password1": "12345678", "password2": "12345678"})
        self.assertEqual(again.status, 401)

    def test_first_account_errors(self) -> None:
        """Mismatched or short passwords re-show the form with the reason."""
        server = self.start()
        response = request(server, "POST", "/createaccount",
                           {"username": "boss", "password1": "boss password",
                            "password2": "other password"})
        self.assertEqual(response.status, 400)
        self.assertIn("The two passwords differ.", response.body)
        self.assertIn("no account yet", request(server, "GET", "/").body)

    async def test_rate_limit_and_events(self) -> None:
        """After maxInvalidLogin.count failures logins wait; failures are events without the password."""
        server = self.start({"settings": {"maxInvalidLogin": {"count": 3, "coolOffTime": 5}}})
        self.assertEqual(admin(server.datapath, "createaccount", "carol",
                               "--pass", "carol password").returncode, 0)
        for _ in range(3):
            self.assertEqual(login(server, "carol", "bad guess!").status, 401)
        blocked = login(server, "carol", "carol password")
        self.assertEqual(blocked.status, 429)
        self.assertIn("Too many failed logins. Try again in 5 minutes.", blocked.body)
        store = SQLiteStore(server.datapath, reactor)
        await store.open()
        self.addCleanup(store.close)
        events = await store.get_events(["user//carol"], "")
        fails = [e for e in events if e.get("action") == "authfail"]
        self.assertEqual(len(fails), 3)
        self.assertNotIn("bad guess!", json.dumps(fails, default=str))
        self.assertNotIn("bad guess!", server.log())

    def test_session_survives_restart(self) -> None:
        """A session cookie stays valid across a server restart."""
        server = self.start()
        self.assertEqual(admin(server.datapath, "createaccount", "dave",
                               "--pass", "dave password").returncode, 0)
        cookie = login(server, "dave", "dave password").cookie()
        server.stop()
        restarted = ServerProcess(server.datapath).start()
        self.addCleanup(restarted.stop)
        page = request(restarted, "GET", "/", cookie=cookie)
        self.assertIn('Logged in as <strong id="user">dave</strong>', page.body)

