"""Log output for production: one JSON object a line.

``twistd --logger meshd.logs.json_observer -n meshd`` writes every event as JSON
(``twisted.logger``'s format, with the named fields), ready for journald, Loki or
Elasticsearch.  ``MESHD_LOG_FILE`` sends it to a file instead of standard output.
"""

from __future__ import annotations

import os
import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """The observer factory ``twistd --logger`` calls."""
    path = os.environ.get("MESHD_LOG_FILE")
    if path:
        out = open(path, "a", encoding="utf-8")
    else:
        out = sys.stdout
    return jsonFileLogObserver(out, recordSeparator="")
