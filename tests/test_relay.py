"""Tests for meshd.relay: the pairing table (no sockets, task.Clock), side identity,
tunnel routing through the control channel, and back-pressure over real loopback
WebSockets."""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import parse_qs

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from meshd.control.rights import (
    MESHRIGHT_NOTERMINAL,
    MESHRIGHT_REMOTECONTROL,
    MESHRIGHT_REMOTEVIEWONLY,
    SITERIGHT_ADMIN,
)
from meshd.relay.machine import LONELY_SECONDS, IRelayPeer, RelayTable, SideInfo
from meshd.relay.server import RELAY_COOKIE_MINUTES, Refused, RelayServer
from meshd.config import parse_config
from meshd.relay.tunnel import SessionPolicy, allowed, parse_relay_value
from tests.test_control_session import World


@implementer(IRelayPeer)
class FakePeer:
    """A relay side that records what the table asks of it."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.frames: list[tuple[bytes, bool]] = []
        self.paused = False
        self.closed = False
        self.pauses = 0

    def send(self, payload: bytes, binary: bool) -> None:
        assert not self.closed, f"{self.name}: send after close"
        self.frames.append((payload, binary))

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True


def user_side(relay_id: str = "r1", user: str = "user//alice", **kw: Any) -> SideInfo:
    return SideInfo(relay_id=relay_id, user_id=user, authenticated=True, browser=True,
                    protocol=1, node_id="node//n1", address="10.0.0.1", **kw)


def agent_side(relay_id: str = "r1", user: str = "user//alice", **kw: Any) -> SideInfo:
    return SideInfo(relay_id=relay_id, user_id=user, address="10.0.0.2", **kw)


class TableBase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.started: list[Any] = []
        self.ended: list[tuple[Any, float, int, int]] = []
        self.table = RelayTable(self.clock, on_start=self.started.append,
                                on_end=lambda r: self.ended.append(
                                    (r, self.clock.seconds() - r.started,
                                     r.first.received_bytes,
                                     r.second.received_bytes if r.second else 0)))

    def pair(self, first: Optional[SideInfo] = None, second: Optional[SideInfo] = None
             ) -> tuple[FakePeer, FakePeer]:
        a, b = FakePeer("user"), FakePeer("agent")
        self.assertTrue(self.table.join(a, first or user_side()))
        self.assertTrue(self.table.join(b, second or agent_side()))
        return a, b


class PairingTests(TableBase):
    def test_first_side_waits_paused(self) -> None:
        """The first side of an id waits with its reading paused and gets nothing yet."""
        a = FakePeer()
        self.assertTrue(self.table.join(a, user_side()))
        self.assertTrue(a.paused)
        self.assertEqual(a.frames, [])
        self.assertEqual(len(self.table), 1)

    def test_pair_sends_c_to_both_and_resumes(self) -> None:
        """When the second side joins both get the text frame c and both are read again."""
        a, b = self.pair()
        self.assertEqual(a.frames, [(b"c", False)])
        self.assertEqual(b.frames, [(b"c", False)])
        self.assertFalse(a.paused)
        self.assertFalse(b.paused)
        self.assertEqual(len(self.started), 1)
        self.assertEqual(self.started[0].protocol, 1)

    def test_recorded_pair_gets_cr(self) -> None:
        """A recorded session starts with cr instead of c."""
        a, b = self.pair(user_side(recorded=True))
        self.assertEqual(a.frames, [(b"cr", False)])
        self.assertEqual(b.frames, [(b"cr", False)])

    def test_frames_keep_their_type(self) -> None:
        """Text stays text and binary stays binary, in both directions."""
        a, b = self.pair()
        self.table.received(a, b"1", False)
        self.table.received(b, b"\x00\x01binary", True)
        self.assertEqual(b.frames[1:], [(b"1", False)])
        self.assertEqual(a.frames[1:], [(b"\x00\x01binary", True)])

    def test_early_frames_follow_c(self) -> None:
        """Frames the first side sent before pairing reach the second side after c."""
        a = FakePeer()
        self.table.join(a, user_side())
        self.table.received(a, b'{"ctrlChannel":"102938","type":"options"}', False)
        self.table.received(a, b"1", False)
        b = FakePeer()
        self.table.join(b, agent_side())
        self.assertEqual(b.frames, [(b"c", False),
                                    (b'{"ctrlChannel":"102938","type":"options"}', False),
                                    (b"1", False)])

    def test_too_much_early_data_closes(self) -> None:
        """A waiting side that sends more than the early limit is closed."""
        table = RelayTable(self.clock, early_limit=10)
        a = FakePeer()
        table.join(a, user_side())
        table.received(a, b"x" * 11, True)
        self.assertTrue(a.closed)
        self.assertEqual(len(table), 0)

    def test_duplicate_third_side_refused(self) -> None:
        """A third connection with the id of a pair is closed; the pair goes on."""
        a, b = self.pair()
        c = FakePeer()
        self.assertFalse(self.table.join(c, user_side()))
        self.assertTrue(c.closed)
        self.assertFalse(a.closed or b.closed)
        self.table.received(a, b"x", True)
        self.assertEqual(b.frames[-1], (b"x", True))


class AuthRuleTests(TableBase):
    def test_no_identity_refused(self) -> None:
        """A side with neither a user nor a nouser cookie is closed at once."""
        a = FakePeer()
        self.assertFalse(self.table.join(a, SideInfo(relay_id="r1")))
        self.assertTrue(a.closed)
        self.assertEqual(len(self.table), 0)

    def test_two_relay_cookie_sides_refused(self) -> None:
        """Two sides with only relay cookies: the newcomer is closed, the first waits on."""
        a, b = FakePeer(), FakePeer()
        self.assertTrue(self.table.join(a, agent_side()))
        self.assertFalse(self.table.join(b, agent_side()))
        self.assertTrue(b.closed)
        self.assertFalse(a.closed)
        self.clock.advance(LONELY_SECONDS)
        self.assertTrue(a.closed)

    def test_user_mismatch_refused(self) -> None:
        """Both sides must be the same user: another user's agent side is refused."""
        a, b = FakePeer(), FakePeer()
        self.table.join(a, user_side(user="user//alice"))
        self.assertFalse(self.table.join(b, agent_side(user="user//mallory")))
        self.assertTrue(b.closed)
        self.assertFalse(a.closed)
        self.assertEqual(a.frames, [])

    def test_nouser_side_pairs_with_any_user(self) -> None:
        """A nouser relay cookie pairs with a logged-in user whatever the user."""
        a, b = self.pair(user_side(), SideInfo(relay_id="r1", nouser=True))
        self.assertEqual(b.frames, [(b"c", False)])

    def test_agent_side_first_then_user(self) -> None:
        """The relay-cookie side may arrive first; the user side completes the pair."""
        a, b = self.pair(agent_side(), user_side())
        self.assertEqual(a.frames, [(b"c", False)])
        self.assertEqual(self.started[0].user_side.peer, b)


class TimerTests(TableBase):
    def test_lonely_side_closed_after_15_seconds(self) -> None:
        """A side nobody joins is closed 15 s after it arrived, not before."""
        a = FakePeer()
        self.table.join(a, user_side())
        self.clock.advance(LONELY_SECONDS - 0.1)
        self.assertFalse(a.closed)
        self.clock.advance(0.1)
        self.assertTrue(a.closed)
        self.assertEqual(len(self.table), 0)
        self.assertEqual(self.ended, [])

    def test_pairing_cancels_timer(self) -> None:
        """Once paired, the 15-second timer no longer closes anything."""
        a, b = self.pair()
        self.clock.advance(LONELY_SECONDS * 4)
        self.assertFalse(a.closed or b.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_id_reusable_after_expiry(self) -> None:
        """After a lonely side expired its id can be used again."""
        a = FakePeer()
        self.table.join(a, user_side())
        self.clock.advance(LONELY_SECONDS)
        self.table.lost(a)
        c, d = self.pair()
        self.assertEqual(d.frames, [(b"c", False)])


class CloseTests(TableBase):
    def test_close_propagates_and_reports(self) -> None:
        """When one side goes the other is closed and the end is reported with duration
        and bytes."""
        a, b = self.pair()
        self.table.received(a, b"12345", True)
        self.table.received(b, b"abc", True)
        self.clock.advance(42)
        self.table.lost(a)
        self.assertTrue(b.closed)
        self.assertFalse(a.closed)  # it is already gone; nothing sent to it
        self.assertEqual(len(self.table), 0)
        self.assertEqual(len(self.ended), 1)
        _relay, duration, bytes_in, bytes_out = self.ended[0]
        self.assertEqual((duration, bytes_in, bytes_out), (42, 5, 3))
        self.table.lost(b)  # the other side's own close: nothing more
        self.assertEqual(len(self.ended), 1)

    def test_waiting_side_lost(self) -> None:
        """A waiting side that disconnects frees its id and its timer."""
        a = FakePeer()
        self.table.join(a, user_side())
        self.table.lost(a)
        self.assertEqual(len(self.table), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FlowControlTests(TableBase):
    def test_full_side_pauses_its_partner(self) -> None:
        """A side whose outgoing buffer is full pauses reading of the other side only."""
        a, b = self.pair()
        self.table.send_blocked(b)
        self.assertTrue(a.paused)
        self.assertFalse(b.paused)
        self.table.send_unblocked(b)
        self.assertFalse(a.paused)

    def test_both_directions_independent(self) -> None:
        """Each direction is throttled on its own."""
        a, b = self.pair()
        self.table.send_blocked(a)
        self.table.send_blocked(b)
        self.assertTrue(a.paused and b.paused)
        self.table.send_unblocked(a)
        self.assertFalse(b.paused)
        self.assertTrue(a.paused)

    def test_blocked_before_pairing_applies_after(self) -> None:
        """A side already congested when the pair forms keeps its partner paused."""
        a = FakePeer()
        self.table.join(a, user_side())
        self.table.send_blocked(a)
        b = FakePeer()
        self.table.join(b, agent_side())
        self.assertTrue(b.paused)
        self.assertFalse(a.paused)
        self.table.send_unblocked(a)
        self.assertFalse(b.paused)


class IdentityTests(TestCase):
    """RelayServer.identify: which upgrade requests make a side."""

    def setUp(self) -> None:
        self.world = World()
        self.admin_id = self.world.add_user("admin", SITERIGHT_ADMIN)
        self.bob_id = self.world.add_user("bob")
        self.mesh = self.world.add_mesh("g", self.admin_id)
        self.node = self.world.add_node(self.mesh, "pc")
        self.relay = RelayServer.from_hub(self.world.hub)

    def identify(self, params: dict[str, str], headers: Optional[dict[str, str]] = None
                 ) -> Any:
        d = defer.ensureDeferred(self.relay.identify(
            headers or {}, {k: [v] for k, v in params.items()}, "127.0.0.1"))
        return self.successResultOf(d.addErrback(lambda f: f.value))

    def cookie(self, payload: dict[str, Any]) -> str:
        return self.successResultOf(defer.ensureDeferred(self.world.hub.cookies.encode(payload)))

    def test_auth_cookie_user(self) -> None:
        """?auth= (the control channel's cookie) makes an authenticated user side."""
        auth = self.cookie({"userid": self.admin_id, "domainid": "", "ip": "127.0.0.1"})
        info = self.identify({"id": "x", "auth": auth, "browser": "1", "p": "1",
                              "nodeid": self.node})
        self.assertIsInstance(info, SideInfo)
        self.assertEqual((info.user_id, info.authenticated, info.browser, info.protocol),
                         (self.admin_id, True, True, 1))

    def test_relay_cookie_agent_side(self) -> None:
        """?rauth={ruserid} makes a side for that user that is not itself authenticated."""
        rauth = self.cookie({"ruserid": self.admin_id, "x": "abc"})
        info = self.identify({"id": "x", "rauth": rauth, "p": "1", "nodeid": self.node})
        self.assertEqual((info.user_id, info.authenticated, info.nouser),
                         (self.admin_id, False, False))

    def test_nouser_relay_cookie(self) -> None:
        """?rauth={nouser:1} makes a trusted side without a user."""
        info = self.identify({"id": "x", "rauth": self.cookie({"nouser": 1})})
        self.assertTrue(info.nouser and info.trusted)

    def test_expired_relay_cookie_refused(self) -> None:
        """A relay cookie older than 240 minutes is refused."""
        rauth = self.cookie({"ruserid": self.admin_id})
        self.world.clock.advance(RELAY_COOKIE_MINUTES * 60 + 1)
        self.assertIsInstance(self.identify({"id": "x", "rauth": rauth}), Refused)

    def test_nothing_refused(self) -> None:
        """No credentials at all, or no id, is refused."""
        self.assertIsInstance(self.identify({"id": "x"}), Refused)
        auth = self.cookie({"userid": self.admin_id, "domainid": "", "ip": "127.0.0.1"})
        self.assertIsInstance(self.identify({"auth": auth}), Refused)

    def test_forged_relay_cookie_refused(self) -> None:
        """A relay cookie not made with this server's key is refused."""
        self.assertIsInstance(self.identify({"id": "x", "rauth": "A" * 60}), Refused)

    def test_user_without_rights_on_node_refused(self) -> None:
        """A logged-in user naming a device it has no remote-control rights on is refused."""
        auth = self.cookie({"userid": self.bob_id, "domainid": "", "ip": "127.0.0.1"})
        self.assertIsInstance(self.identify({"id": "x", "auth": auth, "nodeid": self.node}),
                              Refused)
        self.world.link(self.bob_id, self.node, MESHRIGHT_REMOTECONTROL)
        self.assertIsInstance(self.identify({"id": "x", "auth": auth, "nodeid": self.node}),
                              SideInfo)

    def test_session_events(self) -> None:
        """Pairing and closing dispatch relaylog start (msgid 14) and end (msgid 10) events,
        stored in the audit trail."""
        heard: list[dict[str, Any]] = []
        self.world.bus.subscribe(["*"], heard.append)
        table = self.relay.table
        a, b = FakePeer(), FakePeer()
        table.join(a, user_side(user=self.admin_id))
        table.join(b, agent_side(user=self.admin_id))
        self.world.clock.advance(7)
        table.received(a, b"hello", True)
        table.lost(b)
        self.assertEqual([e["msgid"] for e in heard], [14, 10])
        self.assertEqual(heard[1]["msgArgs"][3], 7)
        self.assertEqual(heard[1]["bytesin"], 5)
        self.assertIn("Ended terminal session", heard[1]["msg"])
        stored = self.successResultOf(defer.ensureDeferred(
            self.world.store.get_events(["*"], "", 10)))
        self.assertIn(10, [e.get("msgid") for e in stored])


class TunnelRoutingTests(TestCase):
    """The control channel's msg/tunnel, checked and sent to the agent."""

    def setUp(self) -> None:
        self.world = World()
        self.admin_id = self.world.add_user("admin", SITERIGHT_ADMIN)
        self.mesh = self.world.add_mesh("g", self.admin_id)
        self.node = self.world.add_node(self.mesh, "pc")
        self.world.connect_agent(self.node)

    def tunnel(self, client: Any, p: int = 1, nodeid: Optional[str] = None) -> dict[str, Any]:
        value = f"*/meshrelay.ashx?p={p}&nodeid={nodeid or self.node}&id=abc123&rauth=old"
        return client.reply("msg", type="tunnel", nodeid=self.node, usage=p, value=value)

    def test_tunnel_delivered_with_fresh_cookie(self) -> None:
        """The agent gets the relay URL with a fresh rauth for the user, rights, consent,
        the TLS hash to pin and the session id."""
        admin = self.world.connect(self.admin_id)
        self.assertEqual(self.tunnel(admin)["result"], "OK")
        (node_id, message), = self.world.agents.sent
        self.assertEqual(node_id, self.node)
        self.assertEqual(message["action"], "msg")
        self.assertEqual(message["type"], "tunnel")
        self.assertEqual(message["servertlshash"], "ab" * 48)
        self.assertEqual(message["sessionid"], admin.session.session_id)
        self.assertEqual((message["userid"], message["username"]), (self.admin_id, "admin"))
        self.assertEqual(message["rights"], 0xFFFFFFFF)
        self.assertEqual(message["consent"], 0)
        self.assertEqual(message["usage"], 1)
        self.assertTrue(message["value"].startswith("*/meshrelay.ashx?"))
        query = parse_qs(message["value"].split("?", 1)[1])
        self.assertEqual(query["id"], ["abc123"])
        self.assertEqual(query["nodeid"], [self.node])
        self.assertNotEqual(query["rauth"], ["old"])
        payload = self.successResultOf(defer.ensureDeferred(
            self.world.hub.cookies.decode(query["rauth"][0], RELAY_COOKIE_MINUTES)))
        self.assertEqual(payload["ruserid"], self.admin_id)

    def test_consent_and_prompt_texts(self) -> None:
        """consent is the OR of the domain's userConsentFlags and the device's, group's,
        user's and linked user groups' bits; soptions carry the domain's consent and
        notification texts under the names the agent reads."""
        config = parse_config({"domains": {"": {
            "userConsentFlags": 64,
            "consentMessages": {"title": "Remote help", "terminal": "Allow a terminal?",
                                "consentTimeout": 30, "autoAcceptIfFileNoUser": True},
            "notificationMessages": {"files": "Someone is looking at your files"}}}})
        self.world.hub.session_policy = SessionPolicy.from_domain(config.default_domain)
        bob_id = self.world.add_user("bob")
        self.world.link(bob_id, self.mesh, MESHRIGHT_REMOTECONTROL)
        self.world.doc(self.node)["consent"] = 2
        self.world.doc(self.mesh)["consent"] = 8
        self.world.doc(bob_id)["consent"] = 1
        group = "ugrp//" + "G" * 64
        other = "ugrp//" + "H" * 64
        self.world.store._documents[group] = {"_id": group, "type": "ugrp", "domain": "",
                                              "consent": 16, "links": {self.mesh: {}}}
        self.world.store._documents[other] = {"_id": other, "type": "ugrp", "domain": "",
                                              "consent": 32, "links": {}}
        self.world.doc(bob_id)["links"].update({group: {"rights": 1}, other: {"rights": 1}})
        bob = self.world.connect(bob_id)
        self.assertEqual(self.tunnel(bob)["result"], "OK")
        (_, message), = self.world.agents.sent
        self.assertEqual(message["consent"], 64 | 2 | 8 | 1 | 16)
        self.assertEqual(message["soptions"], {
            "consentTitle": "Remote help", "consentMsgTerminal": "Allow a terminal?",
            "consentTimeout": 30, "consentAutoAcceptIfFileNoUser": True,
            "notifyMsgFiles": "Someone is looking at your files"})

    def test_mismatched_nodeid_refused(self) -> None:
        """A relay URL naming another device than the command is not routed."""
        admin = self.world.connect(self.admin_id)
        self.assertEqual(self.tunnel(admin, nodeid="node//other")["result"], "Unable to route")
        self.assertEqual(self.world.agents.sent, [])

    def test_other_host_refused(self) -> None:
        """Only same-server relay paths are routed: a full URL elsewhere is refused."""
        admin = self.world.connect(self.admin_id)
        answer = admin.reply("msg", type="tunnel", nodeid=self.node,
                             value=f"wss://evil.example/meshrelay.ashx?nodeid={self.node}&id=1")
        self.assertEqual(answer["result"], "Unable to route")
        self.assertEqual(self.world.agents.sent, [])

    def test_noterminal_right_blocks_terminal_only(self) -> None:
        """A user with NOTERMINAL cannot open a terminal tunnel but can open files."""
        bob_id = self.world.add_user("bob")
        self.world.link(bob_id, self.mesh, MESHRIGHT_REMOTECONTROL | MESHRIGHT_NOTERMINAL)
        bob = self.world.connect(bob_id)
        self.assertEqual(self.tunnel(bob, p=1)["result"], "Unable to route")
        self.assertEqual(self.tunnel(bob, p=5)["result"], "OK")
        self.assertEqual(len(self.world.agents.sent), 1)

    def test_no_remote_rights_refused(self) -> None:
        """Without REMOTECONTROL or REMOTEVIEWONLY nothing is routed."""
        bob_id = self.world.add_user("bob")
        self.world.link(bob_id, self.mesh, 0x4)
        bob = self.world.connect(bob_id)
        self.assertEqual(self.tunnel(bob)["result"], "Unable to route")

    def test_rights_table(self) -> None:
        """View-only suffices for a tunnel; NOFILES blocks files; full rights are exempt."""
        self.assertTrue(allowed(MESHRIGHT_REMOTEVIEWONLY, 1))
        self.assertFalse(allowed(MESHRIGHT_REMOTECONTROL | 0x400, 5))
        self.assertTrue(allowed(0xFFFFFFFF, 5))
        self.assertFalse(allowed(0, 1))

    def test_parse_relay_value(self) -> None:
        """Relay values: only */[domain/]meshrelay.ashx paths are accepted."""
        self.assertEqual(parse_relay_value("*/meshrelay.ashx?p=1&id=x")[1],
                         {"p": "1", "id": "x"})
        self.assertEqual(parse_relay_value("*/d1/meshrelay.ashx?id=x")[0], "d1/meshrelay.ashx")
        for bad in ("https://x/meshrelay.ashx?id=1", "*/../meshrelay.ashx?id=1",
                    "*/a/b/meshrelay.ashx", "*/control.ashx?id=1", None, 5):
            self.assertIsNone(parse_relay_value(bad), bad)


class GuestRuleTests(TableBase):
    """Sides of device-sharing links: their share, their end."""

    def guest(self, share: str = "S1", expires: Optional[float] = None) -> SideInfo:
        return user_side(guest_name="Guest", share_id=share, expires=expires)

    def test_guest_pairs_only_with_its_share(self) -> None:
        """A guest side pairs with the agent side of its own share only: not with a user's
        own agent side, nor with another share's."""
        a = FakePeer()
        self.assertTrue(self.table.join(a, self.guest("S1")))
        for other in (agent_side(), agent_side(share_id="S2")):
            b = FakePeer()
            self.assertFalse(self.table.join(b, other))
            self.assertTrue(b.closed)
        self.assertFalse(a.closed)
        c = FakePeer()
        self.assertTrue(self.table.join(c, agent_side(share_id="S1")))
        self.assertEqual(a.frames, [(b"c", False)])
        self.assertEqual(self.started[0].guest_name, "Guest")

    def test_user_side_never_meets_a_guest_agent_side(self) -> None:
        """A user's own side does not pair with the agent side dialled for a guest."""
        a, b = FakePeer(), FakePeer()
        self.table.join(a, agent_side(share_id="S1"))
        self.assertFalse(self.table.join(b, user_side()))

    def test_expired_side_refused(self) -> None:
        """A side whose access period is over is refused at once."""
        a = FakePeer()
        self.assertFalse(self.table.join(a, self.guest(expires=self.clock.seconds())))
        self.assertTrue(a.closed)
        self.assertEqual(len(self.table), 0)

    def test_session_closed_at_expiry(self) -> None:
        """A paired guest session is closed, both sides, when its access period ends; the
        end is reported."""
        end = self.clock.seconds() + 100
        a, b = self.pair(self.guest(expires=end), agent_side(share_id="S1"))
        self.clock.advance(99)
        self.assertFalse(a.closed or b.closed)
        self.clock.advance(1)
        self.assertTrue(a.closed and b.closed)
        self.assertEqual(len(self.table), 0)
        self.assertEqual(len(self.ended), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deadline_cancelled_when_session_ends_first(self) -> None:
        """A session that ends before its access period leaves no timer behind."""
        a, b = self.pair(self.guest(expires=self.clock.seconds() + 100),
                         agent_side(share_id="S1"))
        self.table.lost(a)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_share(self) -> None:
        """close_share closes every session and waiting side of that share, no other."""
        a, b = self.pair(self.guest("S1"), agent_side(share_id="S1"))
        waiting = FakePeer()
        self.table.join(waiting, SideInfo(relay_id="r2", user_id="user//alice",
                                          authenticated=True, share_id="S1"))
        c, d = FakePeer(), FakePeer()
        self.table.join(c, user_side("r3"))
        self.table.join(d, agent_side("r3"))
        self.assertEqual(self.table.close_share("S1"), 2)
        self.assertTrue(a.closed and b.closed and waiting.closed)
        self.assertFalse(c.closed or d.closed)
        self.assertEqual(len(self.table), 1)
        self.assertEqual(self.table.close_share("S1"), 0)
