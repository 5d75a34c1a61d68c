"""Server side of the MeshAgent handshake on ``/agent.ashx`` as a sans-IO state machine.

Spec: agent-protocol.md §3. A = agent, S = server (this machine). Frames in, events out::

    A 30 AgentCommitDate, A 31 HostInfo, A 5 ServerId, [A 4 skip]    (each optional, at most once,
    [A JSON {"action":"agentName","value":...}]                        all before A 1)
    A 1 AuthRequest(Hweb, Na)     -> check Hweb is ours;  Send(S 1 (Hweb, Ns))
                                     unless A 4 came:
                                     Send(S 2 (agent-server cert, sign(Hweb‖Na‖Ns)))
    A 2 AuthVerify(cert, sig)     -> verify sig over Hweb‖Ns‖Na with the cert's RSA key
    A 3 AgentInfo                 -> record
    once A 2 verified and A 3 in  -> Authenticated(node id, info, cert, ...)
    adapter checks group/device   -> confirm() gives S 4; or reject() gives Fail

Both the fresh order (A1 S1 S2 A2 A3) and the "skip" order (A4 A1 S1 A3 A2, no S 2) are accepted;
A 2 and A 3 may come in either order after A 1, never before it (the agent needs ``Ns`` to sign
and sends A 3 only after checking S 1/S 2).

Where MeshCentral 1.1.55 is lax, this machine is strict, and says why in a :class:`Fail`:

* every pre-auth command at most once, in its phase; a second AgentInfo or AuthRequest, A 2 or
  A 3 before A 1, A 4/5/30/31 after A 1, anything after ``Authenticated`` → ``UNEXPECTED``
  (MeshCentral silently drops duplicates and keeps a "held" socket forever);
* lengths are exact (see :mod:`meshd.agent.wire`) → ``MALFORMED``;
* at most :data:`MAX_PREAUTH_FRAMES` frames before authentication (ignored JSON included);
* the node certificate must hold an RSA key of 2048..8192 bits → ``BAD_CERTIFICATE``
  (forge cannot read other keys; MeshCentral then silently drops the command and holds);
* a signature whose length equals the key's modulus is raw, anything else must be a PKCS#7
  SignedData (:mod:`meshd.agent.pkcs7`), decided once — MeshCentral guesses by a fixed 256/384
  length, tries forge's PKCS#7 parser on anything else and falls back to raw on any exception;
* if the agent's ServerId (command 5) is not ours and it did not ask to skip, fail at once with
  ``SERVER_ID_MISMATCH`` (the agent would reject our S 2 and stall silently);
* a deadline (:meth:`ServerHandshake.check_timeout`) bounds the whole handshake.

What to do on :class:`Fail` is the adapter's policy. MeshCentral never closes (a closed socket
makes the agent reconnect at once); the suggested policy is to stop reading, keep the socket until
:attr:`ServerHandshake.deadline`, then close, so a misconfigured agent cannot spin. Never send the
``detail`` text to the agent.

Crypto. The server signature and the agent-signature check are done by injectable functions
(defaults: :func:`rsa_signer`, :func:`verify_pkcs1_sha384`). With ``offload=False`` (default) they
run inline in :meth:`~ServerHandshake.receive`. With ``offload=True`` the machine instead returns
:class:`SignJob`/:class:`VerifyJob` events (plain data, picklable); the adapter runs
:meth:`~ServerHandshake.execute` (thread-safe: it touches no machine state) or its own worker, then
hands the result to :meth:`~ServerHandshake.job_done`, which returns the next events.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Collection, Optional, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)

from meshd.agent import identity, pkcs7
from meshd.agent.wire import (
    HASH_LEN,
    NONCE_LEN,
    AgentCommitDate,
    AgentInfo,
    AgentProtocolError,
    AuthConfirm,
    AuthRequest,
    AuthVerify,
    Command,
    CoreBinary,
    HostInfo,
    Sender,
    ServerId,
    decode_message,
)

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_PREAUTH_FRAMES",
    "MIN_AGENT_KEY_BITS",
    "MAX_AGENT_KEY_BITS",
    "MAX_AGENT_NAME",
    "State",
    "FailReason",
    "Send",
    "SignJob",
    "VerifyJob",
    "Authenticated",
    "Fail",
    "Event",
    "Signer",
    "Verifier",
    "rsa_signer",
    "verify_pkcs1_sha384",
    "ServerHandshake",
]

HANDSHAKE_TIMEOUT = 60.0
"""Seconds from :meth:`ServerHandshake.start` until confirm() must have been called."""
MAX_PREAUTH_FRAMES = 16
"""A real agent sends at most 8 frames before authentication (30, 31, 5, 4, 1, 2, JSON, 3)."""
MIN_AGENT_KEY_BITS = 2048
MAX_AGENT_KEY_BITS = 8192
MAX_AGENT_NAME = 255
"""Longest accepted ``agentName`` (characters), as MeshCentral."""

Signer = Callable[[bytes], bytes]
"""Signs data with the agent-server key: RSA-PKCS#1-v1.5-SHA-384."""
Verifier = Callable[[bytes, bytes, bytes], bool]
"""``(public key SubjectPublicKeyInfo DER, signature, data) -> ok``: RSA-PKCS#1-v1.5-SHA-384."""


def rsa_signer(key: rsa.RSAPrivateKey) -> Signer:
    """The default signer: RSA-PKCS#1-v1.5 with SHA-384 using ``key``."""

    def sign(data: bytes) -> bytes:
        return key.sign(data, padding.PKCS1v15(), hashes.SHA384())

    return sign


def verify_pkcs1_sha384(public_key_der: bytes, signature: bytes, data: bytes) -> bool:
    """The default verifier (module-level, so a process pool can use it)."""
    try:
        key = load_der_public_key(public_key_der)
    except (ValueError, UnsupportedAlgorithm):
        return False
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA384())
    except InvalidSignature:
        return False
    return True


class State(Enum):
    """Where the handshake is."""

    NEW = "new"  # start() not called yet
    HELLO = "hello"  # waiting for A 1 (30/31/5/4/agentName allowed)
    EXCHANGING = "exchanging"  # A 1 done; waiting for A 2, A 3 and crypto
    AUTHENTICATED = "authenticated"  # Authenticated emitted; adapter calls confirm() or reject()
    CONFIRMED = "confirmed"  # S 4 handed out; frames now belong to the session
    FAILED = "failed"


class FailReason(Enum):
    """Why a handshake failed (for logs and counters; never sent to the agent)."""

    MALFORMED = "malformed"
    UNEXPECTED = "unexpected"
    TOO_MANY_FRAMES = "too-many-frames"
    BAD_TLS_HASH = "bad-tls-hash"
    SERVER_ID_MISMATCH = "server-id-mismatch"
    BAD_CERTIFICATE = "bad-certificate"
    BAD_SIGNATURE = "bad-signature"
    TIMEOUT = "timeout"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Send:
    """Send this frame to the agent (binary WebSocket message), in event order."""

    frame: bytes


@dataclass(frozen=True)
class SignJob:
    """(offload mode) Sign ``data`` with the agent-server key; give the signature to job_done."""

    job_id: int
    data: bytes


@dataclass(frozen=True)
class VerifyJob:
    """(offload mode) Verify ``signature`` over ``data`` with the key; give the bool to job_done."""

    job_id: int
    public_key_der: bytes
    signature: bytes
    data: bytes


@dataclass(frozen=True)
class Authenticated:
    """The agent proved its key and sent its info. Check the group, then confirm() or reject()."""

    node_id: str
    agent_info: AgentInfo
    certificate: x509.Certificate
    tls_hash: bytes
    """The ``Hweb`` the agent used (full-cert or legacy key hash)."""
    server_auth_skipped: bool
    """The agent sent command 4, so no S 2 was sent."""
    agent_name: Optional[str] = None
    commit_date: Optional[str] = None
    host_info: Optional[str] = None
    expected_server_id: Optional[bytes] = None


@dataclass(frozen=True)
class Fail:
    """The handshake failed; no further events will come (see the module doc for the policy)."""

    reason: FailReason
    detail: str


Event = Union[Send, SignJob, VerifyJob, Authenticated, Fail]


@dataclass
class _Agent:
    """What the agent has told us so far."""

    seen: set[Command] = field(default_factory=set)
    skip: bool = False
    commit_date: Optional[str] = None
    host_info: Optional[str] = None
    server_id: Optional[bytes] = None
    agent_name: Optional[str] = None
    name_seen: bool = False
    tls_hash: Optional[bytes] = None
    nonce: Optional[bytes] = None
    certificate: Optional[x509.Certificate] = None
    certificate_der: bytes = b""
    verified: bool = False
    info: Optional[AgentInfo] = None


class ServerHandshake:
    """One agent connection's handshake, server side. Not thread-safe (except :meth:`execute`)."""

    def __init__(
        self,
        agent_cert: x509.Certificate,
        agent_key: rsa.RSAPrivateKey,
        tls_hashes: Collection[bytes],
        *,
        now: Callable[[], float],
        random_bytes: Callable[[int], bytes] = os.urandom,
        sign: Optional[Signer] = None,
        verify: Verifier = verify_pkcs1_sha384,
        offload: bool = False,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        """
        :param agent_cert: the server's agent certificate (its key hash is the ServerID).
        :param agent_key: its RSA private key.
        :param tls_hashes: every ``Hweb`` accepted in A 1 — the SHA-384 of the web TLS
            certificate DER and, for legacy agents, of its key (see
            :func:`meshd.agent.identity.accepted_tls_hashes`); 48 bytes each.
        :param now: clock, in seconds.
        :param random_bytes: nonce source.
        :param sign: replaces :func:`rsa_signer` of ``agent_key``.
        :param verify: replaces :func:`verify_pkcs1_sha384`.
        :param offload: return crypto as jobs instead of running it inline.
        """
        if not isinstance(agent_key, rsa.RSAPrivateKey):
            raise ValueError("the agent-server key must be RSA")
        cert_key = agent_cert.public_key()
        if not isinstance(cert_key, rsa.RSAPublicKey) or cert_key.public_numbers() != (
            agent_key.public_key().public_numbers()
        ):
            raise ValueError("agent_key does not match agent_cert")
        hashes_ = frozenset(tls_hashes)
        if not hashes_ or any(len(h) != HASH_LEN for h in hashes_):
            raise ValueError("tls_hashes must be one or more 48-byte SHA-384 values")
        self._cert_der = agent_cert.public_bytes(Encoding.DER)
        self._server_ids = (
            identity.server_id_bytes(self._cert_der),
            identity.server_id_sha256(self._cert_der),
        )
        self._tls_hashes = hashes_
        self._now = now
        self._random_bytes = random_bytes
        self._sign = sign if sign is not None else rsa_signer(agent_key)
        self._verify = verify
        self._offload = offload
        self._timeout = timeout
        self._state = State.NEW
        self._deadline = 0.0
        self._server_nonce = b""
        self._frames = 0
        self._agent = _Agent()
        self._next_job = 1
        self._pending_sign: Optional[int] = None
        self._pending_verify: Optional[int] = None
        self._handlers: dict[Command, Callable[[Any], list[Event]]] = {
            Command.AGENT_COMMIT_DATE: self._on_commit_date,
            Command.HOST_INFO: self._on_host_info,
            Command.SERVER_ID: self._on_server_id,
            Command.AUTH_CONFIRM: self._on_skip,
            Command.AUTH_REQUEST: self._on_auth_request,
            Command.AUTH_VERIFY: self._on_auth_verify,
            Command.AGENT_INFO: self._on_agent_info,
        }

    # -- public API ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def deadline(self) -> float:
        """When :meth:`check_timeout` fails the handshake (``now`` units)."""
        return self._deadline

    def start(self) -> list[bytes]:
        """Begin the connection; return the frames to send first.

        Nothing: like MeshCentral 1.1.55, the server speaks only after the agent's command 1,
        whose ``Hweb`` it echoes and whose ``Na`` it signs.
        """
        if self._state is not State.NEW:
            raise RuntimeError("start() called twice")
        nonce = self._random_bytes(NONCE_LEN)
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_LEN:
            raise ValueError("random_bytes returned the wrong length")
        self._server_nonce = nonce
        self._deadline = self._now() + self._timeout
        self._state = State.HELLO
        return []

    def receive(self, frame: bytes) -> list[Event]:
        """Handle one frame from the agent; return what to do, in order."""
        if self._state is State.NEW:
            raise RuntimeError("receive() before start()")
        if self._state is State.CONFIRMED:
            raise RuntimeError("the handshake is over; frames belong to the session")
        if self._state is State.FAILED:
            return []
        if self._state is State.AUTHENTICATED:
            return self._fail(FailReason.UNEXPECTED, "frame before the server confirmed")
        self._frames += 1
        if self._frames > MAX_PREAUTH_FRAMES:
            return self._fail(FailReason.TOO_MANY_FRAMES, f"more than {MAX_PREAUTH_FRAMES} frames")
        try:
            message = decode_message(frame, authenticated=False, sender=Sender.AGENT)
        except AgentProtocolError as error:
            return self._fail(FailReason.MALFORMED, str(error))
        if isinstance(message, dict):
            return self._on_json(message)
        if isinstance(message, CoreBinary):  # never decoded before authentication
            return self._fail(FailReason.MALFORMED, "core command before authentication")
        command = message.command
        if command in self._agent.seen:
            return self._fail(FailReason.UNEXPECTED, f"command {int(command)} sent twice")
        self._agent.seen.add(command)
        return self._handlers[command](message)

    def confirm(self) -> list[bytes]:
        """Accept the agent (its group exists, its device is recorded): the frames to send."""
        if self._state is not State.AUTHENTICATED:
            raise RuntimeError(f"confirm() in state {self._state.value}")
        self._state = State.CONFIRMED
        return [AuthConfirm().encode()]

    def reject(self, detail: str) -> list[Event]:
        """Refuse an authenticated-but-unwanted agent (e.g. unknown group)."""
        if self._state in (State.CONFIRMED, State.FAILED):
            return []
        return self._fail(FailReason.REJECTED, detail)

    def check_timeout(self) -> list[Event]:
        """Fail if the deadline has passed and the handshake is not confirmed."""
        if self._state in (State.HELLO, State.EXCHANGING, State.AUTHENTICATED):
            if self._now() >= self._deadline:
                return self._fail(FailReason.TIMEOUT, "handshake not finished in time")
        return []

    def execute(self, job: Union[SignJob, VerifyJob]) -> Union[bytes, bool]:
        """Run a job with the injected functions. Touches no state: safe in a worker thread."""
        if isinstance(job, SignJob):
            return self._sign(job.data)
        return self._verify(job.public_key_der, job.signature, job.data)

    def job_done(self, job: Union[SignJob, VerifyJob], result: Union[bytes, bool]) -> list[Event]:
        """Hand back a job's result (offload mode); returns the events that follow."""
        if self._state is State.FAILED:
            return []
        if isinstance(job, SignJob):
            if job.job_id != self._pending_sign or not isinstance(result, bytes):
                raise RuntimeError("job_done() with an unknown sign job or a non-bytes result")
            self._pending_sign = None
            return self._signed(result)
        if job.job_id != self._pending_verify or not isinstance(result, bool):
            raise RuntimeError("job_done() with an unknown verify job or a non-bool result")
        self._pending_verify = None
        return self._verified(result)

    # -- handlers (one per command; each docstring names the layout) ---------------------------

    def _in_hello(self, what: str) -> Optional[list[Event]]:
        if self._state is not State.HELLO:
            return self._fail(FailReason.UNEXPECTED, f"{what} after command 1")
        return None

    def _on_commit_date(self, message: AgentCommitDate) -> list[Event]:
        """``00 1E | date ASCII NUL`` — before A 1; kept for the device record."""
        refused = self._in_hello("AgentCommitDate")
        if refused is not None:
            return refused
        self._agent.commit_date = message.value
        return []

    def _on_host_info(self, message: HostInfo) -> list[Event]:
        """``00 1F | "<OS> - <arch>"`` — before A 1; informational."""
        refused = self._in_hello("HostInfo")
        if refused is not None:
            return refused
        self._agent.host_info = message.value
        return []

    def _on_server_id(self, message: ServerId) -> list[Event]:
        """``00 05 | ServerID (48, or 32 legacy)`` — before A 1; checked when A 1 arrives."""
        refused = self._in_hello("ServerId")
        if refused is not None:
            return refused
        self._agent.server_id = message.server_id
        return []

    def _on_skip(self, message: AuthConfirm) -> list[Event]:
        """``00 04`` — before A 1: the agent already trusts our TLS cert; send no S 2."""
        refused = self._in_hello("AuthConfirm (skip)")
        if refused is not None:
            return refused
        self._agent.skip = True
        return []

    def _on_json(self, message: dict[str, Any]) -> list[Event]:
        """``{"action":"agentName","value":<1..255 chars>}`` before A 3; other JSON is ignored."""
        if message.get("action") != "agentName":
            return []
        if self._agent.name_seen:
            return self._fail(FailReason.UNEXPECTED, "agentName sent twice")
        self._agent.name_seen = True
        value = message.get("value")
        if isinstance(value, str) and 0 < len(value) <= MAX_AGENT_NAME:
            self._agent.agent_name = value
        return []

    def _on_auth_request(self, message: AuthRequest) -> list[Event]:
        """``00 01 | Hweb (48) | Na (48)`` — reply S 1, and S 2 unless the agent skipped."""
        refused = self._in_hello("AuthRequest")
        if refused is not None:
            return refused
        if not any(hmac.compare_digest(message.tls_hash, h) for h in self._tls_hashes):
            return self._fail(
                FailReason.BAD_TLS_HASH, f"agent saw TLS hash {message.tls_hash.hex()[:16]}…"
            )
        expected = self._agent.server_id
        if expected is not None and not self._agent.skip and expected not in self._server_ids:
            return self._fail(
                FailReason.SERVER_ID_MISMATCH, f"agent expects ServerID {expected.hex()[:16]}…"
            )
        self._state = State.EXCHANGING
        self._agent.tls_hash = message.tls_hash
        self._agent.nonce = message.nonce
        events: list[Event] = [Send(AuthRequest(message.tls_hash, self._server_nonce).encode())]
        if self._agent.skip:
            return events
        data = message.tls_hash + message.nonce + self._server_nonce  # M_s = Hweb ‖ Na ‖ Ns
        if self._offload:
            job = SignJob(self._new_job(), data)
            self._pending_sign = job.job_id
            events.append(job)
            return events
        events.extend(self._signed(self._sign(data)))
        return events

    def _on_auth_verify(self, message: AuthVerify) -> list[Event]:
        """``00 02 | certLen (2) | node cert DER | signature`` — check it over Hweb‖Ns‖Na."""
        if self._state is not State.EXCHANGING:
            return self._fail(FailReason.UNEXPECTED, "AuthVerify before command 1")
        try:
            certificate = x509.load_der_x509_certificate(message.certificate)
            public_key = certificate.public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            return self._fail(FailReason.BAD_CERTIFICATE, f"unreadable node certificate: {error}")
        if not isinstance(public_key, rsa.RSAPublicKey):
            return self._fail(FailReason.BAD_CERTIFICATE, "node certificate key is not RSA")
        if not MIN_AGENT_KEY_BITS <= public_key.key_size <= MAX_AGENT_KEY_BITS:
            return self._fail(
                FailReason.BAD_CERTIFICATE, f"node key of {public_key.key_size} bits"
            )
        assert self._agent.tls_hash is not None and self._agent.nonce is not None
        data = self._agent.tls_hash + self._server_nonce + self._agent.nonce  # M_a
        signature = message.signature
        if len(signature) != (public_key.key_size + 7) // 8:
            try:
                data, signature = pkcs7.signed_payload(signature, data)
            except pkcs7.Pkcs7Error as error:
                return self._fail(FailReason.BAD_SIGNATURE, f"signature blob: {error}")
        self._agent.certificate = certificate
        self._agent.certificate_der = message.certificate
        key_der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        if self._offload:
            job = VerifyJob(self._new_job(), key_der, signature, data)
            self._pending_verify = job.job_id
            return [job]
        return self._verified(self._verify(key_der, signature, data))

    def _on_agent_info(self, message: AgentInfo) -> list[Event]:
        """``00 03 | 4 x u32 | meshId (48) | caps (4) | nameLen (2) | name`` — record it."""
        if self._state is not State.EXCHANGING:
            return self._fail(FailReason.UNEXPECTED, "AgentInfo before command 1")
        self._agent.info = message
        return self._maybe_authenticated()

    # -- internals -----------------------------------------------------------------------------

    def _new_job(self) -> int:
        job_id = self._next_job
        self._next_job += 1
        return job_id

    def _signed(self, signature: bytes) -> list[Event]:
        events: list[Event] = [Send(AuthVerify(self._cert_der, signature).encode())]
        events.extend(self._maybe_authenticated())
        return events

    def _verified(self, ok: bool) -> list[Event]:
        if not ok:
            return self._fail(FailReason.BAD_SIGNATURE, "agent signature does not verify")
        self._agent.verified = True
        return self._maybe_authenticated()

    def _maybe_authenticated(self) -> list[Event]:
        agent = self._agent
        if not agent.verified or agent.info is None or self._pending_sign is not None:
            return []
        assert agent.certificate is not None and agent.tls_hash is not None
        self._state = State.AUTHENTICATED
        return [
            Authenticated(
                node_id=identity.node_id_from_cert(agent.certificate_der),
                agent_info=agent.info,
                certificate=agent.certificate,
                tls_hash=agent.tls_hash,
                server_auth_skipped=agent.skip,
                agent_name=agent.agent_name,
                commit_date=agent.commit_date,
                host_info=agent.host_info,
                expected_server_id=agent.server_id,
            )
        ]

    def _fail(self, reason: FailReason, detail: str) -> list[Event]:
        self._state = State.FAILED
        self._pending_sign = self._pending_verify = None
        self._server_nonce = b""
        return [Fail(reason, detail)]
