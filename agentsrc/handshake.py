"""Agent side of the MeshAgent handshake on ``/agent.ashx``, as a sans-IO state machine.

Spec: agent-protocol.md §3. A = agent (this machine), S = server. Frames in, events out.

Full path (no pinned TLS hash, or the server's TLS certificate changed)::

    start():  A 30 AgentCommitDate, A 31 HostInfo, A 5 ServerId, A 1 AuthRequest(Hweb, Na)
    S 1 (Hweb echoed, Ns)   -> check the echo; A 2 (node cert, sign(Hweb‖Ns‖Na))
    S 2 (cert, signature)   -> pin: H(cert key) == ServerID from the .msh, and the signature over
                               Hweb‖Na‖Ns verifies with that key (Hweb = what *we* computed from
                               the TLS peer, not the echo) -> ServerVerified;
                               [A {"action":"agentName"}], A 3 AgentInfo -> AgentInfoSent
    S 4                     -> Confirmed

Skip path (the TLS certificate hash equals the one pinned after an earlier full verification
of a server with the same ServerID)::

    start():  A 30, A 31, A 5, A 4 ("skip"), A 1
    S 1                     -> check the echo; [A agentName], A 3 -> AgentInfoSent; A 2
    S 4                     -> Confirmed

Nothing is sent after A 3 until S 4; S 4 before the server was verified (full path) is refused.
Everything the server may get wrong ends in one :class:`Refused` event with a reason; the
adapter then closes the connection, logs the reason and retries with back-off, and runs nothing.
Frames after :class:`Confirmed` belong to the session (:mod:`agentsrc.session`).

Stricter than the real agent, which "stalls" silently on a bad server: here a wrong ServerID,
wrong TLS hash echo, bad signature, malformed or out-of-order frame, too many frames, or the
deadline (:meth:`AgentHandshake.check_timeout`) refuses at once.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from meshd.agent import identity
from meshd.agent.wire import (
    HASH_LEN,
    NONCE_LEN,
    AgentCommitDate,
    AgentInfo,
    AgentProtocolError,
    AuthConfirm,
    AuthRequest,
    AuthVerify,
    HostInfo,
    Sender,
    ServerId,
    decode_message,
    encode_json,
)

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_PREAUTH_FRAMES",
    "State",
    "RefuseReason",
    "Send",
    "ServerVerified",
    "AgentInfoSent",
    "Confirmed",
    "Refused",
    "Event",
    "AgentHandshake",
]

HANDSHAKE_TIMEOUT = 120.0
"""Seconds from :meth:`AgentHandshake.start` until the server must have confirmed (S 4).
MeshCentral "holds" a socket it does not like instead of closing it; this frees the agent."""
MAX_PREAUTH_FRAMES = 8
"""A server sends 3 frames before S 4 (S 1, S 2, S 4); anything beyond a few is misbehaviour."""


class State(Enum):
    """Where the handshake is."""

    NEW = "new"
    WAIT_AUTH_REQUEST = "wait-auth-request"  # A 1 sent, waiting for S 1
    WAIT_SERVER_VERIFY = "wait-server-verify"  # full path: A 2 sent, waiting for S 2
    WAIT_CONFIRM = "wait-confirm"  # A 3 sent, waiting for S 4
    CONFIRMED = "confirmed"
    REFUSED = "refused"


class RefuseReason(Enum):
    """Why the agent refused the server (logged; the connection is closed)."""

    MALFORMED = "malformed"
    UNEXPECTED = "unexpected"
    TOO_MANY_FRAMES = "too-many-frames"
    BAD_TLS_HASH = "bad-tls-hash"
    SERVER_ID_MISMATCH = "server-id-mismatch"
    BAD_CERTIFICATE = "bad-certificate"
    BAD_SIGNATURE = "bad-signature"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class Send:
    """Send this frame to the server: binary unless ``text`` (JSON goes in text frames)."""

    frame: bytes
    text: bool = False


@dataclass(frozen=True)
class ServerVerified:
    """The server proved it holds the pinned key over this TLS hash: store it for the skip path."""

    tls_hash: bytes


@dataclass(frozen=True)
class AgentInfoSent:
    """Command 3 went out (the reconnect back-off resets here, as in the real agent)."""


@dataclass(frozen=True)
class Confirmed:
    """S 4: the server accepted this agent; following frames belong to the session."""

    skipped: bool
    """The skip path was used (no S 2 this time)."""


@dataclass(frozen=True)
class Refused:
    """The server is refused; nothing more will be sent or accepted on this connection."""

    reason: RefuseReason
    detail: str


Event = Union[Send, ServerVerified, AgentInfoSent, Confirmed, Refused]
Signer = Callable[[bytes], bytes]


def _rsa_signer(key: rsa.RSAPrivateKey) -> Signer:
    def sign(data: bytes) -> bytes:
        return key.sign(data, padding.PKCS1v15(), hashes.SHA384())

    return sign


class AgentHandshake:
    """One connection's handshake, agent side. Not thread-safe."""

    def __init__(
        self,
        *,
        node_key: rsa.RSAPrivateKey,
        node_cert_der: bytes,
        server_id: bytes,
        tls_cert_der: bytes,
        agent_info: AgentInfo,
        trusted_tls_hash: Optional[bytes] = None,
        commit_date: Optional[str] = None,
        host_info: Optional[str] = None,
        agent_name: Optional[str] = None,
        now: Callable[[], float],
        random_bytes: Callable[[int], bytes] = os.urandom,
        sign: Optional[Signer] = None,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        """
        :param node_key: the node's RSA key (signs ``Hweb‖Ns‖Na``).
        :param node_cert_der: the node certificate sent in A 2.
        :param server_id: the ``.msh`` ServerID, raw (48 bytes, or 32 for a legacy SHA-256 id).
        :param tls_cert_der: the server's TLS leaf certificate as this connection saw it.
        :param agent_info: command 3 as it will be sent.
        :param trusted_tls_hash: the pinned TLS hash for this ServerID (enables the skip path).
        :param now: clock, in seconds (for the deadline).
        """
        if len(server_id) not in (HASH_LEN, 32):
            raise ValueError("server_id must be 48 (or legacy 32) bytes")
        if not tls_cert_der:
            raise ValueError("the server's TLS certificate is required")
        self._key = node_key
        self._cert_der = node_cert_der
        self._server_id = server_id
        self._tls_hash = identity.tls_cert_hash(tls_cert_der)
        try:
            key_hash: Optional[bytes] = identity.public_key_hash(tls_cert_der)
        except ValueError:
            key_hash = None
        self._accepted_echo = {self._tls_hash} | ({key_hash} if key_hash else set())
        self._agent_info = agent_info
        self._skip = trusted_tls_hash is not None and hmac.compare_digest(
            trusted_tls_hash, self._tls_hash
        )
        self._commit_date = commit_date
        self._host_info = host_info
        self._agent_name = agent_name
        self._now = now
        self._random_bytes = random_bytes
        self._sign = sign if sign is not None else _rsa_signer(node_key)
        self._timeout = timeout
        self._deadline = 0.0
        self._state = State.NEW
        self._agent_nonce = b""
        self._server_nonce = b""
        self._server_verified = False
        self._frames = 0

    # -- public API ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def tls_hash(self) -> bytes:
        """``Hweb``: SHA-384 of the server's TLS certificate as this connection saw it."""
        return self._tls_hash

    @property
    def skipping(self) -> bool:
        """True if this connection takes the skip path (A 4 sent)."""
        return self._skip

    @property
    def deadline(self) -> float:
        return self._deadline

    def start(self) -> list[Send]:
        """The frames that open the connection: A 30, A 31, A 5, [A 4], A 1."""
        if self._state is not State.NEW:
            raise RuntimeError("start() called twice")
        nonce = self._random_bytes(NONCE_LEN)
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_LEN:
            raise ValueError("random_bytes returned the wrong length")
        self._agent_nonce = nonce
        self._deadline = self._now() + self._timeout
        frames: list[Send] = []
        if self._commit_date is not None:
            frames.append(Send(AgentCommitDate(self._commit_date).encode()))
        if self._host_info is not None:
            frames.append(Send(HostInfo(self._host_info).encode()))
        frames.append(Send(ServerId(self._server_id).encode()))
        if self._skip:
            frames.append(Send(AuthConfirm().encode()))
        frames.append(Send(AuthRequest(self._tls_hash, nonce).encode()))
        self._state = State.WAIT_AUTH_REQUEST
        return frames

    def receive(self, frame: bytes) -> list[Event]:
        """Handle one frame from the server; return what to do, in order."""
        if self._state is State.NEW:
            raise RuntimeError("receive() before start()")
        if self._state is State.CONFIRMED:
            raise RuntimeError("the handshake is over; frames belong to the session")
        if self._state is State.REFUSED:
            return []
        self._frames += 1
        if self._frames > MAX_PREAUTH_FRAMES:
            return self._refuse(RefuseReason.TOO_MANY_FRAMES, f"more than {MAX_PREAUTH_FRAMES}")
        try:
            message = decode_message(frame, authenticated=False, sender=Sender.SERVER)
        except AgentProtocolError as error:
            return self._refuse(RefuseReason.MALFORMED, str(error))
        if isinstance(message, dict):
            return []  # no JSON is defined before S 4; ignored (and counted)
        if isinstance(message, AuthRequest):
            return self._on_auth_request(message)
        if isinstance(message, AuthVerify):
            return self._on_auth_verify(message)
        if isinstance(message, AuthConfirm):
            return self._on_auth_confirm()
        return self._refuse(RefuseReason.UNEXPECTED, f"command {type(message).__name__}")

    def check_timeout(self) -> list[Event]:
        """Refuse if the deadline passed before S 4."""
        if self._state in (State.WAIT_AUTH_REQUEST, State.WAIT_SERVER_VERIFY, State.WAIT_CONFIRM):
            if self._now() >= self._deadline:
                return self._refuse(RefuseReason.TIMEOUT, "the server did not confirm in time")
        return []

    # -- handlers (each docstring names the layout) --------------------------------------------

    def _on_auth_request(self, message: AuthRequest) -> list[Event]:
        """S 1 ``00 01 | Hweb echoed (48) | Ns (48)`` — check the echo; A 2 (skip: A 3, A 2)."""
        if self._state is not State.WAIT_AUTH_REQUEST:
            return self._refuse(RefuseReason.UNEXPECTED, "a second AuthRequest")
        if not any(hmac.compare_digest(message.tls_hash, h) for h in self._accepted_echo):
            return self._refuse(
                RefuseReason.BAD_TLS_HASH,
                f"server echoed TLS hash {message.tls_hash.hex()[:16]}…, this connection's "
                f"certificate hashes to {self._tls_hash.hex()[:16]}… (TLS interception?)",
            )
        self._server_nonce = message.nonce
        # M_a = Hweb ‖ Ns ‖ Na, signed with the node key.
        signature = self._sign(self._tls_hash + self._server_nonce + self._agent_nonce)
        verify = Send(AuthVerify(self._cert_der, signature).encode())
        if self._skip:
            events: list[Event] = self._agent_info_events()
            events.append(verify)
            return events
        self._state = State.WAIT_SERVER_VERIFY
        return [verify]

    def _on_auth_verify(self, message: AuthVerify) -> list[Event]:
        """S 2 ``00 02 | certLen (2) | agent-server cert | signature`` — pin and verify."""
        if self._server_verified or self._state is State.WAIT_AUTH_REQUEST:
            return self._refuse(RefuseReason.UNEXPECTED, "AuthVerify before S 1, or twice")
        if self._state is State.WAIT_CONFIRM and not self._skip:
            return self._refuse(RefuseReason.UNEXPECTED, "AuthVerify after AgentInfo")
        refusal = self._verify_server(message)
        if refusal is not None:
            return refusal
        self._server_verified = True
        events: list[Event] = [ServerVerified(self._tls_hash)]
        if self._state is State.WAIT_SERVER_VERIFY:
            events.extend(self._agent_info_events())
        # On the skip path a server may send S 2 anyway; once verified it changes nothing.
        return events

    def _on_auth_confirm(self) -> list[Event]:
        """S 4 ``00 04`` — accepted; only valid after A 3 (so after S 2 on the full path)."""
        if self._state is not State.WAIT_CONFIRM:
            return self._refuse(
                RefuseReason.UNEXPECTED, "AuthConfirm before the server proved its identity"
            )
        self._state = State.CONFIRMED
        return [Confirmed(skipped=self._skip and not self._server_verified)]

    # -- internals -----------------------------------------------------------------------------

    def _agent_info_events(self) -> list[Event]:
        events: list[Event] = []
        if self._agent_name:
            name = encode_json({"action": "agentName", "value": self._agent_name})
            events.append(Send(name, text=True))
        events.append(Send(self._agent_info.encode()))
        events.append(AgentInfoSent())
        self._state = State.WAIT_CONFIRM
        return events

    def _verify_server(self, message: AuthVerify) -> Optional[list[Event]]:
        try:
            if len(self._server_id) == HASH_LEN:
                presented = identity.server_id_bytes(message.certificate)
            else:
                presented = identity.server_id_sha256(message.certificate)
        except ValueError as error:
            return self._refuse(RefuseReason.BAD_CERTIFICATE, f"unreadable certificate: {error}")
        if not hmac.compare_digest(presented, self._server_id):
            return self._refuse(
                RefuseReason.SERVER_ID_MISMATCH,
                f"server certificate key hashes to {presented.hex().upper()[:16]}…, the .msh "
                f"ServerID is {self._server_id.hex().upper()[:16]}…",
            )
        try:
            public_key = x509.load_der_x509_certificate(message.certificate).public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            return self._refuse(RefuseReason.BAD_CERTIFICATE, f"unreadable certificate: {error}")
        if not isinstance(public_key, rsa.RSAPublicKey):
            return self._refuse(RefuseReason.BAD_CERTIFICATE, "server key is not RSA")
        # M_s = Hweb ‖ Na ‖ Ns, with Hweb as this connection computed it.
        data = self._tls_hash + self._agent_nonce + self._server_nonce
        try:
            public_key.verify(message.signature, data, padding.PKCS1v15(), hashes.SHA384())
        except (InvalidSignature, ValueError):
            return self._refuse(
                RefuseReason.BAD_SIGNATURE,
                "server signature over this TLS certificate and the nonces does not verify",
            )
        return None

    def _refuse(self, reason: RefuseReason, detail: str) -> list[Event]:
        self._state = State.REFUSED
        self._agent_nonce = self._server_nonce = b""
        return [Refused(reason, detail)]
