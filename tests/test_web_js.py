"""The browser app's JavaScript unit tests (``web/tests/``), run by Node's test runner.

The modules take an injected WebSocket factory, so these run without a server or a
browser.  Without ``node`` they are skipped, except under ``CI=true`` where that fails.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.server import ROOT

WEB = os.path.join(ROOT, "web")


def node_binary() -> str:
    """``node``, or SkipTest (a failure under CI=true) when it is missing or too old."""
    node = shutil.which("node") or shutil.which("nodejs")
    problem = ""
    if node is None:
        problem = "node is not installed (apt-get install nodejs)"
    else:
        version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
        match = re.match(r"v(\d+)", version.strip())
        if not match or int(match.group(1)) < 18:
            problem = f"node {version.strip()} is too old: the test runner needs 18 or newer"
    if problem:
        if os.environ.get("CI") == "true":
            raise AssertionError(problem)
        raise SkipTest(problem)
    assert node is not None
    return node


class NodeTestRunnerTests(SynchronousTestCase):
    """``node --test web/tests/*.test.js``."""

    def test_javascript_unit_tests(self) -> None:
        """Every JavaScript unit test of the web app passes."""
        node = node_binary()
        files = sorted(glob.glob(os.path.join(WEB, "tests", "*.test.js")))
        self.assertTrue(files, "no JavaScript tests found in web/tests/")
        result = subprocess.run([node, "--test", *files], cwd=WEB, capture_output=True,
                                text=True, timeout=300, stdin=subprocess.DEVNULL)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output[-8000:])
        passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
        failed = re.search(r"^# fail (\d+)$", output, re.MULTILINE)
        self.assertIsNotNone(passed, output[-4000:])
        assert passed is not None and failed is not None
        self.assertEqual(int(failed.group(1)), 0, output[-8000:])
        self.assertGreaterEqual(int(passed.group(1)), 20, output[-4000:])

    def test_modules_have_no_inline_html(self) -> None:
        """The app builds DOM with textContent only: no innerHTML, no eval, no inline handlers."""
        for path in glob.glob(os.path.join(WEB, "js", "**", "*.js"), recursive=True):
            with open(path, encoding="utf-8") as f:
                source = f.read()
            for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                           "eval(", "new Function"):
                self.assertNotIn(banned, source, f"{os.path.relpath(path, ROOT)} uses {banned}")
        with open(os.path.join(WEB, "index.html"), encoding="utf-8") as f:
            page = f.read()
        self.assertNotRegex(page, r"<script(?![^>]*\b(src=|type=\"application/json\"))")
        self.assertNotRegex(page, r"\son[a-z]+=")
        self.assertNotIn("style=", page)
