"""Server-opened APF channels as Twisted transports, with back-pressure both ways.

``MpsServerFactory.open_channel(node_id, port)`` sends CHANNEL_OPEN to a logged-in device
and fires with a :class:`Channel` once the device confirms.  The channel is a transport
for a protocol the caller attaches (``channel.attach(protocol)``): bytes from the device
go to ``protocol.dataReceived``, the end of the channel to ``protocol.connectionLost``.

Back-pressure, both directions:

* towards the device, ``write`` queues what the device's window does not take yet; a
  producer registered with ``registerProducer`` is paused while anything is queued and
  resumed when the queue has drained (``ChannelWritable``).  ``write`` raises
  :class:`~meshd.mps.machine.ChannelError` when more than 1 MiB is queued, so callers
  must honour the pause.
* from the device, the channel is an ``IPushProducer``: while it is paused (or no
  protocol is attached yet) received bytes are held and *not* acknowledged, so the
  device's window closes after 32 KiB and it stops sending.  Delivered bytes are
  acknowledged with CHANNEL_WINDOW_ADJUST once half the window has been used.

The channel talks to its connection through the small :class:`ChannelHost` interface,
so it is tested with the real protocol and needs nothing else.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd.mps.machine import ChannelError

__all__ = [
    "Channel",
    "ChannelAddress",
    "ChannelError",
    "ChannelHost",
    "ChannelOpenError",
    "NotConnected",
]


class NotConnected(ChannelError):
    """The device has no CIRA connection on this server."""


class ChannelOpenError(ChannelError):
    """The device refused the channel (``reason`` is an APF open-failure code) or the
    connection ended before it answered."""

    def __init__(self, reason: int, description: str = "") -> None:
        super().__init__(f"channel open failed: reason {reason} {description}".strip())
        self.reason = reason
        self.description = description


@dataclass(frozen=True)
class ChannelAddress:
    """``getPeer()`` of a channel: the device and the AMT port it reaches."""

    node_id: str
    port: int


class ChannelHost(TypingProtocol):
    """What a channel needs from its APF connection (the protocol adapter)."""

    def channel_send(self, channel_id: int, data: bytes) -> int:
        """Queue ``data``; return how many bytes are still waiting for window."""

    def channel_close(self, channel_id: int, abort: bool) -> None:
        """Close after the queue is sent (or drop the queue with ``abort``)."""

    def channel_consume(self, channel_id: int, nbytes: int) -> None:
        """``nbytes`` received bytes were delivered; reopen the window as due."""


@implementer(ITransport, IConsumer, IPushProducer)
class Channel:
    """One open channel to an AMT port of a device."""

    _log = Logger()

    def __init__(self, host: ChannelHost, channel_id: int, node_id: str, port: int) -> None:
        self._host = host
        self.channel_id = channel_id
        self.node_id = node_id
        self.port = port
        self.window = 0
        self._opened: defer.Deferred[Channel] = defer.Deferred()
        self._closed_waiters: list[defer.Deferred[None]] = []
        self._protocol: Optional[Protocol] = None
        self._inbox: deque[bytes] = deque()
        self._paused = False
        self._delivering = False
        self._producer: Optional[IProducer] = None
        self._streaming = True
        self._producer_paused = False
        self._queued = 0
        self._ended = False  # the device side is gone (ChannelClosed / failure)
        self._closing = False  # we asked to close
        self._lost_reason: Optional[Failure] = None
        self._pulling = False
        self._pull_again = False
        self._done = False

    # -- the caller's side --

    @property
    def closed(self) -> bool:
        """True once the channel is gone."""
        return self._ended

    def attach(self, protocol: Protocol) -> None:
        """Make ``protocol`` the receiver; held bytes are delivered now."""
        if self._protocol is not None:
            raise ChannelError("a protocol is already attached")
        self._protocol = protocol
        protocol.makeConnection(self)
        self._drain()

    def when_closed(self) -> "defer.Deferred[None]":
        """Fires when the channel has ended (and its protocol heard connectionLost)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._done:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d

    # ITransport

    def write(self, data: bytes) -> None:
        """Send ``data`` to the device (queued beyond its window; see the module doc)."""
        if self._ended or self._closing:
            raise ChannelError(f"channel {self.channel_id} is closed")
        if not data:
            return
        self._queued = self._host.channel_send(self.channel_id, bytes(data))
        if self._producer is None:
            return
        if not self._streaming:
            if not self._queued:
                self._pull()
        elif self._queued and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()  # type: ignore[attr-defined]

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close once everything written has been sent."""
        if self._ended or self._closing:
            return
        self._closing = True
        self._host.channel_close(self.channel_id, False)

    close = loseConnection

    def abortConnection(self) -> None:
        """Close now, dropping what is still queued."""
        if self._ended:
            return
        self._closing = True
        self._host.channel_close(self.channel_id, True)

    def getPeer(self) -> ChannelAddress:
        return ChannelAddress(self.node_id, self.port)

    def getHost(self) -> ChannelAddress:
        return ChannelAddress(self.node_id, self.port)

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        self._producer = producer
        self._streaming = streaming
        self._producer_paused = False
        if streaming and self._queued:
            self._producer_paused = True
            producer.pauseProducing()  # type: ignore[attr-defined]
        elif not streaming and not self._queued:
            self._pull()

    def unregisterProducer(self) -> None:
        self._producer = None

    # IPushProducer: pace what the device sends us

    def pauseProducing(self) -> None:
        """Hold received bytes (unacknowledged: the device's window closes)."""
        self._paused = True

    def resumeProducing(self) -> None:
        """Deliver held bytes and acknowledge them."""
        self._paused = False
        self._drain()

    def stopProducing(self) -> None:
        self.abortConnection()

    # -- the connection's side (called by the protocol adapter) --

    def _opened_with(self, window: int) -> None:
        self.window = window
        if not self._opened.called:
            self._opened.callback(self)

    def _open_failed(self, reason: int, description: str) -> None:
        self._ended = True
        if not self._opened.called:
            self._opened.errback(Failure(ChannelOpenError(reason, description)))
        self._finish()

    def _received(self, data: bytes) -> None:
        self._inbox.append(data)
        self._drain()

    def _writable(self) -> None:
        self._queued = 0
        producer = self._producer
        if producer is None:
            return
        if not self._streaming:
            self._pull()
        elif self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()  # type: ignore[attr-defined]

    def _ended_by(self, reason: Failure) -> None:
        """The channel is gone (closed by either side, or the connection ended)."""
        if self._ended:
            return
        self._ended = True
        self._lost_reason = reason
        self._drain()

    # -- internals --

    def _drain(self) -> None:
        """Deliver held bytes while not paused; then report the end if it came."""
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._inbox and self._protocol is not None and not self._paused:
                data = self._inbox.popleft()
                try:
                    self._protocol.dataReceived(data)
                except Exception:
                    self._log.failure("channel {channel_id} receiver failed",
                                      channel_id=self.channel_id)
                    self._inbox.clear()
                    self.abortConnection()
                    break
                if not self._ended:
                    self._host.channel_consume(self.channel_id, len(data))
        finally:
            self._delivering = False
        if not self._ended:
            return
        if self._protocol is None:
            # Nobody listens yet: report the end to waiters; attach() gets the rest.
            self._finish()
        elif self._lost_reason is not None and not self._inbox:
            reason, self._lost_reason = self._lost_reason, None
            try:
                self._protocol.connectionLost(reason)
            except Exception:
                self._log.failure("channel {channel_id} receiver failed on close",
                                  channel_id=self.channel_id)
            self._finish()

    def _pull(self) -> None:
        """Ask a pull producer for more, without recursing once per chunk."""
        if self._pulling:
            self._pull_again = True
            return
        self._pulling = True
        try:
            while self._producer is not None and not self._streaming and not self._ended:
                self._pull_again = False
                self._producer.resumeProducing()  # type: ignore[attr-defined]
                if not self._pull_again or self._queued:
                    break
        finally:
            self._pulling = False

    def _finish(self) -> None:
        self._done = True
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                producer.stopProducing()  # type: ignore[attr-defined]
            except Exception:
                self._log.failure("producer of channel {channel_id} failed to stop",
                                  channel_id=self.channel_id)
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)


def closed_cleanly() -> Failure:
    """The reason given to a channel's protocol when the channel was closed."""
    return Failure(ConnectionDone("channel closed"))


def closed_by_connection() -> Failure:
    """The reason given when the whole APF connection ended."""
    return Failure(ConnectionLost("CIRA connection closed"))
