"""A real server on MongoDB (nx-27017) whose database goes away and comes back: 503s
and a degraded /health while it is down, the process keeps running, login recovers."""

from __future__ import annotations

import json
import time

from twisted.trial import unittest

from tests import mongoserver
from tests.server import ServerProcess, fresh_datapath
from tests.test_login import admin, login, request

PASSWORD = "erin password"
RECOVERY_TIMEOUT = 30.0


class MongoDownTests(unittest.SynchronousTestCase):
    """The server answers 503 while its MongoDB is down and recovers by itself."""

    def setUp(self) -> None:
        # Its own nx-27017, never the shared one (or MESHD_TEST_MONGODB_URL's): it is
        # stopped and restarted on the same port.
        for attempt in range(3):  # another process may take the free port first
            self.nx = mongoserver.NxServer()
            try:
                self.nx.start()
                break
            except mongoserver.MongoServerUnavailable as exc:
                self.nx.cleanup()
                if attempt < 2:
                    continue
                if mongoserver.required():
                    raise AssertionError(f"nx-27017 unavailable on CI: {exc}") from exc
                raise unittest.SkipTest(f"no MongoDB test server: {exc}") from exc
        self.addCleanup(self.nx.cleanup)
        self.server = ServerProcess(fresh_datapath(), ["--mongodb", self.nx.url]).start()
        self.addCleanup(self.server.stop)

    def health(self) -> tuple[int, dict]:
        response = request(self.server, "GET", "/health")
        return response.status, json.loads(response.body)

    def test_database_down_and_back(self) -> None:
        """Down: POST /login and GET / are 503 and /health degraded; back: login works."""
        result = admin(self.server.datapath, "--mongodb", self.nx.url, "createaccount", "erin",
                       "--pass", PASSWORD)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(login(self.server, "erin", PASSWORD).status, 303)
        self.assertEqual(self.health()[0], 200)

        self.nx.stop()
        response = login(self.server, "erin", PASSWORD)
        self.assertEqual(response.status, 503)
        self.assertIn("The database is unavailable right now", response.body)
        self.assertEqual(response.headers["Retry-After"], "10")
        self.assertIsNone(response.cookie())
        self.assertEqual(request(self.server, "GET", "/").status, 503)
        status, body = self.health()
        self.assertEqual((status, body["status"], body["store"]),
                         (503, "degraded", {"backend": "mongodb", "healthy": False}))
        assert self.server.process is not None
        self.assertIsNone(self.server.process.poll(), "the server exited")

        self.nx.start()
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while True:
            response = login(self.server, "erin", PASSWORD)
            if response.status == 303:
                break
            self.assertEqual(response.status, 503)
            if time.monotonic() > deadline:
                self.fail(f"login did not recover within {RECOVERY_TIMEOUT} s of the restart")
            time.sleep(0.5)
        page = request(self.server, "GET", "/", cookie=response.cookie())
        self.assertIn('Logged in as <strong id="user">erin</strong>', page.body)
        status, body = self.health()
        self.assertEqual((status, body["status"]), (200, "ok"))
        log = self.server.log()
        self.assertIn("mongodb store mongodb://127.0.0.1", log)
        self.assertIn("is unavailable", log)
        self.assertIn("is available", log)
