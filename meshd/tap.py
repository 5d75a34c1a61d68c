"""``twistd meshd``: command-line options and the service maker.

Options take MeshCentral's names so administrators know them; each overrides the
same key of the configuration file.  The file is read and checked in
``postOptions``, so a bad file stops ``twistd`` before it daemonizes.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.python import usage

from meshd.config import Config, ConfigError, load_config


def _port(option: str) -> Any:
    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{option} expects a port number, got {value!r}") from None
        if not 0 <= number <= 65535:
            raise ValueError(f"{option} expects a port number from 0 to 65535, got {number}")
        return number
    coerce.coerceDoc = "A port number, 0 disables."  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Start the meshd server. With no options it uses ./meshd-data and the embedded "
                "store, and listens on 443 (HTTPS), 80 (redirect) and 4433 (Intel AMT MPS).")

    optParameters = [
        ["config", "c", None, "JSON configuration file (MeshCentral's config.json format)."],
        ["datapath", None, None, "Data folder: certificates, database, keys "
                                 "(default ./meshd-data)."],
        ["port", None, None, "HTTPS port (default 443).", _port("--port")],
        ["redirport", None, None, "HTTP redirect port (default 80; 0 disables).",
         _port("--redirport")],
        ["mpsport", None, None, "Intel AMT CIRA (MPS) port (default 4433; 0 disables).",
         _port("--mpsport")],
        ["cert", None, None, "Host name in the web certificate (default: this machine's name)."],
        ["bind", None, None, "Listen on this address only (default: all)."],
        ["mongodb", None, None, "MongoDB URL; without it the embedded SQLite store is used."],
    ]
    optFlags = [
        ["fastcert", None, "Create RSA-2048 certificates instead of RSA-3072."],
        ["tlsoffload", None, "A reverse proxy terminates TLS: serve plain HTTP on --port."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.config: Optional[Config] = None

    # option -> settings key as MeshCentral spells it
    _SETTINGS = {"port": "port", "redirport": "redirPort", "mpsport": "mpsPort", "cert": "cert",
                 "bind": "portBind", "mongodb": "mongoDb", "datapath": "dataPath",
                 "fastcert": "fastCert", "tlsoffload": "tlsOffload"}

    def postOptions(self) -> None:
        overrides = {}
        for option, key in self._SETTINGS.items():
            value = self[option]
            if option in ("fastcert", "tlsoffload"):
                value = True if value else None
            if value is not None:
                overrides[key] = ("--" + option, value)
        try:
            self.config = load_config(self["config"], overrides)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options, reactor: Any = None) -> Any:
    from meshd.service import StartupError, make_service

    if reactor is None:
        from twisted.internet import reactor as global_reactor
        reactor = global_reactor
    assert options.config is not None
    try:
        return make_service(options.config, reactor=reactor, datapath=options["datapath"])
    except StartupError as e:
        raise SystemExit(f"meshd: {e}") from None
