"""One certificate order against an ACME (RFC 8555) CA, driven from the reactor.

The exchange, all HTTPS to the CA, every POST signed with the account key (JWS):

1. ``GET directory``; ``POST newAccount`` (an existing account for the key answers 200 with
   its URL, which the ``acme`` library raises as ``ConflictError``: we just use that URL).
2. A fresh RSA key (``rsaKeySize``) and a CSR for the names; ``POST newOrder``: one
   authorization per name, each offering challenges.
3. For each pending authorization: its http-01 key authorization goes into the
   :class:`~meshd.acme.challenge.ChallengeResource` (the CA then fetches
   ``http://<name>/.well-known/acme-challenge/<token>``), and the challenge is answered.
4. The authorizations are polled every ``poll_interval`` seconds until valid or invalid, at
   most ``poll_timeout`` seconds. An invalid one raises :class:`ChallengeFailed` carrying the
   CA's problem document.
5. ``POST finalize`` with the CSR, poll the order, download the certificate and its chain.

Library choice: the maintained ``acme`` package (certbot's RFC 8555 client) does the JWS,
nonces, ``badNonce`` retries and message types. Its ``ClientV2`` is blocking (``requests``),
so each step above is one call on a thread (``run_blocking``, a one-thread pool owned by the
service) while the waits between polls are reactor timers: the reactor never blocks, and a
stop between two steps abandons the order at once. ``txacme`` is not an option: it speaks only
the retired ACME v1. An async rewrite on ``treq`` would duplicate what the library gets right.

Limits: network calls time out after ``network_timeout`` seconds (``requests``), polling
after ``poll_timeout``; the challenge tokens are removed whatever the outcome.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import josepy as jose
from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import crypto_util
from acme import errors as acme_errors
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import Interface, implementer

import meshd
from meshd.acme.challenge import ChallengeResource
from meshd.acme.policy import ChallengeFailed, OrderFailed
from meshd.acme.storage import load_or_create_account_key
from meshd.certs import CertKey

__all__ = ["AcmeIssuer", "ICertificateIssuer", "RunBlocking"]

RunBlocking = Callable[..., "Deferred[Any]"]

_log = Logger(namespace="meshd.acme")


class ICertificateIssuer(Interface):
    """Something that obtains a certificate for host names (the ACME CA, or a test fake)."""

    directory: str  # where certificates come from, recorded with the certificate
    account_uri: Optional[str]  # the account used by the last issue(), once known

    def issue(names: Sequence[str], key_bits: int) -> "Deferred[CertKey]":
        """A new key and a certificate (with chain) for ``names``; fails with the reason."""

    def close() -> None:
        """Release network resources (called when the service stops)."""


@dataclass
class _Order:
    key: rsa.RSAPrivateKey
    resource: messages.OrderResource


class _BlockingAcme:
    """The ``acme`` library calls, one method per step; every method runs on the thread."""

    def __init__(self, directory: str, email: str, datapath: str,
                 verify: Union[bool, str], timeout: int) -> None:
        self._directory_url = directory
        self._email = email
        self._datapath = datapath
        self._verify = verify
        self._timeout = timeout
        self.jwk: Optional[jose.JWKRSA] = None
        self.client: Optional[acme_client.ClientV2] = None
        self.account_uri: Optional[str] = None

    def connect(self) -> tuple[str, list[str]]:
        """Read the directory and find or register the account: its URL, and notes to log."""
        key, note = load_or_create_account_key(self._datapath)
        notes = [note] if note else []
        self.jwk = jose.JWKRSA(key=key)
        net = acme_client.ClientNetwork(
            # verify_ssl goes to requests' ``verify``: True, or a CA bundle path (typed bool).
            self.jwk, verify_ssl=self._verify,  # type: ignore[arg-type]
            timeout=self._timeout,
            user_agent=f"meshd/{meshd.__version__} acme-python")
        directory = acme_client.ClientV2.get_directory(self._directory_url, net)
        client = acme_client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self._email or None, terms_of_service_agreed=True)
        try:
            account = client.new_account(registration)
            uri = account.uri
            notes.append(f"registered the account {uri}")
        except acme_errors.ConflictError as existing:
            # RFC 8555 7.3.1: the key already has an account; the library reports its URL.
            uri = existing.location
            net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        self.client = client
        self.account_uri = uri
        return uri, notes

    def new_order(self, names: Sequence[str], key_bits: int) -> _Order:
        assert self.client is not None
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
        csr = crypto_util.make_csr(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()), list(names))
        return _Order(key=key, resource=self.client.new_order(csr))

    def answer(self, challenge: messages.ChallengeBody,
               response: acme_challenges.ChallengeResponse) -> None:
        assert self.client is not None
        self.client.answer_challenge(challenge, response)

    def poll(self, authorization: messages.AuthorizationResource
             ) -> messages.AuthorizationResource:
        assert self.client is not None
        return self.client.poll(authorization)[0]

    def finalize(self, order: messages.OrderResource, timeout: float) -> str:
        assert self.client is not None
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        finished = self.client.finalize_order(order, deadline)
        if not finished.fullchain_pem:
            raise OrderFailed("the CA finalized the order but sent no certificate")
        return str(finished.fullchain_pem)

    def close(self) -> None:
        if self.client is not None:
            self.client.net.session.close()


@implementer(ICertificateIssuer)
class AcmeIssuer:
    """Orders certificates from the CA at ``directory`` for the account in ``datapath``."""

    def __init__(
        self,
        directory: str,
        email: str,
        datapath: str,
        challenges: ChallengeResource,
        run_blocking: RunBlocking,
        clock: IReactorTime,
        *,
        verify: Union[bool, str] = True,
        poll_interval: float = 1.0,
        poll_timeout: float = 90.0,
        network_timeout: int = 30,
    ) -> None:
        self.directory = directory
        self.account_uri: Optional[str] = None
        self._email = email
        self._datapath = datapath
        self._challenges = challenges
        self._run = run_blocking
        self._clock = clock
        self._verify = verify
        self._poll_interval = poll_interval
        self._poll_timeout = poll_timeout
        self._network_timeout = network_timeout
        self._acme: Optional[_BlockingAcme] = None

    def issue(self, names: Sequence[str], key_bits: int) -> "Deferred[CertKey]":
        return Deferred.fromCoroutine(self._issue(list(names), key_bits))

    def close(self) -> None:
        if self._acme is not None:
            self._acme.close()
            self._acme = None

    async def _issue(self, names: list[str], key_bits: int) -> CertKey:
        self.close()  # a fresh HTTP session per attempt: nothing stale survives a failure
        acme = self._acme = _BlockingAcme(self.directory, self._email, self._datapath,
                                          self._verify, self._network_timeout)
        self.account_uri, notes = await self._run(acme.connect)
        for note in notes:
            _log.info("ACME: {note}", note=note)
        order: _Order = await self._run(acme.new_order, names, key_bits)
        _log.info("ACME: order {order} for {names}", order=order.resource.uri,
                  names=", ".join(names))
        tokens: list[str] = []
        try:
            pending = await self._answer_challenges(acme, order.resource, tokens)
            await self._wait_for_authorizations(acme, pending)
        finally:
            for token in tokens:
                self._challenges.remove(token)
        fullchain: str = await self._run(acme.finalize, order.resource, self._poll_timeout)
        return _certkey(fullchain, order.key, names)

    async def _answer_challenges(self, acme: _BlockingAcme, order: messages.OrderResource,
                                 tokens: list[str]) -> list[messages.AuthorizationResource]:
        assert acme.jwk is not None
        pending = []
        for authorization in order.authorizations:
            name = authorization.body.identifier.value
            status = authorization.body.status
            if status == messages.STATUS_VALID:
                continue  # the CA remembers this name was proven recently
            if status != messages.STATUS_PENDING:
                raise ChallengeFailed(name, _challenge_error(authorization)
                                      or f"authorization is {status}")
            http01 = next((c for c in authorization.body.challenges
                           if isinstance(c.chall, acme_challenges.HTTP01)), None)
            if http01 is None:
                raise OrderFailed(f"the CA offers no http-01 challenge for {name}")
            response, key_authorization = http01.response_and_validation(acme.jwk)
            token = http01.chall.encode("token")
            self._challenges.add(token, key_authorization)
            tokens.append(token)
            await self._run(acme.answer, http01, response)
            pending.append(authorization)
        return pending

    async def _wait_for_authorizations(self, acme: _BlockingAcme,
                                       pending: list[messages.AuthorizationResource]) -> None:
        deadline = self._clock.seconds() + self._poll_timeout
        while pending:
            await deferLater(self._clock, self._poll_interval)
            still = []
            for authorization in pending:
                name = authorization.body.identifier.value
                updated: messages.AuthorizationResource = await self._run(acme.poll,
                                                                          authorization)
                status = updated.body.status
                if status == messages.STATUS_VALID:
                    _log.info("ACME: challenge for {name} passed", name=name)
                elif status in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                    still.append(updated)
                else:
                    raise ChallengeFailed(name, _challenge_error(updated)
                                          or f"authorization is {status}")
            pending = still
            if pending and self._clock.seconds() >= deadline:
                raise acme_errors.TimeoutError(
                    "the CA did not validate the challenges in time")


def _challenge_error(authorization: messages.AuthorizationResource) -> Optional[object]:
    for challenge in authorization.body.challenges:
        if challenge.error is not None:
            return challenge.error
    return None


def _certkey(fullchain: str, key: rsa.RSAPrivateKey, names: Sequence[str]) -> CertKey:
    """The downloaded leaf + chain with its key, after checking they belong together."""
    try:
        certs = x509.load_pem_x509_certificates(fullchain.encode("ascii"))
    except ValueError as e:
        raise OrderFailed(f"the CA sent an unreadable certificate: {e}") from None
    if not certs:
        raise OrderFailed("the CA sent no certificate")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if certs[0].public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise OrderFailed("the CA sent a certificate for another key")
    return CertKey(cert=certs[0], key=key, chain=tuple(certs[1:]))
