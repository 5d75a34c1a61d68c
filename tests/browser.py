"""Real headless Chromium for end-to-end tests of the web app, driven by Playwright.

Debian's ``/usr/bin/chromium`` is launched through Playwright's ``executable_path``
(Playwright's own browser download is never used).  One browser process serves every
test of the run; each test opens fresh, isolated contexts (cookies, storage) in it, and
the browser is stopped when the test process exits.  A missing browser or Playwright is
a skip with the reason, or a failure under ``CI=true``.
"""

from __future__ import annotations

import atexit
import os
from typing import Any, Optional

from twisted.trial.unittest import SkipTest

CHROMIUM = os.environ.get("MESHD_CHROMIUM", "/usr/bin/chromium")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--ignore-certificate-errors", "--disable-dev-shm-usage"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        raise AssertionError(f"browser tests cannot run under CI: {reason}")
    raise SkipTest(reason)


class Browser:
    """One Chromium process; :meth:`session` gives a new isolated browser session."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            # launch() always starts Chromium on a new temporary --user-data-dir of its
            # own (passing one is refused: that is launch_persistent_context's job).
            self._browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=FLAGS, chromium_sandbox=False)
        except Exception:
            self._playwright.stop()
            raise
        self._sessions: list[Any] = []

    def session(self, *, color_scheme: str = "light", viewport: Optional[dict[str, int]] = None
                ) -> "Session":
        """A new browser session with its own cookies (like a second browser)."""
        context = self._browser.new_context(
            ignore_https_errors=True, color_scheme=color_scheme,  # type: ignore[arg-type]
            viewport=viewport or {"width": 1280, "height": 800})  # type: ignore[arg-type]
        session = Session(context)
        self._sessions.append(session)
        return session

    def close(self) -> None:
        for session in self._sessions:
            session.close()
        try:
            self._browser.close()
        finally:
            self._playwright.stop()


class Session:
    """A browser context and its page, with the console errors it reported."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("response", self._response)
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self._closed = False

    def _console(self, message: Any) -> None:
        # A failed load is reported by _response with its address.
        if message.type in ("error", "warning") and not message.text.startswith(
                "Failed to load resource"):
            self.errors.append(f"console {message.type}: {message.text}")

    def _response(self, response: Any) -> None:
        # Chromium asks for /favicon.ico by itself; the login page does not name an icon.
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            self.errors.append(f"HTTP {response.status} for {response.url}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.context.close()
            except Exception:
                pass  # the browser may be gone already at exit


_browser: Optional[Browser] = None


def browser() -> Browser:
    """The shared Chromium (started on first use), or SkipTest/failure when unavailable."""
    global _browser
    if _browser is not None:
        return _browser
    if not os.path.exists(CHROMIUM):
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is missing (pip install playwright)")
    _browser = Browser()
    atexit.register(_close)
    return _browser


def _close() -> None:
    global _browser
    if _browser is not None:
        try:
            _browser.close()
        finally:
            _browser = None
