"""The HTTPS site: every path the browser, agents and tools use is mounted in :func:`build_root`."""

from meshd.web.root import access_log_line, build_root

__all__ = ["access_log_line", "build_root"]
