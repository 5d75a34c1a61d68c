"""Tests for meshd.control.twofactor and the otpauth-* actions: TOTP enrolment, backup
codes, and settings.force2factor (enrolment-only sessions, password + one-time
enrolment code) without sockets (the World of test_control_session); then meshctrl
``--token``, the login form and an enrolment against a real force2factor meshd."""

from __future__ import annotations

import atexit
import base64
import json
import os
import sqlite3
import tempfile
import time
import uuid
from typing import Any, Optional

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meshd.control import FEATURE_FORCE_2FA, server_info
from meshd.control.rights import SITERIGHT_ADMIN, SITERIGHT_MANAGEUSERS
from meshd.control.session import ENROLMENT_REQUIRED
from meshd.control.twofactor import (
    ENROL_CODE_MINUTES,
    ENROL_ID_PREFIX,
    key_uri,
    totp,
    totp_matches,
)
from meshd.ratelimit import FailureLimiter
from tests.meshctrl import MeshCtrl, meshctrl_script
from tests.server import ServerProcess, fresh_datapath
from tests.test_control_protocol import WebSocketClient
from tests.test_control_session import NOW, Client, World
from tests.test_login import admin, login, request

PASSWORD = "B0b!secret#pass"


def code_now(secret: str, world: World) -> str:
    return totp(secret, int(world.clock.seconds()) // 30)


class TotpTests(TestCase):
    def test_window_and_padding(self) -> None:
        """Codes are accepted ±2 steps; a code meshctrl lost its leading zeros from works."""
        secret = base64.b32encode(b"12345678901234567890").decode()
        self.assertTrue(totp_matches(secret, totp(secret, 100), 100 * 30 + 5))
        self.assertTrue(totp_matches(secret, totp(secret, 98), 100 * 30))
        self.assertFalse(totp_matches(secret, totp(secret, 97), 100 * 30))
        self.assertFalse(totp_matches(secret, "abcdef", 0))
        self.assertFalse(totp_matches(secret, "1234567", 0))
        step = next(s for s in range(1000) if totp(secret, s).startswith("0"))
        self.assertTrue(totp_matches(secret, str(int(totp(secret, step))), step * 30))

    def test_key_uri(self) -> None:
        """The otpauth:// URI names the issuer and the user."""
        self.assertEqual(key_uri("bob", "mesh.example.com", "ABC"),
                         "otpauth://totp/mesh.example.com:bob?secret=ABC&period=30&digits=6"
                         "&algorithm=SHA1&issuer=mesh.example.com")


class Base(TestCase):
    def setUp(self) -> None:
        self.world = World()
        self.admin_id = self.world.add_user("admin", SITERIGHT_ADMIN, password=PASSWORD)
        self.bob_id = self.world.add_user("bob", 0, password=PASSWORD)
        self.admin = self.world.connect(self.admin_id)

    def login(self, headers: dict[str, str], enrolment: bool = False) -> Any:
        return self.successResultOf(defer.Deferred.fromCoroutine(
            self.world.hub.auth.upgrade(headers, {}, "127.0.0.1", enrolment=enrolment)))

    def meshauth(self, name: str, *rest: str) -> dict[str, str]:
        parts = (name, PASSWORD, *rest)
        return {"x-meshauth": ",".join(base64.b64encode(p.encode()).decode() for p in parts)}

    def enrol(self, client: Client, **extra: Any) -> tuple[str, dict[str, Any]]:
        secret = client.reply("otpauth-request")["secret"]
        answer = client.reply("otpauth-setup", secret=secret,
                              token=code_now(secret, self.world), **extra)
        return secret, answer


class EnrolmentTests(Base):
    def test_request_gives_fresh_secret_and_uri(self) -> None:
        """otpauth-request answers a 160-bit base32 secret and its otpauth:// URI."""
        bob = self.world.connect(self.bob_id)
        answer = bob.reply("otpauth-request")
        self.assertEqual(len(base64.b32decode(answer["secret"])), 20)
        self.assertEqual(answer["url"], key_uri("bob", "example.com", answer["secret"]))
        self.assertEqual(answer["responseid"], "r")

    def test_setup_then_login_needs_code(self) -> None:
        """A shown code enrols the secret (event 90); logins then need a code."""
        bob = self.world.connect(self.bob_id)
        secret = bob.reply("otpauth-request")["secret"]
        self.assertEqual(bob.reply("otpauth-setup", secret=secret, token="000000"
                                   if code_now(secret, self.world) != "000000" else "111111"
                                   )["success"], False)
        self.assertEqual(bob.reply("otpauth-setup", secret="JBSWY3DPEHPK3PXP",
                                   token=totp("JBSWY3DPEHPK3PXP", NOW // 30))["success"],
                         False, "only the secret this session was given")
        frames = bob.request("otpauth-setup", secret=secret,
                             token=code_now(secret, self.world))
        self.assertEqual([f.get("success") for f in frames if f["action"] != "event"],
                         [True])
        [event] = bob.events(frames)
        self.assertEqual((event["action"], event["msgid"], event["account"]["otpsecret"]),
                         ("accountchange", 90, 1))
        self.assertEqual(self.world.doc(self.bob_id)["otpsecret"], secret)
        self.assertEqual(self.login(self.meshauth("bob")).close["msg"], "tokenrequired")
        self.assertIsNotNone(self.login(self.meshauth("bob", code_now(secret, self.world))
                                        ).user)

    def test_replacing_needs_password(self) -> None:
        """An enrolled authenticator is replaced only with the current password."""
        bob = self.world.connect(self.bob_id)
        first, answer = self.enrol(bob)
        self.assertTrue(answer["success"])
        self.assertEqual(self.enrol(bob)[1]["msg"], "Invalid password")
        second, answer = self.enrol(bob, password=PASSWORD)
        self.assertTrue(answer["success"])
        self.assertEqual(self.world.doc(self.bob_id)["otpsecret"], second)

    def test_backup_codes(self) -> None:
        """Backup codes need a TOTP factor beside them; each works once; 2 clears them."""
        bob = self.world.connect(self.bob_id)
        self.assertEqual(bob.request("otpauth-getpasswords", subaction=1), [])
        self.assertNotIn("otpkeys", self.world.doc(self.bob_id))
        self.enrol(bob)
        codes = bob.reply("otpauth-getpasswords", subaction=1)["passwords"]
        self.assertEqual(len({c["p"] for c in codes}), 10)
        self.assertTrue(all(10000000 <= c["p"] <= 99999999 and c["u"] for c in codes))
        self.assertEqual(bob.reply("otpauth-getpasswords")["passwords"], codes)
        backup = str(codes[0]["p"])
        self.assertIsNotNone(self.login(self.meshauth("bob", backup)).user)
        self.assertEqual(self.login(self.meshauth("bob", backup)).close["msg"],
                         "tokenrequired")
        self.assertIsNone(bob.reply("otpauth-getpasswords", subaction=2)["passwords"])
        self.assertNotIn("otpkeys", self.world.doc(self.bob_id))

    def test_clear_removes_factor_and_orphan_backup_codes(self) -> None:
        """otpauth-clear removes the secret and the backup codes left without it."""
        bob = self.world.connect(self.bob_id)
        self.enrol(bob)
        bob.reply("otpauth-getpasswords", subaction=1)
        frames = bob.request("otpauth-clear")
        self.assertEqual([e["msgid"] for e in bob.events(frames)], [91])
        doc = self.world.doc(self.bob_id)
        self.assertNotIn("otpsecret", doc)
        self.assertNotIn("otpkeys", doc)
        self.assertFalse(bob.reply("otpauth-clear")["success"])
        self.assertIsNotNone(self.login(self.meshauth("bob")).user)

    def test_login_token_sessions_cannot_enrol(self) -> None:
        """A session logged in with a login token cannot touch second factors."""
        bob = self.world.connect(self.bob_id)
        bob.session.login_token = "~t:abc"
        self.assertEqual(bob.reply("otpauth-request")["err"], 3)
        self.assertFalse(bob.reply("otpauth-setup", secret="x", token="1")["success"])
        self.assertEqual(bob.request("otpauth-getpasswords", subaction=1), [])

    def test_settings_locked_user(self) -> None:
        """A user whose settings are locked (0x400) cannot enrol."""
        locked = self.world.connect(self.world.add_user("lock", 0x400, password=PASSWORD))
        self.assertEqual(locked.reply("otpauth-request")["err"], 5)


class Force2FactorTests(Base):
    def setUp(self) -> None:
        super().setUp()
        self.world.hub.auth.force2factor = True
        self.world.hub.limiter = FailureLimiter(5, 600, 600)
        self.world.store._documents[self.admin_id]["otpsecret"] = "JBSWY3DPEHPK3PXP"

    def issue(self, user_id: str) -> str:
        answer = self.admin.reply("otpauth-enrolcode", userid=user_id)
        self.assertEqual(answer["expire"], (NOW + ENROL_CODE_MINUTES * 60) * 1000)
        code: str = answer["code"]
        return code

    def test_logins_of_users_without_factor(self) -> None:
        """Tool logins and relays are refused (tokenrequired); the control channel gets
        an enrolment-only session; enrolled users and login tokens are unaffected."""
        close = self.login(self.meshauth("bob")).close
        self.assertEqual((close["msg"], close["otpsetup"]), ("tokenrequired", True))
        self.assertEqual(self.login(self.meshauth("bob"), enrolment=True).close["msg"],
                         "tokenrequired", "x-meshauth is a tool login: it cannot enrol")
        result = self.successResultOf(defer.Deferred.fromCoroutine(
            self.world.hub.auth.password("bob", PASSWORD, None, "noauth-2c",
                                         enrolment=True)))
        self.assertTrue(result.enrolment_only)
        self.assertEqual(self.login(self.meshauth("admin")).close["msg"], "tokenrequired")
        self.assertIsNotNone(self.login(self.meshauth(
            "admin", totp("JBSWY3DPEHPK3PXP", NOW // 30))).user)

    def test_enrolment_only_session(self) -> None:
        """Until enrolled, every request but otpauth-request/-setup is refused."""
        bob = self.world.connect(self.bob_id)
        for action in ("meshes", "nodes", "createLoginToken", "authcookie", "users",
                       "otpauth-getpasswords", "otpauth-enrolcode"):
            self.assertEqual(bob.reply(action)["result"], ENROLMENT_REQUIRED, action)
        self.assertEqual(bob.request("meshes", responseid=None), [])
        self.assertIn("secret", bob.reply("otpauth-request"))

    def test_stolen_password_cannot_enrol(self) -> None:
        """Enrolment needs the password and an administrator's one-time code."""
        bob = self.world.connect(self.bob_id)
        self.assertEqual(self.enrol(bob)[1]["msg"], "Invalid password")
        self.assertEqual(self.enrol(bob, password=PASSWORD)[1]["msg"],
                         "Invalid enrolment code")
        self.assertEqual(self.enrol(bob, password=PASSWORD, enrolcode="AAAA-BBBB-CCCC-DDDD"
                                    )[1]["msg"], "Invalid enrolment code")
        self.assertNotIn("otpsecret", self.world.doc(self.bob_id))
        code = self.issue(self.bob_id)
        self.assertNotIn(code.replace("-", ""), str(self.world.doc(ENROL_ID_PREFIX
                                                                   + self.bob_id)))
        self.assertEqual(self.enrol(bob, enrolcode=code)[1]["msg"], "Invalid password")
        secret, answer = self.enrol(bob, password=PASSWORD, enrolcode=code.lower())
        self.assertTrue(answer["success"])
        self.assertEqual(self.world.doc(self.bob_id)["otpsecret"], secret)
        self.assertIsNone(self.world.doc(ENROL_ID_PREFIX + self.bob_id), "used once")
        # Enrolled: the same session is a normal one now.
        self.assertEqual(bob.reply("meshes")["action"], "meshes")

    def test_enrolment_code_expires_and_is_replaced(self) -> None:
        """A code expires after a day; issuing a new one voids the old one."""
        bob = self.world.connect(self.bob_id)
        old = self.issue(self.bob_id)
        new = self.issue(self.bob_id)
        self.assertEqual(self.enrol(bob, password=PASSWORD, enrolcode=old)[1]["msg"],
                         "Invalid enrolment code")
        self.world.clock.advance(ENROL_CODE_MINUTES * 60 + 1)
        self.assertEqual(self.enrol(bob, password=PASSWORD, enrolcode=new)[1]["msg"],
                         "Invalid enrolment code")

    def test_failed_enrolment_attempts_are_limited(self) -> None:
        """Guessing the password or code runs into the login limits."""
        bob = self.world.connect(self.bob_id)
        for _ in range(5):
            self.enrol(bob, password="wrong")
        code = self.issue(self.bob_id)
        self.assertEqual(self.enrol(bob, password=PASSWORD, enrolcode=code)[1]["msg"],
                         "Too many failed attempts, try again later")

    def test_enrolment_code_rights(self) -> None:
        """Only user managers issue codes, never for themselves, never for a full admin
        unless full admins themselves; deleting the user deletes the code."""
        bob = self.world.connect(self.bob_id)
        bob.session.login_token = "~t:x"  # skip the enrolment gate for this check
        self.assertEqual(bob.result("otpauth-enrolcode", userid="admin"),
                         "Permission denied")
        manager_id = self.world.add_user("mgr", SITERIGHT_MANAGEUSERS, password=PASSWORD,
                                         otpsecret="JBSWY3DPEHPK3PXP")
        manager = self.world.connect(manager_id)
        self.assertEqual(manager.result("otpauth-enrolcode", userid="admin"),
                         "Permission denied")
        self.assertEqual(manager.result("otpauth-enrolcode", userid=manager_id),
                         "Another administrator must issue your enrolment code")
        self.assertEqual(manager.result("otpauth-enrolcode", userid="nobody"),
                         "User does not exists")
        frames = manager.request("otpauth-enrolcode", userid="bob")
        [event] = self.admin.events(self.admin.frames[-1:])
        self.assertEqual(event["action"], "otpenrolcode")
        self.assertNotIn([f["code"] for f in frames if "code" in f][0], str(event))
        self.assertEqual(self.admin.result("deleteuser", userid="bob"), "ok")
        self.assertIsNone(self.world.doc(ENROL_ID_PREFIX + self.bob_id))

    def test_clear_needs_password(self) -> None:
        """Under force2factor, removing the authenticator needs the password."""
        self.assertEqual(self.admin.reply("otpauth-clear")["msg"], "Invalid password")
        self.assertTrue(self.admin.reply("otpauth-clear", password=PASSWORD)["success"])
        self.assertEqual(self.admin.reply("meshes")["result"], ENROLMENT_REQUIRED)

    def test_feature_bit(self) -> None:
        """serverinfo announces forced 2FA with MeshCentral's feature bit 0x40000."""
        info = server_info(name="a.example", port=443, redirport=80, mpsport=4433,
                           tls_hash="ab" * 48, agent_server_id="cd" * 48, force2factor=True)
        self.assertTrue(info["features"] & FEATURE_FORCE_2FA)
        info = server_info(name="a.example", port=443, redirport=80, mpsport=4433,
                           tls_hash="ab" * 48, agent_server_id="cd" * 48)
        self.assertFalse(info["features"] & FEATURE_FORCE_2FA)


_server: Optional[ServerProcess] = None
ADMIN_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def force2factor_server() -> ServerProcess:
    """A real meshd with settings.force2factor whose administrator enrolled earlier
    (its TOTP secret written into the store before the start)."""
    global _server
    if _server is None or _server.process is None or _server.process.poll() is not None:
        datapath = fresh_datapath()
        created = admin(datapath, "createaccount", "admin", "--pass", PASSWORD)
        if created.returncode != 0:
            raise RuntimeError(f"meshd-admin failed: {created.stderr}")
        with sqlite3.connect(os.path.join(datapath, "meshd.db")) as db:
            [(text,)] = db.execute("SELECT doc FROM documents WHERE id = ?",
                                   ("user//admin",)).fetchall()
            doc = json.loads(text)
            doc["otpsecret"] = ADMIN_SECRET
            db.execute("UPDATE documents SET doc = ? WHERE id = ?",
                       (json.dumps(doc), "user//admin"))
        with open(datapath + ".json", "w") as f:
            json.dump({"settings": {"force2factor": True}}, f)
        _server = ServerProcess(datapath, ["--config", datapath + ".json"]).start()
        atexit.register(_server.stop)
    return _server


def now_code(secret: str) -> str:
    return totp(secret, int(time.time()) // 30)


def reply_to(client: WebSocketClient, action: str) -> dict[str, Any]:
    while True:
        message = client.message()
        if message.get("action") == action:
            return message


class Force2FactorServerTests(SynchronousTestCase):
    """meshctrl --token, the login form and enrolment against a real force2factor meshd."""

    def setUp(self) -> None:
        meshctrl_script()
        self.server = force2factor_server()
        self.ctl = MeshCtrl(self.server.port, "admin", PASSWORD, cwd=tempfile.mkdtemp())

    def test_meshctrl_token(self) -> None:
        """meshctrl needs --token for an enrolled user; a wrong token is refused."""
        self.assertEqual(self.ctl.run("userinfo").strip(),
                         "Authentication token required, use --token [number].")
        me = json.loads(self.ctl.run("userinfo", "--json", "--token", now_code(ADMIN_SECRET)))
        self.assertEqual((me["_id"], me["otpsecret"]), ("user//admin", 1))
        wrong = "123456" if now_code(ADMIN_SECRET) != "123456" else "654321"
        self.assertEqual(self.ctl.run("userinfo", "--token", wrong).strip(),
                         "Authentication token required, use --token [number].")

    def test_form_login_token(self) -> None:
        """POST /login of an enrolled user asks for the code, refuses a wrong one."""
        answer = login(self.server, "admin", PASSWORD)
        self.assertEqual(answer.status, 401)
        self.assertIn('name="token"', answer.body)
        wrong = "123456" if now_code(ADMIN_SECRET) != "123456" else "654321"
        answer = request(self.server, "POST", "/login", {
            "username": "admin", "password": PASSWORD, "token": wrong})
        self.assertEqual((answer.status, answer.cookie()), (401, None))
        answer = request(self.server, "POST", "/login", {
            "username": "admin", "password": PASSWORD, "token": now_code(ADMIN_SECRET)})
        self.assertEqual(answer.status, 303)
        self.assertTrue(answer.cookie())

    def test_new_user_enrols_with_password_and_code(self) -> None:
        """A new user: meshctrl refused; the web session can only enrol, which needs the
        administrator's one-time code and the password; then meshctrl --token works."""
        name = "u" + uuid.uuid4().hex[:8]
        token = ["--token", now_code(ADMIN_SECRET)]
        self.assertEqual(self.ctl.run("adduser", "--user", name, "--pass", PASSWORD,
                                      *token).strip(), "ok")
        self.assertEqual(self.ctl.run("userinfo", user=name).strip(),
                         "Authentication token required, use --token [number].")
        # A password-only web login gives a session that can only enrol.
        answer = login(self.server, name, PASSWORD)
        self.assertEqual(answer.status, 303)
        user = WebSocketClient(self.server.port, headers={"Cookie": f"xid={answer.cookie()}"})
        self.addCleanup(user.close)
        user.send_json({"action": "nodes", "responseid": "n"})
        self.assertEqual(reply_to(user, "nodes")["result"], "Two-factor authentication required")
        user.send_json({"action": "otpauth-request"})
        secret = reply_to(user, "otpauth-request")["secret"]
        user.send_json({"action": "otpauth-setup", "secret": secret, "token": now_code(secret),
                        "password": PASSWORD})
        self.assertEqual(reply_to(user, "otpauth-setup")["msg"], "Invalid enrolment code")
        # The administrator issues a one-time code (handed over out of band).
        headers = {"x-meshauth": ",".join(base64.b64encode(p.encode()).decode() for p in (
            "admin", PASSWORD, now_code(ADMIN_SECRET)))}
        manager = WebSocketClient(self.server.port, headers=headers)
        self.addCleanup(manager.close)
        manager.send_json({"action": "otpauth-enrolcode", "userid": name})
        code = reply_to(manager, "otpauth-enrolcode")["code"]
        user.send_json({"action": "otpauth-setup", "secret": secret, "token": now_code(secret),
                        "password": PASSWORD, "enrolcode": code})
        self.assertTrue(reply_to(user, "otpauth-setup")["success"])
        me = json.loads(self.ctl.run("userinfo", "--json", "--token", now_code(secret),
                                     user=name))
        self.assertEqual((me["_id"], me["otpsecret"]), (f"user//{name}", 1))

    def test_admin_cli_enrolcode(self) -> None:
        """``meshd-admin enrolcode NAME`` prints a one-time code (and only the code on
        standard output) that enrols the user once; an unknown account is an error."""
        name = "c" + uuid.uuid4().hex[:8]
        token = ["--token", now_code(ADMIN_SECRET)]
        self.assertEqual(self.ctl.run("adduser", "--user", name, "--pass", PASSWORD,
                                      *token).strip(), "ok")
        issued = admin(self.server.datapath, "enrolcode", name)
        self.assertEqual(issued.returncode, 0, issued.stderr)
        code = issued.stdout.strip()
        self.assertRegex(code, r"^[A-Z2-9]{4}(-[A-Z2-9]{4}){3}$")
        self.assertIn(f"enrolment code for {name}", issued.stderr)
        record = self._enrol_record(name)
        assert record is not None
        self.assertEqual((record["type"], record["by"]), ("otpenrol", "meshd-admin"))
        self.assertNotIn(code, json.dumps(record))
        answer = login(self.server, name, PASSWORD)
        self.assertEqual(answer.status, 303)
        user = WebSocketClient(self.server.port, headers={"Cookie": f"xid={answer.cookie()}"})
        self.addCleanup(user.close)
        user.send_json({"action": "otpauth-request"})
        secret = reply_to(user, "otpauth-request")["secret"]
        user.send_json({"action": "otpauth-setup", "secret": secret, "token": now_code(secret),
                        "password": PASSWORD, "enrolcode": code})
        self.assertTrue(reply_to(user, "otpauth-setup")["success"])
        # Only a hash of the code was stored, and enrolling spent it.
        self.assertEqual(self._enrol_record(name), None)
        missing = admin(self.server.datapath, "enrolcode", "nosuch" + name)
        self.assertEqual((missing.returncode, missing.stdout), (1, ""))
        self.assertIn("no account named", missing.stderr)

    def _enrol_record(self, name: str) -> Optional[dict[str, Any]]:
        with sqlite3.connect(os.path.join(self.server.datapath, "meshd.db")) as db:
            rows = db.execute("SELECT doc FROM documents WHERE id = ?",
                              (f"otpenrol-user//{name}",)).fetchall()
        return json.loads(rows[0][0]) if rows else None
