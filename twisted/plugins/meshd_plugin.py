"""twistd plugin: ``twistd -n meshd``.  All logic lives in :mod:`meshd.tap`."""

from twisted.application.service import ServiceMaker

meshd = ServiceMaker(
    "meshd",
    "meshd.tap",
    "Web-based remote computer management server (MeshCentral-compatible)",
    "meshd",
)
