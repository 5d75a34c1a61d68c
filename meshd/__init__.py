"""meshd: web-based remote computer management on Twisted."""

__version__ = "0.1.0"
