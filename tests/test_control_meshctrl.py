"""MeshCentral's own meshctrl.js (npm meshcentral@1.1.55) against a real meshd.

One server (twistd, real TLS, SQLite) serves every test of this module; its administrator
is made with meshd-admin.  meshctrl exits 0 whatever the server said, so each test reads
what it printed.  The expected texts are MeshCentral 1.1.55's (spec control-protocol,
appendix A) except where meshd deliberately does better.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from tests.meshctrl import MeshCtrl, meshctrl_script
from tests.npmcache import meshcentral_package
from tests.server import ServerProcess, fresh_datapath
from tests.test_login import admin
from tests.test_meshagent import MeshAgentProcess

PASSWORD = "Adm1n!Pass#2024"

_server: Optional[ServerProcess] = None


def control_server() -> ServerProcess:
    """The module's server with the administrator ``admin`` (started on first use)."""
    global _server
    if _server is None or _server.process is None or _server.process.poll() is not None:
        datapath = fresh_datapath()
        created = admin(datapath, "createaccount", "admin", "--pass", PASSWORD)
        if created.returncode != 0:
            raise RuntimeError(f"meshd-admin failed: {created.stderr}")
        # MeshCentral's agent core, so a real MeshAgent can run commands.
        with open(datapath + ".json", "w") as f:
            json.dump({"settings": {"agentCoreDir": os.path.join(meshcentral_package(),
                                                                 "agents")}}, f)
        _server = ServerProcess(datapath, ["--config", datapath + ".json"]).start()
        atexit.register(_server.stop)
    return _server


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


class MeshCtrlTests(SynchronousTestCase):
    def setUp(self) -> None:
        meshctrl_script()  # skip (or fail under CI) before starting anything
        self.server = control_server()
        self.ctl = MeshCtrl(self.server.port, "admin", PASSWORD, cwd=tempfile.mkdtemp())

    def run_ctl(self, *args: str, **kwargs: object) -> str:
        return self.ctl.run(*args, **kwargs).strip()  # type: ignore[arg-type]

    def json_ctl(self, *args: str, **kwargs: object) -> object:
        out = self.run_ctl(*args, "--json", **kwargs)
        try:
            return json.loads(out)
        except ValueError:
            raise AssertionError(f"meshctrl {' '.join(args)} --json printed {out!r}") from None

    def new_group(self, *flags: str) -> str:
        out = self.run_ctl("adddevicegroup", "--name", unique("grp"), *flags)
        self.assertTrue(out.startswith("ok mesh//"), out)
        return out.split(" ", 1)[1]

    def new_user(self) -> str:
        name = unique("u")
        self.assertEqual(self.run_ctl("adduser", "--user", name, "--pass", "Us3r!pass"), "ok")
        return name

    def test_serverinfo_userinfo(self) -> None:
        """serverinfo and userinfo print what the server sends first."""
        info = self.json_ctl("serverinfo")
        assert isinstance(info, dict)
        self.assertEqual((info["name"], info["port"], info["domain"]),
                         ("127.0.0.1", self.server.port, ""))
        self.assertEqual(len(info["tlshash"]), 96)
        me = self.json_ctl("userinfo")
        assert isinstance(me, dict)
        self.assertEqual((me["_id"], me["name"], me["siteadmin"]),
                         ("user//admin", "admin", 4294967295))
        self.assertNotIn("hash", me)
        self.assertIn("name: 127.0.0.1", self.run_ctl("serverinfo").splitlines())

    def test_invalid_login(self) -> None:
        """A wrong password, an unknown user and no password print Invalid login."""
        self.assertEqual(self.run_ctl("userinfo", password="wrong"), "Invalid login.")
        self.assertEqual(self.run_ctl("userinfo", user="nosuchuser"), "Invalid login.")

    def test_users(self) -> None:
        """adduser, listusers, edituser, removeuser; the last admin stays."""
        name = unique("bob")
        self.assertEqual(self.run_ctl("adduser", "--user", name, "--pass", "B0b!Pass#123",
                                      "--email", f"{name}@example.com", "--realname", "Bob B"),
                         "ok")
        self.assertEqual(self.run_ctl("adduser", "--user", name, "--pass", "B0b!Pass#123"),
                         "User already exists")
        users = self.json_ctl("listusers")
        assert isinstance(users, list)
        [mine] = [u for u in users if u["_id"] == f"user//{name}"]
        self.assertEqual((mine["email"], mine["realname"]), (f"{name}@example.com", "Bob B"))
        self.assertNotIn("hash", mine)
        self.assertEqual(self.run_ctl("listusers", "--nameexists", name), f"user//{name}")
        self.assertEqual(self.run_ctl("listusers", "--idexists", name), "1")
        self.assertIn(f'"{name}", "{name}", "{name}@example.com"',
                      self.run_ctl("listusers").splitlines())
        self.assertEqual(self.run_ctl("edituser", "--userid", name, "--realname", "Robert",
                                      "--email", f"r{name}@example.com", "--emailverified"), "ok")
        users = self.json_ctl("listusers")
        assert isinstance(users, list)
        [mine] = [u for u in users if u["_id"] == f"user//{name}"]
        self.assertEqual((mine["realname"], mine["email"], mine["emailVerified"]),
                         ("Robert", f"r{name}@example.com", True))
        # The new account logs in with meshctrl too.
        self.assertEqual(self.json_ctl("userinfo", user=name,
                                       password="B0b!Pass#123")["_id"],  # type: ignore[index]
                         f"user//{name}")
        self.assertEqual(self.run_ctl("removeuser", "--userid", name), "ok")
        self.assertEqual(self.run_ctl("removeuser", "--userid", name), "User does not exists")
        # MeshCentral 1.1.55 deletes its last administrator here (spec §12.2).
        self.assertEqual(self.run_ctl("removeuser", "--userid", "admin"),
                         "Cannot remove the last full administrator")
        self.assertEqual(self.json_ctl("userinfo")["_id"], "user//admin")  # type: ignore[index]

    def test_device_groups(self) -> None:
        """adddevicegroup, listdevicegroups, editdevicegroup, members, removedevicegroup."""
        name = unique("grp")
        out = self.run_ctl("adddevicegroup", "--name", name, "--desc", "Group A")
        self.assertTrue(out.startswith("ok mesh//"), out)
        mesh_id = out.split(" ", 1)[1]
        short = mesh_id.split("/")[2]
        groups = self.json_ctl("listdevicegroups")
        assert isinstance(groups, list)
        [group] = [g for g in groups if g["_id"] == mesh_id]
        self.assertEqual((group["name"], group["mtype"], group["desc"], group["links"]),
                         (name, 2, "Group A",
                          {"user//admin": {"name": "admin", "rights": 4294967295}}))
        self.assertEqual(self.run_ctl("listdevicegroups", "--nameexists", name), mesh_id)
        self.assertEqual(self.run_ctl("listdevicegroups", "--idexists", short), "1")
        self.assertEqual(self.run_ctl("listdevicegroups", "--idexists", "nosuch"), "0")
        self.assertIn(f'"{short}", "{name}"', self.run_ctl("listdevicegroups").splitlines())
        renamed = unique("grp")
        self.assertEqual(self.run_ctl("editdevicegroup", "--id", mesh_id, "--name", renamed,
                                      "--desc", "Renamed"), "ok")
        self.assertEqual(self.run_ctl("editdevicegroup", "--group", renamed, "--name", name),
                         "ok")
        user = self.new_user()
        self.assertEqual(self.run_ctl("addusertodevicegroup", "--id", mesh_id, "--userid", user,
                                      "--remotecontrol", "--agentconsole"), f"Added user {user}")
        self.assertEqual(self.run_ctl("addusertodevicegroup", "--group", name, "--userid",
                                      f"user//{user}", "--fullrights"), "Nothing done")
        self.assertEqual(self.run_ctl("listusersofdevicegroup", "--id", short).splitlines(),
                         ["userid, rights", "---------------", "admin, FullAdministrator",
                          f"{user}, RemoteControl, AgentConsole"])
        self.assertEqual(self.json_ctl("listusersofdevicegroup", "--id", short),
                         {"user//admin": {"name": "admin", "rights": 4294967295},
                          f"user//{user}": {"name": user, "rights": 24}})
        self.assertEqual(self.run_ctl("removeuserfromdevicegroup", "--id", mesh_id,
                                      "--userid", user), "ok")
        self.assertEqual(self.run_ctl("removeuserfromdevicegroup", "--group", name,
                                      "--userid", f"user//{user}"), "User not in group")
        self.assertEqual(self.run_ctl("removeuserfromdevicegroup", "--group", name,
                                      "--userid", "admin"), "Can't remove self")
        self.assertEqual(self.run_ctl("removedevicegroup", "--id", mesh_id), "ok")
        self.assertEqual(self.run_ctl("listdevicegroups", "--idexists", short), "0")
        self.assertEqual(self.run_ctl("removeuser", "--userid", user), "ok")

    def test_devices(self) -> None:
        """Agentless devices: add, list, edit, info, rights, move, agent-only commands, remove."""
        local_a, local_b = self.new_group("--agentless"), self.new_group("--agentless")
        amt, agents = self.new_group("--amtonly"), self.new_group()
        self.assertEqual(self.run_ctl("addlocaldevice", "--id", local_a, "--devicename", "dev1",
                                      "--hostname", "127.0.0.2"), "ok")
        self.assertEqual(self.run_ctl("addlocaldevice", "--id", local_a, "--devicename", "dev2",
                                      "--hostname", "127.0.0.3", "--type", "6"), "ok")
        self.assertEqual(self.run_ctl("addlocaldevice", "--id", agents, "--devicename", "bad",
                                      "--hostname", "127.0.0.4"),
                         "Local device agentless mesh only allowed")
        self.assertEqual(self.run_ctl("addamtdevice", "--id", amt, "--devicename", "amt1",
                                      "--hostname", "127.0.0.5", "--user", "admin",
                                      "--pass", "P@ssw0rd!"), "ok")
        devices = self.json_ctl("listdevices")
        assert isinstance(devices, list)
        by_name = {d["name"]: d for d in devices if d["meshid"] in (local_a, amt)}
        self.assertEqual(set(by_name), {"dev1", "dev2", "amt1"})
        self.assertEqual(by_name["dev1"]["agent"], {"id": 4, "caps": 0})
        self.assertEqual(by_name["dev2"]["agent"], {"id": 6, "caps": 0})
        self.assertEqual(by_name["amt1"]["intelamt"], {"user": "admin", "pass": 1, "tls": 1})
        dev1 = by_name["dev1"]["_id"]
        listing = self.run_ctl("listdevices", "--id", local_a).splitlines()
        self.assertEqual(listing[:2], ["id, name, icon, conn, pwr", "-------------------------"])
        self.assertIn(f'"{dev1.split("/")[2]}", "dev1", 1, 0, 0', listing)
        self.assertEqual(self.run_ctl("listdevices", "--id", local_a, "--count"), "2")
        self.assertEqual(self.run_ctl("listdevices", "--group", unique("nosuch")),
                         "Invalid group id")
        self.assertEqual(self.run_ctl("editdevice", "--id", dev1, "--name", "dev1b", "--desc",
                                      "first device", "--tags", "beta,alpha", "--icon", "3"),
                         "ok")
        self.assertEqual(self.run_ctl("deviceinfo", "--id", dev1).splitlines(),
                         ["--- General ---", "  Server Name: dev1b", "  Hostname: 127.0.0.2",
                          "  Description: first device", "  Icon: 3", "  Tags:",
                          "    0: alpha", "    1: beta"])
        user = self.new_user()
        self.assertEqual(self.run_ctl("addusertodevice", "--id", dev1, "--userid", user,
                                      "--remotecontrol"), "ok")
        nodes = self.json_ctl("listdevices", "--filterid", dev1.split("/")[2])
        assert isinstance(nodes, list) and len(nodes) == 1, nodes
        self.assertEqual(nodes[0]["links"], {f"user//{user}": {"rights": 8, "name": user}})
        self.assertEqual(self.run_ctl("removeuserfromdevice", "--id", dev1, "--userid", user),
                         "ok")
        self.assertEqual(self.run_ctl("movetodevicegroup", "--devid", dev1, "--id", local_b),
                         "ok")
        self.assertEqual(self.run_ctl("movetodevicegroup", "--devid", dev1, "--id", local_b),
                         "Device already in correct group")
        # MeshCentral 1.1.55 sends no answer here and meshctrl hangs (spec §12.4).
        self.assertEqual(self.run_ctl("movetodevicegroup", "--devid", dev1, "--id", amt),
                         "Device groups are of different types")
        self.assertEqual(self.run_ctl("runcommand", "--id", dev1, "--run", "echo hi"),
                         "Agent not connected")
        self.assertEqual(self.run_ctl("runcommand", "--id", dev1, "--run", "echo hi",
                                      "--reply"), "Agent not connected")
        self.assertEqual(self.run_ctl("devicemessage", "--id", dev1, "--msg", "hello"),
                         "Unable to route")
        self.assertEqual(self.run_ctl("devicetoast", "--id", dev1, "--msg", "hello"), "ok")
        self.assertEqual(self.run_ctl("devicepower", "--id", dev1, "--wake"),
                         "No network information for this device")
        self.assertEqual(self.run_ctl("devicesharing", "--id", dev1),
                         "No device sharing links for this device.")
        # MeshCentral 1.1.55 crashes on this one (spec §12.1).
        self.assertEqual(self.run_ctl("webrelay", "--id", dev1, "--type", "http"),
                         "WebRelay Disabled")
        self.assertEqual(self.run_ctl("removedevice", "--id", dev1), "ok")
        self.assertEqual(self.run_ctl("removedevice", "--id", dev1), "Denied")
        for group in (local_a, local_b, amt, agents):
            self.assertEqual(self.run_ctl("removedevicegroup", "--id", group), "ok")

    def test_device_sharing(self) -> None:
        """devicesharing --add (terminal, unlimited; view-only desktop for 30 minutes), the
        listing, --remove (MeshCentral's first answer has no result: meshctrl prints
        undefined), errors."""
        group = self.new_group("--agentless")
        self.assertEqual(self.run_ctl("addlocaldevice", "--id", group, "--devicename", "shared",
                                      "--hostname", "127.0.0.9"), "ok")
        devices = self.json_ctl("listdevices", "--id", group)
        assert isinstance(devices, list) and len(devices) == 1, devices
        node = devices[0]["_id"]
        self.assertEqual(self.run_ctl("devicesharing", "--id", node),
                         "No device sharing links for this device.")
        added = self.run_ctl("devicesharing", "--id", node, "--add", "Guest", "--type",
                             "terminal").splitlines()
        self.assertEqual(len(added), 2, added)
        self.assertTrue(added[0].startswith("ID: "), added)
        public = added[0][len("ID: "):]
        self.assertEqual(len(public), 12, public)
        url = added[1][len("URL: "):]
        self.assertTrue(url.startswith(f"https://127.0.0.1:{self.server.port}/sharing?c="),
                        added)
        listing = self.run_ctl("devicesharing", "--id", node).splitlines()
        self.assertEqual(listing, ["----------", f"Identifier:   {public}",
                                   "Type:         Terminal", "UserId:       user//admin",
                                   "Guest Name:   Guest", "User Consent: Terminal Notify",
                                   f"URL:          {url}"])
        timed = self.run_ctl("devicesharing", "--id", node, "--add", "Viewer", "--type",
                             "desktop", "--duration", "30", "--consent", "prompt,bar",
                             "--viewonly").splitlines()
        self.assertTrue(timed[0].startswith("ID: "), timed)
        # (devicesharing --json prints Node's inspect format, not JSON: read the text.)
        listing = self.run_ctl("devicesharing", "--id", node).split("----------")
        [viewer] = [block.strip().splitlines() for block in listing if "Viewer" in block]
        fields = dict(line.split(":", 1) for line in viewer)
        self.assertEqual((fields["Type"].strip(), fields["User Consent"].strip()),
                         ("View Only Desktop", "Desktop Prompt, Desktop Connection Toolbar"))
        start, end = (datetime.strptime(fields[name].strip(), "%m/%d/%Y, %I:%M:%S %p")
                      for name in ("Start Time", "Expire Time"))
        self.assertEqual(end - start, timedelta(minutes=30))
        self.assertEqual(self.run_ctl("devicesharing", "--id", node, "--remove", public),
                         "undefined")
        # Its first answer, {removed: null}, comes before the error: undefined again.
        self.assertEqual(self.run_ctl("devicesharing", "--id", node, "--remove", public),
                         "undefined")
        self.assertNotIn(public, self.run_ctl("devicesharing", "--id", node))
        self.assertEqual(self.run_ctl("devicesharing", "--id", node, "--remove",
                                      timed[0][len("ID: "):]), "undefined")
        self.assertEqual(self.run_ctl("devicesharing", "--id", node),
                         "No device sharing links for this device.")
        # What meshctrl itself refuses, and what the server does.
        self.assertEqual(self.run_ctl("devicesharing", "--id", node, "--add", "G", "--type",
                                      "shell"), "Unknown sharing type: shell")
        self.assertEqual(self.run_ctl("devicesharing", "--id", "node//" + "A" * 64, "--add",
                                      "G", "--type", "terminal"), "Invalid node id")
        self.assertEqual(self.run_ctl("removedevice", "--id", node), "ok")
        self.assertEqual(self.run_ctl("removedevicegroup", "--id", group), "ok")

    def test_user_groups(self) -> None:
        """addusergroup, addtousergroup (user and group), listusergroups, removals."""
        name = unique("ug")
        self.assertEqual(self.run_ctl("addusergroup", "--name", name, "--desc", "UG"), "ok")
        groups = self.json_ctl("listusergroups")
        assert isinstance(groups, dict)
        [ugrp] = [key for key, value in groups.items() if value["name"] == name]
        mesh_id = self.new_group()
        self.assertEqual(self.run_ctl("addtousergroup", "--groupid", ugrp, "--id", mesh_id,
                                      "--rights", "8"), f"Added user {ugrp.split('/')[2]}")
        listing = self.run_ctl("listusergroups").splitlines()
        start = listing.index(f"{ugrp}, {name}, UG")
        self.assertEqual(listing[start + 1:start + 7],
                         ["  Users:", "    (None)", "  Device Groups:", f"    {mesh_id}, 8",
                          "  Devices:", "    (None)"])
        self.assertEqual(self.run_ctl("removefromusergroup", "--groupid", ugrp, "--id",
                                      mesh_id), "ok")
        user = self.new_user()
        self.assertEqual(self.run_ctl("addtousergroup", "--groupid", ugrp, "--id",
                                      f"user//{user}"), "ok")
        self.assertEqual(self.run_ctl("removeallusersfromusergroup", "--groupid", ugrp)
                         .splitlines(), [f"Removing user//{user}", "ok"])
        self.assertEqual(self.run_ctl("removeusergroup", "--groupid", ugrp), "ok")
        groups = self.json_ctl("listusergroups")
        self.assertNotIn(ugrp, groups or {})

    def test_login_tokens_and_events(self) -> None:
        """logintokens add/list/remove; a token logs in until removed; listevents shows it."""
        name = unique("tok")
        out = self.run_ctl("logintokens", "--add", name, "--expire", "60").splitlines()
        self.assertEqual(out[:2], ["New login token created.", f"Token name: {name}"])
        fields = dict(line.split(": ", 1) for line in out if ": " in line)
        token_user, token_pass = fields["Username"], fields["Password"]
        self.assertTrue(token_user.startswith("~t:"))
        self.assertIn(token_user, self.run_ctl("logintokens"))
        me = self.json_ctl("userinfo", user=token_user, password=token_pass)
        self.assertEqual(me["_id"], "user//admin")  # type: ignore[index]
        events = self.json_ctl("listevents", "--limit", "3")
        assert isinstance(events, list)
        self.assertIn({"name": name, "tokenUser": token_user},
                      [{k: e.get("newToken", {}).get(k) for k in ("name", "tokenUser")}
                       for e in events])
        self.assertEqual(self.run_ctl("listevents", "--limit", "2").splitlines()[0],
                         "time,type,action,nodeid,userid,msg")
        self.assertNotIn(token_user, self.run_ctl("logintokens", "--remove", token_user))
        self.assertEqual(self.run_ctl("userinfo", user=token_user, password=token_pass),
                         "Invalid login.")

    def test_sessions_broadcast_invites(self) -> None:
        """listusersessions, broadcast, generateinvitelink, sendinviteemail."""
        sessions = self.json_ctl("listusersessions")
        assert isinstance(sessions, dict)
        self.assertGreaterEqual(sessions.get("user//admin", 0), 1)
        self.assertEqual(self.run_ctl("broadcast", "--msg", "hello all"), "ok")
        mesh_id = self.new_group()
        link = self.run_ctl("generateinvitelink", "--id", mesh_id, "--hours", "1")
        self.assertTrue(link.startswith(f"https://127.0.0.1:{self.server.port}/agentinvite?c="),
                        link)
        self.assertEqual(self.run_ctl("sendinviteemail", "--id", mesh_id, "--email",
                                      "x@example.com"), "Unsupported feature")

    def test_device_details_and_report(self) -> None:
        """listdevices --details (JSON and CSV) and report (db, logins, sessions, traffic)."""
        group = self.new_group("--agentless")
        self.assertEqual(self.run_ctl("addlocaldevice", "--id", group, "--devicename", "detdev",
                                      "--hostname", "127.0.0.9"), "ok")
        details = self.json_ctl("listdevices", "--details")
        assert isinstance(details, list)
        [mine] = [d for d in details if d["node"]["meshid"] == group]
        self.assertEqual((mine["node"]["name"], mine["node"]["host"]), ("detdev", "127.0.0.9"))
        self.assertTrue(mine["node"]["groupname"].startswith("grp"), mine)
        self.assertIsNone(mine["net"])
        csv = self.run_ctl("listdevices", "--details", "--csv").splitlines()
        self.assertEqual(csv[0].split(",")[:8], ["id", "name", "rname", "host", "icon", "ip",
                                                 "osdesc", "groupname"])
        [row] = [line for line in csv if f'"{mine["node"]["_id"]}"' in line]
        self.assertEqual(len(row.split(",")), 42)
        self.assertEqual(row.split(",")[1:5], ['"detdev"', '""', '"127.0.0.9"', "1"])
        # A user with no rights gets an empty list, not the administrator's devices.
        user = self.new_user()
        self.assertEqual(self.json_ctl("listdevices", "--details", user=user,
                                       password="Us3r!pass"), [])
        db = self.run_ctl("report", "--type", "db").splitlines()
        self.assertEqual(db[0], "group,record,recordcount")
        self.assertIn("0,user,", "\n".join(db))
        self.assertEqual(self.run_ctl("report", "--type", "logins").splitlines()[0],
                         "group,time,ip,browser,os,twofactor,msg")
        self.assertEqual(self.run_ctl("report", "--type", "sessions").splitlines()[0],
                         "group,time,nodeid,meshid,protocol,length")
        self.assertEqual(self.run_ctl("report", "--type", "traffic").splitlines()[0],
                         "group,userid,length,bytesin,bytesout")
        # A user without site rights: only its own logins (none recorded here).
        self.assertEqual(self.run_ctl("report", "--type", "logins", user=user,
                                      password="Us3r!pass"),
                         "group,time,ip,browser,os,twofactor,msg")
        self.assertEqual(self.run_ctl("removedevicegroup", "--id", group), "ok")
        self.assertEqual(self.run_ctl("removeuser", "--userid", user), "ok")

    def test_serverstats_and_logincookie_on_the_wire(self) -> None:
        """No meshctrl command sends these: a Node.js client on meshctrl's own ws module
        asks for serverstats (answered, MeshCentral's fields) and logincookie (refused by
        silence: settings.allowLoginToken is off)."""
        package = os.path.dirname(meshctrl_script())
        script = os.path.join(tempfile.mkdtemp(), "probe.js")
        with open(script, "w") as f:
            f.write(PROBE_JS)
        env = dict(os.environ, NODE_PATH=os.pathsep.join(
            [os.path.join(package, "node_modules"), os.path.dirname(package)]))
        out = subprocess.run(["node", script, str(self.server.port), "admin", PASSWORD],
                             capture_output=True, text=True, timeout=20, env=env,
                             stdin=subprocess.DEVNULL)
        frames = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        actions = [f["action"] for f in frames]
        self.assertNotIn("logincookie", actions, out.stdout + out.stderr)
        [stats] = [f for f in frames if f["action"] == "serverstats"]
        self.assertGreater(stats["totalmem"], 0)
        state = stats["values"]["ServerState"]
        self.assertEqual(sorted(state), sorted([
            "UserAccounts", "DeviceGroups", "AgentSessions", "ConnectedUsers", "UsersSessions",
            "RelaySessions", "RelayCount", "ConnectedIntelAMT", "ConnectedIntelAMTCira"]))
        self.assertGreaterEqual(state["UsersSessions"], 1)


    def test_showevents_sees_live_events(self) -> None:
        """showevents in one meshctrl prints the accountcreate caused by another."""
        watcher = self.ctl.start("showevents")
        lines: list[str] = []
        output = watcher.stdout
        assert output is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(output.readline, "")),
                                  daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any('"userinfo"' in line
                                                          for line in lines):
                time.sleep(0.05)
            self.assertTrue(any('"userinfo"' in line for line in lines), lines)
            name = self.new_user()
            while time.monotonic() < deadline and not any(f'"user//{name}"' in line
                                                          for line in lines):
                time.sleep(0.05)
        finally:
            watcher.terminate()
            watcher.wait(10)
            reader.join(5)
        text = "".join(lines)
        self.assertIn('"action": "accountcreate"', text)
        self.assertIn(f'"msg": "Account created, username is {name}"', text)


class MeshCtrlAgentTests(SynchronousTestCase):
    def test_runcommand_on_real_agent(self) -> None:
        """runcommand reaches a real MeshAgent; with --reply its output comes back."""
        meshctrl_script()
        server = control_server()
        ctl = MeshCtrl(server.port, "admin", PASSWORD, cwd=tempfile.mkdtemp())
        out = ctl.run("adddevicegroup", "--name", unique("agents")).strip()
        self.assertTrue(out.startswith("ok mesh//"), out)
        mesh_id = out.split(" ", 1)[1]
        conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                           context=server.ssl_context(), timeout=10)
        conn.request("GET", "/meshsettings?id=" + mesh_id.split("/")[2].replace(
            "$", "%24").replace("@", "%40"))
        response = conn.getresponse()
        msh = response.read()
        conn.close()
        self.assertEqual(response.status, 200, msh)
        agent = MeshAgentProcess(msh)
        self.addCleanup(agent.cleanup)
        agent.start()
        node = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listed = ctl.run("listdevices", "--id", mesh_id, "--json")
            try:
                nodes = json.loads(listed)
            except ValueError:
                nodes = []
            ready = [n for n in nodes if n.get("conn", 0) & 1 and n.get("agent", {}).get("core")]
            if ready:
                node = ready[0]
                break
            time.sleep(1)
        self.assertIsNotNone(node, f"the agent never came online:\n{server.log()[-3000:]}")
        assert node is not None
        self.assertEqual(ctl.run("runcommand", "--id", node["_id"], "--run", "echo hi"
                                 ).strip(), "OK")
        out = ctl.run("runcommand", "--id", node["_id"], "--run", "echo meshd-$((6*7))",
                      "--reply", timeout=60)
        self.assertEqual(out.strip(), "meshd-42")
        agent.stop()
        self.assertEqual(ctl.run("removedevicegroup", "--id", mesh_id).strip(), "ok")

PROBE_JS = r"""
const WebSocket = require('ws');
const [port, user, pass] = process.argv.slice(2);
const auth = Buffer.from(user).toString('base64') + ',' + Buffer.from(pass).toString('base64');
const ws = new WebSocket('wss://127.0.0.1:' + port + '/control.ashx',
                         { rejectUnauthorized: false, headers: { 'x-meshauth': auth } });
ws.on('message', function (data) {
    const msg = JSON.parse(data.toString());
    if (msg.action == 'serverinfo') {
        ws.send(JSON.stringify({ action: 'logincookie' }));
        ws.send(JSON.stringify({ action: 'serverstats', interval: 10000 }));
        setTimeout(function () { ws.send(JSON.stringify({ action: 'serverstats' })); ws.close(); process.exit(0); }, 1500);
    }
    if (msg.action == 'serverstats' || msg.action == 'logincookie') { console.log(JSON.stringify(msg)); }
});
ws.on('error', function (e) { console.log('error ' + e); process.exit(1); });
"""
