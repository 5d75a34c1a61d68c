"""Intel AMT power actions over CIRA (control ``poweraction`` 302, 308, 310).

For each device the control channel hands over, :class:`AmtPower` checks that the device
is an Intel AMT device with a CIRA connection to this server that forwards port 16992
and has credentials stored (``intelamt.user``/``intelamt.pass``, set by ``addamtdevice``
or ``changedevice``; an empty user name means AMT's ``admin``), then calls
``CIM_PowerManagementService.RequestPowerStateChange`` over WSMAN (:mod:`meshd.mps.wsman`)
and records the outcome as a device event::

    {etype:"node", action:"amtpower", nodeid, userid, username, actiontype, powerstate,
     result:"ok"|"failed", returnvalue?, msg}

MeshCentral 1.1.55 hands these actions to its AMT manager and logs nothing about them;
the event is meshd's, so that users see what happened (and why nothing did).  The
control channel's reply does not wait for any of this: it stays ``ok``, as MeshCentral's.

:class:`WsmanChannelClient` runs one :class:`~meshd.mps.wsman.WsmanExchange` over MPS
channels, one channel per HTTP request.  Each request is bounded by a timeout (default
30 s, from CHANNEL_OPEN to the answer's last byte) on the injected clock; a channel that
is confirmed after its request gave up is closed at once, and one that delivers an
answer is closed after it.  The credentials never appear in logs or events.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.mps.channels import Channel, ChannelError, ChannelOpenError, NotConnected
from meshd.mps.wsman import (
    POWER_ACTIONS,
    POWER_STATE_NAMES,
    RETURN_VALUES,
    WSMAN_PORT,
    HttpResponse,
    HttpResponseParser,
    WsmanError,
    WsmanExchange,
    power_state_change_envelope,
    power_state_change_result,
)
from meshd.presence import CONN_CIRA
from meshd.store.interface import Document

__all__ = ["AmtPower", "PowerOutcome", "REQUEST_TIMEOUT", "WsmanChannelClient",
           "WsmanTimeout"]

REQUEST_TIMEOUT = 30.0
#: Return values that mean AMT took the request (4096: accepted as a job).
_ACCEPTED = (0, 4096)
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,252}")


class WsmanTimeout(WsmanError):
    """No complete answer in time."""


class ChannelOpener(TypingProtocol):
    """What the client needs from :class:`~meshd.mps.protocol.MpsServerFactory`."""

    def open_channel(self, node_id: str, port: int) -> "defer.Deferred[Channel]":
        """A channel to AMT ``port`` of a connected device."""

    def device(self, node_id: str) -> Any:
        """The device's CIRA connection on this server (with ``forwarded_ports``)."""


def _channel_problem(failure: Failure, port: int) -> str:
    """Words for a user about a channel that could not be used."""
    if failure.check(NotConnected):
        return "the device is not connected over CIRA to this server"
    if isinstance(failure.value, ChannelOpenError):
        return f"the device refused the channel to port {port} (APF reason " \
               f"{failure.value.reason})"
    if failure.check(ChannelError):
        return f"the CIRA channel to port {port} failed: {failure.value}"
    return f"the CIRA channel to port {port} failed"


class _RoundTrip(Protocol):
    """One HTTP request on a fresh channel; ``result`` fires with the answer."""

    _log = Logger()

    def __init__(self, mps: ChannelOpener, clock: IReactorTime, timeout: float,
                 node_id: str, port: int, request: bytes) -> None:
        self._mps = mps
        self._clock = clock
        self._timeout = timeout
        self._node_id = node_id
        self._port = port
        self._request = request
        self._parser = HttpResponseParser()
        self._timer: Any = None
        self._channel: Optional[Channel] = None
        self._done = False
        self.result: defer.Deferred[HttpResponse] = defer.Deferred()

    def start(self) -> "defer.Deferred[HttpResponse]":
        self._timer = self._clock.callLater(self._timeout, self._timed_out)
        opening = defer.maybeDeferred(self._mps.open_channel, self._node_id, self._port)
        opening.addCallbacks(self._opened, self._open_failed)
        opening.addErrback(self._internal_error)
        return self.result

    # -- the channel's side --

    def connectionMade(self) -> None:
        assert self._channel is not None
        try:
            self._channel.write(self._request)
        except ChannelError as error:
            self._fail(WsmanError(f"the CIRA channel to port {self._port} failed: {error}"))

    def dataReceived(self, data: bytes) -> None:
        if self._done or self._channel is None:
            return
        try:
            response = self._parser.feed(data)
        except WsmanError as error:
            self._fail(error)
            self._channel.abortConnection()
            return
        if response is not None:
            self._finish(response)
            self._channel.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._done:
            return
        try:
            response = self._parser.finish()
        except WsmanError as error:
            self._fail(error)
            return
        self._finish(response)

    # -- internals --

    def _opened(self, channel: Channel) -> None:
        if self._done:
            channel.abortConnection()  # confirmed after we gave up
            return
        self._channel = channel
        channel.attach(self)

    def _open_failed(self, failure: Failure) -> None:
        self._fail(WsmanError(_channel_problem(failure, self._port)))

    def _internal_error(self, failure: Failure) -> None:
        self._log.failure("WSMAN request to {node_id} failed", failure, node_id=self._node_id)
        self._fail(WsmanError("internal error"))

    def _timed_out(self) -> None:
        self._timer = None
        if self._done:
            return
        self._fail(WsmanTimeout(f"no answer from Intel AMT within {self._timeout:g} s"))
        if self._channel is not None:
            self._channel.abortConnection()

    def _fail(self, error: WsmanError) -> None:
        if not self._done:
            self._done = True
            self._cancel_timer()
            self.result.errback(Failure(error))

    def _finish(self, response: HttpResponse) -> None:
        if not self._done:
            self._done = True
            self._cancel_timer()
            self.result.callback(response)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class WsmanChannelClient:
    """Runs WSMAN exchanges over the MPS's server-initiated channels."""

    def __init__(self, mps: ChannelOpener, clock: IReactorTime, *,
                 timeout: float = REQUEST_TIMEOUT) -> None:
        self._mps = mps
        self._clock = clock
        self._timeout = timeout

    def round_trip(self, node_id: str, request: bytes, port: int = WSMAN_PORT
                   ) -> "defer.Deferred[HttpResponse]":
        """Send ``request`` on a new channel to ``port``; fires with the answer or fails
        with :class:`~meshd.mps.wsman.WsmanError` (:class:`WsmanTimeout` in time)."""
        return _RoundTrip(self._mps, self._clock, self._timeout, node_id, port,
                          request).start()

    async def call(self, node_id: str, exchange: WsmanExchange,
                   port: int = WSMAN_PORT) -> HttpResponse:
        """Run ``exchange`` to its final answer (authenticating on the way)."""
        while True:
            response = await self.round_trip(node_id, exchange.request(), port)
            answer = exchange.received(response)
            if answer is not None:
                return answer


@dataclass(frozen=True)
class PowerOutcome:
    """What became of one power action: ``message`` is for users."""

    ok: bool
    message: str
    return_value: Optional[int] = None


class AmtPower:
    """Intel AMT power actions for the control channel (see the module docstring).

    ``publish(targets, event)`` dispatches and stores an event (the control hub's);
    ``presence`` tells a device on another server from one that is not connected.
    """

    _log = Logger()

    def __init__(self, *, mps: ChannelOpener, clock: IReactorTime,
                 publish: Callable[[list[str], dict[str, Any]], None],
                 presence: Any = None, random: Callable[[int], bytes] = os.urandom,
                 timeout: float = REQUEST_TIMEOUT) -> None:
        self._mps = mps
        self._publish = publish
        self._presence = presence
        self._random = random
        self.client = WsmanChannelClient(mps, clock, timeout=timeout)
        #: Actions still running (tests and shutdown wait on them).
        self.pending: set[defer.Deferred[PowerOutcome]] = set()

    def request(self, node: Document, action_type: int, *, user_id: str,
                user_name: Optional[str], targets: list[str]
                ) -> "defer.Deferred[PowerOutcome]":
        """Start power action ``action_type`` (302, 308 or 310) on ``node``; the
        Deferred fires with the outcome once its event is published, and never fails."""
        if action_type not in POWER_ACTIONS:
            raise ValueError(f"not an Intel AMT power action: {action_type!r}")
        d = defer.Deferred.fromCoroutine(
            self._perform(node, action_type, user_id, user_name, targets))
        self.pending.add(d)
        d.addBoth(self._done, d)
        return d

    def _done(self, result: Any, d: "defer.Deferred[PowerOutcome]") -> Any:
        self.pending.discard(d)
        return result

    async def _perform(self, node: Document, action_type: int, user_id: str,
                       user_name: Optional[str], targets: list[str]) -> PowerOutcome:
        power_state = POWER_ACTIONS[action_type]
        node_id = str(node.get("_id"))
        try:
            outcome = await self._power(node, power_state)
        except Exception:
            self._log.failure("Intel AMT power action on {node_id} failed", node_id=node_id)
            outcome = PowerOutcome(False, "internal error")
        name = POWER_STATE_NAMES[power_state]
        message = (f"Intel AMT {name}: {outcome.message}" if outcome.ok
                   else f"Intel AMT {name} failed: {outcome.message}")
        self._log.info("{message} ({node_id}, requested by {user_id})", message=message,
                       node_id=node_id, user_id=user_id)
        event: dict[str, Any] = {
            "etype": "node", "action": "amtpower", "nodeid": node_id, "userid": user_id,
            "username": user_name, "actiontype": action_type, "powerstate": power_state,
            "result": "ok" if outcome.ok else "failed", "msg": message}
        if outcome.return_value is not None:
            event["returnvalue"] = outcome.return_value
        try:
            self._publish(targets, event)
        except Exception:
            self._log.failure("amtpower event for {node_id} failed", node_id=node_id)
        return outcome

    async def _power(self, node: Document, power_state: int) -> PowerOutcome:
        node_id = str(node.get("_id"))
        amt = node.get("intelamt")
        if not isinstance(amt, dict):
            return PowerOutcome(False, "the device has no Intel AMT")
        connection = self._mps.device(node_id)
        if connection is None:
            elsewhere = (self._presence.get(node_id, CONN_CIRA)
                         if self._presence is not None else None)
            if elsewhere is not None:
                return PowerOutcome(False, "the device is connected over CIRA to another "
                                           "server")
            return PowerOutcome(False, "the device is not connected over CIRA to this server")
        if WSMAN_PORT not in getattr(connection, "forwarded_ports", frozenset()):
            return PowerOutcome(False, f"the device does not forward port {WSMAN_PORT} "
                                       f"(Intel AMT WSMAN)")
        user, password = amt.get("user"), amt.get("pass")
        if not isinstance(password, str) or not password:
            return PowerOutcome(False, "no Intel AMT credentials are stored for this device")
        if not isinstance(user, str) or not user:
            user = "admin"
        host = node.get("host")
        if not isinstance(host, str) or _HOST.fullmatch(host) is None:
            host = "localhost"
        exchange = WsmanExchange(power_state_change_envelope(power_state), user=user,
                                 password=password, host=host,
                                 cnonce=self._random(16).hex())
        try:
            response = await self.client.call(node_id, exchange)
            value = power_state_change_result(response)
        except WsmanError as error:
            return PowerOutcome(False, str(error))
        meaning = RETURN_VALUES.get(value, "unknown return value")
        return PowerOutcome(value in _ACCEPTED, f"{meaning} (ReturnValue {value})", value)
