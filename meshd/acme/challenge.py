"""The http-01 challenge responder, served on the plain-HTTP (redirect) port.

Who asks what: while an order is pending, the ACME CA's validation servers (several, from
different networks) send ``GET /.well-known/acme-challenge/<token>`` to port 80 of every
name in the order, with any ``Host``; the answer must be the key authorization
``<token>.<account key thumbprint>`` as the whole body (RFC 8555 section 8.3). The CA may
follow a redirect, but answering directly avoids depending on the HTTPS port.

Limits: a token is base64url (RFC 8555 requires at least 128 bits of entropy; CAs send 43
characters); anything longer than 128 characters or with other characters, any deeper path,
and any unknown token get a 404 without touching the table. The table holds only the tokens
of the order in progress (a handful) and is emptied when the order ends.
"""

from __future__ import annotations

import string

from twisted.web.resource import Resource
from twisted.web.server import Request

__all__ = ["ChallengeResource", "with_acme_challenges"]

CHALLENGE_PATH = (b".well-known", b"acme-challenge")

_TOKEN_CHARACTERS = frozenset((string.ascii_letters + string.digits + "-_").encode("ascii"))
_MAX_TOKEN_LENGTH = 128


def _valid_token(token: bytes) -> bool:
    return 0 < len(token) <= _MAX_TOKEN_LENGTH and all(c in _TOKEN_CHARACTERS for c in token)


class ChallengeResource(Resource):
    """``/.well-known/acme-challenge/<token>``: the key authorization as text/plain, else 404.

    Mount it at ``/.well-known/acme-challenge/`` (it consumes the remaining path segment
    itself), or wrap a site's root with :func:`with_acme_challenges`.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._answers: dict[bytes, bytes] = {}

    def add(self, token: str, key_authorization: str) -> None:
        """Answer ``token`` with ``key_authorization`` until :meth:`remove`."""
        encoded = token.encode("ascii")
        if not _valid_token(encoded):
            raise ValueError(f"not an ACME challenge token: {token!r}")
        self._answers[encoded] = key_authorization.encode("ascii")

    def remove(self, token: str) -> None:
        """Stop answering ``token`` (no error if it was not there)."""
        self._answers.pop(token.encode("ascii", "replace"), None)

    def tokens(self) -> list[str]:
        """The tokens answered right now."""
        return [token.decode("ascii") for token in self._answers]

    def render_GET(self, request: Request) -> bytes:
        """``GET <token>`` (HEAD too, through twisted.web): 200 text/plain key authorization."""
        postpath = request.postpath or []
        answer = None
        if len(postpath) == 1 and _valid_token(postpath[0]):
            answer = self._answers.get(postpath[0])
        request.setHeader(b"Content-Type", b"text/plain; charset=us-ascii")
        request.setHeader(b"Cache-Control", b"no-store")
        if answer is None:
            request.setResponseCode(404)
            return b"Not found\n"
        return answer


class _AcmeRoot(Resource):
    """``/.well-known/acme-challenge/*`` to the challenges, every other path to ``fallback``."""

    def __init__(self, fallback: Resource, challenges: ChallengeResource) -> None:
        super().__init__()
        self._fallback = fallback
        self._challenges = challenges

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        prepath, postpath = request.prepath, request.postpath
        assert prepath is not None and postpath is not None  # set by Site before traversal
        if path == CHALLENGE_PATH[0] and postpath[:1] == [CHALLENGE_PATH[1]]:
            # Consume "acme-challenge" so the challenge resource sees [token] as its postpath.
            prepath.append(postpath.pop(0))
            return self._challenges
        # The fallback (the redirect) is a leaf that reads request.uri; put the segment back
        # so a non-leaf fallback would see the whole path too.
        postpath.insert(0, prepath.pop())
        return self._fallback

    def render(self, request: Request) -> bytes:
        """``/`` itself goes to the fallback."""
        return self._fallback.render(request)  # type: ignore[no-any-return]


def with_acme_challenges(fallback: Resource, challenges: ChallengeResource) -> Resource:
    """A site root serving ``challenges`` at ``/.well-known/acme-challenge/`` and ``fallback``
    (e.g. the HTTPS redirect) everywhere else: ``Site(with_acme_challenges(redirect, ch))``."""
    return _AcmeRoot(fallback, challenges)
