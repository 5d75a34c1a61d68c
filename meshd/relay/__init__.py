"""The relay ``/meshrelay.ashx`` (spec: relay.md) and tunnel routing.

* :mod:`~meshd.relay.machine`  the sans-IO pairing table: ids, rules, timers, flow control
* :mod:`~meshd.relay.server`   who a side is (cookies, sessions, relay cookies); events
* :mod:`~meshd.relay.protocol` the Autobahn adapter and :func:`relay_resource`
* :mod:`~meshd.relay.frames`   the frame forwarder paired sides use (sans-IO)
* :mod:`~meshd.relay.tunnel`   the control channel's ``msg``/``tunnel`` → the agent
* :mod:`~meshd.relay.recording` the ``.mcrec`` recording codec (writer/reader, sans-IO)
"""

from __future__ import annotations

from meshd.relay.machine import RelayTable, SideInfo
from meshd.relay.protocol import relay_resource
from meshd.relay.server import RelayServer

__all__ = ["RelayServer", "RelayTable", "SideInfo", "relay_resource"]
