"""Guest device-sharing links over real WebSockets: a started meshd (twistd, TLS, SQLite),
the Python agent, the administrator's and a limited user's control channels, and guests
who hold nothing but a link's cookie on ``/meshrelay.ashx?c=…``."""

from __future__ import annotations

import base64
import http.client
import json
import os
import time
import urllib.parse
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_relay_e2e import AgentSetup, Client, connect, until

SHARER = 0x8 | 0x80000  # remote control + guest sharing


async def ask(control: Client, action: str, **fields: Any) -> dict[str, Any]:
    """Send one request and wait for the answer that carries its responseid."""
    tag = "g" + base64.b16encode(os.urandom(4)).decode()
    control.sendMessage(json.dumps({"action": action, "responseid": tag, **fields}).encode())
    found = await until(lambda: [f for f in control.json_frames()
                                 if f.get("responseid") == tag and "result" in f], 15)
    assert found, f"no answer to {action}"
    return found[0]


async def share(setup: AgentSetup, control: Optional[Client] = None, **fields: Any
                ) -> dict[str, Any]:
    request: dict[str, Any] = {"nodeid": setup.node_id, "guestname": "Guest", "p": 1,
                               "consent": 0, "expire": 0, "viewOnly": False, "port": None}
    request.update(fields)
    return await ask(control or setup.control, "createDeviceShareLink",
                     **{k: v for k, v in request.items() if v is not ...})


def cookie_of(reply: dict[str, Any]) -> str:
    url = reply["url"]
    assert "/sharing?c=" in url, url
    return urllib.parse.unquote(url.split("?c=", 1)[1])


def guest_url(setup: AgentSetup, cookie: str, p: Optional[int] = None,
              nodeid: Optional[str] = None) -> str:
    query = {"browser": "1", "c": cookie}
    if p is not None:
        query["p"] = str(p)
    if nodeid is not None:
        query["nodeid"] = nodeid
    return f"{setup.base}/meshrelay.ashx?{urllib.parse.urlencode(query)}"


def sharing_page(setup: AgentSetup, link: str) -> tuple[int, dict[str, str], str]:
    """GET a link's /sharing page: status, headers, body."""
    path = link[link.index("/sharing?"):]
    conn = http.client.HTTPSConnection("127.0.0.1", setup.server.port,
                                       context=setup.server.ssl_context(), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read().decode("utf-8"))
    finally:
        conn.close()


def page_data(body: str) -> dict[str, Any]:
    start = body.index('<script type="application/json" id="bootstrap">')
    start = body.index(">", start) + 1
    return json.loads(body[start:body.index("</script>", start)])  # type: ignore[no-any-return]


class GuestTests(TestCase):
    timeout = 240

    async def guest(self, setup: AgentSetup, cookie: str, p: int) -> Client:
        """A guest relay side paired with the agent (``c`` received)."""
        side = await connect(guest_url(setup, cookie, p))
        self.addCleanup(lambda: side.dropConnection(abort=True) if side.transport else None)
        self.assertTrue(await until(lambda: (b"c", False) in side.frames, 30),
                        setup.server.log()[-3000:] + setup.agent_log())
        return side

    async def refused(self, url: str) -> None:
        try:
            side = await connect(url)
        except ConnectionError:
            return
        side.dropConnection(abort=True)
        self.fail(f"{url} was admitted")

    async def files_listing(self, side: Client, path: str) -> dict[str, Any]:
        side.sendMessage(b"5", isBinary=False)
        side.sendMessage(json.dumps({"action": "ls", "reqid": 7, "path": path}).encode(),
                         isBinary=False)

        def listing() -> Any:
            for payload, _binary in side.frames:
                try:
                    message = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(message, dict) and message.get("reqid") == 7:
                    return message
            return None

        found = await until(listing, 20)
        self.assertIsNotNone(found, repr(side.frames[-5:]))
        return found  # type: ignore[no-any-return]

    async def terminal_round_trip(self, setup: AgentSetup, cookie: str, marker: str
                                  ) -> None:
        """The guest opens a terminal with the link alone; the Python agent dials back and
        its shell answers ``echo <marker>-$((6*7))``; the guest closes."""
        side = await self.guest(setup, cookie, 1)
        side.sendMessage(json.dumps({"ctrlChannel": "102938", "type": "options",
                                     "cols": 100, "rows": 30}).encode(), isBinary=False)
        side.sendMessage(b"1", isBinary=False)
        side.sendMessage(f"echo {marker}-$((6*7))\r".encode(), isBinary=True)
        self.assertTrue(await until(lambda: f"{marker}-42".encode() in side.output(), 30),
                        f"{side.output()[-2000:]!r}\n" + setup.agent_log())
        side.sendClose()
        await side.closed

    async def test_guest_terminal_end_to_end(self) -> None:
        """A terminal link: the guest joins with the link's cookie alone, the Python agent
        dials back, the shell answers; the session's relaylog events name the guest."""
        setup = await AgentSetup(self).start()
        reply = await share(setup, guestname="Guest", p=1, consent=2)
        self.assertEqual(reply["result"], "OK", reply)
        status, headers, body = sharing_page(setup, reply["url"])
        self.assertEqual(status, 200, body)
        self.assertEqual((headers["cache-control"], headers["referrer-policy"]),
                         ("no-store", "no-referrer"))
        self.assertIn('src="/app/js/sharing.js"', body)
        data = page_data(body)
        self.assertEqual((data["cookie"], data["nodeid"], data["guestName"], data["terminal"],
                          data["files"], data["end"]),
                         (cookie_of(reply), setup.node_id, "Guest", True, False, None))
        await self.terminal_round_trip(setup, data["cookie"], "GUEST")
        self.assertIn("guest Guest of share " + reply["publicid"], setup.server.log())

        def logs() -> list[dict[str, Any]]:
            return [f["event"] for f in setup.control.json_frames()
                    if f.get("action") == "event" and f["event"].get("action") == "relaylog"]

        self.assertTrue(await until(lambda: len(logs()) >= 2, 10), logs())
        self.assertEqual([(e["msgid"], e.get("guestname")) for e in logs()[:2]],
                         [(14, "Guest"), (10, "Guest")])

    async def test_meshctrl_link_opens_a_terminal(self) -> None:
        """The link meshctrl devicesharing --add Guest --type terminal prints is one a
        guest can use: a terminal on the Python agent through it."""
        from tests.meshctrl import MeshCtrl, meshctrl_script

        meshctrl_script()
        setup = await AgentSetup(self).start()
        ctl = MeshCtrl(setup.server.port, "admin", setup.password)
        printed = await deferToThread(ctl.run, "devicesharing", "--id", setup.node_id,
                                      "--add", "Guest", "--type", "terminal")
        lines = printed.strip().splitlines()
        self.assertEqual([line.split(": ", 1)[0] for line in lines], ["ID", "URL"], printed)
        await self.terminal_round_trip(setup, cookie_of({"url": lines[1][len("URL: "):]}),
                                       "MESHCTRL")

    async def test_guest_terminal_real_meshagent(self) -> None:
        """The real MeshAgent running MeshCentral's core accepts the relay-initiated tunnel
        of a guest (usages, guest name, the share's rights) and runs its shell."""
        from tests.test_relay_meshagent import MeshAgentSetup

        setup = await MeshAgentSetup(self).start()
        reply = await share(setup, guestname="Guest", p=1, consent=0)
        self.assertEqual(reply["result"], "OK", reply)
        side = await self.guest(setup, cookie_of(reply), 1)
        side.sendMessage(json.dumps({"ctrlChannel": "102938", "type": "options",
                                     "cols": 100, "rows": 30}).encode(), isBinary=False)
        side.sendMessage(b"1", isBinary=False)
        await deferLater(reactor, 1.0, lambda: None)
        side.sendMessage(b"echo MAGUEST-$((6*7))\r", isBinary=True)
        self.assertTrue(await until(lambda: b"MAGUEST-42" in side.output(), 30),
                        f"{side.output()[-2000:]!r}\n" + setup.server.log()[-3000:]
                        + setup.agent_log())
        side.sendClose()
        await side.closed

    async def test_guest_files_window_removal_and_refusals(self) -> None:
        """A files link: the guest lists a folder through the Python agent.  Refused: a
        protocol the link does not open, another device, a link not yet valid or already
        over, a forged cookie, a removed link; the link never logs in on /control.ashx.
        Removing the link closes the live session; its end closes a live session too."""
        setup = await AgentSetup(self).start()
        now = int(time.time())
        reply = await share(setup, guestname="Filer", p=4, consent=4, expire=...,
                            start=now - 60, end=now + 3600)
        self.assertEqual(reply["result"], "OK", reply)
        cookie = cookie_of(reply)
        side = await self.guest(setup, cookie, 5)
        listing = await self.files_listing(side, "/")
        self.assertIsInstance(listing.get("dir"), list, listing)

        # What the link does not open.
        await self.refused(guest_url(setup, cookie, 1))
        await self.refused(guest_url(setup, cookie, 2))
        await self.refused(guest_url(setup, cookie, 5, "node//" + "A" * 64))
        await self.refused(guest_url(setup, "A" * 80, 5))
        early = cookie_of(await share(setup, expire=..., start=now + 3600, end=now + 7200))
        await self.refused(guest_url(setup, early, 1))
        over = await share(setup, expire=..., start=now - 7200, end=now - 3600)
        self.assertEqual(over["result"], "OK")
        await self.refused(guest_url(setup, cookie_of(over), 1))
        # The guest page agrees, with MeshCentral's 404.
        early_page = sharing_page(setup, "/sharing?c=" + urllib.parse.quote(early))
        self.assertEqual(early_page[0], 404)
        self.assertIn("not valid yet", early_page[2])
        self.assertIn("has expired", sharing_page(setup, over["url"])[2])
        self.assertEqual(sharing_page(setup, "/sharing?c=" + "A" * 80)[0], 404)
        self.assertEqual(page_data(sharing_page(setup, reply["url"])[2])["files"], True)

        # Not a login anywhere else.
        control = await connect(f"{setup.base}/control.ashx?auth="
                                + urllib.parse.quote(cookie, safe=""))
        self.assertTrue(await until(lambda: control.json_frames(), 10))
        self.assertEqual(control.json_frames()[0].get("cause"), "noauth")
        await control.closed

        # Removal closes the live session and refuses the link from then on.
        removed = await ask(setup.control, "removeDeviceShare", nodeid=setup.node_id,
                            publicid=reply["publicid"])
        self.assertEqual(removed.get("result"), "OK")
        self.assertTrue(await until(lambda: side.closed.called, 10),
                        setup.server.log()[-2000:])
        await self.refused(guest_url(setup, cookie, 5))
        self.assertEqual(sharing_page(setup, reply["url"])[0], 404)

        # A link that ends in a few seconds: admitted, then closed at its end.
        now = int(time.time())
        short = await share(setup, guestname="Brief", p=4, expire=..., start=now - 1,
                            end=now + 4)
        brief = await self.guest(setup, cookie_of(short), 5)
        self.assertFalse(brief.closed.called)
        self.assertTrue(await until(lambda: brief.closed.called, 15),
                        setup.server.log()[-2000:])
        await self.refused(guest_url(setup, cookie_of(short), 5))
        self.assertIn("access period over", setup.server.log())

    async def test_create_validation_and_rights(self) -> None:
        """Creation over the control channel: MeshCentral's validation texts; a user with
        remote control but no guest-sharing right is denied and nothing is stored or
        announced; with the right it works, and the share lists for the administrator."""
        setup = await AgentSetup(self).start()
        control = setup.control
        cases: list[tuple[dict[str, Any], str]] = [
            ({"guestname": ""}, "Invalid guest name"), ({"p": 0}, "Invalid protocol"),
            ({"consent": 300}, "Invalid flags"),
            ({"expire": ..., "start": 10, "end": 5}, "No time specified"),
            ({"nodeid": "node//" + "A" * 64}, "Invalid node id")]
        for fields, text in cases:
            self.assertEqual((await share(setup, **fields))["result"], text, fields)
        name = "limited" + base64.b16encode(os.urandom(3)).decode().lower()
        password = "Limited-Pass-1"
        self.assertEqual((await ask(control, "adduser", username=name, **{"pass": password}))
                         .get("result"), "ok")
        added = await ask(control, "addmeshuser", meshid=setup.mesh_id, usernames=[name],
                          meshadmin=0x8)
        self.assertEqual(added["result"], f"Added user {name}")
        meshauth = ",".join(base64.b64encode(x.encode()).decode() for x in (name, password))
        limited = await connect(setup.base + "/control.ashx", {"x-meshauth": meshauth})
        self.addCleanup(lambda: limited.dropConnection(abort=True)
                        if limited.transport else None)
        seen = len(control.json_frames())
        denied = await share(setup, limited, guestname="Nope")
        self.assertEqual(denied["result"], "Access denied")
        self.assertEqual(await self.list_shares(setup), [])
        self.assertEqual([f for f in control.json_frames()[seen:]
                          if f.get("action") == "event"
                          and f["event"].get("action") == "addedDeviceShare"], [])
        # With the guest-sharing right the same request works.
        self.assertTrue((await ask(control, "addmeshuser", meshid=setup.mesh_id,
                                   usernames=[name], meshadmin=SHARER))["result"])
        allowed = await share(setup, limited, guestname="Yes")
        self.assertEqual(allowed["result"], "OK", allowed)
        shares = await self.list_shares(setup)
        self.assertEqual([(s["guestName"], s["userid"]) for s in shares],
                         [("Yes", f"user//{name}")])
        self.assertNotIn("url", shares[0])  # another user's link

    async def list_shares(self, setup: AgentSetup) -> list[dict[str, Any]]:
        """The administrator's deviceShares answer (it carries no responseid)."""
        control = setup.control
        before = len(control.frames)
        control.sendMessage(json.dumps({"action": "deviceShares", "nodeid": setup.node_id,
                                        "responseid": "l"}).encode())

        def answer() -> Any:
            for payload, binary in control.frames[before:]:
                message = json.loads(payload) if not binary else None
                if isinstance(message, dict) and "deviceShares" in message:
                    return message
            return None

        found = await until(answer, 10)
        self.assertIsNotNone(found)
        return found["deviceShares"]  # type: ignore[no-any-return,index]


class GuestPageBrowserTests(SynchronousTestCase):
    """The link in real headless Chromium: a guest who is not logged in opens it and uses
    the shared terminal and files of a Python agent."""

    timeout = 240

    def test_guest_page_terminal_and_files(self) -> None:
        """The administrator shares a device (meshctrl devicesharing --type
        terminal,files); a fresh browser opens the printed link, types a command in the
        terminal and sees its output, then lists files; no console or CSP error."""
        from tests.browser import browser
        from tests.meshctrl import MeshCtrl, meshctrl_script
        from tests.server import PythonAgent
        from tests.test_login import request
        from tests.test_webapp_browser import PASSWORD, app_server, screenshot_dir

        meshctrl_script()
        chromium = browser()
        server = app_server()
        base = f"https://127.0.0.1:{server.port}"
        admin_session = chromium.session()
        self.addCleanup(admin_session.close)
        page = admin_session.page
        page.goto(base + "/")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#connection[data-state=open]")
        name = "guest-" + base64.b16encode(os.urandom(3)).decode().lower()
        page.fill("#new-group-name", name)
        page.click("#new-group button[type=submit]")
        meshid = page.wait_for_selector(f"section.group[data-name='{name}']"
                                        ).get_attribute("data-meshid")
        assert meshid is not None
        msh = request(server, "GET", f"/meshsettings?id={meshid.split('/')[-1]}").body
        agent = PythonAgent(msh).start()
        self.addCleanup(agent.cleanup)
        group = f"section.group[data-meshid='{meshid}']"
        try:
            page.wait_for_selector(f"{group} tr.device[data-online='1']", timeout=90000)
        except Exception:
            raise AssertionError(f"agent log:\n{agent.log()[-3000:]}")
        page.click(f"{group} tr.device a.device-link")
        page.wait_for_selector("#view-device:not([hidden])")
        node_id = urllib.parse.unquote(page.evaluate("location.hash").split("/", 2)[2])

        printed = MeshCtrl(server.port, "admin", PASSWORD).run(
            "devicesharing", "--id", node_id, "--add", "Visitor", "--type", "terminal,files")
        link = printed.strip().splitlines()[-1][len("URL: "):]
        self.assertTrue(link.startswith(base + "/sharing?c="), printed)

        guest = chromium.session()
        self.addCleanup(guest.close)
        gpage = guest.page
        gpage.goto(link)
        self.assertEqual(gpage.text_content("#guest-name"), "Visitor")
        try:
            gpage.wait_for_selector("#terminal-status[data-state=open]", timeout=30000)
        except Exception:
            raise AssertionError(f"{gpage.text_content('#terminal-status')}\n"
                                 f"{server.log()[-3000:]}\nagent log:\n{agent.log()[-3000:]}")
        gpage.click("#terminal-screen")
        gpage.keyboard.type("echo VISITOR-$((6*7))")
        gpage.keyboard.press("Enter")
        gpage.wait_for_selector("#terminal-screen .xterm-rows:has-text('VISITOR-42')",
                                timeout=30000)
        gpage.click("#nav-files")
        gpage.wait_for_selector("#files-rows tr.file", timeout=30000)
        gpage.screenshot(path=os.path.join(screenshot_dir(), "guest-page.png"), full_page=True)
        self.assertEqual(guest.errors, [])
        self.assertEqual(admin_session.errors, [])
