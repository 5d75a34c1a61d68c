"""MeshCentral 1.1.55 from npm, for interop tests (installed by :mod:`tests.meshcentral`).

Interop tests use its real MeshAgent binaries, its ``agents/`` core sources and
``meshctrl.js``; none of it is committed.  Under ``CI=true`` a failed install fails
the test; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os

from tests.meshcentral import MeshCentralUnavailable, ensure_installed, unavailable


def meshcentral_package() -> str:
    """The installed package folder (``.../node_modules/meshcentral``)."""
    try:
        return ensure_installed()
    except MeshCentralUnavailable as error:
        raise unavailable(str(error)) from None


def meshagent_binary() -> str:
    """The real Linux x86-64 MeshAgent from the package."""
    path = os.path.join(meshcentral_package(), "agents", "meshagent_x86-64")
    if not os.path.exists(path):
        raise unavailable(f"{path} is missing from the npm package")
    return path
