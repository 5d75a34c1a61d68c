"""The Python agent core: what runs on the agent once the server is authenticated.

This package is both the agent's **built-in** core (imported as ``agentsrc.core``) and the
source of the **pushed** core: a meshd server zips these files with
:func:`agentsrc.coreblob.build_core_blob` and sends them with command 10; the agent imports the
blob in memory under a private package name. So the package must stay self-contained: only
relative imports, the standard library and Twisted, nothing from ``agentsrc`` or ``meshd``.

Contract with the bootstrap (``CORE_API`` 1):

``create_core(context) -> core``, where ``context`` has

* ``reactor`` — provides IReactorTime and IReactorProcess;
* ``send_json(message: dict) -> None`` — one JSON message to the server (a text frame);
* ``send_binary(frame: bytes) -> None`` — one binary frame (core commands are ids >= 1000);
* ``log`` — a :class:`twisted.logger.Logger`;
* ``node_id``, ``server_url``, ``agent_version`` (str); ``core_hash`` (hex str, or ``None`` for
  the built-in core);

and ``core`` has ``start()``, ``stop()``, ``handle_json(message: dict)`` and
``handle_binary(code: int, payload: bytes)``. The bootstrap makes one core per authenticated
connection, calls ``start()`` once, feeds it every frame after the core-module exchange, and
calls ``stop()`` when the connection ends or the core is replaced.
"""

from __future__ import annotations

from typing import Any

CORE_API = 1
CORE_VERSION = "0.1.0"


def create_core(context: Any) -> Any:
    """Make this core for one connection (see the module docstring for ``context``)."""
    from .agentcore import Core

    return Core(context)
