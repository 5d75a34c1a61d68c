"""The relay's pairing table: a sans-IO state machine (spec relay.md §3–§5).

Who sends what, in what order:

1. A side arrives (its WebSocket is open and its identity resolved by the adapter) and
   :meth:`RelayTable.join` is called with its :class:`SideInfo`.  The first side with an
   ``id`` waits: its reading is paused (its bytes stay in TCP, not in the server) and a
   :data:`LONELY_SECONDS` timer closes it if nobody joins.
2. A second side with the same ``id`` is checked (at least one side authenticated, same
   user on both unless one is ``nouser``); refused sides are closed, the waiting one
   keeps waiting.  Accepted: both get the text frame ``c`` (``cr`` when recorded) and
   reading resumes on both.
3. A third side with the ``id`` of a pair is closed (duplicate).
4. Every frame from one side goes to the other as one frame of the same type.
   Back-pressure: when a side's outgoing buffer is full (:meth:`RelayTable.send_blocked`)
   the *other* side's reading is paused until it drains (:meth:`RelayTable.send_unblocked`);
   so the server holds at most a transport buffer plus one frame per direction.
   Frames a side sent before pairing (already read when it was paused) are kept, at
   most :data:`EARLY_LIMIT` bytes, and forwarded after ``c``.
5. When either side goes (:meth:`RelayTable.lost`), the other is closed and the pair
   removed; the session end is reported with its duration and byte counts.
6. Guest sides (device-sharing links) carry their share's id and end: a side whose
   ``expires`` has passed is refused, a joined one is closed (with its partner) when it
   comes; sides of a share pair only with sides of the same share (the agent side of a
   guest tunnel carries it in its relay cookie), never with a user's own sessions; and
   :meth:`RelayTable.close_share` closes every side of a share at once (share removed).

The table never touches sockets: sides are :class:`IRelayPeer` providers and time comes
from an injected ``IReactorTime`` (``task.Clock`` in tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from twisted.logger import Logger
from zope.interface import Interface

LONELY_SECONDS = 15.0
EARLY_LIMIT = 256 * 1024  # bytes a side may send before it is paired
CONNECTED = b"c"
CONNECTED_RECORDED = b"cr"


class IRelayPeer(Interface):
    """One WebSocket of the relay, as the table drives it."""

    def send(payload: bytes, binary: bool) -> None:
        """Send one frame (text when ``binary`` is false)."""

    def pause_reading() -> None:
        """Stop reading from the socket (the peer's bytes wait in TCP)."""

    def resume_reading() -> None:
        """Read again."""

    def close() -> None:
        """Close the WebSocket (and the connection soon after)."""


@dataclass(frozen=True)
class SideInfo:
    """Who one side is, as its authentication resolved it (spec §3)."""

    relay_id: str
    user_id: Optional[str] = None  # a logged-in user, or the ``ruserid`` of a relay cookie
    user_name: Optional[str] = None
    authenticated: bool = False  # logged in (cookie, session, password); not a relay cookie
    nouser: bool = False  # a ``{nouser:1}`` relay cookie
    protocol: Optional[int] = None
    node_id: Optional[str] = None
    browser: bool = False
    address: str = ""
    recorded: bool = False
    guest_name: Optional[str] = None  # a guest of a device-sharing link (its name)
    share_id: Optional[str] = None  # the share (publicid) a guest side or its agent side is for
    expires: Optional[float] = None  # clock seconds after which the side is closed

    @property
    def trusted(self) -> bool:
        return self.authenticated or self.nouser


@dataclass
class Side:
    peer: Any
    info: SideInfo
    partner: Optional["Side"] = None
    relay: Optional["Relay"] = None
    blocked: bool = False  # its outgoing buffer is full
    paused: bool = False  # what we last asked of its reading
    early: list[tuple[bytes, bool]] = field(default_factory=list)
    early_bytes: int = 0
    received_bytes: int = 0
    gone: bool = False
    deadline: Any = None  # the DelayedCall closing it at ``info.expires``


@dataclass
class Relay:
    """One id: a waiting side, then a pair."""

    relay_id: str
    first: Side
    second: Optional[Side] = None
    timer: Any = None
    started: Optional[float] = None
    protocol: Optional[int] = None
    recorded: bool = False
    recording: Any = None  # a meshd.relay.recorder.RecordingFile while recording

    @property
    def user_side(self) -> Optional[Side]:
        """The side that speaks for the session in logs: a logged-in user if any."""
        for side in (self.first, self.second):
            if side is not None and side.info.authenticated:
                return side
        for side in (self.first, self.second):
            if side is not None and side.info.user_id:
                return side
        return None

    @property
    def node_id(self) -> Optional[str]:
        for side in (self.second, self.first):
            if side is not None and side.info.node_id:
                return side.info.node_id
        return None

    @property
    def guest_name(self) -> Optional[str]:
        for side in (self.first, self.second):
            if side is not None and side.info.guest_name:
                return side.info.guest_name
        return None


SessionCallback = Callable[[Relay], None]


class RelayTable:
    """Pairs relay sides by id and moves frames between them."""

    _log = Logger()

    def __init__(self, clock: Any, *, on_start: Optional[SessionCallback] = None,
                 on_end: Optional[SessionCallback] = None,
                 lonely_seconds: float = LONELY_SECONDS, early_limit: int = EARLY_LIMIT,
                 recorder_for: Optional[Callable[[str], Any]] = None) -> None:
        self._clock = clock
        # domain -> Recorder (meshd.relay.recorder) or None: who records what.
        self._recorder_for = recorder_for
        self._on_start = on_start
        self._on_end = on_end
        self._lonely_seconds = lonely_seconds
        self._early_limit = early_limit
        self._relays: dict[str, Relay] = {}
        self._sides: dict[int, Side] = {}
        self.stats = {"paired": 0, "refused": 0, "expired": 0, "ended": 0}

    # -- introspection ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._relays)

    def relay(self, relay_id: str) -> Optional[Relay]:
        return self._relays.get(relay_id)

    def side_of(self, peer: Any) -> Optional[Side]:
        return self._sides.get(id(peer))

    def paired_count(self) -> int:
        return sum(1 for r in self._relays.values() if r.second is not None)

    # -- inputs -------------------------------------------------------------------------

    def join(self, peer: Any, info: SideInfo) -> bool:
        """A side arrives; False when it was refused (and closed)."""
        side = Side(peer, info)
        if info.user_id is None and not info.nouser:
            return self._refuse(side, "no authentication")
        if info.expires is not None and info.expires <= self._clock.seconds():
            return self._refuse(side, "access period over")
        relay = self._relays.get(info.relay_id)
        if relay is None:
            self._sides[id(peer)] = side
            relay = Relay(info.relay_id, side)
            side.relay = relay
            self._relays[info.relay_id] = relay
            self._set_paused(side, True)
            relay.timer = self._clock.callLater(self._lonely_seconds, self._expire, relay)
            self._arm_deadline(side)
            return True
        if relay.second is not None:
            return self._refuse(side, "duplicate")
        first = relay.first
        if not (first.info.trusted or info.trusted):
            return self._refuse(side, "relay without auth")
        if not (first.info.nouser or info.nouser) and first.info.user_id != info.user_id:
            return self._refuse(side, "user mismatch")
        if first.info.share_id != info.share_id:
            return self._refuse(side, "share mismatch")
        self._arm_deadline(side)
        self._pair(relay, side)
        return True

    def close_share(self, share_id: str) -> int:
        """Close every side of a device share (and its partner); how many sessions."""
        closed = 0
        for side in list(self._sides.values()):
            if side.info.share_id == share_id and side.relay is not None and not side.gone:
                self._log.info("relay {relay_id}: share {share_id} removed; closing",
                               relay_id=side.info.relay_id[:64], share_id=share_id)
                self.stats["ended"] += 1
                self._drop(side)
                closed += 1
        return closed

    def received(self, peer: Any, payload: bytes, binary: bool) -> None:
        """A frame from a side: to its partner, or kept until there is one."""
        side = self._sides.get(id(peer))
        if side is None or side.gone:
            return
        side.received_bytes += len(payload)
        if side.partner is None:
            side.early_bytes += len(payload)
            if side.early_bytes > self._early_limit:
                self._log.info("relay {relay_id}: too much data before pairing; closing",
                               relay_id=side.info.relay_id)
                self._drop(side)
                return
            side.early.append((payload, binary))
            return
        self._record(side, payload, binary)
        side.partner.peer.send(payload, binary)

    def send_blocked(self, peer: Any) -> None:
        """A side's outgoing buffer is full: stop reading from its partner."""
        side = self._sides.get(id(peer))
        if side is None or side.blocked:
            return
        side.blocked = True
        if side.partner is not None:
            self._update_reading(side.partner)

    def send_unblocked(self, peer: Any) -> None:
        """A side's outgoing buffer drained: its partner may be read again."""
        side = self._sides.get(id(peer))
        if side is None or not side.blocked:
            return
        side.blocked = False
        if side.partner is not None:
            self._update_reading(side.partner)

    def lost(self, peer: Any) -> None:
        """A side's WebSocket closed: close the other and end the session."""
        side = self._sides.pop(id(peer), None)
        if side is None:
            return
        side.gone = True
        self._drop(side)

    # -- internals ----------------------------------------------------------------------

    def _refuse(self, side: Side, why: str) -> bool:
        self.stats["refused"] += 1
        self._log.info("relay {relay_id} side from {address} refused: {why}",
                       relay_id=side.info.relay_id[:64], address=side.info.address, why=why)
        side.peer.close()
        return False

    def _pair(self, relay: Relay, second: Side) -> None:
        first = relay.first
        self._sides[id(second.peer)] = second
        second.relay = relay
        relay.second = second
        first.partner, second.partner = second, first
        if relay.timer is not None and relay.timer.active():
            relay.timer.cancel()
        relay.timer = None
        relay.started = self._clock.seconds()
        relay.protocol = second.info.protocol if second.info.protocol is not None \
            else first.info.protocol
        relay.recorded = first.info.recorded or second.info.recorded
        self._start_recording(relay)
        self.stats["paired"] += 1
        start = CONNECTED_RECORDED if relay.recorded else CONNECTED
        first.peer.send(start, False)
        second.peer.send(start, False)
        if self._on_start is not None:
            self._report(self._on_start, relay)
        for side in (first, second):
            early, side.early, side.early_bytes = side.early, [], 0
            for payload, binary in early:
                if side.partner is None:
                    break
                self._record(side, payload, binary)
                side.partner.peer.send(payload, binary)
        for side in (first, second):
            if not side.gone:
                self._update_reading(side)

    def _arm_deadline(self, side: Side) -> None:
        if side.info.expires is not None:
            side.deadline = self._clock.callLater(
                max(0.0, side.info.expires - self._clock.seconds()), self._deadline, side)

    def _deadline(self, side: Side) -> None:
        side.deadline = None
        if side.gone or side.relay is None:
            return
        self.stats["ended"] += 1
        self._log.info("relay {relay_id}: access period over; closing",
                       relay_id=side.info.relay_id[:64])
        self._drop(side)

    def _update_reading(self, side: Side) -> None:
        partner = side.partner
        self._set_paused(side, partner is None or partner.blocked)

    def _set_paused(self, side: Side, paused: bool) -> None:
        if side.gone or side.paused == paused:
            return
        side.paused = paused
        if paused:
            side.peer.pause_reading()
        else:
            side.peer.resume_reading()

    def _expire(self, relay: Relay) -> None:
        relay.timer = None
        if self._relays.get(relay.relay_id) is relay and relay.second is None:
            self.stats["expired"] += 1
            self._log.info("relay {relay_id}: nobody joined in {seconds} s; closing",
                           relay_id=relay.relay_id[:64], seconds=self._lonely_seconds)
            self._drop(relay.first)

    def _drop(self, side: Side) -> None:
        """Close a side and its partner; forget their relay."""
        relay = side.relay
        if relay is None:
            return
        side.relay = None
        if self._relays.get(relay.relay_id) is relay:
            del self._relays[relay.relay_id]
        if relay.timer is not None and relay.timer.active():
            relay.timer.cancel()
        relay.timer = None
        partner = side.partner
        side.partner = None
        for one in (side, partner):
            if one is None:
                continue
            if one.deadline is not None and one.deadline.active():
                one.deadline.cancel()
            one.deadline = None
            one.relay, one.partner, one.early = None, None, []
            self._sides.pop(id(one.peer), None)
            if not one.gone:
                one.gone = True
                one.peer.close()
        if relay.recording is not None:
            recording, relay.recording = relay.recording, None
            user = relay.user_side
            try:
                recording.recorder.finished(
                    recording, relay_id=relay.relay_id, protocol=relay.protocol or 0,
                    user_id=user.info.user_id if user else "", node_id=relay.node_id or "",
                    started=relay.started or self._clock.seconds())
            except Exception:
                self._log.failure("finishing the recording of {relay_id} failed",
                                  relay_id=relay.relay_id[:64])
        if relay.started is not None and self._on_end is not None:
            self._report(self._on_end, relay)

    def _start_recording(self, relay: Relay) -> None:
        """Open the session's recording if its domain records this kind of session."""
        user = relay.user_side
        if self._recorder_for is None or user is None or not user.info.user_id:
            return
        parts = user.info.user_id.split("/")
        recorder = self._recorder_for(parts[1] if len(parts) == 3 else "")
        node_id = relay.node_id
        if recorder is None or not recorder.wants(relay.protocol, user.info.user_id, node_id):
            return
        other = relay.second if user is relay.first else relay.first
        recording = recorder.open(
            relay_id=relay.relay_id, protocol=relay.protocol, user_id=user.info.user_id,
            user_name=user.info.user_name, node_id=node_id,
            addresses=(user.info.address, other.info.address if other else ""))
        if recording is not None:
            recording.recorder = recorder
            relay.recording = recording
            relay.recorded = True

    def _record(self, side: Side, payload: bytes, binary: bool) -> None:
        relay = side.relay
        if relay is not None and relay.recording is not None:
            relay.recording.frame(payload, binary, from_user=side is relay.user_side)

    def _report(self, callback: SessionCallback, relay: Relay) -> None:
        try:
            callback(relay)
        except Exception:
            self._log.failure("relay session report failed")
