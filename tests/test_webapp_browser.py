"""The web app: how meshd serves it, and end-to-end in real headless Chromium against a
real started meshd and a real Python agent."""

from __future__ import annotations

import http.client
import json
import os
import re
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
from tests.browser import Session, browser
from tests.server import ROOT, PythonAgent, ServerProcess, fresh_datapath
from tests.test_login import admin, login, request

WEB = os.path.join(ROOT, "web")
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
                  if os.path.isfile(path) and not path.startswith(os.path.join(WEB, "tests"))
                  and os.path.basename(path) != "package.json"}
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
