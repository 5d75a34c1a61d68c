"""meshd's Python agent: a MeshAgent-compatible client for ``/agent.ashx``.

The bootstrap (this package) reads a MeshCentral ``.msh`` settings file, keeps its own RSA
identity in a state folder, connects over WSS, does the agent side of the binary handshake
(pinning the server by ServerID and TLS certificate hash), reconnects with jittered back-off,
and runs a *core*: either the built-in one (:mod:`agentsrc.core`) or a newer copy of it that
the server pushes as a blob (:mod:`agentsrc.coreblob`). See ``agentsrc/README.md``.

Modules:

* :mod:`agentsrc.settings` — ``.msh`` parsing into frozen :class:`~agentsrc.settings.Settings`.
* :mod:`agentsrc.state` — the state folder: node key and certificate, pinned TLS hash,
  stored core.
* :mod:`agentsrc.handshake` — the agent side of the handshake (sans-IO).
* :mod:`agentsrc.session` — after authentication: core-module commands and JSON to the core.
* :mod:`agentsrc.coreblob` — the core blob format: build, check, load in-process.
* :mod:`agentsrc.backoff` — the reconnect delay schedule.
* :mod:`agentsrc.client` — Autobahn/TLS adapter and the reconnecting service.
* :mod:`agentsrc.main` — the ``meshd-agent`` command.
"""

__version__ = "0.1.0"

COMMIT_DATE = "2026-Jan-1 00:00:00+0000"
"""Sent as command 30 (MeshCentral parses it as a date; the real agent sends its build date)."""
