"""Guest device sharing without sockets: ``createDeviceShareLink`` and its siblings on the
control channel, the share window (meshd.sharing), and the relay's admission of guests
(meshd.relay.guest) with a MemoryStore, a fake agent manager and ``task.Clock``."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from meshd.control import rights as R
from meshd.relay.machine import SideInfo
from meshd.relay.server import RELAY_COOKIE_MINUTES, Refused, RelayServer
from meshd.sharing import window
from tests.test_control_session import NOW, World
from tests.test_relay import FakePeer

NOW_MS = NOW * 1000
SHARER_RIGHTS = R.MESHRIGHT_REMOTECONTROL | R.MESHRIGHT_GUESTSHARING


class ShareBase(TestCase):
    def setUp(self) -> None:
        self.world = World()
        self.admin_id = self.world.add_user("admin", R.SITERIGHT_ADMIN)
        self.mesh = self.world.add_mesh("g", self.admin_id)
        self.node = self.world.add_node(self.mesh, "pc")
        self.other = self.world.add_node(self.mesh, "other")
        self.world.connect_agent(self.node)
        self.world.connect_agent(self.other)
        self.admin = self.world.connect(self.admin_id)

    def create(self, client: Any = None, **fields: Any) -> dict[str, Any]:
        request = {"nodeid": self.node, "guestname": "Guest", "p": 1, "consent": 2,
                   "expire": 0, "viewOnly": False, "port": None}
        request.update(fields)
        return (client or self.admin).reply("createDeviceShareLink",
                                            **{k: v for k, v in request.items()
                                               if v is not ...})

    def shares(self) -> list[dict[str, Any]]:
        return [d for d in self.world.store._documents.values()
                if d.get("type") == "deviceshare"]


class CreateTests(ShareBase):
    def test_time_range_share(self) -> None:
        """start/end (meshctrl --duration): the reply echoes the request with the times in
        ms, the publicid and a /sharing URL; the record holds the window; event msgid 101."""
        frames = self.admin.request("createDeviceShareLink", nodeid=self.node,
                                    guestname="Guest", p=1, consent=2, start=NOW,
                                    end=NOW + 1800, viewOnly=False, port=None,
                                    responseid="meshctrl")
        [reply] = [f for f in frames if f.get("action") == "createDeviceShareLink"]
        public = reply["publicid"]
        self.assertEqual(reply["result"], "OK")
        self.assertEqual((reply["start"], reply["expire"], reply["end"]),
                         (NOW_MS, NOW_MS + 1800_000, NOW + 1800))
        self.assertTrue(reply["url"].startswith("https://localhost/sharing?c="), reply["url"])
        share = self.world.doc("deviceshare-" + public)
        self.assertEqual(
            {k: share[k] for k in ("type", "nodeid", "xmeshid", "p", "userid", "guestName",
                                   "consent", "startTime", "expireTime", "url", "domain")},
            {"type": "deviceshare", "nodeid": self.node, "xmeshid": self.mesh, "p": 1,
             "userid": self.admin_id, "guestName": "Guest", "consent": 2,
             "startTime": NOW_MS, "expireTime": NOW_MS + 1800_000, "url": reply["url"],
             "domain": ""})
        self.assertNotIn("viewOnly", share)
        cookie = reply["url"].split("?c=", 1)[1]
        payload = self.successResultOf(defer.ensureDeferred(
            self.world.hub.invite_cookies.decode(cookie, 0)))
        assert payload is not None
        self.assertEqual((payload["a"], payload["pid"], payload["e"]),
                         (6, public, NOW_MS + 1800_000))
        # Not a login cookie: the login key does not open it.
        self.assertIsNone(self.successResultOf(defer.ensureDeferred(
            self.world.hub.cookies.decode(cookie, 0))))
        events = self.admin.events(frames)
        self.assertEqual([e["action"] for e in events], ["addedDeviceShare", "deviceShareUpdate"])
        self.assertEqual((events[0]["msgid"], events[0]["msgArgs"]),
                         (101, ["Guest", f"DATETIME:{NOW_MS}", f"DATETIME:{NOW_MS + 1800_000}"]))
        self.assertEqual(events[0]["msg"], "Added device share: Guest.")
        self.assertNotIn("url", events[1]["deviceShares"][0])
        stored = self.successResultOf(defer.ensureDeferred(
            self.world.store.get_events(["*"], "", 10)))
        self.assertIn(101, [e.get("msgid") for e in stored])
        listing = self.admin.reply("deviceShares", nodeid=self.node)["deviceShares"]
        self.assertEqual([s["publicid"] for s in listing], [public])
        self.assertEqual(listing[0]["url"], reply["url"])

    def test_unlimited_minutes_and_recurring(self) -> None:
        """expire 0 is unlimited (msgid 131, no times); expire N runs N minutes from now;
        recurring daily keeps start and duration (msgid 138), weekly is msgid 139."""
        unlimited = self.create(expire=0)
        self.assertNotIn("expire", unlimited)
        share = self.world.doc("deviceshare-" + unlimited["publicid"])
        self.assertNotIn("startTime", share)
        self.assertNotIn("expireTime", share)
        minutes = self.create(expire=30, guestname="G2")
        self.assertEqual((minutes["start"], minutes["expire"]), (NOW_MS, NOW_MS + 1800_000))
        frames = self.admin.request("createDeviceShareLink", nodeid=self.node, guestname="D",
                                    p=2, consent=1, start=NOW - 60, expire=15, recurring=1)
        daily = [f for f in frames if f.get("action") == "createDeviceShareLink"][0]
        share = self.world.doc("deviceshare-" + daily["publicid"])
        self.assertEqual((share["startTime"], share["duration"], share["recurring"]),
                         ((NOW - 60) * 1000, 15, 1))
        self.assertNotIn("expireTime", share)
        self.assertEqual(self.admin.events(frames)[0]["msgid"], 138)
        weekly = self.admin.request("createDeviceShareLink", nodeid=self.node, guestname="W",
                                    p=2, consent=1, start=NOW, expire=15, recurring=2)
        self.assertEqual(self.admin.events(weekly)[0]["msgid"], 139)
        self.assertEqual(self.admin.events(
            self.admin.request("createDeviceShareLink", nodeid=self.node, guestname="U",
                               p=1, consent=0, expire=0))[0]["msgid"], 131)

    def test_short_node_id_and_view_only(self) -> None:
        """A node id without its prefix is completed; viewOnly is kept."""
        reply = self.create(nodeid=self.node.split("/")[2], viewOnly=True, p=2)
        self.assertEqual(reply["nodeid"], self.node)
        self.assertIs(self.world.doc("deviceshare-" + reply["publicid"])["viewOnly"], True)

    def test_validation_errors(self) -> None:
        """Bad requests get MeshCentral's texts and store nothing."""
        cases: list[tuple[dict[str, Any], str]] = [
            ({"nodeid": "short"}, "Invalid node id"),
            ({"nodeid": "node/other/" + "A" * 20}, "Invalid domain"),
            ({"guestname": ""}, "Invalid guest name"),
            ({"guestname": "x" * 129}, "Invalid guest name"),
            ({"expire": "10"}, "Invalid expire time"),
            ({"expire": -1}, "Invalid expire time"),
            ({"expire": ..., "start": "now", "end": NOW}, "Invalid start time"),
            ({"expire": ..., "start": NOW, "end": True}, "Invalid end time"),
            ({"consent": 257}, "Invalid flags"),
            ({"consent": ...}, "Invalid flags"),
            ({"p": 0}, "Invalid protocol"),
            ({"p": 32}, "Invalid protocol"),
            ({"recurring": 3, "start": NOW, "expire": 10}, "Invalid recurring value"),
            ({"port": 70000}, "Invalid port value"),
            ({"recurring": 1, "start": NOW, "end": NOW + 5, "expire": 10},
             "Invalid recurring command"),
            ({"recurring": 1, "expire": 10}, "Invalid recurring command"),
            ({"expire": ...}, "No time specified"),
            ({"expire": ..., "start": NOW + 10, "end": NOW}, "No time specified"),
            ({"nodeid": "node//" + "B" * 64}, "Invalid node id"),
        ]
        for fields, text in cases:
            self.assertEqual(self.create(**fields).get("result"), text, fields)
        self.assertEqual(self.shares(), [])


class RightsTests(ShareBase):
    def user(self, rights: int, name: str = "bob") -> Any:
        user_id = self.world.add_user(name)
        self.world.link(user_id, self.mesh, rights)
        return self.world.connect(user_id)

    def test_denied_without_rights(self) -> None:
        """Without guest sharing, without remote control, with limited input, or with the
        "no" right of what is shared: Access denied, nothing stored, no event."""
        for number, (rights, p) in enumerate([
                (R.MESHRIGHT_REMOTECONTROL, 1),
                (R.MESHRIGHT_GUESTSHARING, 1),
                (SHARER_RIGHTS | R.MESHRIGHT_DESKLIMITEDINPUT, 2),
                (SHARER_RIGHTS | R.MESHRIGHT_NOTERMINAL, 1),
                (SHARER_RIGHTS | R.MESHRIGHT_NODESKTOP, 3),
                (SHARER_RIGHTS | R.MESHRIGHT_NOFILES, 4)]):
            client = self.user(rights, f"u{number}")
            seen = len(self.admin.frames)
            frames = client.request("createDeviceShareLink", nodeid=self.node,
                                    guestname="G", p=p, consent=0, expire=0)
            self.assertEqual([f.get("result") for f in frames], ["Access denied"],
                             (hex(rights), p))
            self.assertEqual(self.admin.events(self.admin.frames[seen:]), [])
        self.assertEqual(self.shares(), [])

    def test_hidden_device(self) -> None:
        """A device the user cannot see is an invalid node id."""
        client = self.world.connect(self.world.add_user("eve"))
        self.assertEqual(self.create(client).get("result"), "Invalid node id")

    def test_limited_user_shares_what_it_may(self) -> None:
        """A user with remote control and guest sharing may share; NOTERMINAL still allows
        files; a view-only user's shares are view-only."""
        bob = self.user(SHARER_RIGHTS | R.MESHRIGHT_NOTERMINAL)
        self.assertEqual(self.create(bob, p=4).get("result"), "OK")
        viewer = self.user(SHARER_RIGHTS | R.MESHRIGHT_REMOTEVIEWONLY, "viewer")
        reply = self.create(viewer, p=2)
        self.assertIs(reply["viewOnly"], True)
        self.assertIs(self.world.doc("deviceshare-" + reply["publicid"])["viewOnly"], True)
        # Another user's links are listed without their URL.
        listing = self.admin.reply("deviceShares", nodeid=self.node)["deviceShares"]
        self.assertEqual(len(listing), 2)
        self.assertTrue(all("url" not in s for s in listing))


class WindowTests(TestCase):
    def test_windows(self) -> None:
        """Fixed, unlimited, and recurring windows (the current or the next occurrence)."""
        self.assertEqual(window({"startTime": 10, "expireTime": 20}, 15).state(15), "open")
        self.assertEqual(window({"startTime": 10, "expireTime": 20}, 5).state(5), "early")
        self.assertEqual(window({"startTime": 10, "expireTime": 20}, 20).state(20), "expired")
        self.assertEqual(window({}, 1e15).state(1e15), "open")
        day = 24 * 3600 * 1000
        daily = {"startTime": 0, "duration": 60, "recurring": 1}
        inside = 3 * day + 30 * 60000
        self.assertEqual((window(daily, inside).start, window(daily, inside).state(inside)),
                         (3 * day, "open"))
        after = 3 * day + 61 * 60000
        self.assertEqual((window(daily, after).start, window(daily, after).state(after)),
                         (4 * day, "early"))
        weekly = {"startTime": 0, "duration": 60, "recurring": 2}
        self.assertEqual(window(weekly, 2 * day).state(2 * day), "early")
        self.assertEqual(window(daily, -5).state(-5), "early")


class AdmissionTests(ShareBase):
    """RelayServer.identify for ``?c=`` (guests)."""

    def setUp(self) -> None:
        super().setUp()
        self.relay = RelayServer.from_hub(self.world.hub)

    def link(self, **fields: Any) -> tuple[str, str]:
        reply = self.create(**fields)
        self.assertEqual(reply.get("result"), "OK", reply)
        return reply["publicid"], reply["url"].split("?c=", 1)[1]

    def identify(self, params: dict[str, str]) -> Any:
        d = defer.ensureDeferred(self.relay.identify(
            {}, {k: [v] for k, v in params.items()}, "192.0.2.7"))
        return self.successResultOf(d.addErrback(lambda f: f.value))

    def test_guest_admitted_and_agent_told(self) -> None:
        """A guest with a valid link gets a side for the sharer, with its name, share and
        end; the agent is asked to dial a server-chosen relay id with the share's rights,
        consent and usages, the guest's name and address."""
        public, cookie = self.link(start=NOW - 10, end=NOW + 600, expire=..., consent=0x12)
        info = self.identify({"c": cookie, "p": "1", "id": "chosen-by-guest"})
        self.assertIsInstance(info, SideInfo)
        self.assertEqual((info.user_id, info.authenticated, info.guest_name, info.share_id,
                          info.node_id, info.protocol, info.expires),
                         (self.admin_id, True, "Guest", public, self.node, 1, NOW + 600))
        self.assertNotEqual(info.relay_id, "chosen-by-guest")
        (node_id, message), = self.world.agents.sent
        self.assertEqual(node_id, self.node)
        self.assertEqual(
            {k: message[k] for k in ("action", "type", "soptions", "rights", "consent",
                                     "guestuserid", "guestname", "remoteaddr", "username")},
            {"action": "msg", "type": "tunnel", "soptions": {"usages": [1, 6, 8, 9]},
             "rights": R.MESHRIGHT_REMOTECONTROL, "consent": 0x12,
             "guestuserid": self.admin_id, "guestname": "Guest", "remoteaddr": "192.0.2.7",
             "username": "admin"})
        self.assertEqual(message["servertlshash"], "ab" * 48)
        query = parse_qs(message["value"].split("?", 1)[1])
        self.assertEqual((query["id"], query["p"], query["nodeid"]),
                         ([info.relay_id], ["1"], [self.node]))
        rauth = self.successResultOf(defer.ensureDeferred(
            self.world.hub.cookies.decode(query["rauth"][0], RELAY_COOKIE_MINUTES)))
        assert rauth is not None
        self.assertEqual((rauth["ruserid"], rauth["pid"]), (self.admin_id, public))
        # The agent dialling back with that cookie is a side of the same share.
        agent = self.identify({"id": info.relay_id, "rauth": query["rauth"][0], "p": "1"})
        self.assertEqual((agent.user_id, agent.share_id, agent.authenticated),
                         (self.admin_id, public, False))

    def test_protocol_defaults_and_view_only(self) -> None:
        """Without p the first shared protocol is used; a view-only share sends view-only
        rights."""
        _share, cookie = self.link(p=4 | 2, viewOnly=True)
        info = self.identify({"c": cookie})
        self.assertEqual(info.protocol, 2)
        self.assertEqual(self.world.agents.sent[-1][1]["rights"],
                         R.MESHRIGHT_REMOTECONTROL | R.MESHRIGHT_REMOTEVIEWONLY)
        self.assertEqual(self.world.agents.sent[-1][1]["soptions"], {"usages": [2, 5, 10]})
        self.assertIsNone(info.expires)

    def refused(self, params: dict[str, str]) -> None:
        sent = len(self.world.agents.sent)
        self.assertIsInstance(self.identify(params), Refused, params)
        self.assertEqual(len(self.world.agents.sent), sent, "the agent was told")

    def test_refusals(self) -> None:
        """Refused, and the agent told nothing: another protocol, another device, before the
        start, after the end, after removal, device not connected, forged or foreign
        cookies, a sharer who lost the right."""
        public, cookie = self.link(start=NOW + 60, end=NOW + 120, expire=...)
        self.refused({"c": cookie, "p": "1"})  # not yet
        self.world.clock.advance(60)
        self.assertIsInstance(self.identify({"c": cookie, "p": "1"}), SideInfo)
        self.refused({"c": cookie, "p": "5"})
        self.refused({"c": cookie, "p": "2"})
        self.refused({"c": cookie, "p": "1", "nodeid": self.other})
        self.world.clock.advance(60)
        self.refused({"c": cookie, "p": "1"})  # over
        unlimited_id, unlimited = self.link(p=1)
        self.world.agents.connected.discard(self.node)
        self.refused({"c": unlimited})
        self.world.agents.connected.add(self.node)
        self.assertEqual(self.admin.request("removeDeviceShare", nodeid=self.node,
                                            publicid=unlimited_id)[-1]["result"], "OK")
        self.refused({"c": unlimited})
        self.refused({"c": "A" * 80})
        login = self.successResultOf(defer.ensureDeferred(self.world.hub.cookies.encode(
            {"userid": self.admin_id, "domainid": ""})))
        self.refused({"c": login})
        invite = self.successResultOf(defer.ensureDeferred(
            self.world.hub.invite_cookies.encode({"a": 4, "mid": self.mesh, "f": 0})))
        self.refused({"c": invite})
        self.refused({"c": invite.replace("A", "B", 1)})

    def test_sharer_loses_rights(self) -> None:
        """A share stops working when its creator loses the guest-sharing right or is
        removed."""
        bob_id = self.world.add_user("bob")
        self.world.link(bob_id, self.mesh, SHARER_RIGHTS)
        bob = self.world.connect(bob_id)
        reply = self.create(bob)
        cookie = reply["url"].split("?c=", 1)[1]
        self.assertIsInstance(self.identify({"c": cookie}), SideInfo)
        self.world.link(bob_id, self.mesh, R.MESHRIGHT_REMOTECONTROL)
        self.refused({"c": cookie})
        self.world.link(bob_id, self.mesh, SHARER_RIGHTS)
        self.world.store.remove(bob_id)
        self.refused({"c": cookie})

    def test_removal_closes_live_sessions(self) -> None:
        """removeDeviceShare closes the share's live guest sessions at once, not others."""
        public, cookie = self.link()
        guest = self.identify({"c": cookie, "p": "1"})
        message = self.world.agents.sent[-1][1]
        rauth = parse_qs(message["value"].split("?", 1)[1])["rauth"][0]
        agent = self.identify({"id": guest.relay_id, "rauth": rauth})
        a, b = FakePeer("guest"), FakePeer("agent")
        self.assertTrue(self.relay.table.join(a, guest))
        self.assertTrue(self.relay.table.join(b, agent))
        self.assertEqual(a.frames, [(b"c", False)])
        _other, other_cookie = self.link(guestname="Other")
        other = self.identify({"c": other_cookie})
        c = FakePeer("other")
        self.relay.table.join(c, other)
        self.admin.request("removeDeviceShare", nodeid=self.node, publicid=public)
        self.assertTrue(a.closed and b.closed)
        self.assertFalse(c.closed)

    def test_session_events_name_the_guest(self) -> None:
        """relaylog events of a guest session carry guestname."""
        heard: list[dict[str, Any]] = []
        self.world.bus.subscribe(["*"], heard.append)
        _share, cookie = self.link()
        guest = self.identify({"c": cookie})
        rauth = parse_qs(self.world.agents.sent[-1][1]["value"].split("?", 1)[1])["rauth"][0]
        a, b = FakePeer(), FakePeer()
        self.relay.table.join(a, guest)
        self.relay.table.join(b, self.identify({"id": guest.relay_id, "rauth": rauth}))
        self.relay.table.lost(a)
        logs = [e for e in heard if e.get("action") == "relaylog"]
        self.assertEqual([(e["msgid"], e.get("guestname")) for e in logs],
                         [(14, "Guest"), (10, "Guest")])

    def test_share_cookie_is_not_a_login(self) -> None:
        """The link's cookie does not log anybody in on /control.ashx (?auth=)."""
        _share, cookie = self.link()
        result = self.successResultOf(defer.ensureDeferred(
            self.world.hub.auth.upgrade({}, {"auth": [cookie]}, "127.0.0.1")))
        self.assertIsNone(result.user)
        self.assertEqual((result.close or {}).get("msg"), "noauth")
