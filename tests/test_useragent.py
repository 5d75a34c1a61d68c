"""Tests for meshd.web.useragent: browser and OS of login events, as MeshCentral writes them."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshd.web.useragent import describe

CASES = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91", ("Edge/120.0.2210.91", "Windows/10")),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) Version/17.1 Safari/605.1.15", ("Safari/17.1", "Mac OS/10.15.7")),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
     "like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1",
     ("Mobile Safari/17.1.2", "iOS/17.1.2")),
    ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
     ("Firefox/121.0", "Ubuntu")),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.6099.144 Mobile Safari/537.36", ("Chrome/120.0.6099.144", "Android/14")),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "HeadlessChrome/120.0.0.0 Safari/537.36", ("Chrome Headless/120.0.0.0", "Linux")),
    ("curl/8.5.0", ("curl/8.5.0", "Unknown")),
    ("", ("Unknown", "Unknown")),
    (None, ("Unknown", "Unknown")),
]


class DescribeTests(SynchronousTestCase):
    def test_user_agents(self) -> None:
        """Common browsers and systems are named with their versions; others Unknown."""
        for agent, expected in CASES:
            self.assertEqual(describe(agent), expected, agent)

    def test_client_hints(self) -> None:
        """Sec-CH-UA-Platform(-Version) win over the user agent; Windows 13+ is 11."""
        agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0.0.0"
        self.assertEqual(describe(agent, '"Windows"', '"15.0.0"'),
                         ("Chrome/120.0.0.0", "Windows/11"))
        self.assertEqual(describe(agent, '"Windows"', '"10.0.0"'),
                         ("Chrome/120.0.0.0", "Windows/10.0.0"))
        self.assertEqual(describe(agent, '"Linux"', '""'), ("Chrome/120.0.0.0", "Linux"))
