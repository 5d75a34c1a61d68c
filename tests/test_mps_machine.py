"""Tests for meshd.mps.machine: the APF connection state machine (no sockets, no real time)."""

from __future__ import annotations

import uuid
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from meshd.mps import apf
from meshd.mps.machine import (
    Action,
    ApfMachine,
    AuthResult,
    Authenticated,
    ChannelClosed,
    ChannelData,
    ChannelError,
    ChannelOpened,
    ChannelOpenFailed,
    ChannelState,
    ChannelWritable,
    Close,
    ConnType,
    ControlReceived,
    Credentials,
    Disconnected,
    ForwardAdded,
    ForwardRemoved,
    KeepAliveOptions,
    MachineConfig,
    Send,
    State,
)

SYSTEM_ID = uuid.UUID("12345678-9abc-def0-1122-334455667788")
USER = "zQbukjKfEEljEFCU"
PASSWORD = b"P@ssw0rd!"
NODE = "node//" + "A" * 64
MESH = "mesh//zQbukjKfEEljEFCU@5yOL"

VERSION = apf.ProtocolVersion(1, 0, 0, SYSTEM_ID)
AUTH_REQUEST = apf.ServiceRequest(apf.AUTH_SERVICE)
PFWD_REQUEST = apf.ServiceRequest(apf.PFWD_SERVICE)
LOGIN = apf.UserAuthRequest(USER, apf.PFWD_SERVICE, "password", PASSWORD)
BAD_LOGIN = apf.UserAuthRequest(USER, apf.PFWD_SERVICE, "password", b"wrong")


class Checker:
    """A password check that knows one device and records what it was asked."""

    def __init__(self, error: Optional[Exception] = None) -> None:
        self.calls: list[Credentials] = []
        self.error = error

    def __call__(self, credentials: Credentials) -> AuthResult:
        self.calls.append(credentials)
        if self.error is not None:
            raise self.error
        if credentials.username == USER and credentials.password == PASSWORD:
            return AuthResult.accept(NODE, MESH, "amt1")
        return AuthResult.reject("bad password")


def sent(actions: list[Action]) -> list[apf.Message]:
    """The messages of the Send actions."""
    return [a.message for a in actions if isinstance(a, Send)]


def events(actions: list[Action]) -> list[Action]:
    """The actions that are not Send."""
    return [a for a in actions if not isinstance(a, Send)]


def closes(actions: list[Action]) -> list[Close]:
    return [a for a in actions if isinstance(a, Close)]


class MachineTestCase(unittest.TestCase):
    """Builds machines on a fake clock."""

    def make(self, config: MachineConfig = MachineConfig(),
             checker: Optional[Checker] = None) -> ApfMachine:
        self.clock = Clock()
        self.checker = checker or Checker()
        return ApfMachine(self.checker, self.clock.seconds, config)

    def logged_in(self, config: MachineConfig = MachineConfig(),
                  ports: tuple[int, ...] = (16992, 16993)) -> ApfMachine:
        """A machine that went through login, the pfwd service and forwarded ``ports``."""
        machine = self.make(config)
        for message in (VERSION, AUTH_REQUEST, LOGIN, PFWD_REQUEST):
            machine.receive(message)
        for port in ports:
            machine.receive(apf.TcpipForward("", port))
        self.assertIs(machine.state, State.READY)
        return machine

    def open_channel(self, machine: ApfMachine, window: int = 4096,
                     port: int = 16992) -> tuple[int, int]:
        """Open and confirm a channel; returns (our id, the device's id)."""
        channel_id, _ = machine.open_channel(port)
        remote = 100 + channel_id
        machine.receive(apf.ChannelOpenConfirmation(channel_id, remote, window))
        return channel_id, remote

    def assertClosed(self, machine: ApfMachine, actions: list[Action]) -> None:
        """The actions end with exactly one Close and the machine is closed."""
        self.assertEqual(len(closes(actions)), 1, actions)
        self.assertIsInstance(actions[-1], Close)
        self.assertIs(machine.state, State.CLOSED)


class HappyPathTests(MachineTestCase):
    """A real AMT's connection, start to end."""

    def test_full_session(self) -> None:
        """Version, auth service, login, pfwd, forwards, keep-alive and a channel's life."""
        machine = self.make()
        self.assertEqual(machine.receive(VERSION), [])
        self.assertEqual(machine.state, State.AWAITING_AUTH_SERVICE)
        self.assertEqual(machine.receive(AUTH_REQUEST),
                         [Send(apf.ServiceAccept(apf.AUTH_SERVICE))])
        actions = machine.receive(LOGIN)
        self.assertEqual(sent(actions), [apf.UserAuthSuccess()])
        [auth] = events(actions)
        assert isinstance(auth, Authenticated)
        self.assertEqual((auth.result.node_id, auth.result.mesh_id, auth.username,
                          auth.system_id, auth.conn_type, auth.major, auth.minor),
                         (NODE, MESH, USER, SYSTEM_ID, ConnType.CIRA, 1, 0))
        self.assertEqual(self.checker.calls[0].password, PASSWORD)
        self.assertEqual(self.checker.calls[0].system_id, SYSTEM_ID)
        self.assertEqual((machine.result, machine.system_id, machine.conn_type),
                         (auth.result, SYSTEM_ID, ConnType.CIRA))
        self.assertEqual(machine.receive(PFWD_REQUEST),
                         [Send(apf.ServiceAccept(apf.PFWD_SERVICE))])
        for port in (16993, 16992, 664, 623, 16995, 16994):
            self.assertEqual(machine.receive(apf.TcpipForward("", port)),
                             [Send(apf.RequestSuccess(port)), ForwardAdded(port)])
        self.assertEqual(machine.receive(apf.TcpipForward("", 5900)),
                         [Send(apf.RequestSuccess(5900)), ForwardAdded(5900),
                          Send(apf.KeepAliveOptionsRequest(30, 0))])
        self.assertEqual(machine.receive(apf.KeepAliveOptionsReply(30, 0)),
                         [KeepAliveOptions(30, 0)])
        self.assertEqual(machine.receive(apf.KeepAliveRequest(255)),
                         [Send(apf.KeepAliveReply(255))])

        channel_id, actions = machine.open_channel(16992)
        self.assertEqual(channel_id, 4)
        self.assertEqual(actions, [Send(apf.ChannelOpen("forwarded-tcpip", 4, 32768, "", 16992,
                                                        "1.2.3.4", 1028))])
        self.assertEqual(machine.send_data(4, b"POST /wsman HTTP/1.1\r\n"), [])
        actions = machine.receive(apf.ChannelOpenConfirmation(4, 77, 4096))
        self.assertEqual(actions, [ChannelOpened(4, 4096),
                                   Send(apf.ChannelData(77, b"POST /wsman HTTP/1.1\r\n")),
                                   ChannelWritable(4)])
        self.assertEqual(machine.receive(apf.ChannelData(4, b"HTTP/1.1 401\r\n")),
                         [ChannelData(4, b"HTTP/1.1 401\r\n")])
        self.assertEqual(machine.receive(apf.ChannelWindowAdjust(4, 100)), [])
        self.assertEqual(machine.receive(apf.ChannelClose(4)),
                         [Send(apf.ChannelClose(77)), ChannelClosed(4)])
        self.assertIsNone(machine.channel_state(4))

        actions = machine.receive(apf.Disconnect(apf.DisconnectReason.BY_APPLICATION))
        self.assertClosed(machine, actions)
        reason = closes(actions)[0].reason
        self.assertEqual(events(actions), [Disconnected(NODE, MESH, reason), Close(reason)])

    def test_wire_bytes(self) -> None:
        """The server's answers encode as the spec's byte layouts."""
        machine = self.make()
        machine.receive(VERSION)
        [accept] = sent(machine.receive(AUTH_REQUEST))
        self.assertEqual(accept.encode(), b"\x06\x00\x00\x00\x12auth@amt.intel.com")
        [success] = sent(machine.receive(LOGIN))
        self.assertEqual(success.encode(), b"\x34")

    def test_forward_idempotent(self) -> None:
        """A repeated forward is answered again but registered once."""
        machine = self.logged_in()
        self.assertEqual(machine.receive(apf.TcpipForward("", 16992)),
                         [Send(apf.RequestSuccess(16992))])
        self.assertEqual(machine.forwarded_ports, frozenset({16992, 16993}))

    def test_cancel_forward(self) -> None:
        """cancel-tcpip-forward removes the port and gets a port-less REQUEST_SUCCESS."""
        machine = self.logged_in()
        self.assertEqual(machine.receive(apf.CancelTcpipForward("", 16993)),
                         [Send(apf.RequestSuccess()), ForwardRemoved(16993)])
        self.assertEqual(machine.forwarded_ports, frozenset({16992}))

    def test_cancel_unknown_forward(self) -> None:
        """Cancelling a port that was never forwarded gets REQUEST_FAILURE."""
        machine = self.logged_in()
        self.assertEqual(machine.receive(apf.CancelTcpipForward("", 80)),
                         [Send(apf.RequestFailure())])

    def test_forward_reply_even_without_want_reply(self) -> None:
        """tcpip-forward is always answered, as MeshCentral does and AMT expects."""
        machine = self.logged_in()
        self.assertEqual(sent(machine.receive(apf.TcpipForward("", 664, want_reply=False))),
                         [apf.RequestSuccess(664)])

    def test_udp_send_to(self) -> None:
        """udp-send-to is not served: REQUEST_FAILURE if a reply is wanted, else silence."""
        machine = self.logged_in()
        self.assertEqual(machine.receive(apf.UdpSendTo("a", 1, "b", 2, b"x")), [])
        self.assertEqual(machine.receive(apf.UdpSendTo("a", 1, "b", 2, b"x", True)),
                         [Send(apf.RequestFailure())])

    def test_device_channel_open_refused(self) -> None:
        """A device-opened channel is refused with reason 3, in 17 bytes."""
        machine = self.logged_in()
        [reply] = sent(machine.receive(apf.ChannelOpen("direct-tcpip", 9, 100, "h", 1, "o", 2)))
        self.assertEqual(reply, apf.ChannelOpenFailure(9, 3))
        self.assertEqual(len(reply.encode()), 17)

    def test_keepalive_reply_ignored(self) -> None:
        """An unsolicited KEEPALIVE_REPLY after login is accepted and ignored."""
        machine = self.logged_in()
        self.assertEqual(machine.receive(apf.KeepAliveReply(1)), [])
        self.assertIs(machine.state, State.READY)


class LoginTests(MachineTestCase):
    """Authentication: the password really is checked, once, in order."""

    def test_wrong_password(self) -> None:
        """A wrong password gets USERAUTH_FAILURE (14 bytes) then Close, no Authenticated."""
        machine = self.make()
        for message in (VERSION, AUTH_REQUEST):
            machine.receive(message)
        actions = machine.receive(BAD_LOGIN)
        self.assertEqual(sent(actions), [apf.UserAuthFailure()])
        self.assertEqual(len(sent(actions)[0].encode()), 14)
        self.assertFalse(any(isinstance(a, (Authenticated, Disconnected)) for a in actions))
        self.assertClosed(machine, actions)
        self.assertEqual(self.checker.calls[0].password, b"wrong")

    def test_check_raises(self) -> None:
        """A check that raises refuses the login and closes, carrying the error."""
        machine = self.make(checker=Checker(RuntimeError("db down")))
        for message in (VERSION, AUTH_REQUEST):
            machine.receive(message)
        actions = machine.receive(LOGIN)
        self.assertEqual(sent(actions), [apf.UserAuthFailure()])
        self.assertClosed(machine, actions)
        self.assertIsInstance(closes(actions)[0].error, RuntimeError)

    def test_method_none_refused(self) -> None:
        """Method 'none' is refused without asking the check (MeshCentral accepts it)."""
        machine = self.make()
        for message in (VERSION, AUTH_REQUEST):
            machine.receive(message)
        actions = machine.receive(apf.UserAuthRequest(USER, apf.PFWD_SERVICE, "none", None))
        self.assertEqual(sent(actions), [apf.UserAuthFailure()])
        self.assertClosed(machine, actions)
        self.assertEqual(self.checker.calls, [])

    def test_login_for_other_service(self) -> None:
        """A login for a service other than pfwd@amt.intel.com is refused."""
        machine = self.make()
        for message in (VERSION, AUTH_REQUEST):
            machine.receive(message)
        actions = machine.receive(apf.UserAuthRequest(USER, "x", "password", PASSWORD))
        self.assertClosed(machine, actions)
        self.assertEqual(self.checker.calls, [])

    def test_login_before_version(self) -> None:
        """USERAUTH_REQUEST before PROTOCOLVERSION closes without a check (spec 11.1 crash)."""
        machine = self.make()
        self.assertClosed(machine, machine.receive(LOGIN))
        self.assertEqual(self.checker.calls, [])

    def test_login_before_auth_service(self) -> None:
        """USERAUTH_REQUEST before the auth service request closes."""
        machine = self.make()
        machine.receive(VERSION)
        self.assertClosed(machine, machine.receive(LOGIN))
        self.assertEqual(self.checker.calls, [])

    def test_second_login(self) -> None:
        """A second USERAUTH_REQUEST after success closes and unregisters."""
        machine = self.make()
        for message in (VERSION, AUTH_REQUEST, LOGIN):
            machine.receive(message)
        actions = machine.receive(LOGIN)
        self.assertEqual([type(a) for a in actions], [Disconnected, Close])
        self.assertEqual(len(self.checker.calls), 1)

    def test_services_in_order(self) -> None:
        """Service requests out of order, or unknown, close the connection."""
        for before, request in (((), AUTH_REQUEST), ((VERSION,), PFWD_REQUEST),
                                ((VERSION,), apf.ServiceRequest("x@amt.intel.com")),
                                ((VERSION, AUTH_REQUEST), AUTH_REQUEST),
                                ((VERSION, AUTH_REQUEST, LOGIN), AUTH_REQUEST)):
            machine = self.make()
            for message in before:
                machine.receive(message)
            self.assertClosed(machine, machine.receive(request))

    def test_second_version(self) -> None:
        """A second PROTOCOLVERSION closes."""
        machine = self.make()
        machine.receive(VERSION)
        self.assertClosed(machine, machine.receive(VERSION))

    def test_unsupported_version(self) -> None:
        """APF major version 2 is refused."""
        machine = self.make()
        self.assertClosed(machine, machine.receive(apf.ProtocolVersion(2, 0, 0, SYSTEM_ID)))

    def test_messages_before_login_rejected(self) -> None:
        """Forwards, channel messages and keep-alives before login close the connection."""
        early: list[apf.Message] = [
            apf.TcpipForward("", 16992), apf.CancelTcpipForward("", 16992),
            apf.UdpSendTo("a", 1, "b", 2, b""), apf.KeepAliveRequest(1),
            apf.KeepAliveReply(1), apf.KeepAliveOptionsReply(30, 0),
            apf.ChannelOpen("forwarded-tcpip", 1, 2, "", 3, "", 4),
            apf.ChannelOpenConfirmation(4, 1, 2), apf.ChannelOpenFailure(4, 1),
            apf.ChannelWindowAdjust(4, 1), apf.ChannelData(4, b"x"), apf.ChannelClose(4),
        ]
        for prefix in ((), (VERSION,), (VERSION, AUTH_REQUEST)):
            for message in early:
                machine = self.make()
                for step in prefix:
                    machine.receive(step)
                self.assertClosed(machine, machine.receive(message))

    def test_forward_before_pfwd_service(self) -> None:
        """A forward after login but before the pfwd service request closes and unregisters."""
        machine = self.make()
        for message in (VERSION, AUTH_REQUEST, LOGIN):
            machine.receive(message)
        actions = machine.receive(apf.TcpipForward("", 16992))
        self.assertEqual([type(a) for a in actions], [Disconnected, Close])

    def test_keepalive_after_login(self) -> None:
        """Keep-alives are answered as soon as the device is logged in."""
        machine = self.make()
        for message in (VERSION, AUTH_REQUEST, LOGIN):
            machine.receive(message)
        self.assertEqual(machine.receive(apf.KeepAliveRequest(7)),
                         [Send(apf.KeepAliveReply(7))])

    def test_server_messages_from_device(self) -> None:
        """Messages only a server sends are violations when they come from the device."""
        for message in (apf.UserAuthSuccess(), apf.RequestSuccess(1), apf.ServiceAccept("x"),
                        apf.KeepAliveOptionsRequest(1, 2)):
            machine = self.logged_in()
            self.assertClosed(machine, machine.receive(message))

    def test_credentials_repr(self) -> None:
        """Credentials never show the password in repr()."""
        credentials = Credentials(USER, b"secret", SYSTEM_ID, ConnType.CIRA, 1, 0)
        self.assertNotIn("secret", repr(credentials))

    def test_result_needs_identity(self) -> None:
        """A successful AuthResult must name node and group."""
        self.assertRaises(ValueError, AuthResult, True)


class ChannelTests(MachineTestCase):
    """Server-opened channels: ids, windows, closing."""

    def test_channel_ids(self) -> None:
        """Channel ids start at 4 and increase."""
        machine = self.logged_in()
        ids = [machine.open_channel(16992)[0] for _ in range(3)]
        self.assertEqual(ids, [4, 5, 6])

    def test_port_must_be_forwarded(self) -> None:
        """A channel to a port the device did not forward is refused locally."""
        machine = self.logged_in(ports=(16993,))
        self.assertRaises(ChannelError, machine.open_channel, 16992)
        lenient = self.logged_in(MachineConfig(require_forwarded_port=False), ports=(16993,))
        self.assertEqual(lenient.open_channel(16992)[0], 4)

    def test_open_before_ready(self) -> None:
        """No channel can be opened before the pfwd service is accepted."""
        machine = self.make()
        self.assertRaises(ChannelError, machine.open_channel, 16992)

    def test_channel_limit(self) -> None:
        """At most max_channels channels live at once; closed ones free their slot."""
        machine = self.logged_in(MachineConfig(max_channels=2))
        first, _ = self.open_channel(machine)
        machine.open_channel(16992)
        self.assertRaises(ChannelError, machine.open_channel, 16992)
        machine.receive(apf.ChannelClose(first))
        self.assertEqual(machine.open_channel(16992)[0], 6)

    def test_forward_limit(self) -> None:
        """Forwards beyond max_forwards get REQUEST_FAILURE."""
        machine = self.logged_in(MachineConfig(max_forwards=2))
        self.assertEqual(machine.receive(apf.TcpipForward("", 664)),
                         [Send(apf.RequestFailure())])
        self.assertEqual(machine.receive(apf.TcpipForward("", 70000)),
                         [Send(apf.RequestFailure())])

    def test_send_limited_by_window(self) -> None:
        """Data beyond the device's window waits for WINDOW_ADJUST, then ChannelWritable."""
        machine = self.logged_in()
        channel_id, remote = self.open_channel(machine, window=10)
        actions = machine.send_data(channel_id, b"0123456789abcdef")
        self.assertEqual(actions, [Send(apf.ChannelData(remote, b"0123456789"))])
        self.assertEqual(machine.pending_bytes(channel_id), 6)
        self.assertEqual(machine.receive(apf.ChannelWindowAdjust(channel_id, 4)),
                         [Send(apf.ChannelData(remote, b"abcd"))])
        self.assertEqual(machine.receive(apf.ChannelWindowAdjust(channel_id, 100)),
                         [Send(apf.ChannelData(remote, b"ef")), ChannelWritable(channel_id)])
        self.assertEqual(machine.send_data(channel_id, b"gh"),
                         [Send(apf.ChannelData(remote, b"gh"))])

    def test_send_chunked(self) -> None:
        """Large writes go out in CHANNEL_DATA of at most max_send_chunk bytes."""
        machine = self.logged_in(MachineConfig(max_send_chunk=4))
        channel_id, _ = self.open_channel(machine, window=100)
        sizes = [len(m.data) for m in sent(machine.send_data(channel_id, b"x" * 10))
                 if isinstance(m, apf.ChannelData)]
        self.assertEqual(sizes, [4, 4, 2])

    def test_send_queue_limit(self) -> None:
        """Queuing more than max_pending bytes is refused."""
        machine = self.logged_in(MachineConfig(max_pending=8))
        channel_id, _ = machine.open_channel(16992)
        machine.send_data(channel_id, b"12345678")
        self.assertRaises(ChannelError, machine.send_data, channel_id, b"9")

    def test_receive_window_adjust(self) -> None:
        """After more than half the window is received, WINDOW_ADJUST returns it."""
        machine = self.logged_in(MachineConfig(window=100))
        channel_id, remote = self.open_channel(machine)
        self.assertEqual(sent(machine.receive(apf.ChannelData(channel_id, b"x" * 50))), [])
        self.assertEqual(sent(machine.receive(apf.ChannelData(channel_id, b"x" * 10))),
                         [apf.ChannelWindowAdjust(remote, 60)])
        self.assertEqual(events(machine.receive(apf.ChannelData(channel_id, b"x" * 100))),
                         [ChannelData(channel_id, b"x" * 100)])

    def test_manual_window(self) -> None:
        """With auto_window_adjust off, the window reopens only as data is consumed."""
        machine = self.logged_in(MachineConfig(window=100, auto_window_adjust=False))
        channel_id, remote = self.open_channel(machine)
        self.assertEqual(sent(machine.receive(apf.ChannelData(channel_id, b"x" * 80))), [])
        self.assertEqual(machine.consume(channel_id, 40), [])
        self.assertEqual(sent(machine.consume(channel_id, 40)),
                         [apf.ChannelWindowAdjust(remote, 80)])
        self.assertRaises(ValueError, machine.consume, channel_id, 1)

    def test_data_beyond_window(self) -> None:
        """CHANNEL_DATA larger than the window we granted closes the connection."""
        machine = self.logged_in(MachineConfig(window=100))
        channel_id, _ = self.open_channel(machine)
        actions = machine.receive(apf.ChannelData(channel_id, b"x" * 101))
        self.assertIn(ChannelClosed(channel_id), actions)
        self.assertClosed(machine, actions)

    def test_window_overflow(self) -> None:
        """A WINDOW_ADJUST pushing the credit past 2**32-1 closes the connection."""
        machine = self.logged_in()
        channel_id, _ = self.open_channel(machine, window=apf.U32_MAX)
        self.assertClosed(machine, machine.receive(apf.ChannelWindowAdjust(channel_id, 1)))

    def test_close_from_our_side(self) -> None:
        """Our CLOSE is sent; the device's CLOSE then ends the channel without an echo."""
        machine = self.logged_in()
        channel_id, remote = self.open_channel(machine)
        self.assertEqual(machine.close_channel(channel_id), [Send(apf.ChannelClose(remote))])
        self.assertEqual(machine.channel_state(channel_id), ChannelState.CLOSING)
        self.assertEqual(machine.receive(apf.ChannelData(channel_id, b"late")), [])
        self.assertEqual(machine.receive(apf.ChannelWindowAdjust(channel_id, 5)), [])
        self.assertEqual(machine.receive(apf.ChannelClose(channel_id)),
                         [ChannelClosed(channel_id)])
        self.assertEqual(machine.close_channel(channel_id), [])

    def test_close_after_queue(self) -> None:
        """A close with queued data waits for the data to be sent."""
        machine = self.logged_in()
        channel_id, remote = self.open_channel(machine, window=2)
        machine.send_data(channel_id, b"abcd")
        self.assertEqual(machine.close_channel(channel_id), [])
        self.assertRaises(ChannelError, machine.send_data, channel_id, b"e")
        self.assertEqual(sent(machine.receive(apf.ChannelWindowAdjust(channel_id, 2))),
                         [apf.ChannelData(remote, b"cd"), apf.ChannelClose(remote)])

    def test_close_abort(self) -> None:
        """close_channel(abort=True) drops queued data and closes now."""
        machine = self.logged_in()
        channel_id, remote = self.open_channel(machine, window=0)
        machine.send_data(channel_id, b"abcd")
        self.assertEqual(machine.close_channel(channel_id, abort=True),
                         [Send(apf.ChannelClose(remote))])

    def test_close_while_opening(self) -> None:
        """Closing a channel still opening sends CLOSE once the confirmation arrives."""
        machine = self.logged_in()
        channel_id, _ = machine.open_channel(16992)
        self.assertEqual(machine.close_channel(channel_id), [])
        self.assertEqual(machine.receive(apf.ChannelOpenConfirmation(channel_id, 9, 100)),
                         [Send(apf.ChannelClose(9))])
        self.assertEqual(machine.receive(apf.ChannelClose(channel_id)),
                         [ChannelClosed(channel_id)])

    def test_open_failure(self) -> None:
        """CHANNEL_OPEN_FAILURE ends the channel with ChannelOpenFailed."""
        machine = self.logged_in()
        channel_id, _ = machine.open_channel(16992)
        self.assertEqual(machine.receive(apf.ChannelOpenFailure(channel_id, 2)),
                         [ChannelOpenFailed(channel_id, 2, "")])
        self.assertIsNone(machine.channel_state(channel_id))

    def test_unknown_channel_ids(self) -> None:
        """Every channel message naming an id not in the table closes the connection."""
        for message in (apf.ChannelOpenConfirmation(99, 1, 2), apf.ChannelOpenFailure(99, 1),
                        apf.ChannelWindowAdjust(99, 1), apf.ChannelData(99, b"x"),
                        apf.ChannelClose(99)):
            machine = self.logged_in()
            self.open_channel(machine)
            actions = machine.receive(message)
            self.assertIn(ChannelClosed(4), actions)
            self.assertClosed(machine, actions)

    def test_wrong_channel_state(self) -> None:
        """Confirming an open channel, or data/adjust/close on one still opening, closes."""
        machine = self.logged_in()
        channel_id, _ = self.open_channel(machine)
        self.assertClosed(machine, machine.receive(apf.ChannelOpenConfirmation(channel_id, 1, 2)))
        for message in (apf.ChannelData(4, b"x"), apf.ChannelWindowAdjust(4, 1),
                        apf.ChannelClose(4)):
            machine = self.logged_in()
            machine.open_channel(16992)
            actions = machine.receive(message)
            self.assertIn(ChannelOpenFailed(4, 2, "connection closed"), actions)
            self.assertClosed(machine, actions)

    def test_stale_channel_after_close(self) -> None:
        """A message for a channel that is already closed counts as unknown."""
        machine = self.logged_in()
        channel_id, _ = self.open_channel(machine)
        machine.receive(apf.ChannelClose(channel_id))
        self.assertClosed(machine, machine.receive(apf.ChannelData(channel_id, b"x")))

    def test_device_reuses_its_id(self) -> None:
        """A device confirming two live channels with the same id of its own is closed."""
        machine = self.logged_in()
        first, _ = machine.open_channel(16992)
        second, _ = machine.open_channel(16992)
        machine.receive(apf.ChannelOpenConfirmation(first, 7, 100))
        self.assertClosed(machine, machine.receive(apf.ChannelOpenConfirmation(second, 7, 100)))

    def test_channel_id_wraps(self) -> None:
        """Channel ids wrap at 2**32 and skip ids still in use."""
        machine = self.logged_in(MachineConfig(first_channel_id=apf.U32_MAX))
        first, _ = machine.open_channel(16992)
        self.assertEqual(first, apf.U32_MAX)
        self.assertEqual(machine.open_channel(16992)[0], 0)
        machine2 = self.logged_in(MachineConfig(first_channel_id=apf.U32_MAX))
        machine2.open_channel(16992)
        machine2._next_channel_id = apf.U32_MAX  # as if the counter came round again
        self.assertEqual(machine2.open_channel(16992)[0], 0)

    def test_unknown_channel_local_api(self) -> None:
        """send_data on an unknown channel raises; close and consume do nothing."""
        machine = self.logged_in()
        self.assertRaises(ChannelError, machine.send_data, 42, b"x")
        self.assertEqual(machine.close_channel(42), [])
        self.assertEqual(machine.consume(42, 0), [])


class EndingTests(MachineTestCase):
    """Every way a connection ends leaves nothing stale."""

    def test_disconnect_closes(self) -> None:
        """APF DISCONNECT closes the socket too, ending channels and the registration."""
        machine = self.logged_in()
        self.open_channel(machine)
        machine.open_channel(16992)
        actions = machine.receive(apf.Disconnect(11))
        self.assertEqual([type(a) for a in actions],
                         [ChannelClosed, ChannelOpenFailed, Disconnected, Close])
        self.assertEqual(machine.forwarded_ports, frozenset())

    def test_disconnect_before_login(self) -> None:
        """DISCONNECT before login closes without Disconnected."""
        machine = self.make()
        actions = machine.receive(apf.Disconnect(11))
        self.assertEqual([type(a) for a in actions], [Close])

    def test_connection_lost(self) -> None:
        """Losing the transport unregisters once and asks for no Close."""
        machine = self.logged_in()
        self.open_channel(machine)
        actions = machine.connection_lost()
        self.assertEqual([type(a) for a in actions], [ChannelClosed, Disconnected])
        self.assertEqual(machine.connection_lost(), [])
        self.assertEqual(machine.close("again"), [])

    def test_close_local(self) -> None:
        """close() (e.g. after a parser error) unregisters and closes once."""
        machine = self.logged_in()
        error = apf.ApfProtocolError("bad")
        actions = machine.close("parser error", error)
        self.assertEqual([type(a) for a in actions], [Disconnected, Close])
        self.assertIs(closes(actions)[0].error, error)

    def test_closed_machine_is_inert(self) -> None:
        """After Close, messages are ignored and the channel API refuses."""
        machine = self.logged_in()
        machine.close("bye")
        self.assertEqual(machine.receive(apf.KeepAliveRequest(1)), [])
        self.assertEqual(machine.check_timeouts(), [])
        self.assertIsNone(machine.next_deadline())
        self.assertRaises(ChannelError, machine.open_channel, 16992)
        self.assertEqual(machine.send_control({"action": "x"}), [])


class TimeoutTests(MachineTestCase):
    """Deadlines come from the injected clock."""

    def test_login_deadline(self) -> None:
        """A device that does not log in within auth_timeout is closed."""
        machine = self.make()
        machine.receive(VERSION)
        self.assertEqual(machine.next_deadline(), 30.0)
        self.clock.advance(29)
        machine.receive(AUTH_REQUEST)
        self.assertEqual(machine.check_timeouts(), [])
        self.clock.advance(1)
        self.assertClosed(machine, machine.check_timeouts())

    def test_idle_timeout(self) -> None:
        """90 s without a message closes an authenticated connection."""
        machine = self.logged_in()
        self.assertEqual(machine.next_deadline(), 90.0)
        self.clock.advance(60)
        machine.receive(apf.KeepAliveRequest(1))
        self.clock.advance(89)
        self.assertEqual(machine.check_timeouts(), [])
        self.clock.advance(1)
        actions = machine.check_timeouts()
        self.assertIsInstance(actions[0], Disconnected)
        self.assertClosed(machine, actions)

    def test_channel_open_deadline(self) -> None:
        """A device that never answers CHANNEL_OPEN gets the connection closed."""
        machine = self.logged_in(MachineConfig(channel_timeout=10))
        channel_id, _ = machine.open_channel(16992)
        self.assertEqual(machine.next_deadline(), 10.0)
        self.clock.advance(10)
        actions = machine.check_timeouts()
        self.assertIn(ChannelOpenFailed(channel_id, 2, "connection closed"), actions)
        self.assertClosed(machine, actions)

    def test_channel_close_deadline(self) -> None:
        """A device that never answers our CHANNEL_CLOSE gets the connection closed."""
        machine = self.logged_in(MachineConfig(channel_timeout=10))
        channel_id, _ = self.open_channel(machine)
        self.clock.advance(5)
        machine.close_channel(channel_id)
        self.clock.advance(9)
        self.assertEqual(machine.check_timeouts(), [])
        self.clock.advance(1)
        self.assertClosed(machine, machine.check_timeouts())


class JsonControlTests(MachineTestCase):
    """MeshCentral's JSON_CONTROL extension."""

    LMS = MachineConfig(conn_types=frozenset(ConnType))

    def test_bad_json_closes(self) -> None:
        """Malformed JSON_CONTROL closes instead of wedging the connection."""
        for text in ("{", "[]", '{"action": 1}', '"x"'):
            machine = self.make()
            self.assertClosed(machine, machine.receive(apf.JsonControl(text)))

    def test_conn_type_not_allowed(self) -> None:
        """connType other than CIRA is refused where the transport does not allow it."""
        machine = self.make()
        actions = machine.receive(apf.JsonControl.from_value({"action": "connType", "value": 2}))
        self.assertClosed(machine, actions)

    def test_conn_type_bad_values(self) -> None:
        """connType must be an allowed integer, set once, before PROTOCOLVERSION."""
        for before, value in (((), 7), ((), True), ((), "2"), ((VERSION,), 2)):
            machine = self.make(self.LMS)
            for message in before:
                machine.receive(message)
            actions = machine.receive(
                apf.JsonControl.from_value({"action": "connType", "value": value}))
            self.assertClosed(machine, actions)
        machine = self.make(self.LMS)
        machine.receive(apf.JsonControl.from_value({"action": "connType", "value": 2}))
        self.assertClosed(machine, machine.receive(
            apf.JsonControl.from_value({"action": "connType", "value": 1})))

    def test_lms_session(self) -> None:
        """LMS: connType and early meiState reach Authenticated, later control is reported."""
        machine = self.make(self.LMS)
        mei = {"OsHostname": "pc1"}
        self.assertEqual(machine.receive(
            apf.JsonControl.from_value({"action": "connType", "value": 2})), [])
        self.assertEqual(machine.receive(
            apf.JsonControl.from_value({"action": "meiState", "value": mei})), [])
        machine.receive(VERSION)
        machine.receive(AUTH_REQUEST)
        [auth] = events(machine.receive(LOGIN))
        assert isinstance(auth, Authenticated)
        self.assertEqual((auth.conn_type, auth.mei_state), (ConnType.LMS, mei))
        self.assertEqual(self.checker.calls[0].conn_type, ConnType.LMS)
        message = {"action": "deactivate", "value": 0}
        self.assertEqual(machine.receive(apf.JsonControl.from_value(message)),
                         [ControlReceived("deactivate", message)])
        self.assertEqual(sent(machine.send_control({"action": "mestate"})),
                         [apf.JsonControl('{"action":"mestate"}')])

    def test_lms_failed_login_console(self) -> None:
        """A refused LMS peer gets MeshCentral's console message before the close."""
        machine = self.make(self.LMS)
        machine.receive(apf.JsonControl.from_value({"action": "connType", "value": 2}))
        machine.receive(VERSION)
        machine.receive(AUTH_REQUEST)
        actions = machine.receive(BAD_LOGIN)
        self.assertEqual(sent(actions), [
            apf.UserAuthFailure(),
            apf.JsonControl.from_value({"action": "console",
                                        "msg": "Invalid login username/password"})])

    def test_cira_ignores_control(self) -> None:
        """On CIRA, control messages are ignored and none are ever sent."""
        machine = self.logged_in()
        self.assertEqual(machine.receive(
            apf.JsonControl.from_value({"action": "meiState", "value": {}})), [])
        self.assertEqual(machine.send_control({"action": "mestate"}), [])
        self.assertIs(machine.state, State.READY)

    def test_preauth_json_limit(self) -> None:
        """JSON_CONTROL before login is held to max_preauth_json."""
        machine = self.make(MachineConfig(max_preauth_json=32))
        self.assertClosed(machine, machine.receive(
            apf.JsonControl.from_value({"action": "x", "pad": "y" * 40})))

    def test_config_requires_cira(self) -> None:
        """A configuration must allow CIRA, the type every connection starts as."""
        self.assertRaises(ValueError, MachineConfig, conn_types=frozenset({ConnType.LMS}))

    def test_config_checks_values(self) -> None:
        """Out-of-range limits and timings are refused when the configuration is built."""
        for bad in ({"window": 0}, {"max_send_chunk": 2 ** 32}, {"max_channels": -1},
                    {"idle_timeout": 0}, {"first_channel_id": -1}):
            self.assertRaises(ValueError, MachineConfig, **bad)


# --- property test -------------------------------------------------------------------

small = st.integers(0, 8) | st.sampled_from([16992, 16993, 5900, apf.U32_MAX])
DEVICE_MESSAGES = st.one_of(
    st.sampled_from([VERSION, AUTH_REQUEST, PFWD_REQUEST, LOGIN, BAD_LOGIN,
                     apf.ProtocolVersion(2, 0, 0, SYSTEM_ID),
                     apf.UserAuthRequest(USER, apf.PFWD_SERVICE, "none", None),
                     apf.JsonControl("{"), apf.Disconnect(1)]),
    st.builds(apf.TcpipForward, st.just(""), small),
    st.builds(apf.CancelTcpipForward, st.just(""), small),
    st.builds(apf.KeepAliveRequest, small),
    st.builds(apf.ChannelOpenConfirmation, small, small, small),
    st.builds(apf.ChannelOpenFailure, small, small),
    st.builds(apf.ChannelWindowAdjust, small, small),
    st.builds(apf.ChannelData, small, st.binary(max_size=16)),
    st.builds(apf.ChannelClose, small),
    st.builds(apf.JsonControl, st.sampled_from(['{"action":"connType","value":2}',
                                                '{"action":"meiState","value":{}}'])),
)
LOCAL_CALLS = st.sampled_from(["open", "send", "close", "tick"])


class PropertyTests(MachineTestCase):
    """Hypothesis: no sequence of device messages breaks the machine's promises."""

    @settings(max_examples=200, deadline=None)
    @given(st.booleans(), st.lists(st.one_of(DEVICE_MESSAGES, LOCAL_CALLS), max_size=30))
    def test_random_sessions(self, login_first: bool, steps: list[Any]) -> None:
        """Random sessions never raise; logins, closes and channels each end exactly once."""
        machine = self.make(MachineConfig(conn_types=frozenset(ConnType)))
        log: list[Action] = []
        if login_first:
            steps = [VERSION, AUTH_REQUEST, LOGIN, PFWD_REQUEST,
                     apf.TcpipForward("", 16992)] + steps
        for step in steps:
            if step == "open":
                try:
                    log += machine.open_channel(16992)[1]
                except ChannelError:
                    pass
            elif step == "send":
                for channel_id in (4, 5):
                    try:
                        log += machine.send_data(channel_id, b"data")
                    except ChannelError:
                        pass
            elif step == "close":
                log += machine.close_channel(4)
            elif step == "tick":
                self.clock.advance(20)
                log += machine.check_timeouts()
            else:
                log += machine.receive(step)
        log += machine.connection_lost()
        authenticated = [a for a in log if isinstance(a, Authenticated)]
        for auth in authenticated:
            self.assertEqual(auth.result.node_id, NODE)
        if authenticated:
            self.assertIn(PASSWORD, [c.password for c in self.checker.calls])
        self.assertEqual(len(authenticated),
                         len([a for a in log if isinstance(a, Disconnected)]))
        self.assertLessEqual(len(authenticated), 1)
        self.assertLessEqual(len(closes(log)), 1)
        opened = [m.sender_channel for m in sent(log) if isinstance(m, apf.ChannelOpen)]
        ended = [a.channel_id for a in log if isinstance(a, (ChannelClosed, ChannelOpenFailed))]
        self.assertEqual(sorted(opened), sorted(ended))
        self.assertIs(machine.state, State.CLOSED)
