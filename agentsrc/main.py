"""``meshd-agent``: run the Python agent in the foreground.

Usage::

    meshd-agent [--msh FILE] [--state DIR] [--fastkey] [--log-level LEVEL] [--show-id]

``--msh`` (default ``./meshagent.msh``) is a MeshCentral ``.msh`` settings file (the one
``/meshsettings?id=<group>`` returns, or just ``MeshServer``, ``MeshID`` and ``ServerID``).
``--state`` (default: ``<msh name>-state`` beside it) holds the node key and certificate, the
pinned server TLS hash and the stored core; it is created 0700 on first run with a new RSA-3072
key (``--fastkey``: RSA-2048, quicker, for tests). ``--show-id`` prints the node id (creating the
identity if needed) and exits. Logs go to standard error. SIGINT/SIGTERM stop the agent cleanly.

Exit status: 0 after a clean stop, 2 for a bad command line or settings file, 1 for an unusable
state folder.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import warnings
from typing import Any, Optional, Sequence

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

import agentsrc
from agentsrc.settings import SettingsError, load_settings
from agentsrc.state import DEFAULT_KEY_BITS, FAST_KEY_BITS, StateDir, StateError

__all__ = ["main", "default_state_dir", "build_parser"]

_log = Logger()


def default_state_dir(msh_path: str) -> str:
    """``/x/agent.msh`` → ``/x/agent-state``."""
    folder, name = os.path.split(os.path.abspath(msh_path))
    stem = name[:-4] if name.lower().endswith(".msh") else name
    return os.path.join(folder, f"{stem}-state")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshd-agent", description="meshd Python agent (MeshCentral-compatible)."
    )
    parser.add_argument("--msh", default="meshagent.msh", help=".msh settings file")
    parser.add_argument("--state", help="state folder (default: <msh name>-state beside it)")
    parser.add_argument(
        "--fastkey", action="store_true", help="make an RSA-2048 node key (tests) instead of 3072"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warn", "error"),
        help="lowest level logged to standard error",
    )
    parser.add_argument("--show-id", action="store_true", help="print the node id and exit")
    parser.add_argument("--version", action="version", version=agentsrc.__version__)
    return parser


def _start_logging(level: str) -> None:
    # Autobahn parses the server's certificate for its transport details; MeshCentral's has
    # C=unknown, which makes cryptography warn on every connection. Not our concern: hush it.
    warnings.filterwarnings("ignore", message="Attribute's length must be", category=UserWarning)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: Optional[Sequence[str]] = None, reactor: Any = None) -> int:
    """Entry point of ``meshd-agent``; returns the exit status."""
    options = build_parser().parse_args(argv)
    try:
        settings = load_settings(options.msh)
    except SettingsError as error:
        sys.stderr.write(f"meshd-agent: {error}\n")
        return 2
    state = StateDir(options.state or default_state_dir(options.msh))
    bits = FAST_KEY_BITS if options.fastkey else DEFAULT_KEY_BITS
    try:
        identity, created = state.load_or_create_identity(
            bits=bits, now=datetime.datetime.now(datetime.timezone.utc)
        )
    except (StateError, OSError) as error:
        sys.stderr.write(f"meshd-agent: {error}\n")
        return 1
    if options.show_id:
        sys.stdout.write(identity.node_id + "\n")
        return 0
    _start_logging(options.log_level)
    if created:
        _log.info("created node identity {node_id} in {path}", node_id=identity.node_id,
                  path=state.path)
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from agentsrc.client import AgentService

    service = AgentService(settings, state, identity, reactor=reactor)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":  # python -m agentsrc.main
    sys.exit(main())
