"""Core modules: the code the server pushes to an agent after it authenticates.

Two sources:

* **MeshCentral's JavaScript core**, for real MeshAgents, assembled at run time from the
  ``agents/`` folder of an installed MeshCentral (``settings.agentCoreDir``), exactly as
  spec agent-protocol §4.1 describes, so agents that already hold it get CoreOk without
  a re-push.  meshd never ships that code.
* **The Python core** of ``agentsrc/`` for meshd's own agent.

A core is ``(hash, blob)`` where ``blob`` starts with four zero bytes and ``hash`` is the
SHA-384 of the whole blob (what commands 10 and 11 carry).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Optional

# Agent architecture ids (command 3 ``agentId``) and the core MeshCentral 1.1.55 gives
# them; every other id gets "linux-noamt".
_WINDOWS_AGENT_IDS = frozenset({1, 2, 3, 4, 21, 22, 42, 43, 10003, 10004})
_LINUX_AMT_AGENT_IDS = frozenset({5, 6, 8, 19, 20})

_ESCAPES = {"'": "\\'", '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
            "\r": "\\r", "\t": "\\t"}


@dataclass(frozen=True)
class Core:
    name: str
    blob: bytes
    hash: bytes  # SHA-384 of blob

    @classmethod
    def from_blob(cls, name: str, blob: bytes) -> "Core":
        return cls(name, blob, hashlib.sha384(blob).digest())


def _escape(text: str, keep_utf8: bool) -> str:
    out = []
    for c in text:
        escaped = _ESCAPES.get(c)
        if escaped is not None:
            out.append(escaped)
        elif keep_utf8 or 32 <= ord(c) <= 127:
            out.append(c)
    return "".join(out)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def build_meshcentral_core(agents_dir: str, flavour: str = "linux-amt") -> Core:
    """Assemble MeshCentral's core ``flavour`` ("linux-amt", "linux-noamt", "windows-amt")."""
    if flavour not in ("linux-amt", "linux-noamt", "windows-amt"):
        raise ValueError(f"unknown core flavour {flavour!r}")
    modules_dir = os.path.join(agents_dir, "modules_meshcore")
    parts = ["var addedModules = [];\r\n"]
    for name in sorted(os.listdir(modules_dir), key=lambda n: n.encode("utf-8")):
        path = os.path.join(modules_dir, name)
        lower = name.lower()
        if lower.endswith(".json"):
            module = name[:-5]
            text = _read_bytes(path).decode("utf-8", "replace")
            parts.append(f"var {module} = JSON.parse('{_escape(text, True)}');\r\n")
        elif lower.endswith(".js"):
            module = name[:-3]
            amt = module.startswith("amt-") or module == "smbios"
            if amt and flavour == "linux-noamt":
                continue
            if module.startswith("win-") and flavour != "windows-amt":
                continue
            if module.startswith("linux-") and flavour == "windows-amt":
                continue
            text = _read_bytes(path).decode("latin-1")
            parts.append(f'try {{ addModule("{module}", "{_escape(text, False)}"); '
                         f'addedModules.push("{module}"); }} catch (ex) {{ }}\r\n')
    parts.append(_read_bytes(os.path.join(agents_dir, "meshcore.js")).decode("utf-8", "replace"))
    blob = b"\x00\x00\x00\x00" + "".join(parts).encode("utf-8")
    return Core.from_blob(flavour, blob)


def meshcentral_flavour(agent_id: int) -> str:
    """The core MeshCentral gives an agent of this architecture id."""
    if agent_id in _WINDOWS_AGENT_IDS:
        return "windows-amt"
    if agent_id in _LINUX_AMT_AGENT_IDS:
        return "linux-amt"
    return "linux-noamt"


class MeshCentralCores:
    """MeshCentral's cores from an ``agents/`` folder, built once per flavour."""

    def __init__(self, agents_dir: str) -> None:
        if not os.path.isfile(os.path.join(agents_dir, "meshcore.js")):
            raise ValueError(f"{agents_dir} has no meshcore.js: set settings.agentCoreDir to "
                             f"the agents/ folder of an installed MeshCentral")
        self.agents_dir = agents_dir
        self._built: dict[str, Core] = {}

    def core_for(self, agent_id: int) -> Core:
        flavour = meshcentral_flavour(agent_id)
        core = self._built.get(flavour)
        if core is None:
            core = self._built[flavour] = build_meshcentral_core(self.agents_dir, flavour)
        return core


# Capability bit meshd's own agent sets in command 3: "runs a Python core" (MeshCentral
# ignores unknown bits); MeshCentral's JavaScript agents set 0x10.
CAP_JAVASCRIPT = 0x10
CAP_PYTHON_CORE = 0x10000


class CoreChooser:
    """Which core an agent gets: the Python core for meshd's agent, MeshCentral's core
    (when ``agentCoreDir`` is set) for MeshAgents, otherwise none (CoreOk only)."""

    def __init__(self, python_core: Optional[Core], meshcentral: Optional[MeshCentralCores]
                 ) -> None:
        self.python_core = python_core
        self.meshcentral = meshcentral

    def __call__(self, info: Any) -> Optional[Core]:
        if info.capabilities & CAP_PYTHON_CORE:
            return self.python_core
        if info.capabilities & CAP_JAVASCRIPT and self.meshcentral is not None:
            return self.meshcentral.core_for(info.agent_id)
        return None


def python_core() -> Core:
    """The core of meshd's Python agent (``agentsrc/core``), built reproducibly."""
    from agentsrc.coreblob import build_core_blob

    return Core.from_blob("python", build_core_blob())
