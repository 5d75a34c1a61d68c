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
        for name in ("index.html", "sharing.html"):
            with open(os.path.join(WEB, name), encoding="utf-8") as f:
                page = f.read()
            self.assertNotRegex(page, r"<script(?![^>]*\b(src=|type=\"application/json\"))")
            self.assertNotRegex(page, r"\son[a-z]+=")
            self.assertNotIn("style=", page)


# Third-party browser files in web/vendor/: (package, folder in vendor/, files in the package).
# web/build-vendor.sh copies the same list from web/node_modules/ after `npm ci`; neither
# folder is committed: the package build (setup.py) and .ci/run make them.
VENDOR_FILES = {
    "@xterm/xterm": ("xterm", ["lib/xterm.mjs", "css/xterm.css", "LICENSE"]),
    "@xterm/addon-fit": ("addon-fit", ["lib/addon-fit.mjs", "LICENSE"]),
    "qrcode-generator": ("qrcode", ["dist/qrcode.mjs", "LICENSE"]),
}
# Packages whose npm tarball has no LICENSE file: build-vendor.sh copies this licence text,
# committed in web/, as their LICENSE (the package's own files state the same licence).
LICENSE_IN_WEB = {
    "qrcode-generator": ("licenses/qrcode-generator.LICENSE",
                         "dist/qrcode.mjs", "Copyright (c) 2009 Kazuhiko Arase"),
}


class VendorTests(SynchronousTestCase):
    """web/vendor/ holds exactly the locked packages' distributed files and licences."""

    def _json(self, *parts: str) -> dict:
        import json

        with open(os.path.join(WEB, *parts), encoding="utf-8") as f:
            return json.load(f)

    def test_locked_versions(self) -> None:
        """package.json pins each vendored package; package-lock.json locks that version
        with an integrity hash."""
        dependencies = self._json("package.json")["dependencies"]
        lock = self._json("package-lock.json")["packages"]
        self.assertEqual(set(dependencies), set(VENDOR_FILES))
        for package, version in dependencies.items():
            self.assertRegex(version, r"^\d+\.\d+\.\d+$", f"{package} is not pinned")
            locked = lock[f"node_modules/{package}"]
            self.assertEqual(locked["version"], version)
            self.assertTrue(locked["integrity"].startswith("sha512-"))
            self.assertEqual(locked.get("license"), "MIT")

    def test_vendor_folder_holds_only_the_listed_files(self) -> None:
        """The built vendor folder holds each package's listed files and its MIT LICENSE,
        nothing else from node_modules; the build script names the same files."""
        if not os.path.isdir(os.path.join(WEB, "vendor")):
            if os.environ.get("CI") == "true":
                self.fail("web/vendor/ is not built (sh web/build-vendor.sh)")
            raise SkipTest("web/vendor/ is not built (sh web/build-vendor.sh)")
        found = set()
        for folder, _dirs, names in os.walk(os.path.join(WEB, "vendor")):
            found |= {os.path.relpath(os.path.join(folder, n), WEB) for n in names}
        wanted: set[str] = set()
        with open(os.path.join(WEB, "build-vendor.sh"), encoding="utf-8") as f:
            script = f.read()
        for package, (target, files) in VENDOR_FILES.items():
            wanted |= {os.path.join("vendor", target, os.path.basename(f)) for f in files}
            listed = " ".join(f for f in files if f != "LICENSE")
            self.assertIn(f"copy {package} {target} {listed}\n", script)
            with open(os.path.join(WEB, "vendor", target, "LICENSE"), encoding="utf-8") as f:
                self.assertIn("Permission is hereby granted, free of charge", f.read())
        self.assertEqual(found, wanted)

    def test_vendor_files_match_installed_packages(self) -> None:
        """After `npm ci` in web/ (build-vendor.sh), the vendor copies are byte-identical
        to the locked packages'."""
        lock = self._json("package-lock.json")["packages"]
        for package, (target, files) in VENDOR_FILES.items():
            installed = os.path.join(WEB, "node_modules", package)
            try:
                meta = self._json("node_modules", package, "package.json")
            except OSError:
                raise SkipTest("web/node_modules is not installed (cd web && npm ci)")
            if meta["version"] != lock[f"node_modules/{package}"]["version"]:
                raise SkipTest(f"web/node_modules has another {package}: run npm ci")
            for name in files:
                source = os.path.join(installed, name)
                if name == "LICENSE" and package in LICENSE_IN_WEB:
                    text, licensed, holder = LICENSE_IN_WEB[package]
                    # Should a release add its own LICENSE, that one is to be used.
                    self.assertFalse(os.path.exists(source), f"{package} now has a LICENSE")
                    with open(os.path.join(installed, licensed), encoding="utf-8") as f:
                        header = f.read(2000)
                    self.assertIn("Licensed under the MIT license", header)
                    self.assertIn(holder, header)
                    source = os.path.join(WEB, text)
                    with open(source, encoding="utf-8") as f:
                        self.assertIn(holder, f.read())
                with open(source, "rb") as f:
                    original = f.read()
                with open(os.path.join(WEB, "vendor", target, os.path.basename(name)),
                          "rb") as f:
                    self.assertEqual(f.read(), original, f"vendor/{target}/{name} differs")
