"""End-to-end tests of the real server: ``twistd -n meshd`` over real sockets on 127.0.0.1."""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import tempfile

from twisted.application.service import IServiceMaker
from twisted.internet.error import CannotListenError
from twisted.plugin import getPlugins
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meshd.service import ListenerSpec, _describe_bind_error
from tests.server import ROOT, ServerProcess, fresh_datapath, free_port, run_twistd, shared_server

WEB_SUITES = ["ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA",
              "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA"]


def tls_connect(port: int, *, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
                max_version: ssl.TLSVersion | None = None,
                ciphers: str | None = None) -> tuple[str, str, bytes]:
    """Handshake with 127.0.0.1:port; return (protocol, cipher, server cert DER)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = version
    ctx.maximum_version = max_version or version
    if ciphers:
        ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as conn:
            cipher = conn.cipher()
            assert cipher is not None
            der = conn.getpeercert(binary_form=True)
            assert der is not None
            return str(conn.version()), cipher[0], der


class PluginTests(SynchronousTestCase):
    def test_plugin_found(self) -> None:
        """The meshd plugin is found by getPlugins(IServiceMaker)."""
        names = [plugin.tapname for plugin in getPlugins(IServiceMaker)]
        self.assertIn("meshd", names)


class SharedServerTests(SynchronousTestCase):
    """Read-only checks against one started server."""

    def setUp(self) -> None:
        self.server = shared_server()

    def test_health_over_verified_tls(self) -> None:
        """/health answers over TLS verified against the data folder's root certificate."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port,
                                           context=self.server.ssl_context(), timeout=10)
        conn.request("GET", "/health")
        response = conn.getresponse()
        body = json.loads(response.read())
        conn.close()
        self.assertEqual(response.status, 200)
        self.assertEqual(body["status"], "ok")
        self.assertEqual(
            {(item["name"], item["port"], item["tls"]) for item in body["listeners"]},
            {("https", self.server.port, True), ("redirect", self.server.redirport, False),
             ("mps", self.server.mpsport, True)})

    def test_access_log_without_query(self) -> None:
        """The access log records the path but never the query string."""
        marker = "secret" + os.urandom(6).hex()
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port,
                                           context=self.server.ssl_context(), timeout=10)
        conn.request("GET", f"/health?auth={marker}", headers={"Referer": f"/x?t={marker}"})
        conn.getresponse().read()
        conn.close()
        log = self.server.log()
        self.assertIn('"GET /health HTTP/1.1" 200', log)
        self.assertNotIn(marker, log)

    def test_tls13_accepted(self) -> None:
        """HTTPS negotiates TLS 1.3."""
        protocol, _cipher, _der = tls_connect(self.server.port, version=ssl.TLSVersion.TLSv1_3)
        self.assertEqual(protocol, "TLSv1.3")

    def test_tls11_refused(self) -> None:
        """HTTPS refuses TLS 1.1."""
        with self.assertRaises(ssl.SSLError):
            tls_connect(self.server.port, version=ssl.TLSVersion.TLSv1_1,
                        ciphers="ALL:@SECLEVEL=0")

    def test_non_pfs_suite_refused(self) -> None:
        """HTTPS refuses TLS 1.2 suites without forward secrecy."""
        for suite in ("AES128-GCM-SHA256", "AES256-SHA", "AES128-SHA"):
            with self.assertRaises(ssl.SSLError, msg=suite):
                tls_connect(self.server.port, ciphers=suite)

    def test_tls12_six_suites(self) -> None:
        """Each of the six ECDHE-RSA suites is accepted under TLS 1.2."""
        for suite in WEB_SUITES:
            protocol, cipher, _der = tls_connect(self.server.port, ciphers=suite)
            self.assertEqual((protocol, cipher), ("TLSv1.2", suite))

    def test_web_certificate_hash_logged(self) -> None:
        """The SHA-384 of the certificate the server presents is in its start-up log."""
        _protocol, _cipher, der = tls_connect(self.server.port)
        self.assertIn(f"web certificate SHA-384 {hashlib.sha384(der).hexdigest()}",
                      self.server.log())

    def test_mps_tls10_aes128_sha(self) -> None:
        """The MPS port accepts TLS 1.0 with AES128-SHA (old Intel AMT)."""
        protocol, cipher, der = tls_connect(self.server.mpsport, version=ssl.TLSVersion.TLSv1,
                                            ciphers="AES128-SHA:@SECLEVEL=0")
        self.assertEqual((protocol, cipher), ("TLSv1", "AES128-SHA"))
        with open(os.path.join(self.server.datapath, "mpsserver-cert-public.crt"), "rb") as f:
            self.assertEqual(ssl.DER_cert_to_PEM_cert(der).strip(), f.read().decode().strip())

    def test_mps_tls13_refused(self) -> None:
        """The MPS port stays at TLS 1.2 at most."""
        with self.assertRaises(ssl.SSLError):
            tls_connect(self.server.mpsport, version=ssl.TLSVersion.TLSv1_3)

    def test_redirect_keeps_path_and_query(self) -> None:
        """The HTTP port answers 301 to the HTTPS port with path and query kept."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.redirport, timeout=10)
        conn.request("GET", "/some/path?x=1&y=two%20words",
                     headers={"Host": f"127.0.0.1:{self.server.redirport}"})
        response = conn.getresponse()
        response.read()
        conn.close()
        self.assertEqual(response.status, 301)
        self.assertEqual(response.getheader("Location"),
                         f"https://127.0.0.1:{self.server.port}/some/path?x=1&y=two%20words")

    def test_key_files_private(self) -> None:
        """Every private key in the data folder is mode 0600."""
        keys = [name for name in os.listdir(self.server.datapath) if name.endswith(".key")]
        self.assertEqual(len(keys), 4)
        for name in keys:
            mode = os.stat(os.path.join(self.server.datapath, name)).st_mode & 0o777
            self.assertEqual(mode, 0o600, name)


class StartupTests(TestCase):
    """Start-up, shutdown and restart of separate server processes."""

    def test_busy_port(self) -> None:
        """A busy port stops the start with one clear line and a non-zero exit, no traceback."""
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        result = run_twistd(["-n", "--pidfile=", "meshd", "--datapath", fresh_datapath(),
                             "--port", str(busy), "--redirport", "0", "--mpsport", "0",
                             "--bind", "127.0.0.1", "--cert", "127.0.0.1"])
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "cannot" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertTrue(lines[0].endswith(
            f"meshd cannot start: cannot listen for https on 127.0.0.1:{busy}: the address is "
            f"already in use by another program; stop that program or choose another port "
            f"with --port"), lines[0])

    def test_no_arguments_defaults(self) -> None:
        """`twistd -n meshd` alone serves on 443/80/4433 with ./meshd-data and RSA-3072 keys."""
        for port in (443, 80, 4433):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    raise unittest.SkipTest(f"port {port} is taken on this machine")
        if os.geteuid() != 0:
            raise unittest.SkipTest("ports 443 and 80 need root")
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        datapath = os.path.join(directory, "meshd-data")
        server = ServerProcess(datapath)
        server.port, server.redirport, server.mpsport = 443, 80, 4433
        server.args = ["-n", "--pidfile=", "meshd"]
        server.cwd = directory
        server.start(timeout=120)
        self.addCleanup(server.stop)
        self.assertTrue(os.path.isdir(datapath))
        self.assertTrue(os.path.exists(os.path.join(datapath, "meshd.db")))
        from cryptography import x509

        with open(os.path.join(datapath, "webserver-cert-public.crt"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        self.assertEqual(cert.public_key().key_size, 3072)
        self.assertEqual(tls_connect(4433, version=ssl.TLSVersion.TLSv1_2)[0], "TLSv1.2")
        conn = http.client.HTTPConnection("127.0.0.1", 80, timeout=10)
        conn.request("GET", "/x")
        self.assertEqual(conn.getresponse().status, 301)
        conn.close()

    def test_bad_config(self) -> None:
        """A bad configuration file stops twistd before it starts, naming line and column."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        config = os.path.join(directory, "meshd.json")
        with open(config, "w") as f:
            f.write('{"settings": {"port": 443,,}}')
        result = run_twistd(["--pidfile=", "meshd", "--config", config,
                             "--datapath", os.path.join(directory, "data")])
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertIn(f"{config}: invalid JSON at line 1, column 27", result.stdout)
        self.assertFalse(os.path.exists(os.path.join(directory, "data")))

    def test_sigterm_and_restart_reuse(self) -> None:
        """SIGTERM stops the server cleanly; a restart reuses the certificates unchanged."""
        datapath = fresh_datapath()
        names = sorted(os.listdir(datapath))
        before = {}
        for name in names:
            with open(os.path.join(datapath, name), "rb") as f:
                before[name] = (f.read(), os.stat(f.name).st_mtime_ns)
        server = ServerProcess(datapath).start()
        _p, _c, der1 = tls_connect(server.port)
        # twistd ends with the signal it received, after a clean shutdown.
        self.assertEqual(server.stop(), -signal.SIGTERM)
        self.assertIn("Server Shut Down.", server.log())
        server = ServerProcess(datapath).start()
        self.addCleanup(server.stop)
        _p, _c, der2 = tls_connect(server.port)
        self.assertEqual(der1, der2)
        self.assertNotIn("created certificates", server.log())
        for name in names:
            with open(os.path.join(datapath, name), "rb") as f:
                self.assertEqual((f.read(), os.stat(f.name).st_mtime_ns), before[name], name)

    def test_corrupt_key_file(self) -> None:
        """A corrupt key file stops the start with one line naming the file, no traceback."""
        datapath = fresh_datapath()
        key = os.path.join(datapath, "agentserver-cert-private.key")
        with open(key, "w") as f:
            f.write("-----BEGIN RSA PRIVATE KEY-----\ngarbage\n-----END RSA PRIVATE KEY-----\n")
        result = run_twistd(["-n", "--pidfile=", "meshd", "--datapath", datapath,
                             "--port", "0", "--redirport", "0", "--mpsport", "0",
                             "--cert", "127.0.0.1"])
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        [line] = result.stderr.strip().splitlines()
        self.assertTrue(line.startswith("meshd: ") and key in line, line)

    async def test_missing_agent_certificate_with_devices(self) -> None:
        """With devices in the database, missing agent certificate files stop the start instead
        of silently making a new one."""
        from twisted.internet import reactor

        from meshd.store.sqlite import SQLiteStore

        datapath = fresh_datapath()
        store = SQLiteStore(datapath, reactor)
        await store.open()
        await store.set({"_id": "node//abc", "type": "node", "meshid": "mesh//m", "domain": ""})
        await store.close()
        for part in ("public.crt", "private.key"):
            os.remove(os.path.join(datapath, f"agentserver-cert-{part}"))
        result = run_twistd(["-n", "--pidfile=", "meshd", "--datapath", datapath,
                             "--port", "0", "--redirport", "0", "--mpsport", "0",
                             "--cert", "127.0.0.1"])
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertIn("database already knows agents", result.stderr)
        self.assertFalse(os.path.exists(os.path.join(datapath, "agentserver-cert-public.crt")))

    def test_tls_offload(self) -> None:
        """With --tlsoffload the HTTPS port speaks plain HTTP; the proxy's certificate is hashed."""
        datapath = fresh_datapath()
        proxy_cert = os.path.join(datapath, "root-cert-public.crt")  # any PEM certificate
        config = datapath + ".json"
        with open(config, "w") as f:
            json.dump({"settings": {"tlsOffloadCert": proxy_cert}}, f)
        server = ServerProcess(datapath, ["--tlsoffload", "--config", config], https=False)
        server.start()
        self.addCleanup(server.stop)
        with open(proxy_cert, "rb") as f:
            der = ssl.PEM_cert_to_DER_cert(f.read().decode())
        self.assertIn(f"web certificate SHA-384 {hashlib.sha384(der).hexdigest()}", server.log())
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/health")
        body = json.loads(conn.getresponse().read())
        conn.close()
        self.assertIn({"name": "https", "port": server.port, "tls": False}, body["listeners"])

    def test_tac_file_and_json_log(self) -> None:
        """`twistd -ny meshd.tac` starts the same server; --logger writes JSON lines."""
        datapath = fresh_datapath()
        config = datapath + ".json"
        port = free_port()
        with open(config, "w") as f:
            json.dump({"settings": {"port": port, "redirPort": 0, "mpsPort": 0,
                                    "portBind": "127.0.0.1", "cert": "127.0.0.1"}}, f)
        server = ServerProcess(datapath)
        server.port = port
        server.args = ["-n", "--pidfile=", "--logger", "meshd.logs.json_observer",
                       "-y", os.path.join(ROOT, "meshd.tac")]
        os.environ["MESHD_CONFIG"], os.environ["MESHD_DATAPATH"] = config, datapath
        try:
            server.start()
        finally:
            del os.environ["MESHD_CONFIG"], os.environ["MESHD_DATAPATH"]
        self.assertEqual(server.stop(), -signal.SIGTERM)
        events = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        self.assertTrue(any(e.get("log_namespace") == "meshd" and "web_hash" in e
                            for e in events))


class BindErrorTests(SynchronousTestCase):
    def test_permission_denied_message(self) -> None:
        """A privileged port without privilege says what to do."""
        error = CannotListenError("", 80, OSError(errno.EACCES, "Permission denied"))
        message = _describe_bind_error(ListenerSpec("redirect", "--redirport", 80, False), "",
                                       error)
        self.assertEqual(message, "cannot listen for redirect on port 80: permission denied; "
                                  "ports below 1024 need root (twistd drops privileges after "
                                  "binding with --uid/--gid) or CAP_NET_BIND_SERVICE; or choose "
                                  "another port with --redirport")


class ListenBacklogTests(SynchronousTestCase):
    def test_listeners_queue_a_reconnect_storm(self) -> None:
        """Every listener (TLS, TCP, TCP6) asks the kernel to queue LISTEN_BACKLOG pending
        connections, not Twisted's 50, so a thousand devices reconnecting at once are not
        dropped and left to retry seconds later."""
        from twisted.internet.protocol import Factory, Protocol
        from twisted.internet.testing import MemoryReactor

        from meshd.service import LISTEN_BACKLOG, _endpoint

        self.assertGreaterEqual(LISTEN_BACKLOG, 1000)
        reactor = MemoryReactor()
        factory = Factory.forProtocol(Protocol)
        _endpoint(reactor, 4433, "127.0.0.1", object()).listen(factory)
        _endpoint(reactor, 443, "127.0.0.1", None).listen(factory)
        _endpoint(reactor, 80, "::1", None).listen(factory)
        self.assertEqual([listen[3] for listen in reactor.sslServers], [LISTEN_BACKLOG])
        self.assertEqual([listen[2] for listen in reactor.tcpServers],
                         [LISTEN_BACKLOG, LISTEN_BACKLOG])
