"""Tests for meshd.web: the home page, /health and the HTTP redirect site."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

import meshd
from meshd.web import build_root
from meshd.web.redirect import RedirectResource


class RootTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.listeners = [{"name": "https", "port": 8443, "tls": True}]
        root = build_root(clock=self.clock, started_at=1000.0, title="Test <Corp>",
                          listeners=lambda: self.listeners)
        self.treq = StubTreq(root)

    async def test_health(self) -> None:
        """/health reports status, version, uptime and listeners as JSON."""
        self.clock.advance(12.5)
        response = await self.treq.get("https://example.com/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        body = json.loads(await response.text())
        self.assertEqual(body, {"status": "ok", "version": meshd.__version__, "uptime": 12.5,
                                "listeners": self.listeners})

    async def test_health_store_down(self) -> None:
        """/health is 503 "degraded" while the store is unavailable, 200 when it is back."""
        from meshd.store.memory import MemoryStore
        from meshd.web.root import HealthResource

        store = MemoryStore()
        treq = StubTreq(HealthResource(self.clock, 1000.0, lambda: [], store))
        response = await treq.get("https://example.com/health")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(await response.text())["store"],
                         {"backend": "memory", "healthy": False})
        store.open()
        response = await treq.get("https://example.com/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(await response.text())["status"], "ok")

    async def test_home(self) -> None:
        """/ serves the home page with the domain title escaped."""
        response = await self.treq.get("https://example.com/")
        self.assertEqual(response.code, 200)
        text = await response.text()
        self.assertIn("<h1>Test &lt;Corp&gt;</h1>", text)
        self.assertEqual(response.headers.getRawHeaders("x-frame-options"), ["DENY"])

    async def test_unknown_path(self) -> None:
        """An unknown path is a 404."""
        response = await self.treq.get("https://example.com/nope")
        self.assertEqual(response.code, 404)


class RedirectTests(TestCase):
    async def redirect(self, url: str, https_port: int = 443, **kw: object) -> str:
        treq = StubTreq(RedirectResource(https_port, "server.example.com"))
        response = await treq.get(url, allow_redirects=False, **kw)
        self.assertEqual(response.code, 301)
        [location] = response.headers.getRawHeaders("location")
        return location

    async def test_path_and_query_kept(self) -> None:
        """Path and query string are kept exactly."""
        self.assertEqual(await self.redirect("http://mesh.example.com/a/b?x=1&y=%20z"),
                         "https://mesh.example.com/a/b?x=1&y=%20z")

    async def test_port_replaced(self) -> None:
        """The HTTP port in Host is replaced by the HTTPS port (omitted when 443)."""
        self.assertEqual(await self.redirect("http://mesh.example.com:8080/x", 8443),
                         "https://mesh.example.com:8443/x")
        self.assertEqual(await self.redirect("http://mesh.example.com:8080/x", 443),
                         "https://mesh.example.com/x")

    async def test_ipv6_host(self) -> None:
        """An IPv6 literal host keeps its brackets."""
        self.assertEqual(await self.redirect("http://h.example.com/x", 8443,
                                             headers={"Host": "[::1]:8080"}),
                         "https://[::1]:8443/x")

    async def test_bad_host_header(self) -> None:
        """A Host header with odd characters falls back to the configured name."""
        location = await self.redirect("http://mesh.example.com/x",
                                       headers={"Host": "evil.com/<script>"})
        self.assertEqual(location, "https://server.example.com/x")

    async def test_post_redirected(self) -> None:
        """Any method is redirected."""
        treq = StubTreq(RedirectResource(443, "server.example.com"))
        response = await treq.post("http://h.example.com/p", data=b"x", allow_redirects=False)
        self.assertEqual(response.code, 301)
