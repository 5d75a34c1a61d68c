"""Tests for meshd.control: the session dispatch, actions, events and authentication,
without sockets (MemoryStore, LocalEventBus, LocalPresence, a fake agent manager).

The MemoryStore answers at once, so a request is fully handled when
``frame_received`` returns and the test reads the frames sent meanwhile.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meshd import passwords
from meshd.accounts import Accounts
from meshd.agent.identity import encode_id
from meshd.control import server_info
from meshd.control.auth import parse_meshauth, totp
from meshd.control.cookies import decode_cookie, encode_cookie
from meshd.control.hub import ControlHub
from meshd.control.rights import MESHRIGHT_ADMIN, SITERIGHT_ADMIN
from meshd.control.session import MAX_PENDING, ControlSession
from meshd.events import LocalEventBus
from meshd.presence import CONN_AGENT, CONN_CIRA, Connection, LocalPresence
from meshd.ratelimit import FailureLimiter
from meshd.store.memory import MemoryStore

NOW = 1_800_000_000


class FakeAgents:
    """The agent manager's send_to_node, for connected devices only."""

    def __init__(self) -> None:
        self.connected: set[str] = set()
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_to_node(self, node_id: str, message: dict[str, Any]) -> bool:
        if node_id not in self.connected:
            return False
        self.sent.append((node_id, message))
        return True


class Client:
    """One user session; ``frames`` holds everything the server sent, decoded."""

    def __init__(self, world: "World", user_id: str, failed_logins: int = 0,
                 web_session: Optional[str] = None) -> None:
        self.world = world
        self.frames: list[dict[str, Any]] = []
        self.closed = False
        user = world.store._documents[user_id]
        self.session = ControlSession(world.hub, dict(user), self._send, self._close,
                                      peer="127.0.0.1", failed_logins=failed_logins,
                                      web_session=web_session)
        self.session.start()

    def _send(self, text: str) -> None:
        self.frames.append(json.loads(text))

    def _close(self) -> None:
        self.closed = True
        self.session.connection_lost()

    def send_raw(self, payload: bytes) -> list[dict[str, Any]]:
        start = len(self.frames)
        self.session.frame_received(payload)
        return self.frames[start:]

    def request(self, action: str, **fields: Any) -> list[dict[str, Any]]:
        """Send a request (with responseid "r"); return every frame it caused."""
        fields.setdefault("responseid", "r")
        return self.send_raw(json.dumps({"action": action, **fields}).encode())

    def reply(self, action: str, **fields: Any) -> dict[str, Any]:
        """The one direct answer (not an event) to a request."""
        answers = [f for f in self.request(action, **fields) if f.get("action") != "event"
                   and not (f.get("type") == "notify" and action != "msg")]
        if len(answers) != 1:
            raise AssertionError(f"{action}: expected one answer, got {answers}")
        return answers[0]

    def result(self, action: str, **fields: Any) -> Any:
        return self.reply(action, **fields).get("result")

    def events(self, frames: Optional[list[dict[str, Any]]] = None) -> list[dict[str, Any]]:
        return [f["event"] for f in (self.frames if frames is None else frames)
                if f.get("action") == "event"]


class World:
    """A server without sockets: store, bus, presence, agents and the control hub."""

    def __init__(self, server_warnings: tuple[str, ...] = ()) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.bus = LocalEventBus()
        self.presence = LocalPresence()
        self.agents = FakeAgents()
        self.counter = 0

        def run_blocking(function: Any, *args: Any) -> "defer.Deferred[Any]":
            return defer.maybeDeferred(function, *args)

        self.accounts = Accounts(self.store, now=self.clock.seconds, run_blocking=run_blocking)
        self.hub = ControlHub(
            store=self.store, bus=self.bus, presence=self.presence, accounts=self.accounts,
            clock=self.clock, run_blocking=run_blocking, agents=self.agents,
            server_info=lambda: server_info(name="example.com", port=443, redirport=80,
                                            mpsport=4433, tls_hash="ab" * 48,
                                            agent_server_id="CD" * 48,
                                            cert_expire_ms=1),
            random=self._random, server_warnings=server_warnings)

    def _random(self, size: int) -> bytes:
        self.counter += 1
        return self.counter.to_bytes(4, "big") * (size // 4) + b"\x07" * (size % 4)

    def add_user(self, name: str, siteadmin: Optional[int] = None,
                 password: Optional[str] = None, **fields: Any) -> str:
        uid = f"user//{name.lower()}"
        doc: dict[str, Any] = {"_id": uid, "type": "user", "name": name, "domain": "",
                               "creation": NOW - 100, **fields}
        if siteadmin is not None:
            doc["siteadmin"] = siteadmin
        if password is not None:
            doc["salt"], doc["hash"] = passwords.hash_password(password)
        self.store.set(doc)
        return uid

    def link(self, member_id: str, target_id: str, rights: int) -> None:
        """Give a user (or user group) rights on a group or device, on both sides."""
        member = self.store._documents[member_id]
        member.setdefault("links", {})[target_id] = {"rights": rights}
        self.store.set(member)
        target = self.store._documents[target_id]
        link: dict[str, Any] = {"rights": rights}
        if target_id.startswith("mesh/"):
            link = {"name": member.get("name"), "rights": rights}
        target.setdefault("links", {})[member_id] = link
        self.store.set(target)

    def add_mesh(self, name: str, owner: str, mtype: int = 2) -> str:
        mid = "mesh//" + encode_id(self._random(48))
        self.store.set({"_id": mid, "type": "mesh", "name": name, "mtype": mtype,
                        "domain": "", "links": {}, "creation": NOW * 1000})
        self.link(owner, mid, MESHRIGHT_ADMIN)
        return mid

    def add_node(self, mesh_id: str, name: str, agent_id: int = 6) -> str:
        nid = "node//" + encode_id(self._random(48))
        mesh = self.store._documents[mesh_id]
        self.store.set({"_id": nid, "type": "node", "meshid": mesh_id, "mtype": mesh["mtype"],
                        "icon": 1, "name": name, "host": "10.0.0.1", "domain": "",
                        "agent": {"id": agent_id, "caps": 0}})
        return nid

    def connect_agent(self, node_id: str) -> None:
        self.agents.connected.add(node_id)
        self.presence.add(Connection(node_id, CONN_AGENT, "local", NOW - 5))

    def connect(self, user_id: str) -> Client:
        return Client(self, user_id)

    def doc(self, doc_id: str) -> Any:
        return self.store._documents.get(doc_id)


class Base(TestCase):
    def setUp(self) -> None:
        self.world = World()
        self.admin_id = self.world.add_user("admin", SITERIGHT_ADMIN)
        self.admin = self.world.connect(self.admin_id)


class FirstFramesTests(Base):
    def test_admin_first_frames(self) -> None:
        """A full admin gets serverinfo (with serverTime and certExpire), userinfo, traceinfo."""
        actions = [f["action"] for f in self.admin.frames]
        self.assertEqual(actions, ["serverinfo", "userinfo", "traceinfo"])
        info = self.admin.frames[0]["serverinfo"]
        self.assertEqual(info["serverTime"], NOW * 1000)
        self.assertEqual(info["certExpire"], 1)
        self.assertEqual(info["tlshash"], "AB" * 48)
        self.assertEqual(info["agentCertHash"], encode_id(bytes.fromhex("CD" * 48)))

    def test_user_first_frames_hide_secrets(self) -> None:
        """A plain user gets no traceinfo, no certExpire, and a userinfo without secrets."""
        uid = self.world.add_user("bob", password="secret password",
                                  otpsecret="JBSWY3DPEHPK3PXP")
        bob = self.world.connect(uid)
        self.assertEqual([f["action"] for f in bob.frames], ["serverinfo", "userinfo"])
        self.assertNotIn("certExpire", bob.frames[0]["serverinfo"])
        info = bob.frames[1]["userinfo"]
        self.assertEqual(info["otpsecret"], 1)
        for secret in ("hash", "salt", "type", "domain"):
            self.assertNotIn(secret, info)

    def test_server_warnings_for_full_admins(self) -> None:
        """Full admins get serverwarnings after traceinfo, at login and as they come;
        other users never see them."""
        uid = self.world.add_user("bob", password="secret password")
        bob = self.world.connect(uid)
        self.world.hub.add_warning("Configuration: settings.foo: not supported; ignored")
        [pushed] = [f for f in self.admin.frames if f["action"] == "serverwarnings"]
        self.assertEqual(pushed["warnings"], [{"msg": "Configuration: settings.foo: not "
                                               "supported; ignored", "id": 0, "args": []}])
        self.world.hub.add_warning("Configuration: settings.foo: not supported; ignored")
        self.assertEqual(len([f for f in self.admin.frames
                              if f["action"] == "serverwarnings"]), 1, "no duplicates")
        later = self.world.connect(self.admin_id)
        self.assertEqual([f["action"] for f in later.frames],
                         ["serverinfo", "userinfo", "traceinfo", "serverwarnings"])
        self.assertEqual(later.frames[3]["warnings"], pushed["warnings"])
        self.assertNotIn("serverwarnings", [f["action"] for f in bob.frames])
        self.assertNotIn("serverwarnings",
                         [f["action"] for f in self.world.connect(uid).frames])

    def test_server_warnings_from_start(self) -> None:
        """Warnings given when the server is built (its configuration's) are sent to full
        admins at login, each once."""
        world = World(server_warnings=("Configuration: a", "Configuration: a",
                                       "Configuration: b"))
        admin = world.connect(world.add_user("admin", SITERIGHT_ADMIN))
        self.assertEqual(admin.frames[-1], {"action": "serverwarnings", "warnings": [
            {"msg": "Configuration: a", "id": 0, "args": []},
            {"msg": "Configuration: b", "id": 0, "args": []}]})

    def test_failed_logins_notice(self) -> None:
        """Failed logins since the previous login are told as MeshCentral's notify."""
        uid = self.world.add_user("bob", password="secret password")
        bob = Client(self.world, uid, failed_logins=4)
        self.assertEqual([f["action"] for f in bob.frames], ["serverinfo", "userinfo", "msg"])
        notice = bob.frames[2]
        self.assertEqual({k: v for k, v in notice.items() if k != "id"}, {
            "action": "msg", "type": "notify", "title": "Security Warning",
            "tag": "ServerNotify", "value": "There has been 4 failed login attempts on this "
            "account since the last login.", "titleid": 3, "msgid": 12, "args": [4]})
        self.assertIsInstance(notice["id"], float)
        self.assertNotIn("msg", [f["action"] for f in self.world.connect(uid).frames])

    def test_logout_closes_that_web_sessions_channels(self) -> None:
        """Logging out of one web session closes the channels it opened, not the user's
        others; closing the user closes them all."""
        from meshd.control.hub import INTERNAL
        uid = self.world.add_user("bob", password="secret password")
        first = Client(self.world, uid, web_session="websession/a")
        second = Client(self.world, uid, web_session="websession/b")
        tool = Client(self.world, uid)
        self.world.bus.publish([uid], {INTERNAL: "close", "userid": uid,
                                       "websession": "websession/a"})
        self.assertEqual((first.session.closed, second.session.closed, tool.session.closed),
                         (True, False, False))
        self.world.hub.close_user(uid)
        self.assertEqual((second.session.closed, tool.session.closed), (True, True))

    def test_session_count_event_goes_to_others(self) -> None:
        """A new session is announced to admins, not to itself."""
        second = self.world.connect(self.admin_id)
        [event] = self.admin.events()
        self.assertEqual((event["action"], event["count"]), ("wssessioncount", 2))
        self.assertEqual(second.events(), [])
        second.session.connection_lost()
        self.assertEqual(self.admin.events()[-1]["count"], 1)


class BadInputTests(Base):
    def test_ignored_frames(self) -> None:
        """Invalid JSON, non-objects, bad actions and unknown actions get no answer."""
        for payload in (b"{", b"[]", b"12", b'"x"', b'{"action": 5}', b'{"action": "ab"}',
                        b'{"action": "' + b"x" * 33 + b'"}', b'{"action": "nosuchaction"}',
                        b'{"noaction": 1}', b"\xff\xfe", b"[" * 100000):
            self.assertEqual(self.admin.send_raw(payload), [], payload[:40])
        self.assertFalse(self.admin.closed)

    def test_ping(self) -> None:
        """ping is answered with pong; pong is ignored."""
        self.assertEqual(self.admin.send_raw(b'{"action":"ping"}'), [{"action": "pong"}])
        self.assertEqual(self.admin.send_raw(b'{"action":"pong"}'), [])

    def test_close_action(self) -> None:
        """{"action":"close"} closes the session."""
        self.admin.send_raw(b'{"action":"close"}')
        self.assertTrue(self.admin.closed)

    def test_wrong_types_give_errors_not_crashes(self) -> None:
        """Wrong field types are answered with MeshCentral's error texts."""
        self.assertEqual(self.admin.result("createmesh", meshname=5, meshtype=2),
                         "Invalid group name")
        self.assertEqual(self.admin.result("createmesh", meshname="g", meshtype="x"),
                         "Invalid group type")
        self.assertEqual(self.admin.result("createmesh", meshname="g", meshtype=4),
                         "Invalid group type")
        self.assertEqual(self.admin.result("adduser", username=["x"], **{"pass": "p"}),
                         "Invalid username")
        self.assertEqual(self.admin.result("addmeshuser", meshid="mesh//xxxxxxxx",
                                           meshadmin="all", usernames=["a"]),
                         "Invalid group rights")
        self.assertEqual(self.admin.result("deleteuser", userid={"a": 1}), "Invalid userid")
        self.assertEqual(self.admin.result("changeDeviceMesh", nodeids="x", meshid="m" * 10),
                         "Invalid nodeids")
        self.assertEqual(self.admin.result("adddeviceuser", nodeid="n", rights=1,
                                           usernames=["a"]), "Invalid rights")
        self.assertEqual(self.admin.request("runcommands", nodeids="x", type=0, cmds="ls"), [])
        self.assertEqual(self.admin.request("events", limit="all")[0]["events"], [])

    def test_bug_costs_one_request(self) -> None:
        """A handler that raises answers a generic error and the session goes on."""
        def broken(call: Any) -> None:
            raise RuntimeError("secret detail")

        self.admin.session._actions = {**self.admin.session._actions, "users": broken}
        answer = self.admin.reply("users")
        self.assertEqual(answer, {"action": "users", "responseid": "r",
                                  "result": "Internal error"})
        self.assertEqual(self.admin.send_raw(b'{"action":"ping"}'), [{"action": "pong"}])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_store_down(self) -> None:
        """A dead database is answered with an error, not silence."""
        self.world.store.unavailable = True
        self.assertEqual(self.admin.result("meshes"), "Database unavailable")

    def test_flood_closes(self) -> None:
        """More waiting requests than MAX_PENDING closes the session."""
        held: defer.Deferred[Any] = defer.Deferred()
        real_get = self.world.store.get
        self.world.store.get = lambda doc_id: held  # type: ignore[method-assign]
        for _ in range(MAX_PENDING + 2):  # the first one is being handled, not waiting
            self.admin.send_raw(b'{"action":"users","responseid":1}')
        self.assertTrue(self.admin.closed)
        self.world.store.get = real_get  # type: ignore[method-assign]
        held.callback(None)

    def test_requests_answered_in_order(self) -> None:
        """A request waits for the one before it to finish."""
        held: defer.Deferred[Any] = defer.Deferred()
        real_get = self.world.store.get
        calls = []

        def slow_get(doc_id: str) -> Any:
            calls.append(doc_id)
            if len(calls) == 1:
                return held.addCallback(lambda _: real_get(doc_id))
            return real_get(doc_id)

        self.world.store.get = slow_get  # type: ignore[method-assign]
        self.admin.send_raw(b'{"action":"meshes","tag":1}')
        self.admin.send_raw(b'{"action":"usergroups","tag":2}')
        self.assertEqual(calls, [self.admin_id])
        held.callback(None)
        self.assertEqual([f["action"] for f in self.admin.frames[-2:]],
                         ["meshes", "usergroups"])

    def test_removed_user_is_closed(self) -> None:
        """A session whose account disappeared is closed at its next request."""
        uid = self.world.add_user("bob")
        bob = self.world.connect(uid)
        self.world.store.remove(uid)
        bob.send_raw(b'{"action":"meshes"}')
        self.assertTrue(bob.closed)


class UserActionTests(Base):
    def test_users_list(self) -> None:
        """users lists safe users without responseid; without 0x2 it is Access denied."""
        bob_id = self.world.add_user("bob", password="secret password")
        frames = self.admin.request("users", tag="t")
        self.assertEqual(frames[0]["action"], "users")
        self.assertNotIn("responseid", frames[0])
        self.assertEqual(frames[0]["tag"], "t")
        self.assertEqual([u["_id"] for u in frames[0]["users"]], [self.admin_id, bob_id])
        self.assertNotIn("hash", frames[0]["users"][0])
        bob = self.world.connect(bob_id)
        self.assertEqual(bob.reply("users"), {"action": "users", "responseid": "r",
                                              "result": "Access denied"})

    def test_adduser(self) -> None:
        """adduser creates the account, events accountcreate before ok, and refuses dups."""
        frames = self.admin.request("adduser", username="Pete", email="Pete@Example.com",
                                    realname="Pete P", **{"pass": "P3te!pass#1"})
        self.assertEqual([f["action"] for f in frames], ["event", "adduser"])
        self.assertEqual(frames[1], {"action": "adduser", "responseid": "r", "result": "ok"})
        event = frames[0]["event"]
        self.assertEqual((event["action"], event["msgid"], event["msg"]),
                         ("accountcreate", 65, "Account created, email is pete@example.com"))
        self.assertNotIn("hash", event["account"])
        doc = self.world.doc("user//pete")
        assert doc is not None
        self.assertEqual((doc["name"], doc["email"], doc["realname"]),
                         ("Pete", "pete@example.com", "Pete P"))
        self.assertTrue(passwords.verify_password("P3te!pass#1", doc["salt"], doc["hash"]))
        self.assertEqual(self.admin.reply("adduser", username="pete", **{"pass": "xxxxxxxx"}),
                         {"action": "adduser", "responseid": "r",
                          "result": "User already exists", "msgid": 7})
        self.assertEqual(self.admin.result("adduser", username="a b", **{"pass": "xxxxxxxx"}),
                         "Invalid username")
        self.assertEqual(self.admin.result("adduser", username="ab", **{"pass": "x"}),
                         "Invalid password")
        self.assertEqual(self.admin.result("adduser", username="ab", email="nope",
                                           **{"pass": "xxxxxxxx"}), "Invalid email")

    def test_user_manager_grants_only_small_rights(self) -> None:
        """A user manager may grant locked/nonewgroups/notools only."""
        manager = self.world.connect(self.world.add_user("mgr", 2))
        self.assertEqual(manager.result("adduser", username="x1", siteadmin=2,
                                        **{"pass": "xxxxxxxx"}), "Invalid site permissions")
        self.assertEqual(manager.result("adduser", username="x2", siteadmin=0x20 | 0x80,
                                        **{"pass": "xxxxxxxx"}), "ok")

    def test_edituser(self) -> None:
        """edituser changes fields, events accountchange, answers ok even without change."""
        bob_id = self.world.add_user("bob", email="bob@example.com")
        frames = self.admin.request("edituser", userid="bob", realname="Robert",
                                    email="Robert@Example.com", emailVerified=True)
        self.assertEqual(frames[-1]["result"], "ok")
        [event] = [e for e in self.admin.events(frames)]
        self.assertEqual((event["action"], event["msgid"]), ("accountchange", 66))
        doc = self.world.doc(bob_id)
        assert doc is not None
        self.assertEqual((doc["realname"], doc["email"], doc["emailVerified"]),
                         ("Robert", "robert@example.com", True))
        frames = self.admin.request("edituser", userid="bob", realname="Robert")
        self.assertEqual([f["action"] for f in frames], ["edituser"])
        self.assertEqual(self.admin.result("edituser", userid="nobody"), "User does not exists")

    def test_nobody_changes_own_site_rights(self) -> None:
        """An admin cannot demote itself (and so never the last admin)."""
        self.admin.request("edituser", userid=self.admin_id, siteadmin=0)
        self.assertEqual(self.world.doc(self.admin_id)["siteadmin"], SITERIGHT_ADMIN)

    def test_lock_closes_sessions(self) -> None:
        """Locking a user closes its sessions."""
        bob_id = self.world.add_user("bob", 0)
        bob = self.world.connect(bob_id)
        self.assertEqual(self.admin.result("edituser", userid=bob_id, siteadmin=0x20), "ok")
        self.assertTrue(bob.closed)

    def test_deleteuser(self) -> None:
        """deleteuser unlinks the user everywhere, events, closes its sessions."""
        bob_id = self.world.add_user("bob", 0)
        mesh = self.world.add_mesh("g", self.admin_id)
        node = self.world.add_node(mesh, "n1")
        self.world.link(bob_id, mesh, 8)
        self.world.link(bob_id, node, 8)
        self.world.store.set({"_id": "logintoken-~t:abc", "type": "logintoken",
                              "nodeid": "logintoken-" + bob_id, "userid": bob_id,
                              "domain": ""})
        bob = self.world.connect(bob_id)
        frames = self.admin.request("deleteuser", userid="bob")
        self.assertEqual(frames[-1], {"action": "deleteuser", "responseid": "r",
                                      "result": "ok"})
        actions = [e["action"] for e in self.admin.events(frames) if not e.get("nolog")]
        self.assertEqual(actions, ["meshchange", "changenode", "accountremove"])
        self.assertIsNone(self.world.doc(bob_id))
        self.assertIsNone(self.world.doc("logintoken-~t:abc"))
        self.assertNotIn(bob_id, self.world.doc(mesh)["links"])
        self.assertNotIn("links", self.world.doc(node))
        self.assertTrue(bob.closed)
        self.assertEqual(self.admin.result("deleteuser", userid="bob"), "User does not exists")

    def test_last_full_admin_cannot_be_removed(self) -> None:
        """The last full administrator cannot delete itself; with two admins one can go."""
        self.assertEqual(self.admin.result("deleteuser", userid=self.admin_id),
                         "Cannot remove the last full administrator")
        self.assertIsNotNone(self.world.doc(self.admin_id))
        other = self.world.add_user("admin2", SITERIGHT_ADMIN)
        self.assertEqual(self.admin.result("deleteuser", userid=other), "ok")
        self.assertEqual(self.admin.result("deleteuser", userid=self.admin_id),
                         "Cannot remove the last full administrator")

    def test_user_manager_cannot_touch_admins(self) -> None:
        """A user manager can neither delete nor edit a full admin."""
        manager = self.world.connect(self.world.add_user("mgr", 2))
        self.assertEqual(manager.result("deleteuser", userid=self.admin_id),
                         "Permission denied")
        self.assertEqual(manager.result("edituser", userid=self.admin_id, realname="x"),
                         "Permission denied")

    def test_removed_user_loses_web_sessions(self) -> None:
        """Removing a user also ends its web sessions."""
        ended: list[str] = []

        class WebSessions:
            async def destroy_user(self, user_id: str) -> int:
                ended.append(user_id)
                return 1

        self.world.hub.web_sessions = WebSessions()
        self.world.add_user("bob")
        self.assertEqual(self.admin.result("deleteuser", userid="bob"), "ok")
        self.assertEqual(ended, ["user//bob"])

    def test_wssessioncount(self) -> None:
        """wssessioncount counts sessions per user, empty without 0x2."""
        bob = self.world.connect(self.world.add_user("bob"))
        self.assertEqual(self.admin.request("wssessioncount")[0]["wssessions"],
                         {self.admin_id: 1, "user//bob": 1})
        self.assertEqual(bob.request("wssessioncount")[0]["wssessions"], {})

    def test_userbroadcast(self) -> None:
        """userbroadcast pops a notify on every session (or one user's)."""
        bob = self.world.connect(self.world.add_user("bob"))
        self.assertEqual(self.admin.result("userbroadcast", msg="hello"), "ok")
        self.assertEqual(bob.frames[-1]["value"], "hello")
        self.assertEqual(bob.frames[-1]["title"], "admin")
        self.assertEqual(self.admin.result("userbroadcast", msg="x" * 513),
                         "Message is too long")
        self.assertEqual(bob.result("userbroadcast", msg="hi"), "Permission denied")

    def test_login_tokens(self) -> None:
        """createLoginToken answers name/tokenUser/tokenPass; loginTokens lists and removes."""
        frames = self.admin.request("createLoginToken", name="tok", expire=60)
        self.assertEqual(frames[0]["action"], "createLoginToken")
        self.assertNotIn("responseid", frames[0])
        token = frames[0]
        self.assertTrue(token["tokenUser"].startswith("~t:"))
        self.assertEqual(token["expire"], token["created"] + 3600000)
        self.assertEqual(self.admin.events(frames)[0]["action"], "loginTokenAdded")
        record = self.world.doc("logintoken-" + token["tokenUser"])
        assert record is not None
        self.assertTrue(passwords.verify_password(token["tokenPass"], record["salt"],
                                                  record["hash"]))
        listing = self.admin.request("loginTokens")[0]
        self.assertEqual(listing["loginTokens"], [{
            "name": "tok", "tokenUser": token["tokenUser"], "created": token["created"],
            "expire": token["expire"]}])
        self.admin.request("loginTokens", remove=[token["tokenUser"]])
        self.assertIsNone(self.world.doc("logintoken-" + token["tokenUser"]))
        self.assertEqual(self.admin.result("createLoginToken", name="", expire=0),
                         "Invalid name")
        self.assertEqual(self.admin.result("createLoginToken", name="x", expire=-1),
                         "Invalid expire value")

    def test_authcookie_round_trip(self) -> None:
        """authcookie gives a cookie that names this user, for this address."""
        frame = self.admin.request("authcookie")[0]
        key = self.world.store._documents["LoginCookieEncryptionKey"]["key"]
        payload = decode_cookie(frame["cookie"], bytes.fromhex(key), NOW, 60)
        self.assertEqual(payload, {"userid": self.admin_id, "domainid": "", "ip": "127.0.0.1",
                                   "time": NOW})
        self.assertIsNotNone(decode_cookie(frame["rcookie"], bytes.fromhex(key), NOW, 60))


class GroupActionTests(Base):
    def test_createmesh_events_then_reply(self) -> None:
        """createmesh sends accountchange and createmesh events, then the reply."""
        frames = self.admin.request("createmesh", meshname="grpA", meshtype=2, desc="A")
        self.assertEqual([f["action"] for f in frames], ["event", "event", "createmesh"])
        self.assertEqual([e["action"] for e in self.admin.events(frames)],
                         ["accountchange", "createmesh"])
        reply = frames[-1]
        self.assertEqual(reply["result"], "ok")
        mesh_id = reply["meshid"]
        self.assertTrue(mesh_id.startswith("mesh//") and len(mesh_id) == 70)
        self.assertEqual(reply["links"], {self.admin_id: {"name": "admin",
                                                          "rights": MESHRIGHT_ADMIN}})
        mesh = self.world.doc(mesh_id)
        assert mesh is not None
        self.assertEqual((mesh["name"], mesh["mtype"], mesh["desc"], mesh["creation"]),
                         ("grpA", 2, "A", NOW * 1000))
        self.assertEqual(self.world.doc(self.admin_id)["links"][mesh_id],
                         {"rights": MESHRIGHT_ADMIN})
        created = self.admin.events(frames)[1]
        self.assertEqual((created["msgid"], created["msg"]), (76, "Device group created: grpA"))
        self.assertIn("time", created)
        self.assertEqual(self.admin.result("createmesh", meshname="x", meshtype="3"), "ok")

    def test_meshes_only_visible(self) -> None:
        """meshes lists the caller's groups (direct or via a user group), not others."""
        bob_id = self.world.add_user("bob")
        mine = self.world.add_mesh("mine", self.admin_id)
        theirs = self.world.add_mesh("theirs", bob_id)
        ugrp = "ugrp//" + encode_id(self.world._random(48))
        self.world.store.set({"_id": ugrp, "type": "ugrp", "name": "ug", "domain": "",
                              "links": {}})
        shared = self.world.add_mesh("shared", self.admin_id)
        self.world.link(ugrp, shared, 8)
        self.world.link(bob_id, ugrp, 1)
        bob = self.world.connect(bob_id)
        names = [m["name"] for m in bob.request("meshes")[0]["meshes"]]
        self.assertEqual(names, ["theirs", "shared"])
        self.assertNotIn(mine, [m["_id"] for m in bob.request("meshes")[0]["meshes"]])
        self.assertEqual(theirs, bob.request("meshes")[0]["meshes"][0]["_id"])

    def test_editmesh(self) -> None:
        """editmesh renames, events meshchange with changed ids, resolves meshidname."""
        mesh = self.world.add_mesh("grpA", self.admin_id)
        frames = self.admin.request("editmesh", meshid=mesh, meshname="grpB", desc="new")
        self.assertEqual(frames[-1]["result"], "ok")
        [event] = self.admin.events(frames)
        self.assertEqual((event["action"], event["msgid"], event["msgArgs"]),
                         ("meshchange", 142, ["grpB", [1, 2]]))
        self.assertEqual(event["msg"], 'Device group name changed from "grpA" to "grpB" '
                                       "and description changed")
        self.assertEqual(self.admin.result("editmesh", meshidname="grpB", meshname="grpC"), "ok")
        self.assertEqual(self.world.doc(mesh)["name"], "grpC")
        self.assertEqual(self.admin.result("editmesh", meshid="mesh//nosuchgroup"),
                         "Invalid group identifier ")

    def test_deletemesh(self) -> None:
        """deletemesh marks the group deleted, removes its devices, unlinks members."""
        bob_id = self.world.add_user("bob")
        mesh = self.world.add_mesh("grpA", self.admin_id)
        self.world.link(bob_id, mesh, 8)
        node = self.world.add_node(mesh, "n1")
        other = self.world.add_node(self.world.add_mesh("grpB", self.admin_id), "n2")
        closed: list[str] = []

        class Held:
            def __init__(self, name: str) -> None:
                self.name = name

            def close(self) -> None:
                closed.append(self.name)

            def evict(self, reason: str) -> None:
                closed.append(f"{self.name}: {reason}")

        self.world.presence.add(Connection(node, CONN_AGENT, "local", NOW, handle=Held("agent")))
        self.world.presence.add(Connection(node, CONN_CIRA, "local", NOW, handle=Held("cira")))
        self.world.presence.add(Connection(other, CONN_AGENT, "local", NOW,
                                           handle=Held("other")))
        bob = self.world.connect(bob_id)
        frames = self.admin.request("deletemesh", meshname="grpA")
        self.assertEqual(frames[-1]["result"], "ok")
        self.assertEqual(sorted(closed), ["agent", "cira: device group deleted"],
                         "the group's devices are disconnected, no others")
        [deleted] = [e for e in self.admin.events(frames) if e["action"] == "deletemesh"]
        self.assertEqual(deleted["msg"], "Device group deleted: grpA")
        self.assertIn("deletemesh", [e["action"] for e in bob.events()])
        self.assertIn("deleted", self.world.doc(mesh))
        self.assertIsNone(self.world.doc(node))
        self.assertNotIn(mesh, self.world.doc(bob_id).get("links", {}))
        self.assertEqual([m["name"] for m in self.admin.request("meshes")[0]["meshes"]],
                         ["grpB"])
        self.assertEqual(self.admin.result("deletemesh", meshid=mesh), "Unknown device group")

    def test_addmeshuser_and_removemeshuser(self) -> None:
        """addmeshuser links both sides; MeshCentral's per-user messages; removemeshuser."""
        bob_id = self.world.add_user("bob")
        mesh = self.world.add_mesh("grpA", self.admin_id)
        bob = self.world.connect(bob_id)
        frames = self.admin.request("addmeshuser", meshid=mesh, usernames=["Bob"],
                                    meshadmin=24)
        self.assertEqual(frames[-1], {"action": "addmeshuser", "responseid": "r",
                                      "result": "Added user bob", "success": 1, "failed": 0})
        self.assertEqual([e["action"] for e in self.admin.events(frames)],
                         ["accountchange", "meshchange"])
        self.assertEqual(self.world.doc(bob_id)["links"][mesh], {"rights": 24})
        self.assertEqual(self.world.doc(mesh)["links"][bob_id], {"name": "bob", "rights": 24})
        # bob now hears the group's events.
        self.admin.request("editmesh", meshid=mesh, desc="x")
        self.assertEqual(bob.events()[-1]["action"], "meshchange")
        self.assertEqual(self.admin.result("addmeshuser", meshid=mesh, usernames=["ghost"],
                                           meshadmin=8), "Nothing done")
        self.assertEqual(self.admin.result("addmeshuser", meshid=mesh, userids=["user//ghost"],
                                           meshadmin=8), "Unknown user ghost")
        self.assertEqual(self.admin.result("addmeshuser", meshid=mesh, usernames=["admin"],
                                           meshadmin=8), "Can't change self, Nothing done")
        self.assertEqual(self.admin.result("removemeshuser", meshid=mesh, userid="bob"), "ok")
        self.assertNotIn(mesh, self.world.doc(bob_id).get("links", {}))
        self.assertEqual(self.admin.result("removemeshuser", meshid=mesh, userid="bob"),
                         "User not in group")
        self.assertEqual(self.admin.result("removemeshuser", meshid=mesh, userid="admin"),
                         "Can't remove self")

    def test_manager_cannot_grant_more_than_it_holds(self) -> None:
        """A group user manager cannot grant full rights or rights it lacks."""
        bob_id, carol_id = self.world.add_user("bob"), self.world.add_user("carol")
        mesh = self.world.add_mesh("grpA", self.admin_id)
        self.world.link(bob_id, mesh, 2 | 8)
        bob = self.world.connect(bob_id)
        self.assertEqual(bob.result("addmeshuser", meshid=mesh, usernames=["carol"],
                                    meshadmin=MESHRIGHT_ADMIN),
                         "Can't set device group administrator, if not administrator, "
                         "Nothing done")
        self.assertEqual(bob.result("addmeshuser", meshid=mesh, usernames=["carol"],
                                    meshadmin=8 | 16), "Added user carol")
        self.assertEqual(self.world.doc(carol_id)["links"][mesh], {"rights": 8})
        self.assertEqual(bob.result("removemeshuser", meshid=mesh, userid="admin"),
                         "Permission denied")

    def test_invite_link(self) -> None:
        """createInviteLink answers an agentinvite URL with an invitation cookie."""
        mesh = self.world.add_mesh("grpA", self.admin_id)
        reply = self.admin.reply("createInviteLink", meshid=mesh, expire=1, flags=0, tag="t")
        self.assertTrue(reply["url"].startswith("https://localhost/agentinvite?c="))
        key = self.world.store._documents["InvitationLinkEncryptionKey"]["key"]
        payload = decode_cookie(reply["cookie"], bytes.fromhex(key), NOW, 0)
        assert payload is not None
        self.assertEqual((payload["a"], payload["mid"], payload["expire"]), (4, mesh, 60))


class DeviceActionTests(Base):
    def setUp(self) -> None:
        super().setUp()
        self.local = self.world.add_mesh("localA", self.admin_id, mtype=3)
        self.local2 = self.world.add_mesh("localB", self.admin_id, mtype=3)
        self.agents = self.world.add_mesh("agents", self.admin_id, mtype=2)

    def test_addlocaldevice_and_nodes(self) -> None:
        """addlocaldevice creates an agentless device; nodes lists it grouped by group."""
        frames = self.admin.request("addlocaldevice", meshid=self.local, devicename="dev1",
                                    hostname="127.0.0.2", type=6)
        self.assertEqual(frames[-1], {"action": "addlocaldevice", "responseid": "r",
                                      "result": "ok"})
        [event] = self.admin.events(frames)
        self.assertEqual((event["action"], event["msg"]),
                         ("addnode", "Added device dev1 to device group localA"))
        nodes = self.admin.reply("nodes")["nodes"]
        [node] = nodes[self.local]
        self.assertEqual((node["name"], node["host"], node["mtype"], node["agent"]),
                         ("dev1", "127.0.0.2", 3, {"id": 6, "caps": 0}))
        self.assertNotIn("meshid", node)
        self.assertEqual(self.admin.reply("addlocaldevice", meshid=self.agents,
                                          devicename="x", hostname="h", type=4),
                         {"action": "changeDeviceMesh", "responseid": "r",
                          "result": "Local device agentless mesh only allowed"})
        self.assertEqual(self.admin.result("addlocaldevice", meshid=self.local,
                                           devicename="x", hostname="h", type=5),
                         "Invalid type")

    def test_addamtdevice_hides_password(self) -> None:
        """addamtdevice stores the AMT credentials; clients only ever see pass: 1."""
        amt = self.world.add_mesh("amt", self.admin_id, mtype=1)
        frames = self.admin.request("addamtdevice", meshid=amt, devicename="amt1",
                                    hostname="h", amtusername="admin", amtpassword="P@ss",
                                    amttls=1)
        self.assertEqual(frames[-1]["result"], "ok")
        self.assertEqual(self.admin.events(frames)[0]["node"]["intelamt"]["pass"], 1)
        [node] = self.admin.reply("nodes", meshid=amt)["nodes"][amt]
        self.assertEqual(node["intelamt"], {"user": "admin", "pass": 1, "tls": 1})

    def test_nodes_conn_bits_and_filters(self) -> None:
        """nodes adds conn/pwr/agct from presence; meshid/meshname/id filters; bad group."""
        n1 = self.world.add_node(self.agents, "n1")
        n2 = self.world.add_node(self.agents, "n2")
        self.world.connect_agent(n1)
        nodes = self.admin.reply("nodes", meshname="agents")["nodes"][self.agents]
        self.assertEqual([(n["name"], n.get("conn"), n.get("pwr")) for n in nodes],
                         [("n1", 1, 1), ("n2", None, None)])
        self.assertEqual(nodes[0]["agct"], (NOW - 5) * 1000)
        only = self.admin.reply("nodes", id=n2)["nodes"]
        self.assertEqual([n["_id"] for group in only.values() for n in group], [n2])
        self.assertEqual(self.admin.reply("nodes", meshid="mesh//nope"),
                         {"action": "nodes", "responseid": "r", "result": "Invalid group id"})

    def test_nodes_listing_kept_until_something_changes(self) -> None:
        """A listing is built once and reused while the store and presence stay the
        same; a document write (here behind the server's back) or a device connecting
        is seen at once."""
        n1 = self.world.add_node(self.agents, "n1")
        builds: list[list[str]] = []
        find = self.world.store.find_nodes_by_mesh

        def counting(mesh_ids: list[str], domain: Any = None) -> Any:
            builds.append(list(mesh_ids))
            return find(mesh_ids, domain)

        self.world.store.find_nodes_by_mesh = counting  # type: ignore[method-assign]

        def names() -> list[tuple[str, Any]]:
            listing = self.admin.reply("nodes", meshid=self.agents)["nodes"][self.agents]
            return [(n["name"], n.get("conn")) for n in listing]

        self.assertEqual(names(), [("n1", None)])
        self.assertEqual(names(), [("n1", None)])
        self.assertEqual(len(builds), 1, "the second listing is the kept one")
        record = dict(self.world.doc(n1), name="renamed")
        self.successResultOf(self.world.store.set(record))
        self.assertEqual(names(), [("renamed", None)])
        self.world.connect_agent(n1)
        self.assertEqual(names(), [("renamed", 1)])
        self.assertEqual(names(), [("renamed", 1)])
        self.assertEqual(len(builds), 3)

    def test_direct_device_link_visible(self) -> None:
        """A user linked to one device sees that device and nothing else of its group."""
        n1 = self.world.add_node(self.agents, "n1")
        self.world.add_node(self.agents, "n2")
        bob_id = self.world.add_user("bob")
        self.world.link(bob_id, n1, 8)
        bob = self.world.connect(bob_id)
        nodes = bob.reply("nodes")["nodes"]
        self.assertEqual([n["_id"] for n in nodes[self.agents]], [n1])
        self.assertEqual(bob.request("meshes")[0]["meshes"], [])

    def test_changedevice(self) -> None:
        """changedevice edits fields, tags are trimmed/sorted/unique, event changenode."""
        n1 = self.world.add_node(self.agents, "n1")
        frames = self.admin.request("changedevice", nodeid=n1, name="dev1b", desc="first",
                                    tags=["beta", " alpha", "beta"], icon=3)
        self.assertEqual(frames[-1]["result"], "ok")
        [event] = self.admin.events(frames)
        self.assertEqual(event["msg"],
                         "Changed device dev1b from group agents: icon, name, description, tags")
        node = self.world.doc(n1)
        assert node is not None
        self.assertEqual((node["name"], node["desc"], node["tags"], node["icon"]),
                         ("dev1b", "first", ["alpha", "beta"], 3))
        self.assertEqual(self.admin.result("changedevice", nodeid="node//nope"),
                         "Access Denied")

    def test_move_between_groups(self) -> None:
        """changeDeviceMesh moves; same group and different group types are refused."""
        n1 = self.world.add_node(self.local, "n1")
        frames = self.admin.request("changeDeviceMesh", nodeids=[n1], meshid=self.local2)
        self.assertEqual(frames[-1]["result"], "ok")
        event = self.admin.events(frames)[0]
        self.assertEqual((event["action"], event["oldMeshId"], event["newMeshId"]),
                         ("nodemeshchange", self.local, self.local2))
        self.assertEqual(self.world.doc(n1)["meshid"], self.local2)
        self.assertEqual(self.admin.result("changeDeviceMesh", nodeids=[n1], meshid=self.local2),
                         "Device already in correct group")
        # MeshCentral 1.1.55 answers nothing here (spec §12.4); meshd says why.
        self.assertEqual(self.admin.result("changeDeviceMesh", nodeids=[n1], meshid=self.agents),
                         "Device groups are of different types")
        self.assertEqual(self.world.doc(n1)["meshid"], self.local2)
        self.assertEqual(self.admin.result("changeDeviceMesh", nodeids=["node//x"],
                                           meshid=self.local), "Device not found")

    def test_removedevices(self) -> None:
        """removedevices deletes the device and its records; again: Denied."""
        n1 = self.world.add_node(self.agents, "n1")
        self.world.store.set({"_id": "si" + n1, "type": "sysinfo", "nodeid": n1})
        bob_id = self.world.add_user("bob")
        self.world.link(bob_id, n1, 8)
        frames = self.admin.request("removedevices", nodeids=[n1])
        self.assertEqual(frames[-1]["result"], "ok")
        self.assertIn("removenode", [e["action"] for e in self.admin.events(frames)])
        self.assertIsNone(self.world.doc(n1))
        self.assertIsNone(self.world.doc("si" + n1))
        self.assertNotIn(n1, self.world.doc(bob_id).get("links", {}))
        self.assertEqual(self.admin.result("removedevices", nodeids=[n1]), "Denied")

    def test_adddeviceuser(self) -> None:
        """adddeviceuser links a user to a device and removes the link."""
        n1 = self.world.add_node(self.agents, "n1")
        bob_id = self.world.add_user("bob")
        self.assertEqual(self.admin.result("adddeviceuser", nodeid=n1, usernames=["bob"],
                                           rights=8), "ok")
        self.assertEqual(self.world.doc(n1)["links"][bob_id], {"rights": 8})
        self.assertEqual(self.world.doc(bob_id)["links"][n1], {"rights": 8})
        self.assertEqual(self.admin.result("adddeviceuser", nodeid=n1, usernames=["bob"],
                                           rights=0, remove=True), "ok")
        self.assertNotIn("links", self.world.doc(n1))

    def test_device_details(self) -> None:
        """getsysinfo/getnetworkinfo/lastconnect answer stored data or MeshCentral's noinfo."""
        n1 = self.world.add_node(self.agents, "n1")
        self.assertEqual(self.admin.reply("getsysinfo", nodeid=n1, nodeinfo=True),
                         {"action": "getsysinfo", "nodeid": n1, "noinfo": True,
                          "result": "Invalid device id"})
        self.assertEqual(self.admin.reply("getnetworkinfo", nodeid=n1),
                         {"action": "getnetworkinfo", "nodeid": n1, "netif": None,
                          "netif2": None})
        self.assertEqual(self.admin.reply("lastconnect", nodeid=n1),
                         {"action": "lastconnect", "nodeid": n1, "noinfo": True,
                          "result": "No data"})
        self.world.store.set({"_id": "si" + n1, "type": "sysinfo", "nodeid": n1, "domain": "",
                              "updateTime": 5, "data": {"hardware": {"x": 1}, "hash": "h"}})
        self.world.store.set({"_id": "lc" + n1, "type": "lastconnect", "nodeid": n1,
                              "time": 7, "addr": "1.2.3.4", "meshid": self.agents})
        info = self.admin.reply("getsysinfo", nodeid=n1, nodeinfo=True)
        self.assertEqual((info["hardware"], info["hash"], info["rights"], info["node"]["name"]),
                         ({"x": 1}, "h", MESHRIGHT_ADMIN, "n1"))
        self.assertEqual(self.admin.reply("lastconnect", nodeid=n1),
                         {"action": "lastconnect", "nodeid": n1, "time": 7, "addr": "1.2.3.4"})

    def test_runcommands_routed_and_reply_returns(self) -> None:
        """runcommands goes to the agent; with reply the agent's answer comes to this session
        only."""
        n1 = self.world.add_node(self.agents, "n1")
        self.assertEqual(self.admin.result("runcommands", nodeids=[n1], type=0, cmds="ls",
                                           runAsUser=0, reply=True), "Agent not connected")
        self.world.connect_agent(n1)
        other = self.world.connect(self.admin_id)
        frames = self.admin.request("runcommands", nodeids=[n1], type=0, cmds="ls",
                                    runAsUser=0, reply=True, responseid="meshctrl")
        self.assertEqual([e["action"] for e in self.admin.events(frames)], ["runcommands"])
        self.assertNotIn("runcommands", [f["action"] for f in frames])
        [(node_id, sent)] = self.world.agents.sent
        self.assertEqual(node_id, n1)
        self.assertEqual((sent["action"], sent["type"], sent["cmds"], sent["reply"],
                          sent["responseid"]), ("runcommands", 3, "ls", True, "meshctrl"))
        # The agent answers (AgentManager.agent_message publishes this on the bus).
        self.world.bus.publish(["agent:" + n1], {"action": "agentmsg", "nodeid": n1, "message": {
            "action": "msg", "type": "runcommands", "result": "file1\n",
            "sessionid": sent["sessionid"], "responseid": "meshctrl"}})
        self.assertEqual(self.admin.frames[-1], {"action": "msg", "type": "runcommands",
                                                 "result": "file1\n", "responseid": "meshctrl",
                                                 "nodeid": n1})
        self.assertNotIn("runcommands", [f.get("type") for f in other.frames])
        frames = self.admin.request("runcommands", nodeids=[n1], type=0, cmds="ls",
                                    reply=False)
        self.assertEqual(frames[0], {"action": "runcommands", "responseid": "r", "result": "OK"})
        self.assertEqual(self.admin.result("runcommands", nodeids=[n1], type=2, cmds="ls"),
                         "Invalid command type")

    def test_routed_msg(self) -> None:
        """A routed msg reaches a connected agent with who is asking; else Unable to route."""
        n1 = self.world.add_node(self.agents, "n1")
        self.assertEqual(self.admin.reply("msg", nodeid=n1, type="openUrl", url="https://x"),
                         {"action": "msg", "result": "Unable to route", "responseid": "r"})
        self.world.connect_agent(n1)
        self.assertEqual(self.admin.result("msg", nodeid=n1, type="openUrl", url="https://x"),
                         "OK")
        sent = self.world.agents.sent[-1][1]
        self.assertEqual((sent["type"], sent["url"], sent["userid"], sent["username"]),
                         ("openUrl", "https://x", self.admin_id, "admin"))
        self.assertNotIn("nodeid", sent)

    def test_webrelay_does_not_crash(self) -> None:
        """webrelay (which crashes MeshCentral 1.1.55) answers WebRelay Disabled."""
        n1 = self.world.add_node(self.agents, "n1")
        self.assertEqual(self.admin.result("webrelay", nodeid=n1, port=80, appid=1),
                         "WebRelay Disabled")

    def test_device_shares_empty(self) -> None:
        """deviceShares lists no links for a fresh device."""
        n1 = self.world.add_node(self.agents, "n1")
        self.assertEqual(self.admin.reply("deviceShares", nodeid=n1),
                         {"action": "deviceShares", "nodeid": n1, "deviceShares": []})


class UserGroupTests(Base):
    def test_user_group_life(self) -> None:
        """createusergroup, addusertousergroup, group rights on a mesh, removal, delete."""
        bob_id = self.world.add_user("bob")
        reply = [f for f in self.admin.request("createusergroup", name="ug1", desc="d")
                 if f["action"] == "createusergroup"][0]
        self.assertEqual((reply["result"], reply["links"]), ("ok", {}))
        ugrp = reply["ugrpid"]
        self.assertEqual(self.admin.reply("addusertousergroup", ugrpid=ugrp,
                                          usernames=["bob", "ghost"]),
                         {"action": "addusertousergroup", "responseid": "r", "result": "ok",
                          "added": 1, "failed": 1})
        self.assertEqual(self.world.doc(bob_id)["links"][ugrp], {"rights": 1})
        mesh = self.world.add_mesh("g", self.admin_id)
        self.assertEqual(self.admin.result("addmeshuser", meshid=mesh, userid=ugrp,
                                           meshadmin=8),
                         f"Added user {ugrp.split('/')[2]}")
        bob = self.world.connect(bob_id)
        self.assertEqual([m["_id"] for m in bob.request("meshes")[0]["meshes"]], [mesh])
        groups = self.admin.request("usergroups")[0]["ugroups"]
        self.assertEqual(set(groups[ugrp]["links"]), {bob_id, mesh})
        self.assertEqual(bob.request("usergroups")[0]["ugroups"], {ugrp: {"name": "ug1"}})
        self.assertEqual(self.admin.result("removeuserfromusergroup", ugrpid=ugrp,
                                           userid=bob_id), "ok")
        self.assertEqual(bob.request("meshes")[0]["meshes"], [])
        self.assertEqual(self.admin.reply("deleteusergroup", ugrpid=ugrp),
                         {"action": "deleteusergroup", "responseid": "r", "result": "ok",
                          "ugrpid": ugrp})
        self.assertNotIn(ugrp, self.world.doc(mesh)["links"])
        self.assertIsNone(self.admin.request("usergroups")[0]["ugroups"])
        self.assertEqual(self.admin.result("deleteusergroup", ugrpid=ugrp),
                         "Unknown device group")


class EventTests(Base):
    def test_events_listing_newest_first(self) -> None:
        """events lists what the caller's subscriptions saw, newest first, ISO times."""
        self.admin.request("createmesh", meshname="a", meshtype=2)
        self.world.clock.advance(1)
        self.admin.request("createmesh", meshname="b", meshtype=2)
        events = self.admin.reply("events", limit=2)["events"]
        self.assertEqual([e["msg"] for e in events],
                         ["Device group created: b", "Device group created: a"])
        self.assertEqual(events[0]["time"], "2027-01-15T08:00:01.000Z")
        for field in ("ids", "domain", "_id"):
            self.assertNotIn(field, events[0])

    def test_events_not_leaked(self) -> None:
        """A user without links sees neither the live nor the stored events of others."""
        bob = self.world.connect(self.world.add_user("bob"))
        self.admin.request("createmesh", meshname="secret", meshtype=2)
        self.assertEqual(bob.events(), [])
        self.assertEqual([e["action"] for e in bob.reply("events")["events"]], [])

    def test_node_events(self) -> None:
        """events with nodeid lists that device's events without nodeid/etype."""
        mesh = self.world.add_mesh("g", self.admin_id)
        n1 = self.world.add_node(mesh, "n1")
        self.admin.request("changedevice", nodeid=n1, name="renamed")
        reply = self.admin.reply("events", nodeid=n1)
        self.assertEqual(reply["nodeid"], n1)
        [event] = reply["events"]
        self.assertEqual(event["action"], "changenode")
        self.assertNotIn("nodeid", event)
        bob = self.world.connect(self.world.add_user("bob"))
        self.assertEqual(bob.reply("events", nodeid=n1)["events"], [])

    def test_user_events_need_manage_users(self) -> None:
        """events with userid (site right 0x2) lists that user's events."""
        self.admin.request("adduser", username="pete", **{"pass": "P3te!pass#1"})
        reply = self.admin.reply("events", userid="user//pete")
        self.assertEqual([e["action"] for e in reply["events"]], ["accountcreate"])

    def test_previous_logins(self) -> None:
        """previousLogins lists the caller's logins and failed logins (newest first); a
        user manager may ask for another user's; others get no answer."""
        from datetime import datetime, timezone
        bob_id = self.world.add_user("bob")
        for offset, action, msgid, user in ((30, "login", 107, self.admin_id),
                                            (20, "authfail", 110, self.admin_id),
                                            (10, "login", 107, bob_id)):
            self.world.store.store_event({
                "ids": [user, "*"], "domain": "", "etype": "user", "action": action,
                "userid": user, "msgid": msgid, "msgArgs": ["10.0.0.1", "Chrome/1", "Linux"],
                "time": datetime.fromtimestamp(NOW - offset, timezone.utc)})
        self.world.store.store_event({
            "ids": [self.admin_id, "*"], "domain": "", "action": "login", "userid":
            self.admin_id, "time": datetime.fromtimestamp(NOW - 5, timezone.utc)})
        mine = self.admin.reply("previousLogins")
        self.assertEqual(mine, {"action": "previousLogins", "events": [
            {"t": "2027-01-15T07:59:40.000Z", "m": 110, "a": ["10.0.0.1", "Chrome/1", "Linux"]},
            {"t": "2027-01-15T07:59:30.000Z", "m": 107, "a": ["10.0.0.1", "Chrome/1", "Linux"]},
        ]})
        theirs = self.admin.reply("previousLogins", userid=bob_id)
        self.assertEqual((theirs["userid"], [e["m"] for e in theirs["events"]]),
                         (bob_id, [107]))
        bob = self.world.connect(bob_id)
        self.assertEqual(bob.request("previousLogins", userid=self.admin_id), [])
        self.assertEqual([e["m"] for e in bob.reply("previousLogins")["events"]], [107])

    def test_limited_events(self) -> None:
        """With LIMITEVENTS on a group a user only hears its own doings there."""
        mesh = self.world.add_mesh("g", self.admin_id)
        n1 = self.world.add_node(mesh, "n1")
        bob_id = self.world.add_user("bob")
        self.world.link(bob_id, mesh, 0x2000 | 0x4)
        bob = self.world.connect(bob_id)
        self.admin.request("changedevice", nodeid=n1, name="by-admin")
        self.assertEqual(bob.events(), [])
        self.assertEqual(bob.result("changedevice", nodeid=n1, name="by-bob"), "ok")
        self.assertEqual([e["node"]["name"] for e in bob.events()], ["by-bob"])
        self.world.bus.publish([n1, "*", mesh], {"action": "nodeconnect", "nodeid": n1,
                                                 "meshid": mesh, "conn": 1, "nolog": 1})
        self.assertEqual(bob.events()[-1]["action"], "nodeconnect")

    def test_agent_connection_event_reaches_group_members(self) -> None:
        """A nodeconnect published by the agent manager reaches users of that group only."""
        mesh = self.world.add_mesh("g", self.admin_id)
        n1 = self.world.add_node(mesh, "n1")
        bob_id, eve_id = self.world.add_user("bob"), self.world.add_user("eve")
        self.world.link(bob_id, mesh, 8)
        bob, eve = self.world.connect(bob_id), self.world.connect(eve_id)
        self.world.bus.publish([n1, "*", mesh], {"action": "nodeconnect", "nodeid": n1,
                                                 "meshid": mesh, "conn": 1, "nolog": 1})
        self.assertEqual(bob.events()[-1]["action"], "nodeconnect")
        self.assertEqual(eve.events(), [])


class NewActionTests(Base):
    """getDeviceDetails, serverstats, logincookie and report: answers and rights."""

    def setUp(self) -> None:
        super().setUp()
        self.mesh = self.world.add_mesh("grp", self.admin_id)
        self.n1 = self.world.add_node(self.mesh, "n1")
        self.n2 = self.world.add_node(self.mesh, "n2")
        self.world.store.set({"_id": "si" + self.n1, "type": "sysinfo", "nodeid": self.n1,
                              "domain": "", "data": {"hash": "h", "hardware": {
                                  "identifiers": {"cpu_name": "Xeon, 8 cores",
                                                  "bios_mode": "UEFI"},
                                  "linux": {"bios_vendor": "ACME", "product_uuid": "U-1"},
                                  "windows": None,
                                  "agentvers": {"openssl": "3.0", "commitHash": "abc"}}}})
        self.world.store.set({"_id": "if" + self.n1, "type": "ifinfo", "nodeid": self.n1,
                              "netif2": {"eth0": [{"mac": "00:11", "address": "10.0.0.9"}]}})
        self.world.store.set({"_id": "lc" + self.n1, "type": "lastconnect", "nodeid": self.n1,
                              "meshid": self.mesh, "domain": "", "time": 7, "addr": "1.2.3.4"})

    def details(self, client: Client, **fields: Any) -> Any:
        frames = client.request("getDeviceDetails", **fields)
        if not frames:
            return None
        [frame] = frames
        self.assertEqual((frame["action"], frame["type"]),
                         ("getDeviceDetails", fields.get("type")))
        return frame["data"]

    def test_device_details_json_and_rights(self) -> None:
        """Full details for a user with DEVICEDETAILS; without it no sys/net; unlinked: none."""
        self.world.connect_agent(self.n1)
        data = json.loads(self.details(self.admin, type="json"))
        self.assertEqual([d["node"]["name"] for d in data], ["n1", "n2"])
        first = data[0]
        self.assertEqual((first["node"]["groupname"], first["node"]["conn"]), ("grp", 1))
        self.assertEqual(first["sys"]["hardware"]["linux"]["product_uuid"], "U-1")
        self.assertEqual(first["net"]["netif2"]["eth0"][0]["mac"], "00:11")
        self.assertEqual(first["lastConnect"], {"nodeid": self.n1, "time": 7, "addr": "1.2.3.4"})
        self.assertEqual((data[1].get("sys"), data[1]["net"]), (None, None))
        bob_id = self.world.add_user("bob")
        self.world.link(bob_id, self.n1, 8)  # remote control, no device details
        bob = self.world.connect(bob_id)
        [only] = json.loads(self.details(bob, type="json"))
        self.assertEqual(only["node"]["_id"], self.n1)
        self.assertNotIn("sys", only)
        self.assertNotIn("net", only)
        eve = self.world.connect(self.world.add_user("eve"))
        self.assertEqual(json.loads(self.details(eve, type="json")), [])
        self.assertEqual(json.loads(self.details(eve, type="json", nodeids=[self.n1])), [])
        # nodeids narrows the admin's listing; bad input is ignored.
        self.assertEqual([d["node"]["_id"] for d in json.loads(
            self.details(self.admin, type="json", nodeids=[self.n2, "node//nope"]))], [self.n2])
        self.assertIsNone(self.details(self.admin, type="x"))
        self.assertIsNone(self.details(self.admin, type="json", nodeids="x"))

    def test_device_details_hide_recovery_passwords(self) -> None:
        """BitLocker recovery passwords only go to users with full rights on the device."""
        self.world.store.set({"_id": "si" + self.n2, "type": "sysinfo", "nodeid": self.n2,
                              "hardware": {"windows": {"volumes": {"C": {
                                  "protectionStatus": "On", "volumeStatus": "FullyEncrypted",
                                  "recoveryPassword": "1234-5678"}}}}})
        bob_id = self.world.add_user("bob")
        self.world.link(bob_id, self.mesh, 0x100000)
        bob = self.world.connect(bob_id)
        [_, mine] = json.loads(self.details(bob, type="json"))
        self.assertEqual(mine["sys"]["hardware"]["windows"]["volumes"]["C"],
                         {"protectionStatus": "On", "volumeStatus": "FullyEncrypted"})
        [_, full] = json.loads(self.details(self.admin, type="json"))
        self.assertEqual(full["sys"]["hardware"]["windows"]["volumes"]["C"]["recoveryPassword"],
                         "1234-5678")
        self.assertEqual(self.world.doc("si" + self.n2)["hardware"]["windows"]["volumes"]["C"]
                         ["recoveryPassword"], "1234-5678")

    def test_device_details_csv(self) -> None:
        """CSV: MeshCentral's 42 columns, quoted and cleaned the same way."""
        lines = self.details(self.admin, type="csv").split("\r\n")
        self.assertEqual(lines[0].split(",")[:3], ["id", "name", "rname"])
        self.assertEqual(len(lines[0].split(",")), 42)
        self.assertEqual(lines[3], "")
        row = lines[1].split(",")
        self.assertEqual(len(row), 42)
        self.assertEqual(row[:8], [f'"{self.n1}"', '"n1"', '""', '"10.0.0.1"', "1", "", "",
                                   '"grp"'])
        self.assertEqual((row[15], row[18], row[21], row[25]),
                         ('"Xeon 8 cores"', '"ACME"', '"UEFI"', '"U-1"'))
        self.assertEqual((row[33], row[35]), ('"3.0"', '"abc"'))
        self.assertEqual(row[37:], ["1", '"00:11"', '"10.0.0.9"', "7", '"1.2.3.4"'])
        self.assertEqual(lines[2].split(",")[15:], [""] * 27)

    def test_serverstats(self) -> None:
        """Admins with backup/restore/update rights get statistics now and every interval."""
        [stats] = self.admin.request("serverstats", interval=10000)
        self.assertEqual(stats["action"], "serverstats")
        self.assertGreater(stats["totalmem"], 0)
        self.assertEqual(stats["values"]["ServerState"], {
            "UserAccounts": 1, "DeviceGroups": 1, "AgentSessions": 0, "ConnectedUsers": 1,
            "UsersSessions": 1, "RelaySessions": 0, "RelayCount": 0, "ConnectedIntelAMT": 0,
            "ConnectedIntelAMTCira": 0})
        self.world.connect_agent(self.n1)
        start = len(self.admin.frames)
        self.world.clock.advance(10)
        self.world.clock.advance(10)
        ticks = [f for f in self.admin.frames[start:] if f.get("action") == "serverstats"]
        self.assertEqual(len(ticks), 2)
        self.assertEqual(ticks[-1]["values"]["ServerState"]["AgentSessions"], 1)
        self.assertEqual(self.admin.request("serverstats"), [])  # no interval: stop
        start = len(self.admin.frames)
        self.world.clock.advance(30)
        self.assertEqual([f for f in self.admin.frames[start:]
                          if f.get("action") == "serverstats"], [])
        # Without the rights: nothing; a closed session's timer ends.
        bob = self.world.connect(self.world.add_user("bob", 0x2 | 0x8))
        self.assertEqual(bob.request("serverstats", interval=1000), [])
        backup = self.world.connect(self.world.add_user("backup", 0x1))
        self.assertEqual(len(backup.request("serverstats", interval=1000)), 1)
        backup.session.close()
        self.world.clock.advance(5)
        self.assertEqual(self.world.clock.getDelayedCalls(), [])

    def test_serverstats_stop_when_right_removed(self) -> None:
        """A user who loses the right stops getting statistics at the next tick."""
        uid = self.world.add_user("backup", 0x10)
        client = self.world.connect(uid)
        self.assertEqual(len(client.request("serverstats", interval=1000)), 1)
        doc = dict(self.world.doc(uid))
        doc["siteadmin"] = 0
        self.world.store.set(doc)
        start = len(client.frames)
        self.world.clock.advance(3)
        self.assertEqual([f for f in client.frames[start:]
                          if f.get("action") == "serverstats"], [])
        self.assertEqual(self.world.clock.getDelayedCalls(), [])

    def test_logincookie_only_when_allowed(self) -> None:
        """logincookie answers only with allowLoginToken, and not to token sessions."""
        self.assertEqual(self.admin.request("logincookie"), [])
        self.world.hub.allow_login_token = True
        [frame] = self.admin.request("logincookie")
        key = self.world.store._documents["LoginCookieEncryptionKey"]["key"]
        self.assertEqual(decode_cookie(frame["cookie"], bytes.fromhex(key), NOW, 60),
                         {"u": self.admin_id, "a": 3, "time": NOW})
        token = ControlSession(self.world.hub, dict(self.world.doc(self.admin_id)),
                               lambda text: self.fail(text), lambda: None,
                               login_token="~t:abc")
        token.frame_received(b'{"action":"logincookie"}')

    def add_login_event(self, user_id: str, seconds: int, msgid: int = 107) -> None:
        from datetime import datetime, timezone
        self.world.store.store_event({
            "ids": [user_id], "domain": "", "action": "login", "userid": user_id,
            "msgid": msgid, "msgArgs": ["10.0.0.1", "Chrome", "Linux"],
            "time": datetime.fromtimestamp(seconds, timezone.utc)})

    def test_report_logins_and_rights(self) -> None:
        """Login report per user; a non-manager only sees its own; db report: full admins."""
        bob_id = self.world.add_user("bob")
        self.add_login_event(self.admin_id, NOW - 50)
        self.add_login_event(bob_id, NOW - 40, msgid=108)
        self.add_login_event(bob_id, NOW - 99999)  # outside the range
        request = {"type": 3, "groupBy": 1, "start": NOW - 3600, "end": NOW}
        data = self.admin.reply("report", **request)["data"]
        self.assertEqual(data["groupFormat"], "user")
        self.assertEqual([c["id"] for c in data["columns"]],
                         ["time", "ip", "browser", "os", "twofactor", "msg"])
        self.assertEqual(data["groups"], {
            self.admin_id: {"entries": [{"time": (NOW - 50) * 1000, "ip": "10.0.0.1",
                                         "browser": "Chrome", "os": "Linux", "twofactor": "",
                                         "msg": 107}]},
            bob_id: {"entries": [{"time": (NOW - 40) * 1000, "ip": "10.0.0.1",
                                  "browser": "Chrome", "os": "Linux", "twofactor": "",
                                  "msg": 108}]}})
        bob = self.world.connect(bob_id)
        self.assertEqual(list(bob.reply("report", **request)["data"]["groups"]), [bob_id])
        # Bad input and foreign device groups: no answer.
        self.assertEqual(bob.request("report", **{**request, "start": NOW + 1}), [])
        self.assertEqual(bob.request("report", **{**request, "type": 5}), [])
        self.assertEqual(bob.request("report", **{**request, "type": 1,
                                                  "devGroup": self.mesh}), [])
        self.assertEqual(bob.request("report", **{**request, "type": 4}), [])
        db = self.admin.reply("report", **{**request, "type": 4})["data"]
        counts = {e["record"]: e["recordcount"] for e in db["groups"]["0"]["entries"]}
        self.assertEqual((counts["user"], counts["node"], counts["mesh"]), (2, 2, 1))

    def test_report_sessions_and_traffic(self) -> None:
        """Session report grouped by user and traffic sums, from relay session-end events."""
        from datetime import datetime, timezone
        self.world.store.store_event({
            "ids": [self.admin_id, self.mesh, self.n1], "domain": "", "action": "relaylog",
            "userid": self.admin_id, "nodeid": self.n1, "msgid": 10, "protocol": 1,
            "msgArgs": ["a", "b", "c", 42], "bytesin": 100, "bytesout": 200,
            "time": datetime.fromtimestamp(NOW - 10, timezone.utc)})
        request = {"type": 1, "groupBy": 1, "start": NOW - 3600, "end": NOW,
                   "devGroup": self.mesh}
        data = self.admin.reply("report", **request)["data"]
        self.assertEqual([c["id"] for c in data["columns"]],
                         ["time", "nodeid", "meshid", "protocol", "length"])
        self.assertEqual(data["groups"][self.admin_id]["entries"],
                         [{"time": (NOW - 10) * 1000, "nodeid": self.n1, "protocol": 1,
                           "meshid": self.mesh, "length": 42}])
        traffic = self.admin.reply("report", **{**request, "type": 2})["data"]
        self.assertEqual(traffic["groups"]["0"]["entries"],
                         [{"userid": self.admin_id, "length": 42, "bytesin": 100,
                           "bytesout": 200}])


class AuthTests(TestCase):
    def setUp(self) -> None:
        self.world = World()
        self.world.add_user("admin", SITERIGHT_ADMIN, password="Adm1n!Pass")
        self.auth = self.world.hub.auth

    def upgrade(self, headers: dict[str, str], params: Optional[dict[str, list[str]]] = None,
                peer: str = "127.0.0.1") -> Any:
        return self.successResultOf(defer.Deferred.fromCoroutine(
            self.auth.upgrade(headers, params or {}, peer)))

    @staticmethod
    def meshauth(*parts: str) -> dict[str, str]:
        return {"x-meshauth": ",".join(base64.b64encode(p.encode()).decode() for p in parts)}

    def test_parse_meshauth(self) -> None:
        """x-meshauth is 2 or 3 base64 parts."""
        self.assertEqual(parse_meshauth("YQ==,Yg=="), ("a", "b", None))
        self.assertEqual(parse_meshauth("YQ==,Yg==,MTIz"), ("a", "b", "123"))
        self.assertIsNone(parse_meshauth("YQ=="))
        self.assertIsNone(parse_meshauth("a,b,c,d"))
        self.assertIsNone(parse_meshauth("!!,??"))

    def test_meshauth(self) -> None:
        """Right password logs in (name case-insensitive); wrong: noauth-2d; bad: noauth-2c."""
        self.assertEqual(self.upgrade(self.meshauth("ADMIN", "Adm1n!Pass")).user["_id"],
                         "user//admin")
        self.assertEqual(self.upgrade(self.meshauth("admin", "wrong")).close,
                         {"action": "close", "cause": "noauth", "msg": "noauth-2d"})
        self.assertEqual(self.upgrade({"x-meshauth": "YWRtaW4="}).close["msg"], "noauth-2c")
        self.assertEqual(self.upgrade({}).close,
                         {"action": "close", "cause": "noauth", "msg": "noauth"})
        self.assertTrue(self.upgrade({"x-meshauth": "*"}).inner)

    def test_foreign_origin_refused(self) -> None:
        """A page of another site cannot use the user's cookie (Origin must match Host)."""
        headers = {"host": "mesh.example.com", **self.meshauth("admin", "Adm1n!Pass")}
        self.assertEqual(self.upgrade({**headers, "origin": "https://evil.example"}).close,
                         {"action": "close", "cause": "invalidorigin", "msg": "invalidorigin"})
        self.assertIsNotNone(self.upgrade({**headers,
                                           "origin": "https://Mesh.Example.com"}).user)
        self.assertIsNotNone(self.upgrade(headers).user)

    def test_query_password(self) -> None:
        """?user=&pass= logs in; a wrong one closes with noauth-2a."""
        self.assertIsNotNone(self.upgrade({}, {"user": ["admin"], "pass": ["Adm1n!Pass"]}).user)
        self.assertEqual(self.upgrade({}, {"user": ["admin"], "pass": ["x"]}).close["msg"],
                         "noauth-2a")

    def test_notools_and_locked(self) -> None:
        """A NOMESHCMD user is refused as notools; a locked user fails like a bad password."""
        self.world.add_user("tool", 0x80, password="secret password")
        self.world.add_user("locked", 0x20, password="secret password")
        self.assertEqual(self.upgrade(self.meshauth("tool", "secret password")).close,
                         {"action": "close", "cause": "notools", "msg": "notools"})
        self.assertEqual(self.upgrade(self.meshauth("locked", "secret password")).close["msg"],
                         "noauth-2d")

    def test_second_factor(self) -> None:
        """A TOTP user needs the current code; backup codes work once."""
        secret = "JBSWY3DPEHPK3PXP"
        self.world.add_user("tfa", password="secret password", otpsecret=secret,
                            otpkeys={"keys": [{"p": 12345678, "u": True}]})
        self.assertEqual(self.upgrade(self.meshauth("tfa", "secret password")).close["msg"],
                         "tokenrequired")
        code = totp(secret, NOW // 30)
        self.assertIsNotNone(self.upgrade(self.meshauth("tfa", "secret password", code)).user)
        self.assertEqual(self.upgrade(self.meshauth("tfa", "secret password",
                                                    "000000" if code != "000000" else "111111")
                                      ).close["msg"], "tokenrequired")
        self.assertIsNotNone(self.upgrade(self.meshauth("tfa", "secret password",
                                                        "12345678")).user)
        self.assertEqual(self.upgrade(self.meshauth("tfa", "secret password", "12345678")
                                      ).close["msg"], "tokenrequired")

    def test_failed_logins_are_limited(self) -> None:
        """Bad passwords count per address and account; then even the right one is refused."""
        self.auth._limiter = FailureLimiter(3, 600, 600)
        for _ in range(3):
            self.assertEqual(self.upgrade(self.meshauth("admin", "wrong")).close["msg"],
                             "noauth-2d")
        self.assertEqual(self.upgrade(self.meshauth("admin", "Adm1n!Pass")).close,
                         {"action": "close", "cause": "banned", "msg": "banned-1"})
        self.assertEqual(self.upgrade(self.meshauth("admin", "Adm1n!Pass"),
                                      peer="10.0.0.2").close["msg"], "banned-1")
        self.world.clock.advance(601)
        self.assertIsNotNone(self.upgrade(self.meshauth("admin", "Adm1n!Pass")).user)

    def test_totp_rfc6238_vector(self) -> None:
        """totp() matches RFC 6238's SHA-1 test vector (T=59 s)."""
        secret = base64.b32encode(b"12345678901234567890").decode()
        self.assertEqual(totp(secret, 59 // 30), "287082")

    def test_login_token(self) -> None:
        """A login token logs in as its owner until it expires."""
        salt, hashed = passwords.hash_password("tokenpass")
        self.world.store.set({"_id": "logintoken-~t:abcd", "type": "logintoken",
                              "userid": "user//admin", "salt": salt, "hash": hashed,
                              "expire": (NOW + 60) * 1000, "nodeid": "logintoken-user//admin"})
        result = self.upgrade(self.meshauth("~t:abcd", "tokenpass"))
        self.assertEqual((result.user["_id"], result.login_token), ("user//admin", "~t:abcd"))
        self.assertEqual(self.upgrade(self.meshauth("~t:abcd", "nope")).close["msg"],
                         "noauth-2d")
        self.world.clock.advance(61)
        self.assertEqual(self.upgrade(self.meshauth("~t:abcd", "tokenpass")).close["msg"],
                         "noauth-2d")

    def test_auth_cookie(self) -> None:
        """?auth= with a cookie from this server logs in from the same address only."""
        cookie = self.successResultOf(defer.Deferred.fromCoroutine(
            self.world.hub.cookies.encode({"userid": "user//admin", "domainid": "",
                                           "ip": "127.0.0.1"})))
        self.assertIsNotNone(self.upgrade({}, {"auth": [cookie]}).user)
        self.assertEqual(self.upgrade({}, {"auth": [cookie]}, peer="10.0.0.9").close["msg"],
                         "noauth")
        self.assertEqual(self.upgrade({}, {"auth": ["garbage" * 10]}).close["msg"], "noauth")
        self.world.clock.advance(61 * 60)
        self.assertEqual(self.upgrade({}, {"auth": [cookie]}).close["msg"], "noauth")

    def test_session_cookie(self) -> None:
        """The xid web session cookie logs in; failed logins counted at the form login
        are handed to the first control channel of that session only."""
        from meshd.web.session import Sessions
        sessions = Sessions(self.world.store, now=self.world.clock.seconds,
                            idle_seconds=3600)
        self.auth._web_sessions = sessions
        admin = self.successResultOf(self.world.store.get("user//admin"))
        good = self.successResultOf(defer.Deferred.fromCoroutine(
            sessions.create(admin, "127.0.0.1", failedlogins=3)))
        first = self.upgrade({"cookie": f"a=b; xid={good}"})
        self.assertEqual((first.user["_id"], first.failed_logins), ("user//admin", 3))
        again = self.upgrade({"cookie": f"xid={good}"})
        self.assertEqual((again.user["_id"], again.failed_logins), ("user//admin", 0))
        self.assertIsNone(self.upgrade({"cookie": "xid=bad"}).user)

    def test_cookie_codec(self) -> None:
        """Cookies are AES-GCM: a changed byte or another key is refused."""
        key = bytes(range(80))
        text = encode_cookie({"a": 1}, key, NOW)
        self.assertEqual(decode_cookie(text, key, NOW + 5, 2), {"a": 1, "time": NOW})
        self.assertIsNone(decode_cookie(text, bytes(80), NOW, 2))
        self.assertIsNone(decode_cookie(text, key, NOW + 3 * 60, 2))
        tampered = ("A" if text[40] != "A" else "B").join((text[:40], text[41:]))
        self.assertIsNone(decode_cookie(tampered, key, NOW, 2))


class CookieKeyTests(TestCase):
    async def test_concurrent_first_use_makes_one_key(self) -> None:
        """Concurrent first uses of the cookie key share one key (a cookie made by one decodes
        with the other), even when the store answers slowly."""
        from twisted.internet import defer as _defer

        from meshd.control.cookies import LoginCookies
        from meshd.store.memory import MemoryStore

        store = MemoryStore()
        store.open()
        slow: list[_defer.Deferred[None]] = []
        real_get = store.get

        def get(doc_id: str) -> "_defer.Deferred[object]":
            gate: _defer.Deferred[None] = _defer.Deferred()
            slow.append(gate)
            return gate.addCallback(lambda _: real_get(doc_id))

        store.get = get  # type: ignore[method-assign]
        cookies = LoginCookies(store, now=lambda: 1000.0)
        first = _defer.Deferred.fromCoroutine(cookies.encode({"u": 1}))
        second = _defer.Deferred.fromCoroutine(cookies.encode({"u": 2}))
        while slow:
            slow.pop(0).callback(None)
        one, two = self.successResultOf(first), self.successResultOf(second)
        self.assertEqual((await cookies.decode(one, 60))["u"], 1)
        self.assertEqual((await cookies.decode(two, 60))["u"], 2)
