"""ACME (RFC 8555, Let's Encrypt) for the web certificate: ordered, renewed, hot-swapped.

Modules:

``policy``     when to order, back-off, failures in plain words (pure functions)
``challenge``  :class:`ChallengeResource`, the http-01 responder for the HTTP port
``issuer``     one order against the CA: the ``acme`` library's blocking ``ClientV2`` on a
               one-thread pool, the waits on reactor timers (see its docstring for why)
``storage``    account key, state file, atomic install of the certificate files
``service``    :class:`AcmeService`, the schedule: at start, daily, retries with back-off
``info``       :func:`~meshd.acme.info.certinfo_lines` for ``meshd-admin certinfo``

Wiring (``meshd/service.py``)::

    challenges = ChallengeResource()
    redirect = Site(with_acme_challenges(RedirectResource(...), challenges))
    complete_interrupted_swap(datapath)        # before the certificates are loaded
    AcmeService(config.letsencrypt, datapath, web_context, challenges, reactor,
                on_new_certificate=..., http_port=settings.redir_port).setServiceParent(root)

Agents are not lost across a renewal: they authenticate the server with the separate agent
certificate, which ACME never touches; the web certificate hash they check is the one of
the TLS connection they are on, and ``on_new_certificate`` tells the server the new one.
"""

from meshd.acme.challenge import ChallengeResource, with_acme_challenges
from meshd.acme.service import AcmeService
from meshd.acme.storage import complete_interrupted_swap

__all__ = [
    "AcmeService",
    "ChallengeResource",
    "complete_interrupted_swap",
    "with_acme_challenges",
]
