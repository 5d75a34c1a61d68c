"""The real MeshAgent (npm meshcentral@1.1.55, running MeshCentral's own core pushed by
meshd from ``settings.agentCoreDir``) through meshd's relay: a terminal, and meshctrl's
file upload/download."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.test_relay_e2e import AgentSetup, until


class MeshAgentSetup(AgentSetup):
    """:class:`AgentSetup` with the real MeshAgent instead of the Python agent."""

    def __init__(self, test: TestCase, config: Optional[dict[str, Any]] = None) -> None:
        from tests.npmcache import meshcentral_package

        package = meshcentral_package()
        config = dict(config or {})
        config.setdefault("settings", {})["agentCoreDir"] = os.path.join(package, "agents")
        super().__init__(test, config)
        self.meshagent: Any = None

    def start_agent(self, msh: bytes) -> None:
        from tests.test_meshagent import MeshAgentProcess

        agent = self.meshagent = MeshAgentProcess(msh)
        self.test.addCleanup(agent.cleanup)
        agent.start()
        self.folder = agent.folder
        self.agent = agent.process

    def agent_log(self) -> str:
        out = ""
        for name in ("stdout.log", "meshagent.log"):
            try:
                with open(os.path.join(self.folder, name), errors="replace") as f:
                    out += f"--- {name}\n" + f.read()[-3000:]
            except OSError:
                pass
        return out


class MeshAgentRelayTests(TestCase):
    timeout = 300

    async def test_terminal_through_relay(self) -> None:
        """The real agent dials back to meshd's relay (percent-escaped query, TLS pinned
        by hash) and MeshCentral's core runs a shell: echo MA-$((6*7)) prints MA-42."""
        setup = await MeshAgentSetup(self).start()
        # MeshCentral's ids hold "@" and "$", which the agent sends percent-escaped.
        user = await setup.tunnel(1, relay_id="ma$" + os.urandom(6).hex() + "@x")
        user.sendMessage(json.dumps({"ctrlChannel": "102938", "type": "options",
                                     "cols": 100, "rows": 30}).encode(), isBinary=False)
        user.sendMessage(b"1", isBinary=False)
        await deferLater(reactor, 1.0, lambda: None)
        user.sendMessage(b"echo MA-$((6*7))\r", isBinary=True)
        found = await until(lambda: b"MA-42" in user.output(), 30)
        self.assertTrue(found, f"terminal said {user.output()[-2000:]!r}\n"
                        + setup.server.log()[-3000:] + setup.agent_log())
        user.sendMessage(b"exit\r", isBinary=True)
        await until(lambda: user.closed.called, 10)
        if not user.closed.called:
            user.sendClose()
            await user.closed
        setup.control.sendClose()
        await setup.control.closed

    async def test_meshctrl_upload_download(self) -> None:
        """meshctrl.js upload then download through meshd's relay with the real agent:
        the file comes back SHA-256 identical (MESHD_TEST_MA_FILE_MB MB, default 50)."""
        from twisted.internet.threads import deferToThread

        from tests.meshctrl import MeshCtrl, meshctrl_script
        from tests.test_relay_files import file_sha256

        meshctrl_script()
        setup = await MeshAgentSetup(self).start()
        work = tempfile.mkdtemp(prefix="meshctrl-ma-")
        self.addCleanup(shutil.rmtree, work, True)
        remote = os.path.join(work, "remote")
        os.mkdir(remote)
        local = os.path.join(work, "payload.bin")
        megabytes = int(os.environ.get("MESHD_TEST_MA_FILE_MB", "50"))
        with open(local, "wb") as f:
            for _ in range(megabytes):
                f.write(os.urandom(1024 * 1024))
        digest = file_sha256(local)
        ctl = MeshCtrl(setup.server.port, "admin", setup.password, cwd=work)
        short_id = setup.node_id.split("/")[-1]
        out = await deferToThread(ctl.run, "upload", "--id", short_id, "--file", local,
                                  "--target", remote, timeout=180)
        self.assertIn("Upload done", out, out + setup.agent_log() + setup.server.log()[-4000:])
        self.assertEqual(file_sha256(os.path.join(remote, "payload.bin")), digest)
        back = os.path.join(work, "back.bin")
        out = await deferToThread(ctl.run, "download", "--id", short_id, "--file",
                                  os.path.join(remote, "payload.bin"), "--target", back,
                                  timeout=180)
        self.assertIn("Download completed", out, out + setup.agent_log())
        self.assertEqual(file_sha256(back), digest)
        setup.control.sendClose()
        await setup.control.closed
