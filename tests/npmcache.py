"""MeshCentral 1.1.55 from npm, installed once into the git-ignored ``.cache/`` folder.

Interop tests use its real MeshAgent binaries, its ``agents/`` core sources and
``meshctrl.js``; none of it is committed.  Under ``CI=true`` a failed install fails
the test; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial.unittest import SkipTest

from tests.server import ROOT

VERSION = "1.1.55"
CACHE = os.path.join(ROOT, ".cache", "meshcentral")
PACKAGE = os.path.join(CACHE, "node_modules", "meshcentral")


def _unavailable(reason: str) -> Exception:
    if os.environ.get("CI") == "true":
        return RuntimeError(reason)
    return SkipTest(reason)


def meshcentral_package() -> str:
    """The installed package folder (``.../node_modules/meshcentral``)."""
    marker = os.path.join(PACKAGE, "package.json")
    if os.path.exists(marker):
        return PACKAGE
    npm = shutil.which("npm")
    if npm is None:
        raise _unavailable("npm is not installed (Debian package npm)")
    os.makedirs(CACHE, exist_ok=True)
    result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", CACHE,
                             f"meshcentral@{VERSION}"], capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0 or not os.path.exists(marker):
        raise _unavailable(f"npm install meshcentral@{VERSION} failed: {result.stderr[-2000:]}")
    return PACKAGE


def meshagent_binary() -> str:
    """The real Linux x86-64 MeshAgent from the package."""
    path = os.path.join(meshcentral_package(), "agents", "meshagent_x86-64")
    if not os.path.exists(path):
        raise _unavailable(f"{path} is missing from the npm package")
    return path
