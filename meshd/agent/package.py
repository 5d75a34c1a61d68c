"""The Python agent as a package the server hands out, and the Linux install script.

``/meshagents/meshd-agent.tar.gz`` is a source package of ``agentsrc`` plus the few meshd
modules it uses (the wire codec and ids); pip installs it with its dependencies from PyPI.
``/meshagents/install.sh?id=<group>`` is a shell script for one device group: it makes a
virtual environment with the agent's dependencies from PyPI, downloads the package and
checks its SHA-384 against the value written into the script, unpacks it beside the
environment (no build step), writes the group's ``.msh`` and a systemd unit, and starts
the agent.  The agent then pins the server (ServerID from the ``.msh``, TLS hash after its
first verified handshake), so the install download is the only step that trusts the
network; run the script only from a server you reached over a network you trust, or
check the package hash it prints against ``meshd-admin certinfo``'s server.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shlex
import tarfile
from functools import lru_cache

import meshd

# What the agent imports from meshd (kept minimal: the agent runs on managed machines).
_MESHD_FILES = ("meshd/__init__.py", "meshd/files.py", "meshd/agent/__init__.py",
                "meshd/agent/_der.py", "meshd/agent/identity.py", "meshd/agent/wire.py")

DEPENDENCIES = ("twisted[tls]>=22.10", "autobahn>=22.7", "cryptography>=41", "pyopenssl>=23")

_PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "meshd-agent"
version = "{version}"
description = "meshd's Python agent"
requires-python = ">=3.9"
dependencies = {dependencies}

[project.scripts]
meshd-agent = "agentsrc.main:main"

[tool.setuptools]
packages = ["agentsrc", "agentsrc.core", "meshd", "meshd.agent"]
"""


def _agent_files() -> list[str]:
    import agentsrc

    base = os.path.dirname(os.path.abspath(agentsrc.__file__))
    root = os.path.dirname(base)
    files = []
    for folder, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith(".py") or name == "README.md":
                files.append(os.path.relpath(os.path.join(folder, name), root))
    return files


@lru_cache(maxsize=1)
def agent_package() -> bytes:
    """The source package (tar.gz), reproducible for one meshd version."""
    import agentsrc

    source_root = os.path.dirname(os.path.dirname(os.path.abspath(agentsrc.__file__)))
    meshd_root = os.path.dirname(os.path.dirname(os.path.abspath(meshd.__file__)))
    prefix = f"meshd-agent-{meshd.__version__}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

        add("pyproject.toml", _PYPROJECT.format(
            version=meshd.__version__,
            dependencies="[" + ", ".join(f'"{d}"' for d in DEPENDENCIES) + "]").encode())
        for name in _agent_files():
            with open(os.path.join(source_root, name), "rb") as f:
                add(name, f.read())
        for name in _MESHD_FILES:
            with open(os.path.join(meshd_root, name), "rb") as f:
                add(name, f.read())
    return gzip.compress(buffer.getvalue(), mtime=0)


def agent_package_sha384() -> str:
    return hashlib.sha384(agent_package()).hexdigest()


def install_script(*, server_url: str, msh: str, group_name: str) -> str:
    """A POSIX shell script installing the agent for one group (see the module doc)."""
    q = shlex.quote
    dependencies = " ".join(q(d) for d in DEPENDENCIES)
    return f"""#!/bin/sh
# meshd agent installer for device group {group_name!r} on {server_url}
# Environment: MESHD_AGENT_PREFIX (default /opt/meshd-agent), MESHD_AGENT_NO_SYSTEMD=1 to
# skip the service, MESHD_AGENT_SYSTEM_SITE=1 to let the environment use system packages.
set -eu
SERVER={q(server_url)}
PACKAGE_SHA384={q(agent_package_sha384())}
PREFIX="${{MESHD_AGENT_PREFIX:-/opt/meshd-agent}}"
say() {{ printf 'meshd-agent install: %s\\n' "$*"; }}
command -v python3 >/dev/null 2>&1 || {{ say "python3 is needed (apt-get install python3 python3-venv)"; exit 1; }}
mkdir -p "$PREFIX"
chmod 0700 "$PREFIX"
say "creating the Python environment in $PREFIX/venv"
if [ "${{MESHD_AGENT_SYSTEM_SITE:-0}}" = 1 ]; then
  python3 -m venv --system-site-packages "$PREFIX/venv"
else
  python3 -m venv "$PREFIX/venv"
fi
say "downloading the agent from $SERVER"
"$PREFIX/venv/bin/python" - "$SERVER/meshagents/meshd-agent.tar.gz" "$PREFIX/meshd-agent.tar.gz" "$PACKAGE_SHA384" <<'PYTHON'
import hashlib, ssl, sys, urllib.request
url, target, expected = sys.argv[1:4]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # the hash below is what is trusted
data = urllib.request.urlopen(url, context=context, timeout=60).read()
if hashlib.sha384(data).hexdigest() != expected:
    sys.exit("meshd-agent install: the downloaded package does not match its hash; stopping")
with open(target, "wb") as f:
    f.write(data)
PYTHON
say "installing the agent's dependencies"
"$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check {dependencies}
say "installing the agent in $PREFIX/lib"
rm -rf "$PREFIX/lib.new"
mkdir -p "$PREFIX/lib.new"
tar -xzf "$PREFIX/meshd-agent.tar.gz" -C "$PREFIX/lib.new" --strip-components=1
rm -rf "$PREFIX/lib"
mv "$PREFIX/lib.new" "$PREFIX/lib"
cat > "$PREFIX/meshd-agent" <<WRAPPER
#!/bin/sh
PYTHONPATH="$PREFIX/lib" exec "$PREFIX/venv/bin/python" -m agentsrc "\$@"
WRAPPER
chmod 0755 "$PREFIX/meshd-agent"
say "writing $PREFIX/meshagent.msh"
umask 077
cat > "$PREFIX/meshagent.msh" <<'MSH'
{msh}
MSH
if [ "${{MESHD_AGENT_NO_SYSTEMD:-0}}" = 1 ] || ! command -v systemctl >/dev/null 2>&1; then
  say "done; start it with: $PREFIX/meshd-agent --msh $PREFIX/meshagent.msh"
  exit 0
fi
cat > /etc/systemd/system/meshd-agent.service <<UNIT
[Unit]
Description=meshd agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$PREFIX/meshd-agent --msh $PREFIX/meshagent.msh --state $PREFIX/state
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now meshd-agent.service
say "the agent is installed and running (systemctl status meshd-agent)"
"""
