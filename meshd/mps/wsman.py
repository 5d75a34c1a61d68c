"""WS-Management calls to Intel AMT over HTTP/1.1 with digest authentication: sans-IO.

Who sends what for one call (the Twisted side, :mod:`meshd.mps.amtpower`, puts each
request on a fresh APF channel to the device's port 16992)::

    server: POST /wsman HTTP/1.1 + SOAP envelope, no Authorization
    AMT:    401, WWW-Authenticate: Digest realm="Digest:<32 hex>", nonce="...", qop="auth"
    server: POST /wsman again, Authorization: Digest (MD5, qop=auth, nc, cnonce)
    AMT:    200 + SOAP answer | 401 (wrong user name or password) | 4xx/5xx (SOAP fault)

A 401 whose challenge says ``stale=true`` (the nonce expired between the two requests)
earns one more try with the new nonce; any other 401 to an authenticated request means
the credentials are wrong.  Each request goes on its own channel, as MeshCentral's WSMAN
stack does with real AMT firmware (it closes the channel after every 401), so one call's
failure never leaves a half-read answer in the way of the next.

Limits, checked as bytes arrive and before anything larger is buffered: status line and
headers 8 KiB, body 64 KiB (AMT answers a method call with about 1.5 KiB), a chunk-size
line 1 KiB.  An answer that breaks them, or is not HTTP/1.x, raises :class:`WsmanError`;
so does an XML body with a DTD (SOAP forbids them, and refusing them rules out entity
expansion).  Error texts are meant for users: they say what went wrong, never a secret.

The power actions (MeshCentral 1.1.55, ``meshuser.js`` ``poweraction`` and
``amt/amt.js`` ``RequestPowerStateChange``): control action 302 asks for power state 2
(power on), 308 for 8 (power off, soft) and 310 for 10 (master bus reset), on the
managed element ``CIM_ComputerSystem`` named ``ManagedSystem``.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Iterable, Optional

__all__ = [
    "AuthenticationFailed",
    "DigestChallenge",
    "HttpResponse",
    "HttpResponseParser",
    "MAX_BODY",
    "MAX_HEAD",
    "POWER_ACTIONS",
    "POWER_STATE_NAMES",
    "RETURN_VALUES",
    "WSMAN_PORT",
    "WsmanError",
    "WsmanExchange",
    "digest_authorization",
    "fault_reason",
    "parse_digest_challenge",
    "power_state_change_envelope",
    "power_state_change_result",
    "wsman_request",
]

#: AMT's plain-HTTP WSMAN port, reached through the CIRA tunnel.
WSMAN_PORT = 16992
MAX_HEAD = 8 * 1024
MAX_BODY = 64 * 1024
MAX_CHUNK_LINE = 1024
#: Requests in one call: without authentication, with it, once more after a stale nonce.
MAX_ATTEMPTS = 3

#: Control-channel ``actiontype`` -> CIM power state (MeshCentral: actiontype - 300).
POWER_ACTIONS = {302: 2, 308: 8, 310: 10}
POWER_STATE_NAMES = {2: "power on", 8: "power off", 10: "reset"}

#: ``RequestPowerStateChange`` return values (DMTF CIM_PowerManagementService).
RETURN_VALUES = {
    0: "Completed with No Error",
    1: "Not Supported",
    2: "Unknown or Unspecified Error",
    3: "Cannot complete within Timeout Period",
    4: "Failed",
    5: "Invalid Parameter",
    6: "In Use",
    4096: "Method Parameters Checked - Job Started",
    4097: "Invalid State Transition",
    4098: "Use of Timeout Parameter Not Supported",
    4099: "Busy",
}

_CIM = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
_POWER_SERVICE = _CIM + "CIM_PowerManagementService"
_ADDRESSING = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
_WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"


class WsmanError(Exception):
    """The call failed; ``str()`` says why in words fit for a user."""


class AuthenticationFailed(WsmanError):
    """Intel AMT refused the user name or password."""


# -- HTTP answers ---------------------------------------------------------------------------

@dataclass(frozen=True)
class HttpResponse:
    """One complete HTTP answer; header names are lower case, in arrival order."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (any case), or None."""
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]


_STATUS_LINE = re.compile(r"HTTP/1\.[01] ([1-5][0-9][0-9])(?: (.*))?")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(r"[0-9]{1,10}")


class HttpResponseParser:
    """Bytes of one HTTP/1.x answer in, one :class:`HttpResponse` out.

    ``feed`` returns the answer once it is complete (and keeps returning it; bytes after
    it are ignored), else None.  ``finish`` is called when the connection ends: it
    completes an answer delimited by the close, or raises.  Interim 1xx answers are
    skipped.  Every violation raises :class:`WsmanError`, and the parser stays failed.
    """

    def __init__(self, *, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> None:
        self._max_head = max_head
        self._max_body = max_body
        self._buffer = bytearray()
        self._state = "head"
        self._status = 0
        self._reason = ""
        self._headers: tuple[tuple[str, str], ...] = ()
        self._body = bytearray()
        self._remaining = 0
        self._trailer_bytes = 0
        self._error: Optional[WsmanError] = None
        self.response: Optional[HttpResponse] = None

    def feed(self, data: bytes) -> Optional[HttpResponse]:
        if self._error is not None:
            raise self._error
        if self.response is not None:
            return self.response
        self._buffer += data
        try:
            while self.response is None and self._step():
                pass
        except WsmanError as error:
            self._error = error
            self._buffer.clear()
            raise
        return self.response

    def finish(self) -> HttpResponse:
        """The connection ended: the answer, if it is complete now."""
        if self._error is not None:
            raise self._error
        if self.response is None and self._state == "until-close":
            self._complete()
        if self.response is None:
            self._error = WsmanError("the connection closed before the answer was complete"
                                     if self._state != "head" or self._buffer
                                     else "the connection closed without an answer")
            raise self._error
        return self.response

    # -- the states; each returns True when it made progress --

    def _step(self) -> bool:
        state = self._state
        if state == "head":
            return self._head()
        if state == "length":
            take = min(self._remaining, len(self._buffer))
            self._body += self._buffer[:take]
            del self._buffer[:take]
            self._remaining -= take
            if not self._remaining:
                self._complete()
                return True
            return False
        if state == "chunk-size":
            return self._chunk_size()
        if state == "chunk-data":
            take = min(self._remaining, len(self._buffer))
            self._body += self._buffer[:take]
            del self._buffer[:take]
            self._remaining -= take
            if self._remaining:
                return False
            self._state = "chunk-end"
            return True
        if state == "chunk-end":
            if len(self._buffer) < 2:
                return False
            if self._buffer[:2] != b"\r\n":
                raise WsmanError("malformed chunked answer (no CRLF after a chunk)")
            del self._buffer[:2]
            self._state = "chunk-size"
            return True
        if state == "trailers":
            return self._trailer()
        # until-close: everything is body until the connection ends.
        if len(self._body) + len(self._buffer) > self._max_body:
            raise WsmanError(f"the answer is larger than {self._max_body} bytes")
        self._body += self._buffer
        self._buffer.clear()
        return False

    def _head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > self._max_head:
                raise WsmanError(f"the answer's headers are longer than {self._max_head} bytes")
            return False
        if end + 4 > self._max_head:
            raise WsmanError(f"the answer's headers are longer than {self._max_head} bytes")
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[:end + 4]
        lines = head.split("\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise WsmanError("the answer is not HTTP/1.x")
        status = int(match.group(1))
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or _HEADER_NAME.fullmatch(name) is None:
                raise WsmanError("the answer has a malformed header line")
            headers.append((name.lower(), value.strip(" \t")))
        if 100 <= status < 200:
            return True  # an interim answer (100 Continue): the real one follows
        self._status, self._reason = status, match.group(2) or ""
        self._headers = tuple(headers)
        self._choose_framing(status, headers)
        return True

    def _choose_framing(self, status: int, headers: list[tuple[str, str]]) -> None:
        codings = [c.strip().lower() for name, value in headers
                   if name == "transfer-encoding" for c in value.split(",") if c.strip()]
        lengths = {value.strip() for name, value in headers if name == "content-length"}
        if status in (204, 304):
            self._complete()
        elif codings:
            # RFC 9112 6.3: chunked last -> chunked; any other coding -> read until close.
            self._state = "chunk-size" if codings[-1] == "chunked" else "until-close"
        elif lengths:
            if len(lengths) > 1 or not all(_DIGITS.fullmatch(v) for v in lengths):
                raise WsmanError("the answer has an invalid Content-Length")
            length = int(lengths.pop())
            if length > self._max_body:
                raise WsmanError(f"the answer is larger than {self._max_body} bytes")
            self._remaining = length
            self._state = "length"
            if not length:
                self._complete()
        else:
            self._state = "until-close"

    def _chunk_size(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_CHUNK_LINE:
                raise WsmanError("malformed chunked answer (chunk-size line too long)")
            return False
        if end > MAX_CHUNK_LINE:
            raise WsmanError("malformed chunked answer (chunk-size line too long)")
        text = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
        del self._buffer[:end + 2]
        if not text or len(text) > 8 or any(c not in b"0123456789abcdefABCDEF" for c in text):
            raise WsmanError("malformed chunked answer (bad chunk size)")
        size = int(text, 16)
        if size == 0:
            self._state = "trailers"
            return True
        if len(self._body) + size > self._max_body:
            raise WsmanError(f"the answer is larger than {self._max_body} bytes")
        self._remaining = size
        self._state = "chunk-data"
        return True

    def _trailer(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if self._trailer_bytes + len(self._buffer) > self._max_head:
                raise WsmanError("the answer's trailers are too long")
            return False
        self._trailer_bytes += end + 2
        if self._trailer_bytes > self._max_head:
            raise WsmanError("the answer's trailers are too long")
        del self._buffer[:end + 2]
        if end == 0:
            self._complete()
        return True

    def _complete(self) -> None:
        self._state = "done"
        self.response = HttpResponse(self._status, self._reason, self._headers,
                                     bytes(self._body))
        self._body.clear()
        self._buffer.clear()


# -- HTTP digest authentication (RFC 7616 with MD5, RFC 2617) --------------------------------

@dataclass(frozen=True)
class DigestChallenge:
    """A usable ``Digest`` challenge; ``qop`` is the one chosen (None: RFC 2069 style)."""

    realm: str
    nonce: str
    qop: Optional[str] = None
    opaque: Optional[str] = None
    algorithm: Optional[str] = None  # as the device wrote it; MD5 or MD5-sess
    stale: bool = False


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BARE_VALUE = re.compile(r"[^\s,\"]*")


def _challenges(text: str) -> list[tuple[str, dict[str, str]]]:
    """``WWW-Authenticate`` value -> [(scheme, {param: value})].

    A token followed by ``=`` is a parameter of the current challenge; any other token
    starts a new challenge (``Negotiate, Digest realm="x"`` is two)."""
    found: list[tuple[str, dict[str, str]]] = []
    index, size = 0, len(text)
    while index < size:
        if text[index] in " \t,":
            index += 1
            continue
        match = _TOKEN.match(text, index)
        if match is None:
            raise WsmanError("Intel AMT sent a malformed WWW-Authenticate header")
        token, index = match.group(), match.end()
        after = index
        while after < size and text[after] in " \t":
            after += 1
        if after >= size or text[after] != "=":
            found.append((token.lower(), {}))
            continue
        if not found:
            raise WsmanError("Intel AMT sent a malformed WWW-Authenticate header")
        index = after + 1
        while index < size and text[index] in " \t":
            index += 1
        if index < size and text[index] == '"':
            value_chars: list[str] = []
            index += 1
            while True:
                if index >= size:
                    raise WsmanError("Intel AMT sent a malformed WWW-Authenticate header")
                char = text[index]
                if char == "\\" and index + 1 < size:
                    value_chars.append(text[index + 1])
                    index += 2
                elif char == '"':
                    index += 1
                    break
                else:
                    value_chars.append(char)
                    index += 1
            value = "".join(value_chars)
        else:
            bare = _BARE_VALUE.match(text, index)
            assert bare is not None  # the pattern matches the empty string
            value, index = bare.group(), bare.end()
        found[-1][1].setdefault(token.lower(), value)
    return found


def _digest_from(params: dict[str, str]) -> DigestChallenge:
    realm, nonce = params.get("realm"), params.get("nonce")
    if realm is None or not nonce:
        raise WsmanError("Intel AMT's digest challenge has no realm or nonce")
    algorithm = params.get("algorithm")
    if algorithm is not None and algorithm.lower() not in ("md5", "md5-sess"):
        raise WsmanError(f"Intel AMT asked for the unsupported digest algorithm {algorithm!r}")
    qop: Optional[str] = None
    if "qop" in params:
        offered = [q.strip().lower() for q in params["qop"].split(",")]
        if "auth" in offered:
            qop = "auth"
        elif "auth-int" in offered:
            qop = "auth-int"
        else:
            raise WsmanError(f"Intel AMT asked for the unsupported digest qop "
                             f"{params['qop']!r}")
    return DigestChallenge(realm=realm, nonce=nonce, qop=qop, opaque=params.get("opaque"),
                           algorithm=algorithm, stale=params.get("stale", "").lower() == "true")


def parse_digest_challenge(values: Iterable[str]) -> DigestChallenge:
    """The first usable Digest challenge among ``WWW-Authenticate`` header values."""
    problem: Optional[WsmanError] = None
    for value in values:
        for scheme, params in _challenges(value):
            if scheme != "digest":
                continue
            try:
                return _digest_from(params)
            except WsmanError as error:
                problem = problem or error
    raise problem or WsmanError("Intel AMT asked for authentication without a digest "
                                "challenge")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()  # noqa: S324 - HTTP digest is MD5


def _quoted(value: str, what: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise WsmanError(f"the {what} contains control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def digest_authorization(challenge: DigestChallenge, *, user: str, password: str,
                         method: str, uri: str, cnonce: str, nc: int,
                         body: bytes = b"") -> str:
    """The ``Authorization`` header value answering ``challenge`` (request ``nc``)."""
    ha1 = _md5(f"{user}:{challenge.realm}:{password}")
    if (challenge.algorithm or "").lower() == "md5-sess":
        ha1 = _md5(f"{ha1}:{challenge.nonce}:{cnonce}")
    if challenge.qop == "auth-int":
        ha2 = _md5(f"{method}:{uri}:{hashlib.md5(body).hexdigest()}")  # noqa: S324
    else:
        ha2 = _md5(f"{method}:{uri}")
    count = f"{nc:08x}"
    if challenge.qop is None:
        response = _md5(f"{ha1}:{challenge.nonce}:{ha2}")
    else:
        response = _md5(f"{ha1}:{challenge.nonce}:{count}:{cnonce}:{challenge.qop}:{ha2}")
    parts = [f"username={_quoted(user, 'Intel AMT user name')}",
             f"realm={_quoted(challenge.realm, 'digest realm')}",
             f"nonce={_quoted(challenge.nonce, 'digest nonce')}",
             f"uri={_quoted(uri, 'request path')}"]
    if challenge.algorithm is not None:
        parts.append(f"algorithm={challenge.algorithm}")
    if challenge.qop is not None:
        parts += [f"qop={challenge.qop}", f"nc={count}",
                  f"cnonce={_quoted(cnonce, 'client nonce')}"]
    parts.append(f'response="{response}"')
    if challenge.opaque is not None:
        parts.append(f"opaque={_quoted(challenge.opaque, 'digest opaque value')}")
    return "Digest " + ", ".join(parts)


def wsman_request(body: bytes, *, host: str, port: int = WSMAN_PORT,
                  authorization: Optional[str] = None) -> bytes:
    """``POST /wsman`` carrying ``body`` (a SOAP envelope)."""
    if any(c in host for c in "\r\n ") or not host:
        raise WsmanError("invalid host name for the Host header")
    lines = ["POST /wsman HTTP/1.1", f"Host: {host}:{port}"]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    lines += ["Content-Type: application/soap+xml; charset=utf-8",
              f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


class WsmanExchange:
    """One WSMAN POST with digest authentication, without I/O.

    ``request()`` gives the bytes to send on a fresh channel; ``received(answer)`` returns
    the final answer, or None when another ``request()`` is due (after the challenge), or
    raises :class:`WsmanError` (:class:`AuthenticationFailed` for refused credentials).
    ``cnonce`` is the client nonce (random, from the caller).
    """

    def __init__(self, body: bytes, *, user: str, password: str, host: str, cnonce: str,
                 port: int = WSMAN_PORT) -> None:
        self.body = body
        self._user = user
        self._password = password
        self._host = host
        self._port = port
        self._cnonce = cnonce
        self._challenge: Optional[DigestChallenge] = None
        self._nc = 0
        self._authorized = False  # the last request carried Authorization
        self._stale_retried = False
        self.attempts = 0

    def request(self) -> bytes:
        if self.attempts >= MAX_ATTEMPTS:
            raise WsmanError("too many attempts")
        self.attempts += 1
        authorization = None
        if self._challenge is not None:
            self._nc += 1
            authorization = digest_authorization(
                self._challenge, user=self._user, password=self._password, method="POST",
                uri="/wsman", cnonce=self._cnonce, nc=self._nc, body=self.body)
        self._authorized = authorization is not None
        return wsman_request(self.body, host=self._host, port=self._port,
                             authorization=authorization)

    def received(self, response: HttpResponse) -> Optional[HttpResponse]:
        if response.status != 401:
            return response
        challenge = parse_digest_challenge(response.headers_named("www-authenticate"))
        if not self._authorized:
            self._challenge, self._nc = challenge, 0
            return None
        if challenge.stale and not self._stale_retried:
            self._stale_retried = True
            self._challenge, self._nc = challenge, 0
            return None
        raise AuthenticationFailed("Intel AMT refused the user name or password")


# -- SOAP ----------------------------------------------------------------------------------

_ENVELOPE = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<Envelope xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    f'xmlns:a="{_ADDRESSING}" xmlns:w="{_WSMAN}" '
    'xmlns="http://www.w3.org/2003/05/soap-envelope">'
    '<Header><a:Action>{resource}/{method}</a:Action><a:To>/wsman</a:To>'
    '<w:ResourceURI>{resource}</w:ResourceURI><a:MessageID>{message_id}</a:MessageID>'
    f'<a:ReplyTo><a:Address>{_ADDRESSING}/role/anonymous</a:Address></a:ReplyTo>'
    '<w:OperationTimeout>PT60S</w:OperationTimeout></Header>'
    '<Body><r:{method}_INPUT xmlns:r="{resource}">{arguments}</r:{method}_INPUT></Body>'
    '</Envelope>')

# The managed element: the computer system AMT manages (MeshCentral's amt.js).
_MANAGED_SYSTEM = (
    f'<Address xmlns="{_ADDRESSING}">{_ADDRESSING}</Address>'
    f'<ReferenceParameters xmlns="{_ADDRESSING}">'
    f'<ResourceURI xmlns="{_WSMAN}">{_CIM}CIM_ComputerSystem</ResourceURI>'
    f'<SelectorSet xmlns="{_WSMAN}">'
    '<Selector Name="CreationClassName">CIM_ComputerSystem</Selector>'
    '<Selector Name="Name">ManagedSystem</Selector></SelectorSet></ReferenceParameters>')


def power_state_change_envelope(power_state: int, message_id: int = 1) -> bytes:
    """``CIM_PowerManagementService.RequestPowerStateChange(PowerState, ManagedElement)``."""
    if not isinstance(power_state, int) or not 1 <= power_state <= 17:
        raise ValueError(f"invalid power state {power_state!r}")
    arguments = (f"<r:PowerState>{power_state}</r:PowerState>"
                 f"<r:ManagedElement>{_MANAGED_SYSTEM}</r:ManagedElement>")
    return _ENVELOPE.format(resource=_POWER_SERVICE, method="RequestPowerStateChange",
                            message_id=int(message_id), arguments=arguments).encode("utf-8")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_xml(body: bytes) -> ElementTree.Element:
    lowered = body[:MAX_BODY].lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        raise WsmanError("the answer contains a DTD (not allowed in SOAP)")
    try:
        return ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise WsmanError("the answer is not well-formed XML") from None


def _body_of(root: ElementTree.Element) -> Optional[ElementTree.Element]:
    if _local(root.tag) != "Envelope":
        return None
    return next((child for child in root if _local(child.tag) == "Body"), None)


def _printable(text: str, limit: int = 200) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in text).strip()
    return cleaned[:limit]


def fault_reason(body: bytes) -> Optional[str]:
    """The text of a SOAP fault in ``body`` (reason, and the subcode if any), or None."""
    try:
        root = _parse_xml(body)
    except WsmanError:
        return None
    soap_body = _body_of(root)
    fault = next((c for c in soap_body if _local(c.tag) == "Fault"), None) \
        if soap_body is not None else None
    if fault is None:
        return None
    reason = next((_printable("".join(e.itertext())) for e in fault.iter()
                   if _local(e.tag) == "Text"), "")
    subcode = next((_printable("".join(v.itertext())) for e in fault.iter()
                    if _local(e.tag) == "Subcode" for v in e if _local(v.tag) == "Value"), "")
    text = f"{reason} ({subcode})" if reason and subcode else (reason or subcode)
    return text or "SOAP fault"


def power_state_change_result(response: HttpResponse) -> int:
    """The ``ReturnValue`` of a ``RequestPowerStateChange`` answer; raises
    :class:`WsmanError` for an HTTP error or an answer without one."""
    if response.status != 200:
        fault = fault_reason(response.body)
        text = f"Intel AMT answered HTTP {response.status}"
        raise WsmanError(f"{text}: {fault}" if fault else text)
    root = _parse_xml(response.body)
    soap_body = _body_of(root)
    if soap_body is None:
        raise WsmanError("the answer is not a SOAP envelope")
    for child in soap_body:
        name = _local(child.tag)
        if name == "Fault":
            raise WsmanError(f"Intel AMT answered with a fault: {fault_reason(response.body)}")
        if name == "RequestPowerStateChange_OUTPUT":
            value = next(("".join(e.itertext()).strip() for e in child
                          if _local(e.tag) == "ReturnValue"), None)
            if value is None or _DIGITS.fullmatch(value) is None:
                raise WsmanError("the answer has no valid ReturnValue")
            return int(value)
    raise WsmanError("the answer is not a RequestPowerStateChange response")
