"""The user control channel ``/control.ashx`` (spec: control-protocol.md).

* :mod:`~meshd.control.auth`     who is connecting (cookie, x-meshauth, ?auth=, tokens)
* :mod:`~meshd.control.session`  one logged-in user: first frames, requests, events
* :mod:`~meshd.control.actions`  the dispatch table and one module per area
* :mod:`~meshd.control.rights`   site and device-group rights
* :mod:`~meshd.control.hub`      what all sessions share; event dispatch helpers
* :mod:`~meshd.control.protocol` the Autobahn adapter and :func:`control_resource`
"""

from __future__ import annotations

from typing import Any, Callable

from meshd.agent.identity import encode_id
from meshd.control.hub import ControlHub
from meshd.control.protocol import control_resource

__all__ = ["ControlHub", "control_hub", "control_resource", "server_info"]

#: MeshCentral 1.1.55's default domain feature bits, as its web app and meshctrl see them.
DEFAULT_FEATURES = 2148669952
DEFAULT_FEATURES2 = 144
#: Feature bits: second factors can be used; enrolment is mandatory (force2factor).
FEATURE_2FA = 0x00001000
FEATURE_FORCE_2FA = 0x00040000


def server_info(*, name: str, port: int, redirport: int, mpsport: int, tls_hash: str,
                agent_server_id: str, cert_expire_ms: int | None = None,
                force2factor: bool = False) -> dict[str, Any]:
    """The ``serverinfo`` object (spec §3); ``serverTime`` is added per session."""
    info: dict[str, Any] = {
        "domain": "", "name": name, "mpsname": name, "mpsport": mpsport, "port": port,
        "emailcheck": False, "domainauth": False, "serverTime": 0, "features": DEFAULT_FEATURES,
        "features2": DEFAULT_FEATURES2, "languages": ["en"], "tlshash": tls_hash.upper(),
        "agentCertHash": encode_id(bytes.fromhex(agent_server_id)), "https": True,
        "redirport": redirport, "magenturl": f"mc://{name}:{port}", "domainsuffix": "",
        "logoutonidlesessiontimeout": True}
    if force2factor:
        info["features"] |= FEATURE_2FA | FEATURE_FORCE_2FA
    if cert_expire_ms is not None:
        info["certExpire"] = cert_expire_ms  # sent to full administrators only
    return info


def control_hub(*, settings: Any, certificates: Any, web_hash: Callable[[], str],
                domain: Any = None, **collaborators: Any) -> ControlHub:
    """The hub of a server built from its settings, certificates and default domain
    (used by service.py)."""
    from meshd.relay.tunnel import SessionPolicy

    policy = SessionPolicy.from_domain(domain) if domain is not None else SessionPolicy()
    expire = certificates.web.cert.not_valid_after_utc.timestamp()
    name = settings.cert or "localhost"
    force2factor = bool(getattr(settings, "force2factor", False))
    # settings.allowLoginToken: meshd.config does not read it yet, so off (MeshCentral's
    # default) until it does.
    allow_login_token = getattr(settings, "allow_login_token", False) is True

    def info() -> dict[str, Any]:
        result = server_info(name=name, port=settings.port, redirport=settings.redir_port,
                             mpsport=settings.mps_port, tls_hash=web_hash(),
                             agent_server_id=certificates.agent.public_key_sha384(),
                             cert_expire_ms=int(expire * 1000), force2factor=force2factor)
        if policy.consent:
            result["consent"] = policy.consent  # the domain's userConsentFlags
        return result

    def public_url() -> str:
        return f"https://{name}:{settings.port}" if settings.port != 443 else f"https://{name}"

    if domain is not None and "title" not in collaborators:
        collaborators["title"] = domain.title
    return ControlHub(server_info=info, public_url=public_url, force2factor=force2factor,
                      allow_login_token=allow_login_token, session_policy=policy,
                      **collaborators)
