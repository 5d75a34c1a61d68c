"""The Linux install script for the Python agent, run for real against a started server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from meshd.store.sqlite import SQLiteStore
from tests.server import ServerProcess, agent_group, fresh_datapath
from tests.test_meshagent import eventually


class InstallScriptTests(TestCase):
    timeout = 300

    async def test_install_script_installs_a_working_agent(self) -> None:
        """install.sh makes a virtual environment, checks and installs the package, writes the
        .msh, and the installed agent comes online in the group."""
        datapath = fresh_datapath()
        server = ServerProcess(datapath).start()
        self.addCleanup(server.stop)
        store = SQLiteStore(datapath, reactor)
        await store.open()
        self.addCleanup(store.close)
        mesh_key, _msh = await agent_group(server, store, "installed")
        mesh_id = mesh_key.split("/", 2)[2]

        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=os.path.join(datapath,
                                                                 "root-cert-public.crt"))
        url = (f"https://127.0.0.1:{server.port}/meshagents/install.sh?id="
               + urllib.parse.quote(mesh_id))
        script = urllib.request.urlopen(url, context=context, timeout=30).read()
        self.assertTrue(script.startswith(b"#!/bin/sh"))
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(url + "x", context=context, timeout=30)
        self.assertEqual(cm.exception.code, 401)

        prefix = tempfile.mkdtemp(prefix="agent-install-")
        self.addCleanup(shutil.rmtree, prefix, True)
        env = dict(os.environ, MESHD_AGENT_PREFIX=prefix, MESHD_AGENT_NO_SYSTEMD="1",
                   MESHD_AGENT_SYSTEM_SITE="1", PIP_NO_INDEX="1")
        env.pop("PYTHONPATH", None)
        result = subprocess.run(["sh", "-s"], input=script, env=env, capture_output=True,
                                timeout=240, cwd=prefix)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(b"meshd-agent install: done", result.stdout)
        self.assertEqual(os.stat(os.path.join(prefix, "meshagent.msh")).st_mode & 0o777, 0o600)

        log = open(os.path.join(prefix, "agent.log"), "wb")
        agent = subprocess.Popen([os.path.join(prefix, "meshd-agent"), "--msh",
                                  os.path.join(prefix, "meshagent.msh"), "--fastkey"],
                                 cwd=prefix, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def stop() -> None:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(10)

        self.addCleanup(stop)

        async def online() -> Any:
            nodes = await store.find_nodes_by_mesh([mesh_key])
            return nodes and nodes[0].get("agent", {}).get("core")

        self.assertTrue(await eventually(online, 60), server.log()[-3000:])
