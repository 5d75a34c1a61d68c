"""Rights on /control.ashx: meshd.control.rights, and a table-driven matrix over the actions.

Each row is an action and the one right it needs.  A user holding every right but that
one sends it: the answer is a denial, the store (documents, events) is unchanged,
no agent got anything and no event reached anybody.  The same actions from a user who
cannot see the group at all must also change nothing and must not mention any name of
the hidden group, device or user.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.trial.unittest import TestCase

from meshd.agent.identity import encode_id
from meshd.control import rights as R
from meshd.control.rights import Access, subscription_ids
from tests.test_control_session import World

Command = Callable[["Scene"], dict[str, Any]]


class Scene:
    """An admin's secret groups and devices, a victim user, and the user ``eve``."""

    def __init__(self, eve_site: Optional[int] = None, eve_mesh_rights: Optional[int] = None
                 ) -> None:
        world = self.world = World()
        self.admin_id = world.add_user("admin", R.SITERIGHT_ADMIN)
        self.vic_id = world.add_user("vic", realname="secret-vic")
        self.mesh = world.add_mesh("secret-agents", self.admin_id)
        self.local = world.add_mesh("secret-local", self.admin_id, mtype=3)
        self.local2 = world.add_mesh("secret-local2", self.admin_id, mtype=3)
        self.amt = world.add_mesh("secret-amt", self.admin_id, mtype=1)
        self.node = world.add_node(self.mesh, "secret-node")
        self.local_node = world.add_node(self.local, "secret-localnode")
        world.connect_agent(self.node)
        world.store.set({"_id": "if" + self.node, "type": "ifinfo", "nodeid": self.node,
                         "netif2": {"eth0": [{"mac": "00:11:22:33:44:55"}]}})
        world.link(self.vic_id, self.mesh, 8)
        self.ugrp = "ugrp//" + encode_id(world._random(48))
        world.store.set({"_id": self.ugrp, "type": "ugrp", "name": "secret-ugrp",
                         "domain": "", "links": {}})
        world.link(self.vic_id, self.ugrp, 1)
        world.hub.publish(["*", "server-users"], {"etype": "user", "userid": self.vic_id,
                                                  "action": "accountcreate",
                                                  "msg": "secret-vic created"})
        self.eve_id = world.add_user("eve", eve_site)
        if eve_mesh_rights is not None:
            for mesh in (self.mesh, self.local, self.local2, self.amt):
                world.link(self.eve_id, mesh, eve_mesh_rights)
        self.admin = world.connect(self.admin_id)
        self.eve = world.connect(self.eve_id)

    def snapshot(self) -> Any:
        export = self.world.store.export_all().result
        return json.dumps(export, sort_keys=True, default=str)


@dataclass(frozen=True)
class Case:
    action: str
    missing: int  # the right the caller lacks (a MESHRIGHT_* or SITERIGHT_* bit)
    command: Command
    denial: Optional[str]  # the first direct answer's result; None: no answer at all
    site: bool = False


MESH_CASES = [
    Case("editmesh", R.MESHRIGHT_EDITMESH, lambda s: {"meshid": s.mesh, "meshname": "x"},
         "Permission denied"),
    Case("deletemesh", R.MESHRIGHT_EDITMESH, lambda s: {"meshid": s.mesh}, "Access denied"),
    Case("addmeshuser", R.MESHRIGHT_MANAGEUSERS,
         lambda s: {"meshid": s.mesh, "usernames": ["vic"], "meshadmin": 24},
         "Permission denied"),
    Case("removemeshuser", R.MESHRIGHT_MANAGEUSERS,
         lambda s: {"meshid": s.mesh, "userid": s.vic_id}, "Permission denied"),
    Case("createInviteLink", R.MESHRIGHT_MANAGEUSERS,
         lambda s: {"meshid": s.mesh, "expire": 1, "flags": 0}, "Permission denied"),
    Case("addlocaldevice", R.MESHRIGHT_MANAGECOMPUTERS,
         lambda s: {"meshid": s.local, "devicename": "d", "hostname": "h", "type": 6},
         "Permission denied"),
    Case("addamtdevice", R.MESHRIGHT_MANAGECOMPUTERS,
         lambda s: {"meshid": s.amt, "devicename": "d", "hostname": "h", "amtusername": "a",
                    "amtpassword": "b", "amttls": 0}, "Permission denied"),
    Case("changeDeviceMesh", R.MESHRIGHT_MANAGECOMPUTERS,
         lambda s: {"nodeids": [s.local_node], "meshid": s.local2}, "Permission denied"),
    Case("changeDeviceMesh", R.MESHRIGHT_EDITMESH,
         lambda s: {"nodeids": [s.local_node], "meshid": s.local2}, "Permission denied"),
    Case("changedevice", R.MESHRIGHT_MANAGECOMPUTERS,
         lambda s: {"nodeid": s.node, "name": "x"}, "Access Denied"),
    Case("removedevices", R.MESHRIGHT_UNINSTALL, lambda s: {"nodeids": [s.node]}, "Denied"),
    Case("adddeviceuser", R.MESHRIGHT_MANAGEUSERS,
         lambda s: {"nodeid": s.node, "usernames": ["vic"], "rights": 8}, "Permission denied"),
    Case("runcommands", R.MESHRIGHT_REMOTECOMMAND,
         lambda s: {"nodeids": [s.node], "type": 0, "cmds": "id", "reply": True},
         "Access denied"),
    Case("runcommands", R.MESHRIGHT_AGENTCONSOLE,
         lambda s: {"nodeids": [s.node], "type": 4, "cmds": "help"}, "Access denied"),
    Case("msg", R.MESHRIGHT_REMOTECONTROL | R.MESHRIGHT_REMOTEVIEWONLY,
         lambda s: {"nodeid": s.node, "type": "openUrl", "url": "https://x"},
         "Unable to route"),
    Case("toast", R.MESHRIGHT_CHATNOTIFY, lambda s: {"nodeids": [s.node], "msg": "hi"},
         "Access Denied"),
    Case("poweraction", R.MESHRIGHT_RESETOFF, lambda s: {"nodeids": [s.node], "actiontype": 2},
         "ok"),  # MeshCentral answers ok whatever happened; the agent gets nothing
    Case("wakedevices", R.MESHRIGHT_WAKEDEVICE, lambda s: {"nodeids": [s.node]},
         "Invalid nodeid"),
    Case("getsysinfo", R.MESHRIGHT_DEVICEDETAILS, lambda s: {"nodeid": s.node},
         "Invalid device id"),
    Case("getnetworkinfo", R.MESHRIGHT_DEVICEDETAILS, lambda s: {"nodeid": s.node},
         "Invalid device id"),
    Case("deviceShares", R.MESHRIGHT_GUESTSHARING, lambda s: {"nodeid": s.node},
         "Access denied"),
    Case("createDeviceShareLink", R.MESHRIGHT_GUESTSHARING,
         lambda s: {"nodeid": s.node, "guestname": "g", "p": 1, "consent": 0, "expire": 0},
         "Access denied"),
    Case("createDeviceShareLink", R.MESHRIGHT_REMOTECONTROL,
         lambda s: {"nodeid": s.node, "guestname": "g", "p": 4, "consent": 0, "expire": 0},
         "Access denied"),
]

SITE_CASES = [
    Case("users", R.SITERIGHT_MANAGEUSERS, lambda s: {}, "Access denied", site=True),
    Case("adduser", R.SITERIGHT_MANAGEUSERS,
         lambda s: {"username": "mallory", "pass": "password1"}, "Permission denied", site=True),
    Case("edituser", R.SITERIGHT_MANAGEUSERS, lambda s: {"userid": s.vic_id, "realname": "x"},
         None, site=True),  # MeshCentral answers nothing to a non-manager
    Case("deleteuser", R.SITERIGHT_MANAGEUSERS, lambda s: {"userid": s.vic_id},
         "Permission denied", site=True),
    Case("userbroadcast", R.SITERIGHT_MANAGEUSERS, lambda s: {"msg": "hi"}, "Permission denied",
         site=True),
    Case("createusergroup", R.SITERIGHT_USERGROUPS, lambda s: {"name": "g"},
         "Permission denied", site=True),
    Case("deleteusergroup", R.SITERIGHT_USERGROUPS, lambda s: {"ugrpid": s.ugrp},
         "Permission denied", site=True),
    Case("addusertousergroup", R.SITERIGHT_USERGROUPS,
         lambda s: {"ugrpid": s.ugrp, "usernames": ["eve"]}, "Permission denied", site=True),
    Case("removeuserfromusergroup", R.SITERIGHT_USERGROUPS,
         lambda s: {"ugrpid": s.ugrp, "userid": s.vic_id}, "Permission denied", site=True),
]

# Site rights that take something away: never given to eve by "all but one".
NEGATIVE_SITE = R.SITERIGHT_LOCKED | R.SITERIGHT_NONEWGROUPS | R.SITERIGHT_NOMESHCMD


class RightsMatrixTests(TestCase):
    def attempt(self, scene: Scene, case: Case) -> list[dict[str, Any]]:
        """Send the case's request as eve; check that nothing changed and nothing leaked."""
        before = scene.snapshot()
        sent_before = list(scene.world.agents.sent)
        admin_seen = len(scene.admin.frames)
        frames = scene.eve.request(case.action, **case.command(scene))
        where = f"{case.action} without {case.missing:#x}"
        self.assertEqual(scene.snapshot(), before, f"{where} changed the store")
        self.assertEqual(scene.world.agents.sent, sent_before, f"{where} reached an agent")
        self.assertEqual(scene.eve.events(frames), [], f"{where} sent eve events")
        self.assertEqual(scene.admin.events(scene.admin.frames[admin_seen:]), [],
                         f"{where} dispatched events")
        self.assertFalse(scene.eve.closed)
        return frames

    def answers(self, frames: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
        return [f for f in frames if f.get("action") != "event"
                and not (f.get("type") == "notify" and action != "msg")]

    def test_mesh_rights_matrix(self) -> None:
        """Each device-group action without its right is denied and changes nothing."""
        for case in MESH_CASES:
            scene = Scene(eve_mesh_rights=R.MESHRIGHT_ADMIN & ~case.missing)
            frames = self.attempt(scene, case)
            answers = self.answers(frames, case.action)
            self.assertTrue(answers, f"{case.action}: no answer")
            self.assertEqual(answers[0].get("result"), case.denial,
                             f"{case.action} without {case.missing:#x}: {answers}")

    def test_site_rights_matrix(self) -> None:
        """Each site action without its site right is denied and changes nothing."""
        for case in SITE_CASES:
            scene = Scene(eve_site=R.SITERIGHT_ADMIN & ~case.missing & ~NEGATIVE_SITE)
            answers = self.answers(self.attempt(scene, case), case.action)
            if case.denial is None:
                self.assertEqual(answers, [], case.action)
            else:
                self.assertEqual(answers[0].get("result"), case.denial,
                                 f"{case.action}: {answers}")

    def test_hidden_objects_matrix(self) -> None:
        """A user who sees nothing changes nothing and learns no name, for every action."""
        for case in MESH_CASES + SITE_CASES:
            scene = Scene()
            frames = self.attempt(scene, case)
            self.assertNotIn("secret", json.dumps(frames), case.action)

    def test_nonewgroups(self) -> None:
        """The negative site right NONEWGROUPS refuses createmesh."""
        scene = Scene(eve_site=R.SITERIGHT_NONEWGROUPS)
        frames = self.attempt(scene, Case("createmesh", R.SITERIGHT_NONEWGROUPS,
                                          lambda s: {"meshname": "g", "meshtype": 2},
                                          "Permission denied"))
        self.assertEqual(self.answers(frames, "createmesh")[0]["result"], "Permission denied")

    def test_listings_hide_other_users_data(self) -> None:
        """meshes, nodes, events, wssessioncount, usergroups show eve nothing of others."""
        scene = Scene()
        for action in ("meshes", "nodes", "events", "wssessioncount", "usergroups"):
            frames = self.attempt(scene, Case(action, 0, lambda s: {}, None))
            text = json.dumps(frames)
            self.assertNotIn("secret-", text.replace("secret-ugrp", ""), action)
        self.assertEqual(scene.eve.reply("meshes")["meshes"], [])
        self.assertEqual(scene.eve.reply("nodes")["nodes"], {})
        self.assertEqual(scene.eve.reply("events")["events"], [])
        self.assertEqual(scene.eve.reply("events", userid=scene.vic_id)["events"], [])
        self.assertEqual(scene.eve.reply("wssessioncount")["wssessions"], {})

    def test_revoked_rights_apply_at_once(self) -> None:
        """Rights removed by an admin apply to the user's very next request."""
        scene = Scene(eve_mesh_rights=R.MESHRIGHT_MANAGECOMPUTERS)
        self.assertEqual(scene.eve.result("changedevice", nodeid=scene.node, name="x1"), "ok")
        self.assertEqual(scene.admin.result("removemeshuser", meshid=scene.mesh,
                                            userid=scene.eve_id), "ok")
        self.assertEqual(scene.eve.result("changedevice", nodeid=scene.node, name="x2"),
                         "Access Denied")
        self.assertEqual(scene.world.doc(scene.node)["name"], "x1")


class AccessTests(TestCase):
    def test_rights_combine(self) -> None:
        """Group rights OR user-group rights OR device links; removeRights is taken away."""
        user = {"_id": "user//u", "links": {"mesh//m": {"rights": 8},
                                            "ugrp//g": {"rights": 1},
                                            "node//n": {"rights": 0x20}},
                "removeRights": 0x10}
        group = {"_id": "ugrp//g", "links": {"mesh//m": {"rights": 0x14}}}
        access = Access(user, [group])
        mesh = {"_id": "mesh//m"}
        self.assertEqual(access.mesh_rights(mesh), 8 | 4)
        self.assertEqual(access.node_rights({"_id": "node//n"}, mesh), 8 | 4 | 0x20)
        self.assertEqual(access.mesh_rights({"_id": "mesh//m", "deleted": True}), 0)
        self.assertEqual(access.mesh_rights({"_id": "mesh//other"}), 0)

    def test_full_rights_short_circuit(self) -> None:
        """A full-rights link gives MESHRIGHT_ADMIN whatever else is linked."""
        access = Access({"_id": "user//u", "links": {"mesh//m": {"rights": R.MESHRIGHT_ADMIN}}})
        self.assertEqual(access.mesh_rights({"_id": "mesh//m"}), R.MESHRIGHT_ADMIN)

    def test_malformed_values(self) -> None:
        """Malformed rights and links count as nothing, never as everything."""
        access = Access({"_id": "user//u", "siteadmin": "all",
                         "links": {"mesh//m": {"rights": "8"}, "mesh//n": 5}})
        self.assertEqual(access.mesh_rights({"_id": "mesh//m"}), 0)
        self.assertEqual(access.mesh_rights({"_id": "mesh//n"}), 0)
        self.assertFalse(access.site(R.SITERIGHT_MANAGEUSERS))
        self.assertFalse(R.is_full_admin({"siteadmin": True}))

    def test_subscriptions(self) -> None:
        """Admins hear '*', user managers 'server-users', everyone their links."""
        self.assertEqual(subscription_ids({"_id": "user//a", "siteadmin": R.SITERIGHT_ADMIN}),
                         {"user//a", "server-allusers", "*"})
        self.assertEqual(subscription_ids({"_id": "user//m", "siteadmin": 2,
                                           "links": {"mesh//x": {"rights": 1}}}),
                         {"user//m", "server-allusers", "server-users", "mesh//x"})
        self.assertIn("*", subscription_ids({"_id": "user//e",
                                             "siteadmin": R.SITERIGHT_ALLEVENTS}))
