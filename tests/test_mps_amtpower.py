"""Intel AMT power actions over CIRA (meshd.mps.amtpower and ``poweraction`` 302/308/310).

Three levels: the power client against the real MPS over real TLS on 127.0.0.1 with the
simulated AMT device of tests/cira_client.py (its WSMAN service demands digest
authentication and checks the envelope); the control actions without sockets; and the
whole path against a started meshd: control channel and meshctrl -> meshd -> CIRA channel
-> simulated AMT, with the events users see."""

from __future__ import annotations

import base64
import json
import os
import uuid
from typing import Any, Optional

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from meshd.control.rights import (
    MESHRIGHT_ADMIN,
    MESHRIGHT_REMOTECONTROL,
    MESHRIGHT_RESETOFF,
    MESHRIGHT_WAKEDEVICE,
    SITERIGHT_ADMIN,
)
from meshd.mps.amtpower import AmtPower, PowerOutcome
from meshd.mps.cira import cira_node_id
from meshd.mps.protocol import MpsServerFactory
from meshd.presence import CONN_CIRA, Connection
from tests.cira_client import AmtWsman, CiraDevice, client_context, connect_device
from tests.test_control_session import World
from tests.test_mps_protocol import SYSTEM_ID, MpsServerTestCase

AMT_PASSWORD = "P@ssw0rd!"


async def until(check: Any, timeout: float = 10.0) -> Any:
    """Poll ``check()`` on the real reactor until it is true (or the time is up)."""
    for _ in range(int(timeout / 0.02)):
        result = check()
        if result:
            return result
        await deferLater(reactor, 0.02, lambda: None)
    return check()


class PowerClientTests(MpsServerTestCase):
    """AmtPower with the real MPS listener and a simulated AMT device."""

    def setUp(self) -> None:
        super().setUp()
        self.power_clock = Clock()
        self.published: list[tuple[list[str], dict[str, Any]]] = []
        self.power = AmtPower(mps=self.factory, clock=self.power_clock,
                              publish=lambda targets, event: self.published.append(
                                  (targets, event)),
                              presence=self.presence, random=lambda size: b"\x01" * size)

    async def amt_device(self, amt: Optional[AmtWsman] = None,
                         system_id: uuid.UUID = SYSTEM_ID, ports: tuple[int, ...] = (16992,
                                                                                     16993),
                         user: str = "admin", password: str = AMT_PASSWORD
                         ) -> tuple[CiraDevice, dict[str, Any]]:
        """A logged-in device serving ``amt`` on 16992, and its record with credentials."""
        services = {16992: amt.service} if amt is not None else {}
        device = await self.ready_device(system_id=system_id, services=services, ports=ports)
        node = await self.store.get(cira_node_id("", system_id))
        assert node is not None
        node["intelamt"] = {**node["intelamt"], "user": user, "pass": password}
        return device, node

    async def act(self, node: dict[str, Any], action: int) -> PowerOutcome:
        outcome: PowerOutcome = await self.power.request(
            node, action, user_id="user//alice", user_name="alice",
            targets=["*", node["_id"], "user//alice"])
        return outcome

    async def test_power_actions_reach_the_device(self) -> None:
        """302, 308 and 310 reach AMT as power states 2, 8 and 10, each authenticated with
        digest after one 401, on two channels to 16992 that are closed afterwards; each
        outcome is published as an amtpower event with ReturnValue 0 to the targets."""
        amt = AmtWsman("admin", AMT_PASSWORD)
        device, node = await self.amt_device(amt)
        for action in (302, 308, 310):
            outcome = await self.act(node, action)
            self.assertEqual(outcome, PowerOutcome(True, "Completed with No Error "
                                                         "(ReturnValue 0)", 0))
        self.assertEqual(amt.power_states, [(2, "admin"), (8, "admin"), (10, "admin")])
        self.assertEqual((amt.unauthorized, amt.problems), (3, []))
        self.assertEqual([c.port for c in device.channel_opened], [16992] * 6)
        await defer.gatherResults([c.when_closed for c in device.channel_opened])
        self.assertTrue(await until(lambda: self.factory.stats.channels_open == 0))
        self.assertEqual([targets for targets, _ in self.published],
                         [["*", node["_id"], "user//alice"]] * 3)
        events = [event for _, event in self.published]
        self.assertEqual([(e["actiontype"], e["powerstate"], e["result"], e["returnvalue"])
                          for e in events], [(302, 2, "ok", 0), (308, 8, "ok", 0),
                                             (310, 10, "ok", 0)])
        self.assertEqual(events[0], {
            "etype": "node", "action": "amtpower", "nodeid": node["_id"],
            "userid": "user//alice", "username": "alice", "actiontype": 302,
            "powerstate": 2, "result": "ok", "returnvalue": 0,
            "msg": "Intel AMT power on: Completed with No Error (ReturnValue 0)"})
        self.assertEqual(events[1]["msg"],
                         "Intel AMT power off: Completed with No Error (ReturnValue 0)")
        self.assertEqual(events[2]["msg"],
                         "Intel AMT reset: Completed with No Error (ReturnValue 0)")
        self.assertNotIn(AMT_PASSWORD, json.dumps(self.published))
        self.assertEqual(self.power.pending, set())

    async def test_wrong_credentials(self) -> None:
        """Credentials AMT refuses give a failure event saying so, and no power change."""
        amt = AmtWsman("admin", "the real one")
        _, node = await self.amt_device(amt)
        outcome = await self.act(node, 310)
        self.assertEqual(outcome, PowerOutcome(False, "Intel AMT refused the user name or "
                                                      "password"))
        self.assertEqual(amt.power_states, [])
        self.assertIn("wrong user name or password", amt.problems)
        [(_, event)] = self.published
        self.assertEqual((event["result"], event["msg"]), (
            "failed", "Intel AMT reset failed: Intel AMT refused the user name or password"))
        self.assertNotIn("returnvalue", event)

    async def test_failing_return_value(self) -> None:
        """A non-zero ReturnValue is a failure that names the value and its meaning."""
        _, node = await self.amt_device(AmtWsman("admin", AMT_PASSWORD, return_value=2))
        outcome = await self.act(node, 302)
        self.assertEqual(outcome, PowerOutcome(False, "Unknown or Unspecified Error "
                                                      "(ReturnValue 2)", 2))
        [(_, event)] = self.published
        self.assertEqual((event["result"], event["returnvalue"], event["msg"]), (
            "failed", 2, "Intel AMT power on failed: Unknown or Unspecified Error "
                         "(ReturnValue 2)"))

    async def test_bad_answers(self) -> None:
        """An oversized answer, one that is not HTTP, one that is not XML and one cut
        short each give a failure event with a clear reason, and the channel is closed."""
        amt = AmtWsman("admin", AMT_PASSWORD)
        device, node = await self.amt_device(amt)
        cases = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n",
             "the answer is larger than 65536 bytes"),
            (b"SSH-2.0-OpenSSH_9\r\n\r\n", "the answer is not HTTP/1.x"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
             "the answer is not well-formed XML"),
        ]
        for answer, reason in cases:
            amt.raw_answer = answer
            self.assertEqual(await self.act(node, 308), PowerOutcome(False, reason))
        await defer.gatherResults([c.when_closed for c in device.channel_opened])
        self.assertEqual([e["msg"] for _, e in self.published],
                         [f"Intel AMT power off failed: {reason}" for _, reason in cases])

    async def test_timeout(self) -> None:
        """A device that never answers fails after 30 s on the injected clock with a
        clear reason, and its channel is closed."""
        amt = AmtWsman("admin", AMT_PASSWORD, hang=True)
        device, node = await self.amt_device(amt)
        running = self.power.request(node, 302, user_id="user//alice", user_name="alice",
                                     targets=["*"])
        self.assertTrue(await until(lambda: amt.requests))
        self.assertFalse(running.called)
        self.power_clock.advance(29.9)
        self.assertFalse(running.called)
        self.power_clock.advance(0.1)
        outcome = await running
        self.assertEqual(outcome, PowerOutcome(False, "no answer from Intel AMT within 30 s"))
        await device.channel_opened[0].when_closed
        self.assertEqual(self.power.pending, set())

    async def test_timeout_while_opening(self) -> None:
        """When time runs out before the device confirms the channel, the action fails
        at once, and the channel confirmed afterwards is closed without a request."""
        amt = AmtWsman("admin", AMT_PASSWORD)
        device, node = await self.amt_device(amt)
        running = self.power.request(node, 308, user_id="user//alice", user_name="alice",
                                     targets=["*"])
        self.power_clock.advance(30)  # CHANNEL_OPEN is still on its way
        outcome = await running
        self.assertEqual(outcome, PowerOutcome(False, "no answer from Intel AMT within 30 s"))
        self.assertTrue(await until(lambda: device.channel_opened))
        await device.channel_opened[0].when_closed
        self.assertEqual(amt.requests, [])
        self.assertTrue(await until(lambda: self.factory.stats.channels_open == 0))

    async def test_nothing_sent_without_a_way_in(self) -> None:
        """No Intel AMT on the record, no CIRA connection here (or one on another server),
        port 16992 not forwarded, no stored password: a failure event saying which, and no
        channel is opened."""
        tls_only, tls_node = await self.amt_device(AmtWsman(), ports=(16993,),
                                                   system_id=uuid.uuid4())
        plain, plain_node = await self.amt_device(AmtWsman())
        elsewhere = cira_node_id("", uuid.uuid4())
        self.presence.add(Connection(elsewhere, CONN_CIRA, "another-server", 1.0))
        cases = [
            ({**plain_node, "intelamt": None}, "the device has no Intel AMT"),
            ({**plain_node, "_id": cira_node_id("", uuid.uuid4())},
             "the device is not connected over CIRA to this server"),
            ({**plain_node, "_id": elsewhere},
             "the device is connected over CIRA to another server"),
            (tls_node, "the device does not forward port 16992 (Intel AMT WSMAN)"),
            ({**plain_node, "intelamt": {**plain_node["intelamt"], "pass": ""}},
             "no Intel AMT credentials are stored for this device"),
        ]
        for record, reason in cases:
            self.assertEqual(await self.act(record, 310), PowerOutcome(False, reason))
        self.assertEqual((tls_only.channel_opened, plain.channel_opened), ([], []))
        self.assertEqual([e["msg"] for _, e in self.published],
                         [f"Intel AMT reset failed: {reason}" for _, reason in cases])
        self.assertTrue(all(e["result"] == "failed" for _, e in self.published))

    async def test_channel_refused(self) -> None:
        """A device that refuses the channel (nothing listens on 16992) is a failure that
        names the APF reason."""
        _, node = await self.amt_device(None)
        outcome = await self.act(node, 302)
        self.assertEqual(outcome, PowerOutcome(
            False, "the device refused the channel to port 16992 (APF reason 2)"))


class PowerActionControlTests(TestCase):
    """``poweraction`` and ``changedevice`` on the control channel, without sockets; the
    power client is the real one with an MPS that has no devices connected."""

    def setUp(self) -> None:
        world = self.world = World()
        self.admin_id = world.add_user("admin", SITERIGHT_ADMIN)
        self.mesh = world.add_mesh("amt", self.admin_id, mtype=1)
        self.node = world.add_node(self.mesh, "amt1")
        record = world.doc(self.node)
        record.pop("agent")
        record["intelamt"] = {"user": "admin", "pass": AMT_PASSWORD, "tls": 0, "state": 2}
        world.store.set(record)
        self.mps = MpsServerFactory(world.store, world.presence, world.bus, world.clock,
                                    server_id="local")
        world.hub.amt_power = AmtPower(mps=self.mps, clock=world.clock,
                                       publish=world.hub.publish, presence=world.presence)
        self.admin = world.connect(self.admin_id)

    def user_with(self, name: str, rights: int) -> Any:
        user_id = self.world.add_user(name)
        self.world.link(user_id, self.mesh, rights)
        return self.world.connect(user_id)

    def amtpower_events(self) -> list[dict[str, Any]]:
        return [e for e in self.admin.events() if e.get("action") == "amtpower"]

    def test_without_the_right_nothing_happens(self) -> None:
        """A user lacking WAKEDEVICE (302) or RESETOFF (308, 310) gets ok and nothing is
        attempted: no event, no pending action."""
        eve = self.user_with("eve", MESHRIGHT_ADMIN & ~(MESHRIGHT_WAKEDEVICE
                                                        | MESHRIGHT_RESETOFF))
        for action in (302, 308, 310):
            self.assertEqual(eve.result("poweraction", nodeids=[self.node], actiontype=action),
                             "ok")
        self.assertEqual(self.amtpower_events(), [])
        self.assertEqual(self.world.hub.amt_power.pending, set())
        stored = self.successResultOf(defer.ensureDeferred(
            self.world.store.get_events(None, "", node_id=self.node)))
        self.assertEqual([e for e in stored if e.get("action") == "amtpower"], [])

    def test_rights_per_action(self) -> None:
        """WAKEDEVICE allows only power on, RESETOFF only off and reset; an allowed action
        on a device without CIRA answers ok and leaves a stored failure event for the
        device, its group and the user."""
        waker = self.user_with("waker", MESHRIGHT_WAKEDEVICE | MESHRIGHT_REMOTECONTROL)
        self.assertEqual(waker.result("poweraction", nodeids=[self.node], actiontype=302),
                         "ok")
        self.assertEqual(waker.result("poweraction", nodeids=[self.node], actiontype=308),
                         "ok")
        resetter = self.user_with("resetter", MESHRIGHT_RESETOFF)
        resetter.result("poweraction", nodeids=[self.node], actiontype=310)
        resetter.result("poweraction", nodeids=[self.node], actiontype=302)
        events = self.amtpower_events()
        self.assertEqual([(e["actiontype"], e["userid"], e["msg"]) for e in events], [
            (302, "user//waker", "Intel AMT power on failed: the device is not connected "
                                 "over CIRA to this server"),
            (310, "user//resetter", "Intel AMT reset failed: the device is not connected "
                                    "over CIRA to this server")])
        stored = self.successResultOf(defer.ensureDeferred(
            self.world.store.get_events(None, "", node_id=self.node)))
        self.assertEqual(len([e for e in stored if e.get("action") == "amtpower"]), 2)

    def test_other_actions_unchanged(self) -> None:
        """Agent power actions still go to the agent; other 3xx codes do nothing; with no
        MPS (amt_power None) 302 is just ok."""
        agent_node = self.world.add_node(self.mesh, "agent1")
        self.world.connect_agent(agent_node)
        self.admin.result("poweraction", nodeids=[agent_node], actiontype=3)
        self.assertEqual(self.world.agents.sent,
                         [(agent_node, {"action": "poweraction", "actiontype": 3})])
        self.admin.result("poweraction", nodeids=[self.node], actiontype=311)
        self.world.hub.amt_power = None
        self.assertEqual(self.admin.result("poweraction", nodeids=[self.node], actiontype=302),
                         "ok")
        self.assertEqual(self.amtpower_events(), [])

    def test_changedevice_sets_amt_credentials(self) -> None:
        """changedevice {intelamt:{user, pass}} stores new credentials (the event says so
        and shows the password only as 1); unusable or unchanged values and devices
        without Intel AMT change nothing."""
        frames = self.admin.request("changedevice", nodeid=self.node,
                                    intelamt={"user": "root", "pass": "n3w!"})
        [event] = self.admin.events(frames)
        self.assertIn("Intel AMT credentials", event["msg"])
        self.assertEqual(event["node"]["intelamt"]["pass"], 1)
        amt = self.world.doc(self.node)["intelamt"]
        self.assertEqual((amt["user"], amt["pass"], amt["state"]), ("root", "n3w!", 2))
        agent_node = self.world.add_node(self.mesh, "agent2")
        for node_id, value in ((self.node, {"user": "root", "pass": "n3w!"}),
                               (self.node, {"user": "a\r\nb", "pass": "x"}),
                               (self.node, {"user": "a", "pass": 5}),
                               (self.node, "admin:x"),
                               (agent_node, {"user": "a", "pass": "b"})):
            frames = self.admin.request("changedevice", nodeid=node_id, intelamt=value)
            self.assertEqual(self.admin.events(frames), [], value)
        self.assertEqual(self.world.doc(self.node)["intelamt"]["pass"], "n3w!")
        self.assertNotIn("intelamt", self.world.doc(agent_node))


class EndToEndTests(TestCase):
    """A started meshd (twistd, real TLS, SQLite), its control channel, meshctrl, and a
    simulated AMT device over CIRA."""

    timeout = 180

    async def test_power_actions_end_to_end(self) -> None:
        """An administrator sets the device's AMT credentials with changedevice and sends
        poweraction 302/308/310: the replies are ok, the device gets power states 2, 8, 10
        with digest authentication, and amtpower events reach the session and the
        device's stored events.  Wrong credentials give a failure event and no power
        change.  A user without the rights gets ok and nothing reaches the device.
        meshctrl devicepower --amton powers the device on too."""
        from tests.meshctrl import MeshCtrl, meshctrl_script
        from tests.server import ServerProcess, fresh_datapath
        from tests.test_login import admin
        from tests.test_relay_e2e import connect
        from tests.test_relay_e2e import until as until_true

        password = "Amt-Power-1"
        datapath = fresh_datapath()
        server = ServerProcess(datapath).start()
        self.addCleanup(server.stop)
        self.assertEqual(admin(datapath, "createaccount", "boss", "--pass", password,
                               "--siteadmin").returncode, 0)

        def meshauth(name: str, secret: str) -> dict[str, str]:
            return {"x-meshauth": ",".join(base64.b64encode(x.encode()).decode()
                                           for x in (name, secret))}

        base = f"wss://127.0.0.1:{server.port}"
        control = await connect(base + "/control.ashx", meshauth("boss", password))
        self.addCleanup(lambda: control.dropConnection(abort=True)
                        if control.transport else None)
        counter = [0]

        async def ask(client: Any, action: str, **fields: Any) -> dict[str, Any]:
            counter[0] += 1
            rid = f"q{counter[0]}"
            client.sendMessage(json.dumps({"action": action, "responseid": rid,
                                           **fields}).encode())
            found = await until_true(lambda: [f for f in client.json_frames()
                                              if f.get("responseid") == rid], 20)
            self.assertTrue(found, f"no answer to {action}\n{server.log()[-3000:]}")
            return dict(found[0])

        def amtpower_events() -> list[dict[str, Any]]:
            return [f["event"] for f in control.json_frames() if f.get("action") == "event"
                    and f["event"].get("action") == "amtpower"]

        created = await ask(control, "createmesh", meshname="amt", meshtype=1)
        self.assertEqual(created.get("result"), "ok", created)
        mesh_id = created["meshid"]
        result = admin(datapath, "ciracredentials", mesh_id)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = dict(line.split(" ", 2)[1:] for line in result.stdout.splitlines()[:2])
        amt = AmtWsman("admin", AMT_PASSWORD)
        device = CiraDevice(lines["user"], lines["password"].encode(),
                            services={16992: amt.service})
        connect_device(reactor, "127.0.0.1", server.mpsport, device, client_context(False))
        await device.ready
        self.addCleanup(device.close)
        node_id = cira_node_id("", device.system_id)

        async def on_cira() -> bool:
            answer = await ask(control, "nodes")
            return any(n["_id"] == node_id and n.get("conn", 0) & CONN_CIRA
                       for n in answer.get("nodes", {}).get(mesh_id, []))

        for _ in range(100):
            if await on_cira():
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(await on_cira(), server.log()[-3000:])

        changed = await ask(control, "changedevice", nodeid=node_id,
                            intelamt={"user": "admin", "pass": AMT_PASSWORD})
        self.assertEqual(changed.get("result"), "ok")
        for action in (302, 308, 310):
            reply = await ask(control, "poweraction", nodeids=[node_id], actiontype=action)
            self.assertEqual(reply, {"action": "poweraction", "responseid": reply["responseid"],
                                     "result": "ok"})
        self.assertTrue(await until_true(lambda: len(amtpower_events()) == 3, 20),
                        server.log()[-3000:])
        self.assertEqual(amt.power_states, [(2, "admin"), (8, "admin"), (10, "admin")])
        self.assertEqual((amt.unauthorized, amt.problems), (3, []))
        events = amtpower_events()
        self.assertEqual(sorted((e["actiontype"], e["result"], e["returnvalue"], e["nodeid"],
                                 e["userid"]) for e in events),
                         [(a, "ok", 0, node_id, "user//boss") for a in (302, 308, 310)])
        self.assertIn("Intel AMT power on: Completed with No Error (ReturnValue 0)",
                      [e["msg"] for e in events])
        control.sendMessage(json.dumps({"action": "events", "nodeid": node_id,
                                        "tag": "stored"}).encode())
        stored = await until_true(lambda: [f for f in control.json_frames()
                                           if f.get("action") == "events"
                                           and f.get("tag") == "stored"], 20)
        self.assertTrue(stored)
        self.assertEqual(sorted(e["msg"] for e in stored[0]["events"]
                                if e.get("action") == "amtpower"),
                         sorted(e["msg"] for e in events))

        # Wrong credentials: a failure event, nothing switched.
        await ask(control, "changedevice", nodeid=node_id,
                  intelamt={"user": "admin", "pass": "not-the-password"})
        await ask(control, "poweraction", nodeids=[node_id], actiontype=310)
        self.assertTrue(await until_true(lambda: len(amtpower_events()) == 4, 20))
        failed = amtpower_events()[-1]
        self.assertEqual((failed["result"], failed["msg"]), (
            "failed", "Intel AMT reset failed: Intel AMT refused the user name or password"))
        self.assertEqual(len(amt.power_states), 3)
        await ask(control, "changedevice", nodeid=node_id,
                  intelamt={"user": "admin", "pass": AMT_PASSWORD})

        # A user who may see the device but not switch it: ok, and nothing reaches AMT.
        # The administrator's next action opens its channels after anything the user's
        # could have (same CIRA connection, in order), so the count below is exact.
        added = await ask(control, "adduser", username="eve", **{"pass": "Eve-Pass-123"})
        self.assertEqual(added.get("result"), "ok", added)
        granted = await ask(control, "addmeshuser", meshid=mesh_id, usernames=["eve"],
                            meshadmin=MESHRIGHT_REMOTECONTROL)
        self.assertIn("Added user eve", str(granted.get("result")), granted)
        eve = await connect(base + "/control.ashx", meshauth("eve", "Eve-Pass-123"))
        self.addCleanup(lambda: eve.dropConnection(abort=True) if eve.transport else None)
        channels = len(device.channel_opened)
        for action in (302, 308, 310):
            self.assertEqual((await ask(eve, "poweraction", nodeids=[node_id],
                                        actiontype=action)).get("result"), "ok")
        await ask(control, "poweraction", nodeids=[node_id], actiontype=302)
        self.assertTrue(await until_true(lambda: len(amtpower_events()) == 5, 20))
        self.assertEqual(len(device.channel_opened), channels + 2)
        self.assertEqual(amt.power_states[3:], [(2, "admin")])
        self.assertEqual(amtpower_events()[-1]["userid"], "user//boss")

        # meshctrl devicepower --amton (MeshCentral's own client), when Node.js is here.
        try:
            ctl = MeshCtrl(server.port, "boss", password)
            script = meshctrl_script()
        except Exception as problem:  # SkipTest, or RuntimeError under CI
            if os.environ.get("CI") == "true":
                raise
            self.skipTest(str(problem))
        out, err, code = await getProcessOutputAndValue(
            "node", [script, "devicepower", "--id", node_id, "--amton", *ctl.auth_args()],
            env=dict(os.environ), reactor=reactor)
        self.assertEqual((out.decode().strip(), code), ("ok", 0), err)
        self.assertTrue(await until_true(lambda: len(amtpower_events()) == 6, 20))
        self.assertEqual(amt.power_states[4:], [(2, "admin")])
