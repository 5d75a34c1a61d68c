"""The web app: how meshd serves it, and end-to-end in real headless Chromium against a
real started meshd and a real Python agent."""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import time
import uuid
from typing import Any, Callable, Optional

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from meshd.web.app import (
    CONTENT_SECURITY_POLICY,
    AppFilesResource,
    app_page,
    find_web_dir,
    json_for_html,
)
from meshd.web.login import LOGIN_CONTENT_SECURITY_POLICY
from tests.browser import Session, browser
from tests.server import ROOT, PythonAgent, ServerProcess, fresh_datapath
from tests.test_login import admin, login, request

WEB = os.path.join(ROOT, "web")
# Build inputs of web/ that are not package data.
NOT_INSTALLED = {"package.json", "package-lock.json", "build-vendor.sh"}
PASSWORD = "Browser-Test-Pass-1"


def _get(resource: AppFilesResource, path: str) -> Any:
    request: Any = DummyRequest([part.encode() for part in path.split("/")])
    body = resource.render_GET(request)
    request.written.append(body)
    if request.responseCode is None:
        request.responseCode = 200
    return request


class AppResourceTests(SynchronousTestCase):
    """meshd.web.app without a server."""

    def test_json_for_html(self) -> None:
        """JSON embedded in HTML cannot close its element: <, >, & are escaped."""
        text = json_for_html({"t": "</script><b>&amp;", "u": "é\u2028"})
        self.assertNotIn("<", text)
        self.assertNotIn(">", text)
        self.assertNotIn("&", text)
        self.assertEqual(json.loads(text), {"t": "</script><b>&amp;", "u": "é\u2028"})

    def test_page_embeds_escaped_bootstrap(self) -> None:
        """The app page carries the user and title as escaped JSON and an escaped title."""
        page = app_page({"name": "a<b>&c", "siteadmin": 0xFFFFFFFF},
                        "</script><script>alert(1)</script>", WEB).decode()
        self.assertNotIn("<script>alert(1)", page)
        self.assertIn("<title>&lt;/script&gt;", page)
        [data] = re.findall(r'<script type="application/json" id="bootstrap">(.*?)</script>',
                            page)
        self.assertEqual(json.loads(data)["user"]["name"], "a<b>&c")
        self.assertEqual(json.loads(data)["title"], "</script><script>alert(1)</script>")
        self.assertIn('Logged in as <strong id="user">a&lt;b&gt;&amp;c</strong> '
                      '(site administrator)', page)
        self.assertIn('<script type="module" src="/app/js/main.js"></script>', page)

    def test_web_dir_found(self) -> None:
        """The source checkout's web/ is found."""
        self.assertEqual(find_web_dir(), WEB)

    def test_serves_modules_and_styles(self) -> None:
        """Modules and CSS are served with their types, the strict CSP and nosniff."""
        resource = AppFilesResource(WEB)
        request = _get(resource, "js/control.js")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"text/javascript; charset=utf-8"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-security-policy"),
                         [CONTENT_SECURITY_POLICY.encode()])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-content-type-options"),
                         [b"nosniff"])
        with open(os.path.join(WEB, "js", "control.js"), "rb") as f:
            self.assertEqual(b"".join(request.written), f.read())
        self.assertEqual(_get(resource, "app.css").responseHeaders.getRawHeaders(
            b"content-type"), [b"text/css; charset=utf-8"])

    def test_refuses_everything_else(self) -> None:
        """Tests, dot files, traversal, the page template, unknown types and folders are 404."""
        resource = AppFilesResource(WEB)
        for path in ("tests/control.test.js", "../meshd/__init__.py", "js/../../setup.cfg",
                     ".hidden.js", "index.html", "package.json", "js", "", "js/nothere.js",
                     "js/%2e%2e/index.html"):
            self.assertEqual(_get(resource, path).responseCode, 404, path)

    def test_every_app_file_is_installed(self) -> None:
        """setup.cfg's data_files install every file the app serves (pip users need no repo)."""
        import configparser
        import glob

        config = configparser.ConfigParser()
        config.read(os.path.join(ROOT, "setup.cfg"))
        installed = set()
        for target, sources in config["options.data_files"].items():
            for pattern in sources.replace("\n", ",").split(","):
                for path in glob.glob(os.path.join(ROOT, pattern.strip())):
                    rel = os.path.relpath(path, WEB)
                    self.assertEqual(os.path.join("share/meshd/web", os.path.dirname(rel))
                                     .rstrip("/"), target)
                    installed.add(rel)
        wanted = {os.path.relpath(path, WEB) for path in glob.glob(os.path.join(WEB, "**", "*"),
                                                                   recursive=True)
                  if os.path.isfile(path) and not os.path.relpath(path, WEB).startswith(
                      ("tests" + os.sep, "node_modules" + os.sep, "licenses" + os.sep))
                  and os.path.relpath(path, WEB) not in NOT_INSTALLED}
        self.assertEqual(wanted - installed, set())

    def test_policy_is_strict(self) -> None:
        """The policy allows no inline script or style and nothing from other origins."""
        self.assertIn("script-src 'self';", CONTENT_SECURITY_POLICY)
        self.assertIn("style-src 'self';", CONTENT_SECURITY_POLICY)
        self.assertIn("default-src 'none'", CONTENT_SECURITY_POLICY)
        self.assertNotIn("unsafe", CONTENT_SECURITY_POLICY)
        self.assertIn("frame-ancestors 'none'", CONTENT_SECURITY_POLICY)


# -- end to end ------------------------------------------------------------------------

_server: Optional[ServerProcess] = None


def app_server() -> ServerProcess:
    """One meshd with one site administrator, shared by the browser tests."""
    global _server
    if _server is None or _server.process is None or _server.process.poll() is not None:
        import atexit

        server = ServerProcess(fresh_datapath()).start()
        atexit.register(server.stop)
        result = admin(server.datapath, "createaccount", "admin", "--pass", PASSWORD,
                       "--siteadmin")
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        _server = server
    return _server


def wait_for(condition: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.2)


# The README's pictures of the main pages, made by ScreenshotTests on every run.
DOC_SCREENSHOTS = (os.environ.get("MESHD_DOC_SCREENSHOTS")
                   or os.path.join(ROOT, "docs", "screenshots"))


def screenshot_dir() -> str:
    folder = os.environ.get("MESHD_SCREENSHOTS") or os.path.abspath("screenshots")
    os.makedirs(folder, exist_ok=True)
    return folder


class BrowserTestCase(SynchronousTestCase):
    timeout = 240

    def setUp(self) -> None:
        self.browser = browser()
        self.server = app_server()
        self.base = f"https://127.0.0.1:{self.server.port}"

    def session(self, **options: Any) -> Session:
        session = self.browser.session(**options)
        self.addCleanup(session.close)
        return session

    def log_in(self, session: Session, name: str = "admin", password: str = PASSWORD) -> None:
        page = session.page
        page.goto(self.base + "/")
        page.fill("input[name=username]", name)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_selector("#connection[data-state=open]")
        page.wait_for_selector("#device-summary:not(:text('Loading'))")

    def create_group(self, session: Session, name: str) -> str:
        page = session.page
        page.fill("#new-group-name", name)
        page.click("#new-group button[type=submit]")
        section = page.wait_for_selector(f"section.group[data-name='{name}']")
        meshid = section.get_attribute("data-meshid")
        assert meshid is not None
        return meshid

    def open_agent_device(self, session: Session, prefix: str
                          ) -> tuple[PythonAgent, str, str]:
        """A new group with a real Python agent in it, the agent's device page open:
        (agent, group name, node id)."""
        page = session.page
        name = prefix + uuid.uuid4().hex[:6]
        meshid = self.create_group(session, name)
        group = f"section.group[data-meshid='{meshid}']"
        msh = request(self.server, "GET", f"/meshsettings?id={meshid.split('/')[-1]}").body
        agent = PythonAgent(msh).start()
        self.addCleanup(agent.cleanup)
        try:
            page.wait_for_selector(f"{group} tr.device[data-online='1']", timeout=90000)
        except Exception:
            raise AssertionError(f"agent log:\n{agent.log()[-3000:]}")
        nodeid = page.get_attribute(f"{group} tr.device", "data-nodeid")
        assert nodeid is not None
        page.click(f"{group} tr.device a.device-link")
        page.wait_for_selector("#view-device:not([hidden]) #device-state[data-online='1']")
        return agent, name, nodeid

    def assertNoErrors(self, session: Session) -> None:
        self.assertEqual(session.errors, [])

    def shot(self, session: Session, name: str) -> str:
        path = os.path.join(screenshot_dir(), name + ".png")
        session.page.screenshot(path=path, full_page=True)
        return path


class LoginTests(BrowserTestCase):
    """Login, the app shell, and logout."""

    def test_login_shows_app_and_logout(self) -> None:
        """The login form leads to the app under its CSP, without any console error;
        logging out leads back to the login form."""
        session = self.session()
        self.log_in(session)
        page = session.page
        self.assertEqual(page.text_content("#current-user"), "admin")
        self.assertTrue(page.is_visible("#view-devices"))
        self.assertTrue(page.is_visible("#new-group-name"))
        page.click("#nav-account")
        page.wait_for_selector("#account-facts")
        self.assertIn("Site administrator", page.text_content("#account-facts") or "")
        self.assertFalse(page.is_visible("#view-devices"))
        self.assertNoErrors(session)
        page.click("#logout")
        page.wait_for_selector("input[name=username]")
        page.goto(self.base + "/")
        self.assertTrue(page.is_visible("form[action='/login']"))
        self.assertEqual(session.context.cookies(), [])

    def test_session_end_leads_back_after_login(self) -> None:
        """When the session ends (its cookie is gone and the control channel reconnects),
        the app says so and goes to the login page; logging in again leads back to the
        page the user was on, and only once."""
        session = self.session()
        self.log_in(session)
        page = session.page
        page.click("#nav-events")
        page.wait_for_selector("#view-events:not([hidden])")
        session.context.clear_cookies()
        page.evaluate("() => meshd.client._socket.close()")
        page.wait_for_selector(".toast:has-text('log in again')")
        page.wait_for_selector("#connection[data-state=denied]")
        page.wait_for_selector("form[action='/login']", timeout=15000)
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#connection[data-state=open]")
        page.wait_for_selector("#view-events:not([hidden])")
        self.assertTrue(page.url.endswith("/#/events"), page.url)
        self.assertTrue(page.is_visible("#nav-events[aria-current=page]"))
        page.click("#logout")
        page.wait_for_selector("form[action='/login']")
        self.log_in(session)
        self.assertTrue(page.is_visible("#view-devices"))
        self.assertNoErrors(session)

    def test_served_page_headers(self) -> None:
        """The logged-in page is the app with the strict CSP; its static files are served."""
        cookie = login(self.server, "admin", PASSWORD).cookie()
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port,
                                           context=self.server.ssl_context(), timeout=30)
        conn.request("GET", "/", headers={"Cookie": f"xid={cookie}"})
        response = conn.getresponse()
        body = response.read().decode()
        conn.close()
        self.assertEqual(response.getheader("Content-Security-Policy"), CONTENT_SECURITY_POLICY)
        self.assertIn('id="bootstrap"', body)
        self.assertEqual(request(self.server, "GET", "/app/js/main.js").status, 200)
        self.assertEqual(request(self.server, "GET", "/app/tests/control.test.js").status, 404)


class NoticeTests(BrowserTestCase):
    """What the server tells a user at login: failed logins, and to administrators the
    server's warnings."""

    def test_failed_logins_since_the_last_one(self) -> None:
        """After failed attempts on an account, its next login shows how many there were,
        once."""
        name = "notice-" + uuid.uuid4().hex[:8]
        result = admin(self.server.datapath, "createaccount", name, "--pass", PASSWORD)
        self.assertEqual(result.returncode, 0, result.stderr)
        session = self.session()
        page = session.page
        self.log_in(session, name)
        page.click("#logout")
        page.wait_for_selector("form[action='/login']")
        for _ in range(2):
            self.assertEqual(login(self.server, name, "not the password").status, 401)
        self.log_in(session, name)
        toast = page.wait_for_selector(".toast:has-text('failed login attempts')")
        self.assertEqual(toast.text_content(), "Security Warning: There has been 2 failed "
                         "login attempts on this account since the last login.")
        page.reload()
        page.wait_for_selector("#connection[data-state=open]")
        page.wait_for_timeout(500)
        self.assertEqual(page.locator(".toast:has-text('failed login')").count(), 0)
        self.assertFalse(page.is_visible("#server-warnings"))
        self.assertNoErrors(session)

    def test_server_warnings_for_administrators(self) -> None:
        """A configuration the server partly ignores is shown to site administrators as
        a warning, and to nobody else."""
        datapath = fresh_datapath()
        config = os.path.join(datapath, "meshd.json")
        with open(config, "w", encoding="utf-8") as f:
            json.dump({"domains": {"": {"title": "Warned", "footer": "ignored"}}}, f)
        server = ServerProcess(datapath, extra=["--config", config]).start()
        self.addCleanup(server.stop)
        for name, rights in (("admin", ["--siteadmin"]), ("plain", [])):
            result = admin(datapath, "createaccount", name, "--pass", PASSWORD, *rights)
            self.assertEqual(result.returncode, 0, result.stderr)
        base, self.base = self.base, f"https://127.0.0.1:{server.port}"
        self.addCleanup(setattr, self, "base", base)
        session = self.session()
        page = session.page
        self.log_in(session)
        warning = page.wait_for_selector("#server-warnings .server-warning")
        self.assertEqual(warning.text_content(), "Configuration: domains..footer: "
                         "MeshCentral option not supported by meshd; ignored")
        page.click("#logout")
        page.wait_for_selector("form[action='/login']")
        self.log_in(session, "plain")
        page.wait_for_timeout(500)
        self.assertFalse(page.is_visible("#server-warnings"))
        self.assertNoErrors(session)


class LoginPageTests(BrowserTestCase):
    """The login and first-run pages: the app's stylesheet, a strict policy, keyboard use."""

    def test_login_page_strict_and_styled(self) -> None:
        """The login form is served under a policy without 'unsafe-inline', styled by the
        app's stylesheet in light and dark, shows a wrong password as an alert with the
        cursor back in the password field, and logs in with the keyboard alone."""
        response = request(self.server, "GET", "/")
        policy = response.headers["Content-Security-Policy"]
        self.assertEqual(policy, LOGIN_CONTENT_SECURITY_POLICY)
        self.assertNotIn("unsafe", policy)
        self.assertIn("default-src 'none'", policy)
        self.assertIn('<link rel="stylesheet" href="/app/app.css">', response.body)
        self.assertNotRegex(response.body, r"<style|style=|<script|\son[a-z]+=")

        backgrounds = {}
        for scheme in ("light", "dark"):
            session = self.session(color_scheme=scheme)
            page = session.page
            page.goto(self.base + "/")
            card = page.wait_for_selector("main.auth-card")
            self.assertEqual(card.evaluate("e => getComputedStyle(e).borderTopLeftRadius"),
                             "12px")
            backgrounds[scheme] = card.evaluate("e => getComputedStyle(e).backgroundColor")
            page.wait_for_function("() => document.activeElement.name === 'username'")
            self.assertNoErrors(session)
        self.assertNotEqual(backgrounds["light"], backgrounds["dark"])

        session = self.session()
        page = session.page
        page.goto(self.base + "/")
        page.wait_for_function("() => document.activeElement.name === 'username'")
        page.keyboard.type("admin")
        page.keyboard.press("Tab")
        page.keyboard.type("not the password")
        page.keyboard.press("Enter")
        alert = page.wait_for_selector("p.error[role=alert]")
        self.assertEqual(alert.text_content(), "Invalid user name or password.")
        color = alert.evaluate("e => getComputedStyle(e).color")
        self.assertNotEqual(color, page.evaluate(
            "getComputedStyle(document.querySelector('.auth-card')).color"))
        self.assertEqual(page.input_value("input[name=username]"), "admin")
        self.assertEqual(page.evaluate("document.activeElement.name"), "password")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_selector("#connection[data-state=open]")
        self.assertEqual([e for e in session.errors if "/login" not in e], [])

    def test_first_run_page_with_the_keyboard(self) -> None:
        """On a server without accounts the first-run page, styled like the app, refuses
        two different passwords readably and then creates the administrator, who lands
        in the app, all typed without a mouse."""
        server = ServerProcess(fresh_datapath()).start()
        self.addCleanup(server.stop)
        session = self.session(color_scheme="dark")
        page = session.page
        page.goto(f"https://127.0.0.1:{server.port}/")
        page.wait_for_selector("h2.auth-heading:text-is('Create the administrator')")
        page.wait_for_function("() => document.activeElement.name === 'username'")
        page.keyboard.type("boss")
        for text in ("", "First-Pass-1", "Other-Pass-2"):  # e-mail, password, again
            page.keyboard.press("Tab")
            page.keyboard.type(text)
        page.keyboard.press("Enter")
        page.wait_for_selector("p.error[role=alert]:text-is('The two passwords differ.')")
        page.fill("input[name=password1]", "First-Pass-1")
        page.focus("input[name=password2]")
        page.keyboard.type("First-Pass-1")
        page.keyboard.press("Enter")
        page.wait_for_selector("#connection[data-state=open]")
        self.assertEqual(page.text_content("#current-user"), "boss")
        self.assertEqual([e for e in session.errors if "/createaccount" not in e], [])


class DeviceGroupTests(BrowserTestCase):
    """Device groups through the UI, seen live by another session."""

    def test_create_and_delete_group_live_in_two_sessions(self) -> None:
        """A group created in one browser appears in another at once (events), and its
        deletion disappears from both; the event log shows both."""
        first, second = self.session(), self.session()
        self.log_in(first)
        self.log_in(second)
        name = "grp-" + uuid.uuid4().hex[:6]
        meshid = self.create_group(first, name)
        self.assertTrue(meshid.startswith("mesh//"))
        second.page.wait_for_selector(f"section.group[data-meshid='{meshid}']", timeout=10000)
        self.assertIn(name, second.page.text_content("#groups") or "")
        self.shot(first, "devices-groups")

        first.page.click(f"section.group[data-meshid='{meshid}'] .delete-group")
        first.page.click("#confirm-delete")
        first.page.wait_for_selector(f"section.group[data-meshid='{meshid}']", state="detached")
        second.page.wait_for_selector(f"section.group[data-meshid='{meshid}']", state="detached",
                                      timeout=10000)

        second.page.click("#nav-events")
        second.page.wait_for_selector(f"#event-rows tr:has-text('Device group created: {name}')")
        self.assertIn("Device group deleted", second.page.text_content("#event-rows") or "")
        self.shot(second, "events")
        self.assertNoErrors(first)
        self.assertNoErrors(second)

    def test_rename_group_live_in_two_sessions(self) -> None:
        """Editing a group renames it and sets its description (editmesh); another session
        sees the change at once, and the event log records it."""
        first, second = self.session(), self.session()
        self.log_in(first)
        self.log_in(second)
        name = "old-" + uuid.uuid4().hex[:6]
        new_name = "new-" + uuid.uuid4().hex[:6]
        meshid = self.create_group(first, name)
        second.page.wait_for_selector(f"section.group[data-meshid='{meshid}']", timeout=10000)
        page = first.page
        page.click(f"section.group[data-meshid='{meshid}'] .edit-group")
        page.wait_for_selector("#edit-group-name")
        self.assertEqual(page.input_value("#edit-group-name"), name)
        page.fill("#edit-group-name", new_name)
        page.fill("#edit-group-desc", "Rack <b>4</b>")
        page.click("#edit-group-save")
        page.wait_for_selector("#dialog", state="hidden")
        for session in (first, second):
            section = f"section.group[data-meshid='{meshid}']"
            session.page.wait_for_selector(f"{section}[data-name='{new_name}']", timeout=10000)
            self.assertEqual(session.page.text_content(f"{section} h2.group-name"), new_name)
            self.assertEqual(session.page.text_content(f"{section} p.desc"), "Rack <b>4</b>")
        # An empty name is refused in the dialog, and Cancel changes nothing.
        page.click(f"section.group[data-meshid='{meshid}'] .edit-group")
        page.fill("#edit-group-name", "  ")
        page.click("#edit-group-save")
        page.wait_for_selector("#edit-group-error:has-text('Enter a name')")
        page.click("#edit-group-cancel")
        page.wait_for_selector("#dialog", state="hidden")
        second.page.click("#nav-events")
        second.page.wait_for_selector(
            f"#event-rows tr:has-text('Device group name changed from \"{name}\"')")
        self.assertNoErrors(first)
        self.assertNoErrors(second)

    def test_group_name_is_text(self) -> None:
        """A group name with markup is shown as text, never run."""
        session = self.session()
        self.log_in(session)
        name = "<img src=x onerror=alert(1)>" + uuid.uuid4().hex[:4]
        session.page.fill("#new-group-name", name)
        session.page.click("#new-group button[type=submit]")
        session.page.wait_for_selector(f"section.group h2:text-is('{name}')")
        self.assertEqual(session.page.query_selector_all("section.group img"), [])
        self.assertNoErrors(session)


class EventsTests(BrowserTestCase):
    """The events view's filters."""

    def test_filters_by_kind_words_and_age(self) -> None:
        """The events view narrows the log by kind (groups, users and logins, failed
        logins), by words and by age, says how many events it shows, and a new event that
        matches the filters appears at once."""
        tag = uuid.uuid4().hex[:6]
        self.assertEqual(login(self.server, "nobody-" + tag, "wrong password").status, 401)
        session = self.session()
        self.log_in(session)
        page = session.page
        name = "ev-" + tag
        self.create_group(session, name)
        page.click("#nav-events")
        created = f"#event-rows tr:has-text('Device group created: {name}')"
        page.wait_for_selector(created)

        def kinds() -> set[str]:
            return {row.get_attribute("data-kind") or ""
                    for row in page.query_selector_all("#event-rows tr.event")}

        page.select_option("#event-kind", "group")
        page.wait_for_selector("#event-rows tr.event[data-kind='user']", state="detached")
        self.assertEqual(kinds(), {"group"})
        self.assertIn("Group", page.text_content(f"{created} td.kind") or "")
        page.select_option("#event-kind", "failure")
        page.wait_for_selector(f"#event-rows tr:has-text('nobody-{tag}')")
        self.assertEqual({row.get_attribute("data-action") for row in
                          page.query_selector_all("#event-rows tr.event")}, {"authfail"})
        page.select_option("#event-kind", "user")
        page.wait_for_selector("#event-rows tr:has-text('Account login from')")
        self.assertEqual(kinds(), {"user"})

        page.select_option("#event-kind", "all")
        page.select_option("#event-period", "hour")
        page.fill("#event-filter", name)
        page.wait_for_function(
            "() => document.querySelectorAll('#event-rows tr.event').length === 1")
        page.wait_for_selector("#events-summary:has-text('1 of ')")
        self.create_group_by_request(session, name + "-b")
        page.wait_for_selector(f"#event-rows tr:has-text('Device group created: {name}-b')")
        page.wait_for_selector("#events-summary:has-text('2 of ')")
        page.fill("#event-filter", "no such event " + tag)
        page.wait_for_selector("#events-empty:has-text('No event matches the filters')")
        self.assertNoErrors(session)

    def create_group_by_request(self, session: Session, name: str) -> None:
        """A group made through the page's control channel, while another view is shown."""
        session.page.evaluate(
            "(name) => meshd.client.call('createmesh', { meshname: name, meshtype: 2 })", name)


class AgentTests(BrowserTestCase):
    """A real Python agent seen coming and going live."""

    def test_agent_online_and_offline_live(self) -> None:
        """A Python agent installed with the group's .msh appears online without a reload,
        and offline when it stops."""
        session = self.session()
        self.log_in(session)
        page = session.page
        name = "agents-" + uuid.uuid4().hex[:6]
        meshid = self.create_group(session, name)
        group = f"section.group[data-meshid='{meshid}']"
        page.click(f"{group} .add-agent")
        href = page.get_attribute("#msh-link", "href")
        self.assertIn("install.sh?id=", page.text_content("#install-command") or "")
        page.keyboard.press("Escape")
        assert href is not None
        msh = request(self.server, "GET", href).body
        self.assertIn(f"MeshName={name}", msh)

        agent = PythonAgent(msh).start()
        self.addCleanup(agent.cleanup)
        try:
            page.wait_for_selector(f"{group} tr.device[data-online='1']", timeout=90000)
        except Exception:
            raise AssertionError(f"agent log:\n{agent.log()[-3000:]}\nserver log:\n"
                                 f"{self.server.log()[-3000:]}")
        self.assertIn("Online (agent)", page.text_content(f"{group} tr.device") or "")
        self.assertIn("1 online", page.text_content(f"{group} .counts") or "")
        page.wait_for_selector(".toast:has-text('connected')")
        self.shot(session, "devices-online")

        agent.stop()
        page.wait_for_selector(f"{group} tr.device[data-online='0']", timeout=30000)
        self.assertIn("Offline", page.text_content(f"{group} tr.device") or "")
        self.assertNoErrors(session)

    def test_device_page_runs_a_command(self) -> None:
        """A device's page shows its facts live, runs a shell command on the real agent
        with the output shown, and lists the device's events."""
        session = self.session()
        self.log_in(session)
        page = session.page
        agent, name, nodeid = self.open_agent_device(session, "cmd-")
        self.assertIn("/device/", page.url)
        page.wait_for_selector("#device-facts dd[data-fact='Agent version']:has-text('core')")
        page.wait_for_selector("#device-facts dd[data-fact='Last connection']")
        facts = page.text_content("#device-facts") or ""
        self.assertIn(name, facts)
        self.assertIn("Online (agent)", facts)
        self.assertTrue(page.is_visible("#nav-devices[aria-current=page]"))

        page.fill("#run-script", "echo run-$((6*7))\necho 'x<b>y' >&2")
        page.click("#run-button")
        page.wait_for_selector("#run-status[data-state=done]", timeout=60000)
        output = page.text_content("#run-output") or ""
        self.assertIn("run-42", output)
        self.assertIn("x<b>y", output)  # shown as text
        self.assertEqual(page.query_selector_all("#run-output b"), [])
        page.wait_for_selector("#device-event-rows tr:has-text('Running commands')")
        self.shot(session, "device")

        # The page's address opens it directly, here on a phone in dark mode.
        phone = self.session(color_scheme="dark", viewport={"width": 390, "height": 844})
        self.log_in(phone)
        phone.page.goto(page.url)
        phone.page.wait_for_selector("#device-state[data-online='1']")
        self.assertEqual(phone.page.text_content("#device-name"),
                         page.text_content("#device-name"))
        phone.page.wait_for_selector("#device-event-rows tr:has-text('Running commands')")
        self.shot(phone, "device-phone-dark")
        self.assertNoErrors(phone)

        agent.stop()
        page.wait_for_selector("#device-state[data-online='0']", timeout=30000)
        page.fill("#run-script", "echo nobody")
        page.click("#run-button")
        page.wait_for_selector("#run-status[data-state=error]")
        self.assertIn("Agent not connected", page.text_content("#run-status") or "")
        page.click("text=← All devices")
        page.wait_for_selector("#view-devices:not([hidden])")
        self.assertNoErrors(session)


class DeviceSessionTests(BrowserTestCase):
    """The terminal and files tabs of a device, through the relay to a real Python agent."""

    def open_device(self, session: Session, prefix: str) -> PythonAgent:
        return self.open_agent_device(session, prefix)[0]

    def test_terminal(self) -> None:
        """The terminal tab opens a shell in xterm.js through the relay: a command's output
        is shown, the terminal follows the window's size, and leaving the page closes it."""
        session = self.session()
        self.log_in(session)
        page = session.page
        agent = self.open_device(session, "term-")
        page.click("#device-tab-terminal")
        try:
            page.wait_for_selector("#terminal-status[data-state=open]", timeout=30000)
        except Exception:
            raise AssertionError(f"{page.text_content('#terminal-status')}\n"
                                 f"agent log:\n{agent.log()[-3000:]}")
        page.click("#terminal-screen")
        page.keyboard.type("echo WEB-$((6*7))")
        page.keyboard.press("Enter")
        page.wait_for_selector("#terminal-screen .xterm-rows:has-text('WEB-42')", timeout=30000)
        page.keyboard.type("stty size")
        page.keyboard.press("Enter")

        def size() -> Optional[tuple[int, int]]:
            text = page.inner_text("#terminal-screen .xterm-rows")
            found = re.findall(r"^(\d+) (\d+)\s*$", text, re.MULTILINE)
            return (int(found[-1][0]), int(found[-1][1])) if found else None

        rows, cols = wait_for(size, 15, "stty size")
        self.assertGreater(cols, 60)
        self.assertGreater(rows, 10)
        self.shot(session, "device-terminal")
        page.set_viewport_size({"width": 800, "height": 800})
        page.keyboard.type("clear; stty size")
        page.keyboard.press("Enter")
        wait_for(lambda: (size() or (0, cols))[1] < cols, 15, "a narrower terminal")

        page.click("#terminal-connect")  # Disconnect
        page.wait_for_selector("#terminal-status[data-state=closed]")
        page.click("#terminal-connect")  # Reconnect
        page.wait_for_selector("#terminal-status[data-state=open]", timeout=30000)
        page.click("text=← All devices")
        page.wait_for_selector("#view-devices:not([hidden])")
        wait_for(lambda: self.server.log().count(" ended after ") >= 2, 15, "relays ended")
        self.assertNoErrors(session)

    def test_terminal_copy_paste_and_reconnect(self) -> None:
        """The terminal pastes the clipboard as typed input (Paste button), copies a
        selection (Ctrl+Shift+C and the Copy button), and when the agent restarts it
        reconnects by itself to a new shell, the old output kept above."""
        session = self.session()
        session.context.grant_permissions(["clipboard-read", "clipboard-write"],
                                          origin=self.base)
        self.log_in(session)
        page = session.page
        agent = self.open_device(session, "termrc-")
        page.click("#device-tab-terminal")
        page.wait_for_selector("#terminal-status[data-state=open]", timeout=30000)
        wait_for_prompt(page)
        page.evaluate("() => navigator.clipboard.writeText('echo PASTED-$((3*3))')")
        page.click("#terminal-paste")
        page.wait_for_selector("#terminal-screen .xterm-rows:has-text('echo PASTED')")
        page.wait_for_function("() => document.activeElement.closest('#terminal-screen')")
        page.keyboard.press("Enter")
        output = page.locator("#terminal-screen .xterm-rows > div",
                              has_text=re.compile(r"^PASTED-9\s*$"))
        output.wait_for(timeout=30000)
        box = output.bounding_box()
        assert box is not None
        page.mouse.dblclick(box["x"] + 5, box["y"] + box["height"] / 2)
        page.keyboard.press("Control+Shift+C")
        clipboard = "() => navigator.clipboard.readText()"
        wait_for(lambda: page.evaluate(clipboard) == "PASTED-9", 10, "the copied word")
        page.evaluate("() => navigator.clipboard.writeText('')")
        page.click("#terminal-copy")
        wait_for(lambda: page.evaluate(clipboard) == "PASTED-9", 10, "the copied word")

        agent.stop()
        page.wait_for_selector("#terminal-status[data-state=reconnecting]", timeout=30000)
        self.assertIn("reconnecting in", page.text_content("#terminal-status") or "")
        agent.start()
        try:
            page.wait_for_selector("#terminal-status[data-state=open]", timeout=90000)
        except Exception:
            raise AssertionError(f"{page.text_content('#terminal-status')}\n"
                                 f"agent log:\n{agent.log()[-3000:]}")
        page.wait_for_selector("#terminal-screen .xterm-rows:has-text('[Reconnected]')")
        self.assertIn("PASTED-9", page.inner_text("#terminal-screen .xterm-rows"))
        page.click("#terminal-screen")
        page.keyboard.type("echo AGAIN-$((2*4))")
        page.keyboard.press("Enter")
        page.wait_for_selector("#terminal-screen .xterm-rows:has-text('AGAIN-8')",
                               timeout=30000)
        self.assertNoErrors(session)

    def test_files(self) -> None:
        """The files tab lists a folder, uploads a file that is then listed, downloads it
        byte-identical, renames it, makes a folder, goes into it, and deletes."""
        import tempfile

        session = self.session()
        self.log_in(session)
        page = session.page
        agent = self.open_device(session, "files-")
        folder = tempfile.mkdtemp(prefix="meshd-web-files-")
        self.addCleanup(__import__("shutil").rmtree, folder, True)
        with open(os.path.join(folder, "existing.txt"), "w") as f:
            f.write("hello")
        page.click("#device-tab-files")
        try:
            page.wait_for_selector("#files-rows tr.file", timeout=30000)
        except Exception:
            raise AssertionError(f"{page.text_content('#files-status')}\n"
                                 f"agent log:\n{agent.log()[-3000:]}")
        page.fill("#files-path", folder)
        page.press("#files-path", "Enter")
        page.wait_for_selector("#files-rows tr.file[data-name='existing.txt']")

        payload = os.urandom(200_000) + b"{" + bytes(100) + b"end"
        source = os.path.join(tempfile.mkdtemp(prefix="meshd-web-src-"), "upload.bin")
        self.addCleanup(__import__("shutil").rmtree, os.path.dirname(source), True)
        with open(source, "wb") as f:
            f.write(payload)
        page.set_input_files("#files-input", source)
        page.wait_for_selector("#files-transfers li[data-kind=upload][data-state=done]",
                               timeout=30000)
        page.wait_for_selector("#files-rows tr.file[data-name='upload.bin']")
        with open(os.path.join(folder, "upload.bin"), "rb") as f:
            self.assertEqual(f.read(), payload)

        with page.expect_download() as info:
            page.click("#files-rows tr.file[data-name='upload.bin'] .file-download")
        download = info.value
        self.assertEqual(download.suggested_filename, "upload.bin")
        with open(download.path(), "rb") as f:
            self.assertEqual(f.read(), payload)
        page.wait_for_selector("#files-transfers li[data-kind=download][data-state=done]")
        self.shot(session, "device-files")

        page.click("#files-rows tr.file[data-name='upload.bin'] .file-rename")
        page.fill("#files-rows .rename-input", "renamed.bin")
        page.press("#files-rows .rename-input", "Enter")
        page.wait_for_selector("#files-rows tr.file[data-name='renamed.bin']")
        self.assertTrue(os.path.exists(os.path.join(folder, "renamed.bin")))

        page.fill("#files-new-folder", "sub")
        page.click("#files-mkdir")
        page.click("#files-rows tr.file[data-name='sub'] .file-open")
        page.wait_for_selector("#files-empty:not([hidden])")
        self.assertEqual(page.input_value("#files-path"), os.path.join(folder, "sub"))
        page.click("#files-up")
        page.wait_for_selector("#files-rows tr.file[data-name='renamed.bin']")

        for name in ("renamed.bin", "sub"):
            page.click(f"#files-rows tr.file[data-name='{name}'] .file-delete")
            page.click("#files-confirm-delete")
            page.wait_for_selector(f"#files-rows tr.file[data-name='{name}']", state="detached")
        self.assertEqual(sorted(os.listdir(folder)), ["existing.txt"])
        self.assertNoErrors(session)


    def test_files_dropped_several_at_once(self) -> None:
        """Several files dropped on the file list are uploaded one after the other into
        the folder shown, each with a progress bar and its speed, byte-identical."""
        import shutil
        import tempfile

        session = self.session()
        self.log_in(session)
        page = session.page
        self.open_device(session, "drop-")
        folder = tempfile.mkdtemp(prefix="meshd-web-drop-")
        self.addCleanup(shutil.rmtree, folder, True)
        page.click("#device-tab-files")
        page.wait_for_selector("#files-rows tr.file", timeout=30000)
        page.fill("#files-path", folder)
        page.press("#files-path", "Enter")
        page.wait_for_selector("#files-empty:not([hidden])")
        page.evaluate("""() => {
          const data = new DataTransfer();
          const big = new Uint8Array(300000).map((_, i) => (i * 7) % 251);
          data.items.add(new File([big], "first.bin"));
          data.items.add(new File(["second file\\n"], "second.txt"));
          data.items.add(new File([new Uint8Array([123, 0, 1])], "third.bin"));
          const target = document.querySelector("#files-drop");
          target.dispatchEvent(new DragEvent("dragover", { dataTransfer: data, bubbles: true,
            cancelable: true }));
          target.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true,
            cancelable: true }));
        }""")
        for name in ("first.bin", "second.txt", "third.bin"):
            done = page.wait_for_selector(f"#files-transfers li[data-kind=upload][data-name="
                                          f"'{name}'][data-state=done]", timeout=30000)
            self.assertRegex(done.text_content() or "", r"uploaded in [0-9.]+ s \(.+/s\)")
            page.wait_for_selector(f"#files-rows tr.file[data-name='{name}']")
        with open(os.path.join(folder, "first.bin"), "rb") as f:
            self.assertEqual(f.read(), bytes((i * 7) % 251 for i in range(300000)))
        with open(os.path.join(folder, "second.txt"), "rb") as f:
            self.assertEqual(f.read(), b"second file\n")
        with open(os.path.join(folder, "third.bin"), "rb") as f:
            self.assertEqual(f.read(), b"{\x00\x01")
        self.assertFalse(page.is_visible("#files-drop.dropping"))
        self.assertNoErrors(session)


def wait_for_prompt(page: Any) -> None:
    """Wait for the shell's prompt in the terminal (the shell shows it after a first
    key: Enter is pressed)."""
    page.click("#terminal-screen")
    page.keyboard.press("Enter")
    try:
        page.wait_for_function(
            "() => /[$#] *$/.test(document.querySelector('#terminal-screen .xterm-rows')"
            ".innerText.trim())", timeout=30000)
    except Exception:
        raise AssertionError("no prompt: " + repr(page.inner_text("#terminal-screen .xterm-rows")))


# A simulated Intel AMT device over CIRA (tests/cira_client.py) in a process of its own, as
# the browser tests run without a reactor: it writes its node id, whether it is logged in,
# and the power states its WSMAN service was asked for to a JSON file.
CIRA_DEVICE_SCRIPT = r"""
import json, os, sys
from twisted.internet import reactor, task
from meshd.mps.cira import cira_node_id
from tests.cira_client import AmtWsman, CiraDevice, client_context, connect_device

port, user, password, amt_password, out = sys.argv[1:6]
amt = AmtWsman("admin", amt_password)
device = CiraDevice(user, password.encode(), services={16992: amt.service})
device.ready.addErrback(lambda failure: print(failure, file=sys.stderr))

def write():
    with open(out + ".tmp", "w") as f:
        json.dump({"node": cira_node_id("", device.system_id), "ready": device.ready.called,
                   "power": amt.power_states}, f)
    os.replace(out + ".tmp", out)

connect_device(reactor, "127.0.0.1", int(port), device, client_context(False))
task.LoopingCall(write).start(0.1)
device.closed.addBoth(lambda _: reactor.stop())
reactor.run()
"""
AMT_PASSWORD = "P@ssw0rd!"


class AmtPowerTests(BrowserTestCase):
    """Intel AMT power actions on a device's page, with a simulated device over CIRA."""

    def cira_device(self, meshid: str) -> tuple[str, Callable[[], dict[str, Any]]]:
        """Connect a simulated AMT device to the group: (node id, its state reader)."""
        import subprocess
        import tempfile

        from tests.server import server_env

        result = admin(self.server.datapath, "ciracredentials", meshid)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = dict(line.split(" ", 2)[1:] for line in result.stdout.splitlines()[:2])
        folder = tempfile.mkdtemp(prefix="meshd-cira-")
        out = os.path.join(folder, "device.json")
        process = subprocess.Popen(
            [sys.executable, "-c", CIRA_DEVICE_SCRIPT, str(self.server.mpsport), lines["user"],
             lines["password"], AMT_PASSWORD, out],
            cwd=ROOT, env=server_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(folder, "stderr"), "w"))

        def stop() -> None:
            process.terminate()
            process.wait(10)
        self.addCleanup(stop)

        def state() -> dict[str, Any]:
            try:
                with open(out, encoding="utf-8") as f:
                    return dict(json.load(f))
            except (OSError, ValueError):
                return {}

        def ready() -> bool:
            if process.poll() is not None:
                with open(os.path.join(folder, "stderr"), encoding="utf-8") as f:
                    raise AssertionError(f"the CIRA device ended: {f.read()[-3000:]}")
            return bool(state().get("ready"))
        wait_for(ready, 30, "the CIRA device to log in")
        return state()["node"], state

    def test_power_on_off_reset_and_rights(self) -> None:
        """An administrator opens a CIRA device's page: the facts say it is connected over
        CIRA; Power on reaches the device as PowerState 2 and the outcome shows as a toast
        and in the device's events; Power off asks first (Escape cancels, nothing is
        sent), Reset after confirming reaches it as 10.  A user with remote control only
        sees no power buttons; one who may also wake devices sees Power on only."""
        session = self.session()
        self.log_in(session)
        page = session.page
        tag = uuid.uuid4().hex[:6]
        created = page.evaluate("(name) => meshd.client.request('createmesh', "
                                "{meshname: name, meshtype: 1})", "amt-" + tag)
        self.assertEqual(created.get("result"), "ok", created)
        meshid = created["meshid"]
        nodeid, device = self.cira_device(meshid)
        changed = page.evaluate("([nodeid, pass]) => meshd.client.call('changedevice', "
                                "{nodeid, intelamt: {user: 'admin', pass}})",
                                [nodeid, AMT_PASSWORD])
        self.assertEqual(changed.get("result"), "ok", changed)

        page.goto(f"{self.base}/#/device/{nodeid}")
        page.wait_for_selector("#device-state[data-online='1']")
        page.wait_for_selector("#device-facts dd[data-fact='Intel AMT']")
        self.assertEqual(page.text_content("#device-facts dd[data-fact='Intel AMT']"),
                         "Connected over CIRA")
        self.assertEqual(page.text_content("#device-facts dd[data-fact='State']"),
                         "Online (Intel AMT CIRA)")
        self.assertEqual([b.text_content() for b in page.query_selector_all(
            "#amt-power button")], ["Power on", "Power off", "Reset"])

        page.click("#amt-on")
        toast = page.wait_for_selector(".toast-ok:has-text('Intel AMT power on')",
                                       timeout=30000)
        self.assertEqual(toast.text_content(),
                         "Intel AMT power on: Completed with No Error (ReturnValue 0)")
        wait_for(lambda: device().get("power") == [[2, "admin"]], 10, "power state 2")
        page.wait_for_selector("#device-event-rows tr[data-action='amtpower']"
                               ":has-text('Intel AMT power on')")
        self.assertIn("Completed", page.text_content("#amt-power-status") or "")
        self.shot(session, "device-amt")

        # Off asks first; Escape (the dialog's cancel) sends nothing.
        page.focus("#amt-off")
        page.keyboard.press("Enter")
        page.wait_for_selector("#device-dialog[open] #amt-confirm")
        self.assertIn("Power off", page.text_content("#device-dialog h2") or "")
        page.keyboard.press("Escape")
        page.wait_for_selector("#device-dialog:not([open])", state="attached")
        page.click("#amt-reset")
        page.click("#device-dialog[open] #amt-confirm")
        page.wait_for_selector(".toast-ok:has-text('Intel AMT reset')", timeout=30000)
        wait_for(lambda: device().get("power") == [[2, "admin"], [10, "admin"]], 10,
                 "power state 10")
        self.assertNoErrors(session)

        # Users with fewer rights on the group.
        for name, rights, wanted in (("amtview" + tag, 0x8, []),
                                     ("amtwake" + tag, 0x8 | 0x40, ["Power on"])):
            make_user(self.server, name, "User-Pass-123")
            granted = page.evaluate("([meshid, name, rights]) => meshd.client.request("
                                    "'addmeshuser', {meshid, usernames: [name], "
                                    "meshadmin: rights})", [meshid, name, rights])
            self.assertIn("Added user", str(granted.get("result")), granted)
            other = self.session()
            self.log_in(other, name, "User-Pass-123")
            other.page.goto(f"{self.base}/#/device/{nodeid}")
            other.page.wait_for_selector("#device-facts dd[data-fact='Intel AMT']")
            other.page.wait_for_timeout(300)
            self.assertEqual([b.text_content() for b in other.page.query_selector_all(
                "#amt-power button")], wanted, name)
            self.assertEqual(other.page.is_visible("#amt-power"), bool(wanted), name)
            self.assertNoErrors(other)
        self.assertEqual(len(device()["power"]), 2)



def make_user(server: ServerProcess, name: str, password: str = "User-Pass-123") -> None:
    result = admin(server.datapath, "createaccount", name, "--pass", password)
    if result.returncode != 0:
        raise AssertionError(result.stderr)


class UsersTests(BrowserTestCase):
    """The Users view of site administrators."""

    def test_add_and_delete_user(self) -> None:
        """An administrator adds a user; that user logs in, sees no Users view; deleting
        the user removes the row live and ends the user's session."""
        admin_session = self.session()
        self.log_in(admin_session)
        page = admin_session.page
        page.click("#nav-users")
        page.wait_for_selector("#user-rows tr[data-name='admin']")
        self.assertIn("you", page.text_content("#user-rows tr[data-name='admin']") or "")
        name = "u" + uuid.uuid4().hex[:6]

        page.click("#add-user")
        page.fill("#new-user-name", "bad name")
        page.fill("#new-user-password", "Some-Pass-1")
        page.click("#add-user-submit")
        page.wait_for_selector("#add-user-error:has-text('may not contain')")
        page.fill("#new-user-name", "admin")
        page.click("#add-user-submit")
        page.wait_for_selector("#add-user-error:has-text('User already exists')")
        page.fill("#new-user-name", name)
        page.fill("#new-user-email", f"{name}@example.com")
        page.click("#add-user-submit")
        row = f"#user-rows tr[data-name='{name}']"
        page.wait_for_selector(row)
        self.assertFalse(page.is_visible("#user-dialog"))
        self.assertIn(f"{name}@example.com", page.text_content(row) or "")
        self.assertIn("Standard user", page.text_content(row) or "")
        self.shot(admin_session, "users")

        user_session = self.session()
        self.log_in(user_session, name, "Some-Pass-1")
        upage = user_session.page
        self.assertFalse(upage.is_visible("#nav-users"))
        upage.goto(self.base + "/#/users")
        upage.wait_for_selector("#connection[data-state=open]")
        self.assertTrue(upage.is_visible("#view-devices"))
        self.assertFalse(upage.is_visible("#view-users"))
        upage.click("#nav-account")
        self.assertIn("Standard user", upage.text_content("#account-facts") or "")

        page.click(f"{row} .delete-user")
        page.click("#confirm-delete-user")
        page.wait_for_selector(row, state="detached")
        upage.wait_for_selector("input[name=username]", timeout=15000)
        self.assertNoErrors(admin_session)
        self.assertNoErrors(user_session)

    def test_edit_user(self) -> None:
        """An administrator changes a user's e-mail and makes them site administrator
        (the row follows live, and the user's open page gains the Users view), then
        takes it back; their own site rights cannot be changed from the dialog."""
        session = self.session()
        self.log_in(session)
        page = session.page
        name = "e" + uuid.uuid4().hex[:6]
        make_user(self.server, name, "Edit-Pass-3")
        other = self.session()
        self.log_in(other, name, "Edit-Pass-3")
        self.assertFalse(other.page.is_visible("#nav-users"))
        page.click("#nav-users")
        row = f"#user-rows tr[data-name='{name}']"
        page.click(f"{row} .edit-user")
        page.fill("#edit-user-email", "not-an-address")
        page.evaluate("document.querySelector('#edit-user-email').type = 'text'")
        page.click("#edit-user-submit")
        page.wait_for_selector("#edit-user-error:has-text('Invalid email')")
        page.fill("#edit-user-email", f"{name}@example.org")
        page.check("#edit-user-admin")
        page.click("#edit-user-submit")
        page.wait_for_selector(f"{row} td.rights:text-is('Site administrator')")
        self.assertFalse(page.is_visible("#user-dialog"))
        self.assertIn(f"{name}@example.org", page.text_content(row) or "")
        other.page.wait_for_selector("#nav-users", state="visible", timeout=15000)

        page.click(f"{row} .edit-user")
        self.assertTrue(page.is_checked("#edit-user-admin"))
        page.uncheck("#edit-user-admin")
        page.click("#edit-user-submit")
        page.wait_for_selector(f"{row} td.rights:text-is('Standard user')")
        other.page.wait_for_selector("#nav-users", state="hidden", timeout=15000)

        page.click("#user-rows tr[data-name='admin'] .edit-user")
        self.assertTrue(page.is_disabled("#edit-user-admin"))
        page.keyboard.press("Escape")
        self.assertNoErrors(session)
        self.assertNoErrors(other)

    def test_add_site_administrator(self) -> None:
        """A user added as site administrator gets the Users view."""
        session = self.session()
        self.log_in(session)
        page = session.page
        page.goto(self.base + "/#/users")
        page.wait_for_selector("#user-rows tr[data-name='admin']")
        name = "a" + uuid.uuid4().hex[:6]
        page.click("#add-user")
        page.fill("#new-user-name", name)
        page.fill("#new-user-password", "Admin-Pass-2")
        page.check("#new-user-admin")
        page.click("#add-user-submit")
        page.wait_for_selector(f"#user-rows tr[data-name='{name}'] td.rights:text-is("
                               "'Site administrator')")
        other = self.session()
        self.log_in(other, name, "Admin-Pass-2")
        other.page.click("#nav-users")
        other.page.wait_for_selector(f"#user-rows tr[data-name='{name}']")
        self.assertNoErrors(session)
        self.assertNoErrors(other)


class GroupRightsTests(BrowserTestCase):
    """Who may use a device group, set in the group's Users dialog."""

    def add_user(self, session: Session, name: str, password: str) -> None:
        page = session.page
        page.click("#nav-users")
        page.wait_for_selector("#user-rows tr[data-name='admin']")
        page.click("#add-user")
        page.fill("#new-user-name", name)
        page.fill("#new-user-password", password)
        page.click("#add-user-submit")
        page.wait_for_selector(f"#user-rows tr[data-name='{name}']")
        page.click("#nav-devices")

    def test_user_limited_to_one_group(self) -> None:
        """Add a user with rights limited to one group and log in as them to see only that
        group: the administrator makes two groups with a real agent each and a user, gives
        the user chosen rights on one group in its Users dialog; the user, in a second
        browser, sees that group and its device only.  Removing the user from the group
        takes the group away from the user's open page live."""
        admin_session = self.session()
        self.log_in(admin_session)
        page = admin_session.page
        tag = uuid.uuid4().hex[:6]
        mine, other = "mine-" + tag, "other-" + tag
        mine_id = self.create_group(admin_session, mine)
        other_id = self.create_group(admin_session, other)
        agents = []
        for meshid in (mine_id, other_id):
            msh = request(self.server, "GET", f"/meshsettings?id={meshid.split('/')[-1]}").body
            agent = PythonAgent(msh).start()
            self.addCleanup(agent.cleanup)
            agents.append(agent)
        name, password = "limited" + tag, "Limited-Pass-7"
        self.add_user(admin_session, name, password)

        group = f"section.group[data-meshid='{mine_id}']"
        page.click(f"{group} .group-users")
        page.wait_for_selector("#member-rows tr.member[data-name='admin']")
        self.assertIn("Full administrator", page.text_content(
            "#member-rows tr.member[data-name='admin']") or "")
        self.assertEqual(page.query_selector_all(
            "#member-rows tr.member[data-name='admin'] .remove-member"), [])
        page.fill("#member-name", "nobody-" + tag)
        page.click("#member-add")
        page.wait_for_selector("#member-error:has-text('There is no user')")
        # View only, then give the terminal back: rights chosen box by box.
        page.select_option("#member-preset", "view")
        self.assertTrue(page.is_checked("#right-200"))
        self.assertTrue(page.is_checked("#right-100"))
        page.uncheck("#right-200")
        self.assertEqual(page.input_value("#member-preset"), "custom")
        page.fill("#member-name", name)
        page.click("#member-add")
        row = f"#member-rows tr.member[data-name='{name}']"
        page.wait_for_selector(row)
        self.assertEqual(page.text_content(f"{row} .rights"),
                         "Remote control, Remote view only, No files, Device details")
        self.assertEqual(page.get_attribute(f"{row} .rights", "title"), "0x100508")
        self.shot(admin_session, "group-users")
        page.click("#members-close")

        user_session = self.session()
        self.log_in(user_session, name, password)
        upage = user_session.page
        ugroup = f"section.group[data-meshid='{mine_id}']"
        try:
            upage.wait_for_selector(f"{ugroup} tr.device[data-online='1']", timeout=90000)
            page.wait_for_selector(f"section.group[data-meshid='{other_id}'] "
                                   "tr.device[data-online='1']", timeout=90000)
        except Exception:
            raise AssertionError("agent logs:\n" + "\n".join(a.log()[-2000:] for a in agents))
        self.assertEqual(upage.query_selector_all(f"section.group[data-meshid='{other_id}']"),
                         [])
        self.assertEqual(len(upage.query_selector_all("section.group")), 1)
        self.assertEqual(len(upage.query_selector_all("tr.device")), 1)
        self.assertIn("1 group, 1 device", upage.text_content("#device-summary") or "")
        self.assertNotIn(other, upage.text_content("#groups") or "")
        self.assertFalse(upage.is_visible("#nav-users"))
        # Without manage-users or full rights on the group, those buttons are not offered.
        self.assertEqual(upage.query_selector_all(f"{ugroup} .group-users"), [])
        self.assertEqual(upage.query_selector_all(f"{ugroup} .delete-group"), [])
        self.shot(user_session, "devices-limited-user")

        page.click(f"{group} .group-users")
        page.click(f"{row} .remove-member")
        page.wait_for_selector(row, state="detached")
        upage.wait_for_selector(ugroup, state="detached", timeout=15000)
        self.assertIn("No device groups", upage.text_content("#device-summary") or "")
        self.assertNoErrors(admin_session)
        self.assertNoErrors(user_session)


class AccountTests(BrowserTestCase):
    """My account: password, two-factor authentication, recent logins."""

    def test_change_password(self) -> None:
        """A wrong current password is refused with a message; the right one changes it
        and the new password logs in."""
        name = "p" + uuid.uuid4().hex[:6]
        make_user(self.server, name, "Old-Pass-123")
        session = self.session()
        self.log_in(session, name, "Old-Pass-123")
        page = session.page
        page.click("#nav-account")
        page.fill("#current-password", "Wrong-Pass-1")
        page.fill("#new-password", "New-Pass-456")
        page.fill("#confirm-password", "New-Pass-45")
        page.click("#change-password")
        page.wait_for_selector("#password-message:has-text('differ')")
        page.fill("#confirm-password", "New-Pass-456")
        page.click("#change-password")
        page.wait_for_selector("#password-message:has-text('Current password not correct')")
        page.fill("#current-password", "Old-Pass-123")
        page.click("#change-password")
        page.wait_for_selector("#password-message:has-text('Password changed')")
        self.assertEqual(page.input_value("#new-password"), "")
        self.assertNoErrors(session)

        page.click("#logout")
        page.wait_for_selector("input[name=username]")
        self.log_in(session, name, "New-Pass-456")
        self.assertEqual(page.text_content("#current-user"), name)
        self.assertNoErrors(session)

    def test_previous_logins(self) -> None:
        """My account lists the account's logins and failed logins, newest first: log in,
        a failed attempt with a wrong password, log in again."""
        name = "l" + uuid.uuid4().hex[:6]
        make_user(self.server, name, "Login-Pass-123")
        session = self.session()
        page = session.page
        self.log_in(session, name, "Login-Pass-123")
        page.click("#logout")
        page.wait_for_selector("input[name=username]")
        self.assertEqual(login(self.server, name, "not the password").status, 401)
        self.log_in(session, name, "Login-Pass-123")
        page.click("#nav-account")
        page.wait_for_selector("#login-rows tr.login:nth-child(3)")
        rows = page.eval_on_selector_all("#login-rows tr", "rows => rows.map(row => "
                                         "[...row.cells].map(cell => cell.textContent))")
        self.assertEqual([row[1] for row in rows], ["Logged in", "Wrong password", "Logged in"])
        self.assertEqual([row[2] for row in rows], ["127.0.0.1"] * 3)
        self.assertTrue(rows[0][3].startswith("Chrome"), rows[0])
        self.assertTrue(all(row[0] for row in rows), rows)
        self.assertEqual(page.get_attribute("#login-rows tr:nth-child(2)", "data-failed"), "1")
        self.assertEqual(page.get_attribute("#login-rows tr:nth-child(1)", "data-failed"), "0")
        self.assertTrue(page.is_hidden("#logins-status"))
        page.focus("#logins-refresh")
        page.keyboard.press("Enter")
        page.wait_for_timeout(300)
        self.assertEqual(page.locator("#login-rows tr").count(), 3)
        self.shot(session, "account-logins")
        self.assertNoErrors(session)

    def test_totp_enrolment_and_login(self) -> None:
        """TOTP enrolment shows the key; a code computed here turns it on; backup codes are
        shown; the next login asks for a code and accepts one computed here."""
        from meshd.control.twofactor import totp

        name = "t" + uuid.uuid4().hex[:6]
        make_user(self.server, name, "Totp-Pass-123")
        session = self.session()
        self.log_in(session, name, "Totp-Pass-123")
        page = session.page
        page.click("#nav-account")
        page.wait_for_selector("#totp-state[data-on='0']")
        page.click("#totp-start")
        page.wait_for_selector("#totp-url")
        url = page.text_content("#totp-url") or ""
        # The key as a QR code (SVG drawn by the vendored qrcode-generator), shown at a
        # scannable size, with the text key and address kept beside it.
        qr = page.wait_for_selector("#totp-qr svg.qr-code path.qr-dark")
        modules = int(page.get_attribute("#totp-qr svg.qr-code", "data-modules") or 0)
        self.assertGreaterEqual(modules, 21)
        self.assertEqual((modules - 21) % 4, 0)  # a QR version's size: 21 + 4·(version-1)
        self.assertTrue((qr.get_attribute("d") or "").startswith("M4 4h7v1h-7z"))  # finder
        box = page.query_selector("#totp-qr svg.qr-code").bounding_box()
        self.assertIsNotNone(box)
        assert box is not None
        self.assertGreaterEqual(box["width"], 120)
        self.assertAlmostEqual(box["width"], box["height"], delta=1)
        self.assertTrue(url.startswith("otpauth://totp/"), url)
        secret = re.search(r"secret=([A-Z2-7]+)", url)
        assert secret is not None
        self.assertEqual((page.text_content("#totp-secret") or "").replace(" ", ""),
                         secret.group(1))
        self.shot(session, "account-2fa-setup")
        page.fill("#totp-code", "000000" if totp(secret.group(1), int(time.time() // 30))
                  != "000000" else "111111")
        page.click("#totp-verify")
        page.wait_for_selector("#totp-message:has-text('Invalid token')")
        page.fill("#totp-code", totp(secret.group(1), int(time.time() // 30)))
        page.click("#totp-verify")
        page.wait_for_selector("#totp-state[data-on='1']")
        page.click("#backup-codes-new")
        page.wait_for_selector("#backup-codes li")
        self.assertEqual(len(page.query_selector_all("#backup-codes li")), 10)
        self.shot(session, "account")
        self.assertNoErrors(session)

        page.click("#logout")
        page.wait_for_selector("input[name=username]")
        page.fill("input[name=username]", name)
        page.fill("input[name=password]", "Totp-Pass-123")
        page.click("button[type=submit]")
        page.wait_for_selector("input[name=token]")
        page.fill("input[name=password]", "Totp-Pass-123")
        page.fill("input[name=token]", totp(secret.group(1), int(time.time() // 30) + 1))
        page.click("button[type=submit]")
        page.wait_for_selector("#connection[data-state=open]")
        self.assertEqual(page.text_content("#current-user"), name)
        # The login form answers 401 while it asks for the code; nothing else went wrong.
        self.assertEqual([e for e in session.errors if "/login" not in e], [])

        page.click("#nav-account")
        page.wait_for_selector("#totp-state[data-on='1']")
        page.click("#totp-clear")
        page.wait_for_selector("#totp-state[data-on='0']")


class ForcedTwoFactorTests(BrowserTestCase):
    """settings.force2factor: an account without a second factor sees only enrolment,
    with an enrolment code an administrator issues in the Users view."""

    def setUp(self) -> None:
        self.browser = browser()
        datapath = fresh_datapath()
        config = os.path.join(datapath, "meshd.json")
        with open(config, "w", encoding="utf-8") as f:
            json.dump({"settings": {"force2factor": True}}, f)
        self.server = ServerProcess(datapath, extra=["--config", config]).start()
        self.addCleanup(self.server.stop)
        self.base = f"https://127.0.0.1:{self.server.port}"

    def log_in_to_enrol(self, session: Session, name: str, password: str) -> None:
        """Log in an account that has no second factor yet: the enrolment banner."""
        page = session.page
        page.goto(self.base + "/")
        page.fill("input[name=username]", name)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        try:
            page.wait_for_selector("#connection[data-state=open]")
        except Exception:
            raise AssertionError(f"{page.url} {session.errors} {page.content()[-1500:]}")
        page.wait_for_selector("#enrol-required")

    def enrol(self, session: Session, password: str, code: str) -> str:
        """Start enrolment on the account page and fill it in (not sent); the secret."""
        page = session.page
        page.click("#totp-start")
        page.wait_for_selector("#totp-url")
        secret = re.search(r"secret=([A-Z2-7]+)", page.text_content("#totp-url") or "")
        assert secret is not None
        page.fill("#totp-password", password)
        page.fill("#totp-enrolcode", code)
        return secret.group(1)

    def test_enrolment_with_a_code_from_an_administrator(self) -> None:
        """The administrator (enrolled with a code from meshd-admin) issues a code for a
        user in the Users view; the user sees only the banner and the account page, is
        refused with a wrong code, enrols with password, code and an app code, lands in
        the normal app with the device it may see, and later logs in with an app code."""
        from meshd.control.twofactor import totp

        datapath = self.server.datapath
        name, password = "enrolee", "Enrolee-Pass-7"
        for account, pw, rights in (("admin", PASSWORD, ["--siteadmin"]),
                                    (name, password, [])):
            result = admin(datapath, "createaccount", account, "--pass", pw, *rights)
            self.assertEqual(result.returncode, 0, result.stderr)
        result = admin(datapath, "enrolcode", "admin")
        self.assertEqual(result.returncode, 0, result.stderr)
        admin_code = result.stdout.strip()
        self.assertRegex(admin_code, r"^[A-Z2-9]{4}(-[A-Z2-9]{4}){3}$")

        # The administrator enrols first, with the code meshd-admin issued (no other
        # administrator could issue it one).
        admin_session = self.session()
        page = admin_session.page
        self.log_in_to_enrol(admin_session, "admin", PASSWORD)
        secret = self.enrol(admin_session, PASSWORD, admin_code.lower().replace("-", " "))
        page.fill("#totp-code", totp(secret, int(time.time() // 30)))
        page.click("#totp-verify")
        try:
            page.wait_for_selector("#device-summary:not(:text('Loading'))", timeout=15000)
        except Exception:
            raise AssertionError(f"{page.url} {admin_session.errors} " + str(page.evaluate(
                "() => [document.querySelector('#enrol-required').textContent, "
                "document.querySelector('#two-factor').textContent]")))
        self.assertTrue(page.is_hidden("#enrol-required"))
        self.assertTrue(page.is_visible("#nav-users"))

        # A group with a device, for the user.
        meshid = self.create_group(admin_session, "enrolled-group")
        import_devices(datapath, device_records(meshid, ["enrolled-device"]))
        group = f"section.group[data-meshid='{meshid}']"
        page.click(f"{group} .group-users")
        page.fill("#member-name", name)
        page.click("#member-add")
        page.wait_for_selector(f"#member-rows tr.member[data-name='{name}']")
        page.click("#members-close")

        # The enrolment code, issued in the Users view and shown once.
        page.click("#nav-users")
        row = f"#user-rows tr[data-name='{name}']"
        page.wait_for_selector(row)
        self.assertEqual(page.query_selector_all("#user-rows tr[data-name='admin'] .enrol-code"),
                         [])
        page.focus(f"{row} .enrol-code")
        page.keyboard.press("Enter")
        page.wait_for_selector("#user-dialog #enrolcode-issue")
        page.keyboard.press("Enter")  # the Issue button has the focus
        code = (page.wait_for_selector("#enrolcode-value").text_content() or "").strip()
        self.assertRegex(code, r"^[A-Z2-9]{4}(-[A-Z2-9]{4}){3}$")
        self.assertIn("in 24 hours", page.text_content("#enrolcode-expire") or "")
        self.assertTrue(page.is_hidden("#enrolcode-issue"))
        self.shot(admin_session, "users-enrolcode")
        page.click("#enrolcode-close")
        self.assertFalse(page.is_visible("#user-dialog"))

        # The user: only the banner and the account page until enrolled.
        user_session = self.session()
        upage = user_session.page
        self.log_in_to_enrol(user_session, name, password)
        banner = upage.text_content("#enrol-required") or ""
        self.assertIn("Two-factor authentication is required", banner)
        self.assertIn("authenticator app", banner)
        self.assertIn("enrolment code", banner)
        self.assertTrue(upage.is_visible("#view-account"))
        self.assertTrue(upage.is_visible("#nav-account"))
        for hidden in ("#nav-devices", "#nav-events", "#nav-users", "#view-devices",
                       "#password-form", "#logins-card"):
            self.assertTrue(upage.is_hidden(hidden), hidden)
        upage.goto(self.base + "/#/devices")
        upage.wait_for_selector("#connection[data-state=open]")
        upage.wait_for_selector("#enrol-required")
        self.assertTrue(upage.is_visible("#view-account"))
        self.assertTrue(upage.is_hidden("#view-devices"))
        self.assertIn("requires it", upage.text_content("#totp-state") or "")
        user_secret = self.enrol(user_session, password, "ABCD-EFGH-JKLM-NPQR")
        self.assertNotEqual(code, "ABCD-EFGH-JKLM-NPQR")
        upage.fill("#totp-code", totp(user_secret, int(time.time() // 30)))
        upage.click("#totp-verify")
        upage.wait_for_selector("#totp-message:has-text('Invalid enrolment code')")
        self.assertIn("ask an administrator", upage.text_content("#totp-message") or "")
        upage.fill("#totp-enrolcode", "too short")
        upage.click("#totp-verify")
        upage.wait_for_selector("#totp-message:has-text('16 letters and digits')")
        upage.fill("#totp-enrolcode", code)
        upage.fill("#totp-password", "Not-The-Password-1")
        upage.click("#totp-verify")
        upage.wait_for_selector("#totp-message:has-text('Invalid password')")
        self.shot(user_session, "account-2fa-enrolment")
        upage.fill("#totp-password", password)
        upage.fill("#totp-code", totp(user_secret, int(time.time() // 30)))
        upage.click("#totp-verify")
        device = f"{group} tr.device[data-name='enrolled-device']"
        upage.wait_for_selector(device, timeout=15000)
        self.assertTrue(upage.url.endswith("#/devices"), upage.url)
        self.assertTrue(upage.is_hidden("#enrol-required"))
        self.assertTrue(upage.is_visible("#nav-devices"))
        self.assertIn("1 group, 1 device", upage.text_content("#device-summary") or "")
        upage.click("#nav-account")
        upage.wait_for_selector("#totp-state[data-on='1']")
        self.assertTrue(upage.is_visible("#password-form"))
        self.assertEqual(upage.query_selector_all("#totp-clear"), [])
        self.assertNoErrors(user_session)

        # The enrolment code worked once; logging in now needs an app code.
        upage.click("#logout")
        upage.wait_for_selector("input[name=username]")
        upage.fill("input[name=username]", name)
        upage.fill("input[name=password]", password)
        upage.click("button[type=submit]")
        upage.wait_for_selector("input[name=token]")
        upage.fill("input[name=password]", password)
        upage.fill("input[name=token]", totp(user_secret, int(time.time() // 30) + 1))
        upage.click("button[type=submit]")
        upage.wait_for_selector("#connection[data-state=open]")
        upage.wait_for_selector(device)
        self.assertEqual(upage.text_content("#current-user"), name)
        self.assertTrue(upage.is_hidden("#enrol-required"))
        # The login form answers 401 while it asks for the code; nothing else went wrong.
        self.assertEqual([e for e in user_session.errors if "/login" not in e], [])
        self.assertNoErrors(admin_session)


# -- a large fleet -----------------------------------------------------------------------

FLEET = 5000


OS_NAMES = ("Debian GNU/Linux 12 (bookworm)", "Ubuntu 24.04 LTS", "Windows 11 Pro")


def device_records(meshid: str, names: list[str], first: int = 0) -> list[dict[str, Any]]:
    """Agent device records of one group named ``names``, as the agent service writes
    them (the n-th has the address 10.x.y.z made of ``first + n``)."""
    import base64
    import hashlib

    records = []
    for i, name in enumerate(names):
        n = first + i
        digest = hashlib.sha384(f"{meshid}/{name}".encode()).digest()
        node_id = "node//" + base64.b64encode(digest).decode().replace("+", "@").replace(
            "/", "$")
        records.append({
            "_id": node_id, "type": "node", "mtype": 2, "meshid": meshid, "domain": "",
            "icon": 1, "name": name, "host": f"{name}.example.net",
            "ip": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "osdesc": OS_NAMES[n % 3],
            "agent": {"id": 6, "ver": 0, "caps": 15, "core": "Python core 0.3"}})
    return records


def fleet_records(meshid: str, count: int, prefix: str = "fleet") -> list[dict[str, Any]]:
    """``count`` agent device records of one group, named ``<prefix>-00000`` on."""
    return device_records(meshid, [f"{prefix}-{n:05d}" for n in range(count)])


def import_devices(datapath: str, records: list[dict[str, Any]]) -> None:
    """Write device records into a (running) server's store with ``meshd-admin dbimport``."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".db", delete=False) as f:
        for record in records:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
    try:
        result = admin(datapath, "dbimport", f.name, "--merge")
    finally:
        os.unlink(f.name)
    if result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)


def own_server() -> ServerProcess:
    """A new meshd with the site administrator ``admin``, for tests that fill its store."""
    import atexit

    server = ServerProcess(fresh_datapath()).start()
    atexit.register(server.stop)
    result = admin(server.datapath, "createaccount", "admin", "--pass", PASSWORD, "--siteadmin")
    if result.returncode != 0:
        server.stop()
        raise RuntimeError(result.stderr)
    return server


class LargeFleetTests(BrowserTestCase):
    """5000 devices in one group, on a server of their own (the shared one stays small)."""

    def setUp(self) -> None:
        self.browser = browser()
        self.server = own_server()
        self.addCleanup(self.server.stop)
        self.base = f"https://127.0.0.1:{self.server.port}"

    def test_5000_devices_render_filter_and_stay_live(self) -> None:
        """With 5000 devices the list shows them all (counts, first and last rows, only
        the rows in view in the DOM), arrow keys reach rows not drawn yet, filtering by a
        name finds exactly that device, sorting reverses the list, and a real agent
        coming online and going offline among them updates the list live."""
        session = self.session()
        self.log_in(session)
        page = session.page
        meshid = self.create_group(session, "fleet")
        import_devices(self.server.datapath, fleet_records(meshid, FLEET))
        page.reload()
        group = f"section.group[data-meshid='{meshid}']"
        page.wait_for_selector(f"#device-summary:has-text('1 group, {FLEET} devices, 0 online')",
                               timeout=60000)
        self.assertEqual(page.text_content(f"{group} .counts"), f"{FLEET} devices · 0 online")
        page.wait_for_selector(f"{group} tr.device[data-name='fleet-00000']")
        drawn = len(page.query_selector_all(f"{group} tr.device"))
        self.assertGreater(drawn, 10)
        self.assertLess(drawn, 200)  # the rows in view and a few more, not 5000
        self.assertIn("Debian GNU/Linux 12", page.text_content(
            f"{group} tr.device[data-name='fleet-00000']") or "")

        # The list is as long as 5000 rows: its end shows the last devices.
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_selector(f"{group} tr.device[data-name='fleet-04999']")
        self.assertEqual(page.query_selector_all(f"{group} tr.device[data-name='fleet-00000']"),
                         [])
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_selector(f"{group} tr.device[data-name='fleet-00000']")

        # Keyboard: from the first device, End and arrow keys move through the whole list.
        page.focus(f"{group} tr.device[data-name='fleet-00000'] a.device-link")
        page.keyboard.press("ArrowDown")
        self.assertEqual(page.evaluate("document.activeElement.textContent"), "fleet-00001")
        page.keyboard.press("End")
        self.assertEqual(page.evaluate("document.activeElement.textContent"), "fleet-04999")
        page.keyboard.press("ArrowUp")
        self.assertEqual(page.evaluate("document.activeElement.textContent"), "fleet-04998")
        page.keyboard.press("Home")
        self.assertEqual(page.evaluate("document.activeElement.textContent"), "fleet-00000")

        # Filtering by a name finds exactly that device; by an address as well.
        page.fill("#device-filter", "fleet-04242")
        page.wait_for_selector(f"#device-summary:has-text('{FLEET} devices, 0 online · 1 shown')")
        rows = page.query_selector_all(f"{group} tr.device")
        self.assertEqual([row.get_attribute("data-name") for row in rows], ["fleet-04242"])
        page.fill("#device-filter", "10.0.16.146 debian")
        page.wait_for_selector("#device-summary:has-text('· 1 shown')")
        rows = page.query_selector_all(f"{group} tr.device")
        self.assertEqual([row.get_attribute("data-name") for row in rows], ["fleet-04242"])
        page.fill("#device-filter", "no-such-device")
        page.wait_for_selector(f"{group} p.empty:has-text('No device matches the filter')")
        page.fill("#device-filter", "")
        page.wait_for_selector(f"{group} tr.device[data-name='fleet-00000']")

        # Sorting by name the other way round puts the last device first.
        page.click(f"{group} button.sort[data-sort='name']")
        page.wait_for_selector(f"{group} th[aria-sort='descending'] button[data-sort='name']")
        page.wait_for_function(
            "(group) => document.querySelector(group + ' tr.device').dataset.name === "
            "'fleet-04999'", arg=group)
        page.click(f"{group} button.sort[data-sort='name']")
        page.wait_for_selector(f"{group} th[aria-sort='ascending'] button[data-sort='name']")

        # A real agent joins the group: it appears and comes online live among 5000.
        msh = request(self.server, "GET", f"/meshsettings?id={meshid.split('/')[-1]}").body
        agent = PythonAgent(msh).start()
        self.addCleanup(agent.cleanup)
        try:
            page.wait_for_selector(f"#device-summary:has-text('{FLEET + 1} devices, 1 online')",
                                   timeout=90000)
        except Exception:
            raise AssertionError(f"agent log:\n{agent.log()[-3000:]}")
        page.wait_for_selector(".toast:has-text('connected')")
        page.select_option("#device-state-filter", "online")
        row = page.wait_for_selector(f"{group} tr.device[data-online='1']")
        nodeid, name = row.get_attribute("data-nodeid"), row.get_attribute("data-name")
        self.assertEqual(len(page.query_selector_all(f"{group} tr.device")), 1)
        page.select_option("#device-state-filter", "all")
        page.fill("#device-filter", name or "")
        this = f"{group} tr.device[data-nodeid='{nodeid}']"
        page.wait_for_selector(f"{this}[data-online='1']")
        self.assertIn("Online (agent)", page.text_content(this) or "")
        agent.stop()
        page.wait_for_selector(f"{this}[data-online='0']", timeout=30000)
        page.wait_for_selector(f"#device-summary:has-text('{FLEET + 1} devices, 0 online')")
        page.wait_for_selector(".toast:has-text('disconnected')")
        self.assertNoErrors(session)


# -- the README's screenshots ------------------------------------------------------------

class ScreenshotTests(BrowserTestCase):
    """The main pages, photographed for the README on a server of their own."""

    def setUp(self) -> None:
        self.browser = browser()
        self.server = own_server()
        self.addCleanup(self.server.stop)
        self.base = f"https://127.0.0.1:{self.server.port}"

    def doc_shot(self, session: Session, name: str) -> str:
        """docs/screenshots/<name>.png: the 1280x800 viewport, without passing toasts."""
        session.page.evaluate("document.querySelectorAll('.toast').forEach((t) => t.remove())")
        os.makedirs(DOC_SCREENSHOTS, exist_ok=True)
        path = os.path.join(DOC_SCREENSHOTS, name + ".png")
        session.page.screenshot(path=path)
        return path

    def test_main_pages(self) -> None:
        """Login, the devices list, a device's terminal and files, the users and my
        account are saved as PNG files with fixed names in docs/screenshots/."""
        import shutil
        import tempfile

        for name in ("alice", "bob"):
            make_user(self.server, name, "Screen-Pass-1")
        session = self.session()
        page = session.page
        page.goto(self.base + "/")
        page.wait_for_selector("main.auth-card")
        page.fill("input[name=username]", "admin")
        shots = [self.doc_shot(session, "login")]
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#connection[data-state=open]")

        servers = self.create_group(session, "Servers")
        workstations = self.create_group(session, "Workstations")
        import_devices(self.server.datapath, device_records(
            servers, ["db-01", "db-02", "mail-01", "web-01", "web-02", "web-03"], 10))
        import_devices(self.server.datapath, device_records(
            workstations, ["laptop-carla", "ws-anna", "ws-ben", "ws-dave"], 40))
        msh = request(self.server, "GET", f"/meshsettings?id={servers.split('/')[-1]}").body
        agent = PythonAgent(msh).start()
        self.addCleanup(agent.cleanup)
        page.reload()
        group = f"section.group[data-meshid='{servers}']"
        try:
            page.wait_for_selector(f"{group} tr.device[data-online='1']", timeout=90000)
        except Exception:
            raise AssertionError(f"agent log:\n{agent.log()[-3000:]}")
        # The agent's core and OS are stored a moment after it connects (no event says so):
        # the list shows them once loaded again.
        def described() -> bool:
            page.reload()
            page.wait_for_selector(f"{group} tr.device[data-online='1']")
            return bool(page.query_selector(f"{group} tr.device[data-online='1'] "
                                            "td.agent:has-text('core')"))

        wait_for(described, 60, "the agent's core in the list")
        shots.append(self.doc_shot(session, "devices"))

        nodeid = page.get_attribute(f"{group} tr.device[data-online='1']", "data-nodeid")
        page.click(f"{group} tr.device[data-nodeid='{nodeid}'] a.device-link")
        page.wait_for_selector("#device-state[data-online='1']")
        page.click("#device-tab-terminal")
        page.wait_for_selector("#terminal-status[data-state=open]", timeout=30000)
        page.click("#terminal-screen")
        wait_for_prompt(page)  # so the command is not echoed before the prompt
        page.keyboard.type("uname -sm; echo \"$((6*7)) is the answer\"")
        page.keyboard.press("Enter")
        page.wait_for_selector("#terminal-screen .xterm-rows:has-text('42 is the answer')",
                               timeout=30000)
        shots.append(self.doc_shot(session, "device-terminal"))

        folder = tempfile.mkdtemp(prefix="meshd-screens-")
        self.addCleanup(shutil.rmtree, folder, True)
        os.mkdir(os.path.join(folder, "backups"))
        for name, size in (("access.log", 48_213), ("notes.txt", 1_207),
                           ("report.pdf", 381_552)):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"x" * size)
        upload = os.path.join(tempfile.mkdtemp(prefix="meshd-screens-up-"), "release.tar.gz")
        self.addCleanup(shutil.rmtree, os.path.dirname(upload), True)
        with open(upload, "wb") as out:
            out.write(os.urandom(2_000_000))
        page.click("#device-tab-files")
        page.wait_for_selector("#files-rows tr.file", timeout=30000)
        page.fill("#files-path", folder)
        page.press("#files-path", "Enter")
        page.wait_for_selector("#files-rows tr.file[data-name='report.pdf']")
        page.set_input_files("#files-input", upload)
        page.wait_for_selector("#files-transfers li[data-kind=upload][data-state=done]",
                               timeout=60000)
        page.wait_for_selector("#files-rows tr.file[data-name='release.tar.gz']")
        shots.append(self.doc_shot(session, "device-files"))

        page.click("#nav-users")
        page.wait_for_selector("#user-rows tr[data-name='bob']")
        shots.append(self.doc_shot(session, "users"))
        page.click("#nav-account")
        page.wait_for_selector("#account-facts")
        shots.append(self.doc_shot(session, "account"))

        for path in shots:
            with open(path, "rb") as png:
                header = png.read(24)
            self.assertEqual(header[:8], b"\x89PNG\r\n\x1a\n", path)
            self.assertEqual((int.from_bytes(header[16:20], "big"),
                              int.from_bytes(header[20:24], "big")), (1280, 800), path)
        self.assertEqual(sorted(os.path.basename(p) for p in shots),
                         sorted(f"{n}.png" for n in ("login", "devices", "device-terminal",
                                                     "device-files", "users", "account")))
        self.assertNoErrors(session)
