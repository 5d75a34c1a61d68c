"""The web app's device groups and device page, end to end in headless Chromium: Intel
AMT-only groups and how to provision them, a device's Intel AMT credentials, and guest
links to a device running a real Python agent."""

from __future__ import annotations

import json
import shlex
import uuid
from typing import Any
from urllib.parse import urlsplit

from meshd.mps.cira import cira_username
from tests.test_login import admin, request
from tests.test_webapp_browser import BrowserTestCase, make_user, wait_for


def exported(datapath: str, doc_id: str) -> dict[str, Any]:
    """One record of the running server's database, as ``meshd-admin dbexport`` has it."""
    result = admin(datapath, "dbexport", "-")
    if result.returncode != 0:
        raise AssertionError(result.stderr)
    for line in result.stdout.splitlines():
        try:
            doc = json.loads(line).get("doc")
        except (ValueError, AttributeError):
            continue
        if isinstance(doc, dict) and doc.get("_id") == doc_id:
            return doc
    return {}


class AmtGroupTests(BrowserTestCase):
    """Intel AMT-only device groups on the Devices page."""

    def test_create_amt_only_group_shows_provisioning(self) -> None:
        """The new-group form offers Agents (the default) or Intel AMT only; an AMT-only
        group is created as mtype 1, has no "Add agent" and shows its CIRA server, its CIRA
        user name (as the server derives it) and the exact `meshd-admin ciracredentials`
        command, which run on the server issues that user's password.  An agents group
        shows none of it."""
        session = self.session()
        self.log_in(session)
        page = session.page
        self.assertEqual(page.input_value("#new-group-type"), "2")
        self.assertEqual([o.text_content() for o in page.query_selector_all(
            "#new-group-type option")], ["Agents", "Intel AMT only"])

        name = "amt-only-" + uuid.uuid4().hex[:6]
        page.fill("#new-group-name", name)
        # Keyboard only: the type list is reached with Tab and chosen with the arrows.
        page.focus("#new-group-name")
        page.keyboard.press("Tab")
        self.assertEqual(page.evaluate("() => document.activeElement.id"), "new-group-type")
        page.select_option("#new-group-type", "1")
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        section = page.wait_for_selector(f"section.group[data-name='{name}']")
        meshid = section.get_attribute("data-meshid")
        assert meshid is not None
        group = f"section.group[data-meshid='{meshid}']"
        page.wait_for_selector(f"{group}[data-mtype='1'] .provision:not([hidden])")
        mesh = page.evaluate("(id) => meshd.devices.meshes.get(id)", meshid)
        self.assertEqual(mesh["mtype"], 1)
        self.assertEqual(page.query_selector_all(f"{group} .add-agent"), [])
        self.assertIn("Intel AMT only", page.text_content(f"{group} .provision") or "")
        self.assertIn("Provision Intel AMT", page.text_content(f"{group} .empty") or "")

        user = page.text_content(f"{group} .cira-user")
        self.assertEqual(user, cira_username(meshid))
        server = page.text_content(f"{group} .cira-server") or ""
        self.assertTrue(server.endswith(f":{self.server.mpsport}"), server)
        command = page.text_content(f"{group} .cira-command") or ""
        words = shlex.split(command)
        self.assertEqual(words[:2], ["meshd-admin", "ciracredentials"])
        self.assertEqual(words[2:], [meshid])

        # The command shown works as is, and names the user the page showed.
        result = admin(self.server.datapath, *words[1:])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"CIRA user {user}\n", result.stdout)
        self.shot(session, "devices-amt-group")
        dark = self.session(color_scheme="dark", viewport={"width": 390, "height": 844})
        self.log_in(dark)
        dark.page.wait_for_selector(f"{group} .cira-command")
        self.shot(dark, "devices-amt-group-phone-dark")
        self.assertNoErrors(dark)

        # An agents group, the default, is as before.
        plain = self.create_group(session, "agents-" + uuid.uuid4().hex[:6])
        plain_group = f"section.group[data-meshid='{plain}']"
        page.wait_for_selector(f"{plain_group}[data-mtype='2'] .add-agent")
        self.assertFalse(page.is_visible(f"{plain_group} .provision"))
        self.assertNoErrors(session)


class AmtCredentialsTests(BrowserTestCase):
    """A device's Intel AMT credentials on its page."""

    def test_set_credentials(self) -> None:
        """On an Intel AMT device (added with `addamtdevice`) an administrator sets the
        AMT user and password: the server stores them, the page and the device's record
        sent to clients say only `pass: 1`, and the password field is emptied.  Bad input
        is refused on the page.  A device without AMT has no such form, nor has a user
        who may not manage the group's devices."""
        session = self.session()
        self.log_in(session)
        page = session.page
        tag = uuid.uuid4().hex[:6]
        created = page.evaluate("(name) => meshd.client.request('createmesh', "
                                "{meshname: name, meshtype: 1})", "amtcred-" + tag)
        self.assertEqual(created.get("result"), "ok", created)
        meshid = created["meshid"]
        added = page.evaluate(
            "(meshid) => meshd.client.call('addamtdevice', {meshid, devicename: 'amt-box', "
            "hostname: '192.0.2.7', amtusername: 'admin', amtpassword: 'Old-Pass-1', "
            "amttls: 0})", meshid)
        self.assertEqual(added.get("result"), "ok", added)
        group = f"section.group[data-meshid='{meshid}']"
        row = page.wait_for_selector(f"{group} tr.device[data-name='amt-box']")
        nodeid = row.get_attribute("data-nodeid")
        assert nodeid is not None

        page.click(f"{group} tr.device a.device-link")
        page.wait_for_selector("#amt-credentials:not([hidden])")
        page.wait_for_selector("#amt-cred-state[data-pass='1']")
        self.assertEqual(page.input_value("#amt-cred-user"), "admin")
        self.assertEqual(page.input_value("#amt-cred-pass"), "")
        self.assertIn('user "admin", password set', page.text_content("#amt-cred-state") or "")

        # Without a password nothing is sent.
        page.fill("#amt-cred-user", "nobody")
        page.click("#amt-cred-save")
        self.assertTrue(page.evaluate("() => document.querySelector('#amt-cred-pass')"
                                      ".matches(':invalid')"))
        self.assertEqual(exported(self.server.datapath, nodeid)["intelamt"]["user"], "admin")

        page.fill("#amt-cred-user", "operator<b>")
        page.fill("#amt-cred-pass", "New-Pass-2")
        page.focus("#amt-cred-pass")
        page.keyboard.press("Enter")
        page.wait_for_selector(".toast-ok:has-text('Intel AMT credentials saved')")
        page.wait_for_selector("#amt-cred-state:has-text('operator<b>')")
        self.assertEqual(page.query_selector_all("#amt-cred-state b"), [])
        self.assertEqual(page.input_value("#amt-cred-pass"), "")
        self.assertEqual(page.text_content("#amt-cred-error"), "")
        # Guest links share an agent's terminal or files: not offered here.
        self.assertFalse(page.is_visible("#guest-links"))

        # What clients get: pass 1, never the password; what is stored: the password.
        fresh = page.evaluate("(id) => meshd.client.request('nodes', {id})", nodeid)
        [node] = [n for nodes in fresh["nodes"].values() for n in nodes if n["_id"] == nodeid]
        self.assertEqual(node["intelamt"]["user"], "operator<b>")
        self.assertEqual(node["intelamt"]["pass"], 1)
        shown = page.evaluate("(id) => meshd.devices.nodes.get(id).intelamt", nodeid)
        self.assertEqual(shown["pass"], 1)
        self.assertNotIn("New-Pass-2", page.content())
        stored = wait_for(lambda: exported(self.server.datapath, nodeid), 10, "the device")
        self.assertEqual(stored["intelamt"]["user"], "operator<b>")
        self.assertEqual(stored["intelamt"]["pass"], "New-Pass-2")
        page.wait_for_selector("#device-event-rows tr:has-text('Intel AMT credentials')")
        self.shot(session, "device-amt-credentials")
        self.assertNoErrors(session)

        # A user who may only control the group's devices gets no form.
        make_user(self.server, "amtro" + tag)
        granted = page.evaluate("([meshid, name]) => meshd.client.request('addmeshuser', "
                                "{meshid, usernames: [name], meshadmin: 8})",
                                [meshid, "amtro" + tag])
        self.assertIn("Added user", str(granted.get("result")), granted)
        other = self.session()
        self.log_in(other, "amtro" + tag, "User-Pass-123")
        other.page.goto(f"{self.base}/#/device/{nodeid}")
        other.page.wait_for_selector("#device-facts dd[data-fact='Intel AMT']")
        other.page.wait_for_timeout(300)
        self.assertFalse(other.page.is_visible("#amt-credentials"))
        self.assertNoErrors(other)


class GuestLinkTests(BrowserTestCase):
    """Guest links of a device with a real Python agent."""

    def test_create_list_open_remove(self) -> None:
        """On an agent's page an administrator creates a guest link for the terminal and
        files: its URL is shown with a copy button and the link is listed (the guest's
        name as text); the URL opens the /sharing page (HTTP 200, and in a browser without
        an account it names the device); removing it takes it off the list and the URL no
        longer opens the page."""
        session = self.session()
        self.log_in(session)
        page = session.page
        _agent, _name, nodeid = self.open_agent_device(session, "guests-")
        device_name = page.text_content("#device-name")
        page.wait_for_selector("#guest-links:not([hidden]) #share-none:not([hidden])")
        # An agent without Intel AMT has no AMT credentials form.
        self.assertFalse(page.is_visible("#amt-credentials"))

        # Without a guest name nothing is sent.
        page.click("#share-create")
        self.assertTrue(page.evaluate("() => document.querySelector('#share-guest')"
                                      ".matches(':invalid')"))
        self.assertFalse(page.is_visible("#share-new"))
        guest = "Ann <i>guest</i>"
        page.fill("#share-guest", guest)
        page.check("#share-files")
        page.select_option("#share-duration", "60")
        page.click("#share-create")
        page.wait_for_selector("#share-new:not([hidden])")
        url = page.input_value("#share-new-url")
        self.assertIn("/sharing?c=", url)
        self.assertTrue(page.is_visible("#share-new-copy"))
        item = page.wait_for_selector("#share-rows li.share")
        self.assertEqual(page.text_content("#share-rows li.share .guest"), guest)
        self.assertEqual(page.query_selector_all("#share-rows i"), [])
        self.assertIn("Terminal and files", item.text_content() or "")
        self.assertIn("Until", item.text_content() or "")
        self.assertEqual(page.get_attribute("#share-rows .share-url", "href"), url)
        self.assertTrue(page.is_visible("#share-rows .copy-share"))
        publicid = item.get_attribute("data-publicid")
        self.assertTrue(publicid)
        listed = page.evaluate("(nodeid) => meshd.client.request('deviceShares', {nodeid}, "
                               "{untagged: true, accepts: (m) => m.action === 'deviceShares'})",
                               nodeid)
        self.assertEqual([s["publicid"] for s in listed["deviceShares"]], [publicid])
        self.assertEqual(listed["deviceShares"][0]["p"], 5)
        self.shot(session, "device-guest-links")

        parts = urlsplit(url)
        path = f"{parts.path}?{parts.query}"
        self.assertEqual(request(self.server, "GET", path).status, 200)
        visitor = self.session()
        visitor.page.goto(self.base + path)
        visitor.page.wait_for_selector("#share-device")
        self.assertEqual(visitor.page.text_content("#share-device"), device_name)
        self.assertNoErrors(visitor)

        # Removed from the keyboard: Tab to the Remove button, Enter.
        page.focus("#share-rows .copy-share")
        page.keyboard.press("Tab")
        self.assertEqual(page.evaluate("() => document.activeElement.className"),
                         "remove-share danger-outline")
        page.keyboard.press("Enter")
        page.wait_for_selector(".toast-ok:has-text('removed')")
        page.wait_for_selector("#share-rows li.share", state="detached")
        page.wait_for_selector("#share-none:not([hidden])")
        self.assertTrue(page.is_hidden("#share-new"))
        self.assertNotEqual(request(self.server, "GET", path).status, 200)
        self.assertEqual(page.text_content("#share-error"), "")
        self.assertNoErrors(session)
