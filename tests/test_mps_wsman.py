"""meshd.mps.wsman without I/O: digest authentication, the HTTP answer parser (fed whole,
at every split point and byte by byte), the SOAP envelope and answers, and the exchange's
decisions (challenge, stale nonce, refused credentials)."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ElementTree
from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from meshd.mps.wsman import (
    MAX_BODY,
    MAX_HEAD,
    POWER_ACTIONS,
    AuthenticationFailed,
    DigestChallenge,
    HttpResponse,
    HttpResponseParser,
    WsmanError,
    WsmanExchange,
    digest_authorization,
    fault_reason,
    parse_digest_challenge,
    power_state_change_envelope,
    power_state_change_result,
    wsman_request,
)

AMT_CHALLENGE = ('Digest realm="Digest:56ABC7BE224EF620C69EB88F01071DC8", '
                 'nonce="fVNueyEAAAAAAAAAcO8WqJ8s+WdyFUIY",stale="false",qop="auth"')
CIM = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
SERVICE = CIM + "CIM_PowerManagementService"


def amt_output(value: str) -> bytes:
    """An answer shaped like AMT 11's to RequestPowerStateChange."""
    return ('<?xml version="1.0" encoding="UTF-8"?><a:Envelope '
            'xmlns:a="http://www.w3.org/2003/05/soap-envelope" '
            'xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
            f'xmlns:g="{SERVICE}"><a:Header><b:RelatesTo>1</b:RelatesTo></a:Header>'
            f'<a:Body><g:RequestPowerStateChange_OUTPUT><g:ReturnValue>{value}'
            '</g:ReturnValue></g:RequestPowerStateChange_OUTPUT></a:Body></a:Envelope>'
            ).encode()


FAULT = (b'<?xml version="1.0" encoding="UTF-8"?><a:Envelope '
         b'xmlns:a="http://www.w3.org/2003/05/soap-envelope" '
         b'xmlns:c="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><a:Body><a:Fault>'
         b'<a:Code><a:Value>a:Sender</a:Value><a:Subcode><a:Value>c:AccessDenied</a:Value>'
         b'</a:Subcode></a:Code><a:Reason><a:Text xml:lang="en-US">The sender was not '
         b'authorized to access the resource.</a:Text></a:Reason></a:Fault></a:Body>'
         b'</a:Envelope>')


def response(status: int = 200, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()
             ) -> HttpResponse:
    return HttpResponse(status, "", headers, body)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class DigestTests(SynchronousTestCase):
    def test_rfc2617_example(self) -> None:
        """The RFC 2617 section 3.5 example gives its published response, and every
        field the server needs is in the header (qop and nc unquoted)."""
        challenge = parse_digest_challenge([
            'Digest realm="testrealm@host.com", qop="auth,auth-int", '
            'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
            'opaque="5ccc069c403ebaf9f0171e9517f40e41"'])
        self.assertEqual(challenge.qop, "auth")
        header = digest_authorization(challenge, user="Mufasa", password="Circle Of Life",
                                      method="GET", uri="/dir/index.html", cnonce="0a4f113b",
                                      nc=1)
        self.assertEqual(header, (
            'Digest username="Mufasa", realm="testrealm@host.com", '
            'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
            'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
            'opaque="5ccc069c403ebaf9f0171e9517f40e41"'))

    def test_amt_challenge(self) -> None:
        """AMT's challenge (no space before stale and qop) parses to its realm, nonce and
        qop auth; the response is MD5(HA1:nonce:nc:cnonce:auth:HA2) for POST /wsman."""
        challenge = parse_digest_challenge([AMT_CHALLENGE])
        self.assertEqual(challenge, DigestChallenge(
            realm="Digest:56ABC7BE224EF620C69EB88F01071DC8",
            nonce="fVNueyEAAAAAAAAAcO8WqJ8s+WdyFUIY", qop="auth"))
        header = digest_authorization(challenge, user="admin", password="P@ssw0rd",
                                      method="POST", uri="/wsman", cnonce="abc", nc=2)
        ha1 = md5("admin:Digest:56ABC7BE224EF620C69EB88F01071DC8:P@ssw0rd")
        expected = md5(f"{ha1}:fVNueyEAAAAAAAAAcO8WqJ8s+WdyFUIY:00000002:abc:auth:"
                       f"{md5('POST:/wsman')}")
        self.assertIn(f'response="{expected}"', header)
        self.assertIn("nc=00000002", header)

    def test_several_challenges_and_headers(self) -> None:
        """Digest is found after a Negotiate challenge (with a token68) in the same
        header and in a second header; other schemes are ignored."""
        for values in (["Negotiate YII=, " + AMT_CHALLENGE],
                       ["Negotiate", AMT_CHALLENGE],
                       ['Basic realm="x"', AMT_CHALLENGE]):
            self.assertEqual(parse_digest_challenge(values).nonce,
                             "fVNueyEAAAAAAAAAcO8WqJ8s+WdyFUIY", values)

    def test_quoted_escapes_and_requoting(self) -> None:
        """Backslash escapes in the challenge are undone, and quotes and backslashes in
        the user name and realm are escaped again in the answer."""
        challenge = parse_digest_challenge([r'Digest realm="a\"b\\c", nonce="n"'])
        self.assertEqual(challenge.realm, 'a"b\\c')
        header = digest_authorization(challenge, user='u"x', password="p", method="POST",
                                      uri="/wsman", cnonce="c", nc=1)
        self.assertIn(r'username="u\"x"', header)
        self.assertIn(r'realm="a\"b\\c"', header)

    def test_legacy_and_auth_int_and_sess(self) -> None:
        """Without qop the RFC 2069 response is used; auth-int alone hashes the body;
        MD5-sess folds the nonces into HA1 and is echoed as the algorithm."""
        legacy = parse_digest_challenge(['Digest realm="r", nonce="n"'])
        self.assertIsNone(legacy.qop)
        header = digest_authorization(legacy, user="u", password="p", method="POST",
                                      uri="/wsman", cnonce="c", nc=1)
        self.assertIn(f'response="{md5(md5("u:r:p") + ":n:" + md5("POST:/wsman"))}"', header)
        self.assertNotIn("nc=", header)
        integrity = parse_digest_challenge(['Digest realm="r", nonce="n", qop="auth-int"'])
        header = digest_authorization(integrity, user="u", password="p", method="POST",
                                      uri="/wsman", cnonce="c", nc=1, body=b"xyz")
        ha2 = md5("POST:/wsman:" + hashlib.md5(b"xyz").hexdigest())
        self.assertIn(f'response="{md5(md5("u:r:p") + ":n:00000001:c:auth-int:" + ha2)}"',
                      header)
        sess = parse_digest_challenge(['Digest realm="r", nonce="n", qop=auth, '
                                       'algorithm=MD5-sess'])
        header = digest_authorization(sess, user="u", password="p", method="POST",
                                      uri="/wsman", cnonce="c", nc=1)
        ha1 = md5(md5("u:r:p") + ":n:c")
        self.assertIn(f'response="{md5(ha1 + ":n:00000001:c:auth:" + md5("POST:/wsman"))}"',
                      header)
        self.assertIn("algorithm=MD5-sess", header)

    def test_unusable_challenges(self) -> None:
        """No Digest challenge, no nonce, an unsupported algorithm or qop, and malformed
        headers raise WsmanError with a reason."""
        cases = {
            "without a digest challenge": ['Basic realm="x"'],
            "no realm or nonce": ['Digest realm="x"'],
            "unsupported digest algorithm": ['Digest realm="x", nonce="n", algorithm=SHA-256'],
            "unsupported digest qop": ['Digest realm="x", nonce="n", qop="bogus"'],
            "malformed": ['Digest realm="unterminated'],
        }
        for reason, values in cases.items():
            with self.assertRaises(WsmanError) as caught:
                parse_digest_challenge(values)
            self.assertIn(reason, str(caught.exception))
        self.assertRaises(WsmanError, parse_digest_challenge, ['realm="x"'])
        self.assertRaises(WsmanError, parse_digest_challenge, ["@@@"])
        self.assertRaises(WsmanError, parse_digest_challenge, [])

    def test_a_usable_challenge_after_an_unusable_one(self) -> None:
        """A SHA-256 Digest challenge is skipped for the MD5 one that follows it."""
        challenge = parse_digest_challenge(
            ['Digest realm="r", nonce="a", algorithm=SHA-256', AMT_CHALLENGE])
        self.assertEqual(challenge.nonce, "fVNueyEAAAAAAAAAcO8WqJ8s+WdyFUIY")

    def test_control_characters_refused(self) -> None:
        """A user name (or a device value) with CR/LF cannot reach the request headers."""
        challenge = parse_digest_challenge([AMT_CHALLENGE])
        with self.assertRaises(WsmanError):
            digest_authorization(challenge, user="admin\r\nX-Evil: 1", password="p",
                                 method="POST", uri="/wsman", cnonce="c", nc=1)
        bad = DigestChallenge(realm="r\nx", nonce="n", qop="auth")
        self.assertRaises(WsmanError, digest_authorization, bad, user="u", password="p",
                          method="POST", uri="/wsman", cnonce="c", nc=1)

    @given(st.text(max_size=200))
    @settings(max_examples=300, deadline=None)
    def test_random_headers(self, text: str) -> None:
        """Arbitrary header text gives a challenge or WsmanError, nothing else."""
        try:
            parse_digest_challenge([text])
        except WsmanError:
            pass


SAMPLES: dict[str, tuple[bytes, int, bytes]] = {
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml\r\n"
                       b"Content-Length: 11\r\n\r\nhello world", 200, b"hello world"),
    "chunked": (b"HTTP/1.1 200 OK\r\nServer: Intel(R) Active Management Technology 11.8\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n"
                b"0\r\nX-Trailer: yes\r\n\r\n", 200, b"hello world"),
    "interim 100": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 401 Unauthorized\r\n"
                    b"Content-Length: 0\r\n\r\n", 401, b""),
    "no body": (b"HTTP/1.1 204 No Content\r\nContent-Length: 99\r\n\r\n", 204, b""),
    "uppercase hex": (b"HTTP/1.0 500 Error\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"
                      b"A\r\n0123456789\r\n0\r\n\r\n", 500, b"0123456789"),
}


class ParserTests(SynchronousTestCase):
    def feed_in(self, data: bytes, cuts: list[int]) -> Optional[HttpResponse]:
        parser = HttpResponseParser()
        result = None
        start = 0
        for cut in cuts + [len(data)]:
            got = parser.feed(data[start:cut])
            start = cut
            if got is not None:
                result = got
        return result

    def test_samples_whole_split_and_byte_by_byte(self) -> None:
        """Each sample answer parses the same fed whole, split at every point, and one
        byte at a time; the answer is only reported once it is complete."""
        for name, (data, status, body) in SAMPLES.items():
            plans: list[list[int]] = [[]] + [[cut] for cut in range(1, len(data))]
            plans.append(list(range(1, len(data))))
            for cuts in plans:
                result = self.feed_in(data, cuts)
                assert result is not None, (name, cuts)
                self.assertEqual((result.status, result.body), (status, body), (name, cuts))
            parser = HttpResponseParser()
            self.assertIsNone(parser.feed(data[:-1]), name)

    def test_headers_kept(self) -> None:
        """Header names are lower-cased, repeated headers all kept in order."""
        result = HttpResponseParser().feed(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\n"
            b"www-authenticate:  Digest realm=\"r\", nonce=\"n\"\r\nContent-Length: 0\r\n\r\n")
        assert result is not None
        self.assertEqual(result.reason, "Unauthorized")
        self.assertEqual(result.headers_named("WWW-Authenticate"),
                         ["Negotiate", 'Digest realm="r", nonce="n"'])
        self.assertEqual(result.header("content-length"), "0")
        self.assertIsNone(result.header("x-none"))

    def test_until_close(self) -> None:
        """Without length or chunking the body ends with the connection."""
        parser = HttpResponseParser()
        self.assertIsNone(parser.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nab"))
        self.assertIsNone(parser.feed(b"cd"))
        self.assertEqual(parser.finish().body, b"abcd")

    def test_trailing_bytes_ignored(self) -> None:
        """Bytes after a complete answer do not change it."""
        parser = HttpResponseParser()
        first = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 500")
        self.assertEqual(parser.feed(b"more"), first)

    def test_truncated(self) -> None:
        """A connection that ends inside the headers, the body or a chunk, or before any
        answer, is an error (not an empty answer)."""
        for data in (b"", b"HTTP/1.1 200 OK\r\n",
                     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"):
            parser = HttpResponseParser()
            parser.feed(data)
            with self.assertRaises(WsmanError) as caught:
                parser.finish()
            self.assertIn("closed", str(caught.exception))

    def test_oversized(self) -> None:
        """Headers beyond 8 KiB, a Content-Length or chunks beyond 64 KiB, an endless
        chunk-size line or trailers, and a read-until-close body beyond 64 KiB are refused
        as soon as the limit is crossed, before the body is buffered."""
        cases = [
            b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD,
            b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (MAX_BODY + 1),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 2000,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"X: y\r\n" * 2000,
            b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (MAX_BODY + 1),
        ]
        for data in cases:
            parser = HttpResponseParser()
            with self.assertRaises(WsmanError, msg=data[:80]) as caught:
                parser.feed(data)
            self.assertRegex(str(caught.exception), "larger|longer|too long")
            # The parser stays failed.
            self.assertRaises(WsmanError, parser.feed, b"")
            self.assertRaises(WsmanError, parser.finish)
        # Many small chunks add up to the same limit.
        parser = HttpResponseParser()
        parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        with self.assertRaises(WsmanError):
            for _ in range(MAX_BODY // 1000 + 2):
                parser.feed(b"3e8\r\n" + b"x" * 1000 + b"\r\n")

    def test_malformed(self) -> None:
        """Not HTTP, a bad status, header line, Content-Length or chunk framing: a clear
        WsmanError."""
        cases = {
            b"SSH-2.0-OpenSSH\r\n\r\n": "not HTTP",
            b"HTTP/2 200 OK\r\n\r\n": "not HTTP",
            b"HTTP/1.1 20 OK\r\n\r\n": "not HTTP",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n": "header",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n": "header",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n": "Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n": "Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n":
                "Content-Length",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n": "chunk size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n": "chunk size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc": "CRLF",
        }
        for data, reason in cases.items():
            with self.assertRaises(WsmanError, msg=data) as caught:
                HttpResponseParser().feed(data)
            self.assertIn(reason, str(caught.exception))

    @given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
    @settings(max_examples=300, deadline=None)
    def test_random_bytes(self, data: bytes, cuts: list[int]) -> None:
        """Random bytes, split anywhere, give an answer or WsmanError, nothing else."""
        parser = HttpResponseParser()
        try:
            start = 0
            for cut in sorted(c for c in cuts if c <= len(data)) + [len(data)]:
                parser.feed(data[start:cut])
                start = cut
            parser.finish()
        except WsmanError:
            pass

    @given(st.binary(max_size=300))
    @settings(max_examples=200, deadline=None)
    def test_random_chunked_bodies(self, body: bytes) -> None:
        """Any body sent as chunks of any sizes comes back exactly."""
        sizes = [1, 7, 64, 300]
        pieces, index, turn = [], 0, 0
        while index < len(body):
            part = body[index:index + sizes[turn % len(sizes)]]
            pieces.append(b"%x\r\n" % len(part) + part + b"\r\n")
            index += len(part)
            turn += 1
        data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(pieces)
                + b"0\r\n\r\n")
        result = self.feed_in(data, list(range(1, len(data), 3)))
        assert result is not None
        self.assertEqual(result.body, body)


class SoapTests(SynchronousTestCase):
    def test_envelope(self) -> None:
        """The request is MeshCentral's: action and resource of CIM_PowerManagementService,
        To /wsman, the power state, and the managed element CIM_ComputerSystem named
        ManagedSystem (selectors CreationClassName and Name); control actions 302/308/310
        map to power states 2/8/10."""
        self.assertEqual(POWER_ACTIONS, {302: 2, 308: 8, 310: 10})
        body = power_state_change_envelope(8, message_id=7)
        root = ElementTree.fromstring(body)
        soap = "{http://www.w3.org/2003/05/soap-envelope}"
        addressing = "{http://schemas.xmlsoap.org/ws/2004/08/addressing}"
        wsman = "{http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd}"
        self.assertEqual(root.tag, soap + "Envelope")
        header = root.find(soap + "Header")
        assert header is not None
        self.assertEqual(header.findtext(addressing + "Action"),
                         SERVICE + "/RequestPowerStateChange")
        self.assertEqual(header.findtext(addressing + "To"), "/wsman")
        self.assertEqual(header.findtext(wsman + "ResourceURI"), SERVICE)
        self.assertEqual(header.findtext(addressing + "MessageID"), "7")
        inputs = root.find(f"{soap}Body/{{{SERVICE}}}RequestPowerStateChange_INPUT")
        assert inputs is not None
        self.assertEqual(inputs.findtext(f"{{{SERVICE}}}PowerState"), "8")
        element = inputs.find(f"{{{SERVICE}}}ManagedElement")
        assert element is not None
        self.assertEqual(element.findtext(addressing + "Address"),
                         "http://schemas.xmlsoap.org/ws/2004/08/addressing")
        self.assertEqual(element.findtext(f"{addressing}ReferenceParameters/{wsman}ResourceURI"),
                         CIM + "CIM_ComputerSystem")
        selectors = {s.get("Name"): s.text for s in element.iter(wsman + "Selector")}
        self.assertEqual(selectors, {"CreationClassName": "CIM_ComputerSystem",
                                     "Name": "ManagedSystem"})
        self.assertRaises(ValueError, power_state_change_envelope, 0)

    def test_request_bytes(self) -> None:
        """POST /wsman with Host, Authorization when given, the SOAP content type and the
        exact Content-Length; a Host with CR/LF is refused."""
        data = wsman_request(b"<x/>", host="amt.example", authorization="Digest a=1")
        self.assertEqual(data, b"POST /wsman HTTP/1.1\r\nHost: amt.example:16992\r\n"
                               b"Authorization: Digest a=1\r\n"
                               b"Content-Type: application/soap+xml; charset=utf-8\r\n"
                               b"Content-Length: 4\r\n\r\n<x/>")
        self.assertNotIn(b"Authorization", wsman_request(b"", host="h"))
        self.assertRaises(WsmanError, wsman_request, b"", host="h\r\nX: y")

    def test_return_value(self) -> None:
        """The ReturnValue of an AMT-shaped answer is read as an integer."""
        for value in (0, 2, 4096):
            self.assertEqual(power_state_change_result(response(body=amt_output(str(value)))),
                             value)

    def test_bad_answers(self) -> None:
        """Non-XML, a DTD (entity expansion), another envelope, a missing or non-numeric
        ReturnValue, a fault inside a 200, and HTTP errors (with the fault's reason and
        subcode) are clear WsmanErrors."""
        bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
                + amt_output("&b;"))
        cases = {
            b"not xml <": "not well-formed",
            bomb: "DTD",
            b"<Envelope><Body/></Envelope>": "not a RequestPowerStateChange",
            b"<x/>": "not a SOAP envelope",
            amt_output(""): "no valid ReturnValue",
            amt_output("two"): "no valid ReturnValue",
            amt_output("12345678901"): "no valid ReturnValue",
            FAULT: "not authorized",
        }
        for body, reason in cases.items():
            with self.assertRaises(WsmanError, msg=body[:60]) as caught:
                power_state_change_result(response(body=body))
            self.assertIn(reason, str(caught.exception))
        with self.assertRaises(WsmanError) as caught:
            power_state_change_result(response(400, FAULT))
        self.assertEqual(str(caught.exception), "Intel AMT answered HTTP 400: The sender was "
                         "not authorized to access the resource. (c:AccessDenied)")
        with self.assertRaises(WsmanError) as caught:
            power_state_change_result(response(503, b"busy"))
        self.assertEqual(str(caught.exception), "Intel AMT answered HTTP 503")
        self.assertIsNone(fault_reason(amt_output("0")))


def challenge_response(nonce: str = "n1", stale: bool = False) -> HttpResponse:
    value = f'Digest realm="Digest:AB", nonce="{nonce}", qop="auth"'
    if stale:
        value += ', stale="true"'
    return response(401, b"", (("www-authenticate", value),))


class ExchangeTests(SynchronousTestCase):
    def exchange(self) -> WsmanExchange:
        return WsmanExchange(b"<e/>", user="admin", password="secret", host="amt",
                             cnonce="cn")

    def authorization(self, request: bytes) -> Optional[dict[str, str]]:
        match = re.search(rb"\r\nAuthorization: Digest (.*?)\r\n", request)
        if match is None:
            return None
        return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]*)',
                                                         match.group(1).decode())}

    def test_challenge_then_answer(self) -> None:
        """The first request has no Authorization; after the 401 the next one answers the
        challenge with nc 1 and the right response; the 200 is the final answer."""
        exchange = self.exchange()
        first = exchange.request()
        self.assertTrue(first.startswith(b"POST /wsman HTTP/1.1\r\nHost: amt:16992\r\n"))
        self.assertIsNone(self.authorization(first))
        self.assertIsNone(exchange.received(challenge_response()))
        params = self.authorization(exchange.request())
        assert params is not None
        ha1 = md5("admin:Digest:AB:secret")
        self.assertEqual((params["username"], params["nonce"], params["nc"], params["uri"]),
                         ("admin", "n1", "00000001", "/wsman"))
        self.assertEqual(params["response"],
                         md5(f"{ha1}:n1:00000001:cn:auth:{md5('POST:/wsman')}"))
        final = response(200, amt_output("0"))
        self.assertIs(exchange.received(final), final)
        self.assertEqual(exchange.attempts, 2)

    def test_no_authentication_needed(self) -> None:
        """A device that answers the first request at once needs one attempt."""
        exchange = self.exchange()
        exchange.request()
        final = response(500, FAULT)
        self.assertIs(exchange.received(final), final)

    def test_refused_credentials(self) -> None:
        """A 401 to the authenticated request means wrong credentials."""
        exchange = self.exchange()
        exchange.request()
        exchange.received(challenge_response())
        exchange.request()
        with self.assertRaises(AuthenticationFailed) as caught:
            exchange.received(challenge_response("n2"))
        self.assertEqual(str(caught.exception), "Intel AMT refused the user name or password")

    def test_stale_nonce_retried_once(self) -> None:
        """A stale nonce earns one more request with the new nonce (nc back to 1); a
        second stale answer is a refusal; no more than three requests are ever made."""
        exchange = self.exchange()
        exchange.request()
        exchange.received(challenge_response())
        exchange.request()
        self.assertIsNone(exchange.received(challenge_response("n2", stale=True)))
        params = self.authorization(exchange.request())
        assert params is not None
        self.assertEqual((params["nonce"], params["nc"]), ("n2", "00000001"))
        self.assertRaises(AuthenticationFailed, exchange.received,
                          challenge_response("n3", stale=True))
        self.assertRaises(WsmanError, exchange.request)

    def test_401_without_digest(self) -> None:
        """A 401 that offers no digest challenge is a clear error."""
        exchange = self.exchange()
        exchange.request()
        with self.assertRaises(WsmanError) as caught:
            exchange.received(response(401, b"", (("www-authenticate", "Negotiate"),)))
        self.assertIn("without a digest challenge", str(caught.exception))
