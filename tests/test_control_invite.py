"""Tests for the control action ``inviteAgent`` (meshd.control.actions.devices): the
session runs without sockets (tests.test_control_session's World), the mail goes to a real
Twisted ESMTP server on 127.0.0.1 (tests.smtpserver)."""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from meshd.agent import identity
from meshd.control.rights import (
    MESHRIGHT_MANAGECOMPUTERS,
    MESHRIGHT_REMOTECONTROL,
    SITERIGHT_ADMIN,
)
from meshd.mail import Mailer
from tests.smtpserver import Received, SmtpServer
from tests.test_control_session import World

reactor: Any = global_reactor


class InviteAgentTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.world = World()
        self.server = SmtpServer(reactor, refuse={"nobody@example.com"})
        await self.server.start()
        self.addCleanup(self.server.stop)
        self.world.hub.mailer = Mailer(host="127.0.0.1", port=self.server.port,
                                       sender="meshd@example.com", reactor=reactor,
                                       clock=self.world.clock, timeout=10)
        self.world.hub.title = "Mesh Office"
        self.admin_id = self.world.add_user("admin", SITERIGHT_ADMIN, realname="Ann Admin")
        self.admin = self.world.connect(self.admin_id)
        self.group = self.world.add_mesh("Servers", self.admin_id)

    async def until(self, condition: Callable[[], Any]) -> Any:
        """Let the reactor run until ``condition()`` is true (the SMTP exchange is real)."""
        for _ in range(1000):
            value = condition()
            if value:
                return value
            await deferLater(reactor, 0.005)
        self.fail("timed out waiting")

    def answers(self, client: Any) -> list[Any]:
        return [f for f in client.frames if f.get("action") == "inviteAgent"]

    async def invite(self, **fields: Any) -> tuple[Received, str]:
        """Send inviteAgent as the admin; the delivered message and the answer."""
        arriving = self.server.next_message()
        self.admin.request("inviteAgent", **fields)
        received = await arriving
        [answer] = await self.until(lambda: self.answers(self.admin))
        return received, answer["result"]

    async def test_invitation_mail(self) -> None:
        """The e-mail goes to the (lower-cased) address with the group's Linux install command
        and .msh link pointing at this group, the name, the message and the inviter; the
        answer is ok."""
        received, result = await self.invite(meshid=self.group, email="Bob@Example.com",
                                             name="Bob", os="0", msg="Please install")
        self.assertEqual(result, "ok")
        self.assertEqual(received.recipients, ["bob@example.com"])
        message = received.parsed()
        self.assertEqual(message["Subject"], "Mesh Office - Invitation")
        self.assertEqual(message["To"], "bob@example.com")
        body = message.get_content()
        lines = body.splitlines()
        self.assertEqual(lines[:5], [
            "Hello Bob,", "",
            "User Ann Admin on server Mesh Office (https://localhost/) is requesting you "
            "install software to start the remote control session.", "",
            "Message: Please install"])
        [command] = [line.strip() for line in lines if "install.sh" in line]
        self.assertRegex(command, r"^curl -fsSk 'https://localhost/meshagents/install\.sh"
                                  r"\?id=[^' ]+' \| sudo sh$")
        [msh] = [line.strip() for line in lines if "/meshsettings" in line]
        # Both links name this group as /meshagents/install.sh and /meshsettings read ?id=.
        for url in (command.split("'")[1], msh):
            parts = urlsplit(url)
            [group_id] = parse_qs(parts.query)["id"]
            identity.mesh_id_from_str(group_id)
            self.assertEqual(identity.mesh_key(group_id), self.group)
        self.assertEqual(lines[-2:], ["Best regards,", "Ann Admin"])

    async def test_os_choice(self) -> None:
        """os 2 (Linux) gets only the Linux command; os 1 (Windows) only the .msh link."""
        received, _ = await self.invite(meshid=self.group, email="a@example.com", os=2)
        body = received.parsed().get_content()
        self.assertIn("install.sh", body)
        self.assertNotIn("/meshsettings", body)
        self.admin.frames.clear()
        received, _ = await self.invite(meshid=self.group, email="a@example.com", os="1")
        body = received.parsed().get_content()
        self.assertNotIn("install.sh", body)
        self.assertIn("/meshsettings", body)
        self.assertNotIn("Hello", body)  # no name given

    async def test_by_group_name(self) -> None:
        """``meshname`` finds the agent group by name, as meshctrl sendinviteemail --group."""
        received, result = await self.invite(meshname="Servers", email="c@example.com")
        self.assertEqual(result, "ok")
        self.assertEqual(received.recipients, ["c@example.com"])

    async def test_session_not_blocked(self) -> None:
        """Other requests of the session are answered while the mail is being sent."""
        self.admin.request("inviteAgent", meshid=self.group, email="d@example.com")
        self.assertEqual([f["action"] for f in self.admin.request("meshes")], ["meshes"])
        self.assertEqual(self.answers(self.admin), [])
        await self.until(lambda: self.answers(self.admin))
        self.assertEqual(len(self.server.messages), 1)

    async def test_refused_recipient(self) -> None:
        """The mail server refusing the recipient: ``Failed to send e-mail``."""
        self.admin.request("inviteAgent", meshid=self.group, email="nobody@example.com")
        [answer] = await self.until(lambda: self.answers(self.admin))
        self.assertEqual(answer, {"action": "inviteAgent", "responseid": "r",
                                  "result": "Failed to send e-mail"})
        self.assertEqual(self.server.messages, [])

    async def test_rights(self) -> None:
        """Without MESHRIGHT_MANAGECOMPUTERS: ``Not allowed``; with it: ok.  Nothing is
        sent when refused."""
        bob_id = self.world.add_user("bob")
        self.world.link(bob_id, self.group, MESHRIGHT_REMOTECONTROL)
        bob = self.world.connect(bob_id)
        self.assertEqual(bob.result("inviteAgent", meshid=self.group, email="x@example.com"),
                         "Not allowed")
        carol_id = self.world.add_user("carol")
        self.world.link(carol_id, self.group, MESHRIGHT_MANAGECOMPUTERS)
        carol = self.world.connect(carol_id)
        carol.request("inviteAgent", meshid=self.group, email="x@example.com")
        [answer] = await self.until(lambda: self.answers(carol))
        self.assertEqual(answer["result"], "ok")
        self.assertEqual([m.recipients for m in self.server.messages], [["x@example.com"]])
        self.assertEqual(len(self.server.connected), 1)  # bob's request made no connection

    def test_errors(self) -> None:
        """MeshCentral's answers for a bad group id, a bad e-mail, a hidden or missing group
        and a group that is not an agent group; no connection to the mail server."""
        hidden = self.world.add_mesh("Hidden", self.world.add_user("other"))
        amt = self.world.add_mesh("AMT", self.admin_id, mtype=1)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"meshid": "short", "email": "a@example.com"}, "Invalid group identifier"),
            ({"email": "a@example.com"}, "Invalid group identifier"),
            ({"meshid": "mesh/other/" + "A" * 64, "email": "a@example.com"},
             "Invalid group identifier"),
            ({"meshid": self.group, "email": "not-an-address"}, "Invalid email"),
            ({"meshid": self.group, "email": "a@example.com\r\nBcc: e@example.com"},
             "Invalid email"),
            ({"meshid": self.group, "email": 7}, "Invalid email"),
            ({"meshid": hidden, "email": "a@example.com"}, "Unknown device group"),
            ({"meshid": "mesh//" + "B" * 64, "email": "a@example.com"},
             "Unknown device group"),
            ({"meshid": amt, "email": "a@example.com"}, "Invalid group type"),
            ({"meshid": self.group, "email": "a@example.com", "msg": "m" * 5000},
             "Invalid message")]
        for fields, expected in cases:
            self.assertEqual(self.admin.result("inviteAgent", **fields), expected, fields)
        self.assertEqual(self.server.connected, [])

    def test_no_mailer(self) -> None:
        """Without an smtp section: ``Unsupported feature`` (MeshCentral's text)."""
        self.world.hub.mailer = None
        self.assertEqual(self.admin.result("inviteAgent", meshid=self.group,
                                           email="a@example.com"), "Unsupported feature")
        self.assertEqual(self.server.connected, [])

    def test_no_responseid(self) -> None:
        """Without responseid nothing is answered (as MeshCentral; the web app sends none)."""
        self.world.hub.mailer = None
        self.assertEqual(self.admin.request("inviteAgent", meshid=self.group,
                                            email="a@example.com", responseid=None), [])
