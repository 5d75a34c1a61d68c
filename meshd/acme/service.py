"""The ``acme`` child service: keeps the web certificate issued, renewed and in use.

Schedule (all timers on the injected clock, so ``task.Clock`` drives it in tests):

* a check right after start, then every ``check_interval`` (a day), or sooner if the
  certificate's renewal moment comes first;
* a check orders a certificate when :func:`~meshd.acme.policy.order_reason` gives a reason:
  the certificate in use is not the one meshd last got from the CA (the self-signed one at
  first), does not cover ``letsencrypt.names``, came from another directory, or is inside
  its renewal window (``renewDays``);
* a failed order is logged in plain words (rate limited, DNS failure, challenge unreachable,
  CA unreachable, ...) and retried after ``retry_initial`` seconds, doubling up to
  ``retry_max``; a rate limit waits at least ``rate_limited_minimum``. A success resets it.

A new certificate is first written to the data folder (atomic files, previous non-ACME pair
kept as ``*.bak``: see :mod:`meshd.acme.storage`), then swapped into the HTTPS listener with
``ReloadableContextFactory.replace`` (new connections get it, open ones keep theirs), then
announced through ``on_new_certificate(CertKey)`` so the server can update the certificate
hash it gives agents. Nothing here raises into the reactor: every failure ends in a log line
and a retry.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from cryptography import x509
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from meshd import certs
from meshd.acme import policy, storage
from meshd.acme.challenge import ChallengeResource
from meshd.acme.issuer import AcmeIssuer, ICertificateIssuer, RunBlocking
from meshd.certs import CertKey
from meshd.config import LetsEncrypt
from meshd.tls import ReloadableContextFactory

__all__ = ["AcmeService"]


class AcmeService(Service):
    """Orders, renews, stores and hot-swaps the web certificate from an ACME CA."""

    name: str = "acme"  # type: ignore[assignment]  # Service declares None
    check_interval = policy.DAY
    retry_initial = 300.0
    retry_max = policy.DAY
    rate_limited_minimum = 3600.0

    def __init__(
        self,
        config: LetsEncrypt,
        datapath: str,
        web_context: Optional[ReloadableContextFactory],
        challenges: ChallengeResource,
        reactor: Any,
        on_new_certificate: Optional[Callable[[CertKey], object]] = None,
        *,
        http_port: Optional[int] = None,
        issuer: Optional[ICertificateIssuer] = None,
        run_blocking: Optional[RunBlocking] = None,
        now: Optional[Callable[[], float]] = None,
        ca_bundle: Optional[str] = None,
        poll_interval: float = 1.0,
    ) -> None:
        """
        ``reactor`` provides the timers (``IReactorTime``) and, unless ``run_blocking`` is
        given, the thread hand-off for the blocking ACME client. ``http_port`` (redirPort) only
        improves the wording of "challenge unreachable". ``now`` (default: the reactor's
        clock) is the wall clock compared with certificate dates. ``ca_bundle`` is a PEM file
        of CAs trusted for the directory's HTTPS (default: the system's; ``REQUESTS_CA_BUNDLE``
        works too). ``issuer`` and ``run_blocking`` replace the real CA and thread in tests.
        """
        self._log = Logger(namespace="meshd.acme")
        self._config = config
        self._datapath = datapath
        self._web_context = web_context
        self._challenges = challenges
        self._clock = reactor
        self._on_new_certificate = on_new_certificate
        self._http_port = http_port
        self._now = now or reactor.seconds
        self.names = policy.parse_names(config.names)
        self.directory = policy.directory_url(config.directory, config.production)
        self._pool: Optional[ThreadPool] = None
        self._jobs: set[Deferred[Any]] = set()
        if run_blocking is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=1, name="meshd-acme")
            run_blocking = self._run_in_pool
        self._run: RunBlocking = run_blocking
        if issuer is None:
            issuer = AcmeIssuer(self.directory, config.email, datapath, challenges,
                                run_blocking, reactor, verify=ca_bundle or True,
                                poll_interval=poll_interval)
        self._issuer = issuer
        self._timer: Optional[IDelayedCall] = None
        self._in_flight: Optional[Deferred[None]] = None
        self._waiters: list[Deferred[None]] = []
        self.failures = 0
        self.next_check_at: Optional[float] = None
        self.last_error: Optional[policy.Explanation] = None

    # -- service ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._pool is not None:
            self._pool.start()
        self._log.info("ACME: keeping the web certificate for {names} from {directory}, "
                       "renewing {renew_days} days before expiry",
                       names=", ".join(self.names) or "(no names)", directory=self.directory,
                       renew_days=self._config.renew_days)
        self._schedule(0)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        self._cancel_timer()
        if self._in_flight is not None:
            self._in_flight.cancel()
        jobs = list(self._jobs)
        if jobs:
            self._log.info("ACME: waiting for the request in progress to end before stopping")
        done: Deferred[Any] = DeferredList(jobs, consumeErrors=True)

        def stopped(_: object) -> None:
            self._issuer.close()
            if self._pool is not None and self._pool.started:
                self._pool.stop()

        done.addCallback(stopped)
        return done

    # -- checks ----------------------------------------------------------------------------

    def check(self) -> "Deferred[None]":
        """Check (and order if needed) now instead of at the scheduled time.

        Fires when that check is over, successful or not (it never fails); a check already
        in progress is joined rather than started twice.
        """
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if self._in_flight is None:
            self._cancel_timer()
            in_flight = Deferred.fromCoroutine(self._check())
            self._in_flight = in_flight
            in_flight.addErrback(self._check_crashed)
            in_flight.addBoth(self._check_done)
        return waiter

    def _timer_fired(self) -> None:
        self._timer = None
        self.next_check_at = None
        self.check()

    def _schedule(self, delay: float) -> None:
        self._cancel_timer()
        if not self.running:
            return
        self._timer = self._clock.callLater(delay, self._timer_fired)
        self.next_check_at = self._clock.seconds() + delay

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.next_check_at = None

    def _check_crashed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return  # stopping
        # _check() handles every expected error itself; this is a bug, but the server
        # must keep running and the certificate must still be retried.
        self._log.failure("ACME: the certificate check failed unexpectedly", failure)
        self.failures += 1
        self._schedule(self.retry_max)

    def _check_done(self, _: object) -> None:
        self._in_flight = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def _check(self) -> None:
        if not self.names:
            self._log.error("ACME: letsencrypt.names is empty; no certificate will be ordered")
            return
        current = self._current_certificate()
        state = storage.read_state(self._datapath)
        now = self._now()
        reason = policy.order_reason(
            current, self.names, acme_sha384=state.certificate_sha384,
            acme_directory=state.directory, directory=self.directory,
            renew_days=self._config.renew_days, now=now)
        if reason is None:
            assert current is not None
            due = policy.renewal_due_at(current, self._config.renew_days)
            delay = min(self.check_interval, max(due - now, 0.0))
            self.failures = 0
            self._log.info(
                "ACME: web certificate for {names} is valid until {not_after}; renewal due "
                "{due}; next check in {delay}", names=", ".join(self.names),
                not_after=_iso(current.not_valid_after_utc.timestamp()), due=_iso(due),
                delay=policy.describe_delay(delay))
            self._schedule(delay)
            return
        self._log.info("ACME: ordering a web certificate for {names} from {directory}: "
                       "{reason}", names=", ".join(self.names), directory=self.directory,
                       reason=reason)
        try:
            new = await self._issuer.issue(self.names, self._config.rsa_key_size)
            saved = await self._run(self._store, new, state)
        except CancelledError:
            raise
        except Exception as error:
            self._failed(error)
            return
        self.failures = 0
        self.last_error = None
        self._use(new, saved)
        self._schedule(self.check_interval)

    def _current_certificate(self) -> Optional[x509.Certificate]:
        """The certificate the HTTPS listener presents (or, without one, the file's)."""
        if self._web_context is not None:
            return self._web_context.certificate
        path = os.path.join(self._datapath, storage.WEB_CERT_FILE)
        try:
            return certs.load_certificate_file(path).cert
        except certs.CertificateError:
            return None

    def _store(self, new: CertKey, state: storage.AcmeState) -> list[str]:
        """On the thread: write the certificate files and the state (see storage)."""
        path = os.path.join(self._datapath, storage.WEB_CERT_FILE)
        try:
            on_disk: Optional[str] = certs.load_certificate_file(path).sha384()
        except certs.CertificateError:
            on_disk = None
        backup = on_disk is not None and on_disk != state.certificate_sha384
        saved = storage.install_web_certificate(self._datapath, new, backup=backup)
        storage.write_state(self._datapath, storage.AcmeState(
            directory=self.directory,
            account_uri=self._issuer.account_uri,
            certificate_sha384=new.sha384(),
            certificate_names=tuple(policy.certificate_names(new.cert)),
            certificate_not_after=new.cert.not_valid_after_utc.isoformat(),
        ))
        return saved

    def _use(self, new: CertKey, saved: list[str]) -> None:
        """Announce, hot-swap and hand on a certificate already written to disk."""
        self._log.info(
            "ACME: new web certificate for {names} installed: SHA-384 {sha384}, valid until "
            "{not_after}, issued by {issuer}", names=", ".join(self.names),
            sha384=new.sha384(), not_after=_iso(new.cert.not_valid_after_utc.timestamp()),
            issuer=new.cert.issuer.rfc4514_string())
        if saved:
            self._log.info("ACME: previous certificate files kept as {saved}",
                           saved=", ".join(saved))
        if self._web_context is not None:
            try:
                assert new.key is not None
                self._web_context.replace(new.cert, new.key, new.chain)
            except Exception:
                self._log.failure("ACME: the HTTPS listener could not use the new "
                                  "certificate; it keeps the previous one until a restart")
                return
        if self._on_new_certificate is not None:
            try:
                self._on_new_certificate(new)
            except Exception:
                self._log.failure("ACME: on_new_certificate failed")

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        explanation = policy.explain(error, directory=self.directory,
                                     http_port=self._http_port)
        self.last_error = explanation
        delay = policy.retry_delay(self.failures, explanation.kind,
                                   initial=self.retry_initial, maximum=self.retry_max,
                                   rate_limited_minimum=self.rate_limited_minimum)
        if explanation.kind is policy.FailureKind.INTERNAL:
            self._log.failure("ACME: unexpected error while ordering a certificate",
                              Failure(error))
        self._log.warn(
            "ACME: could not get a web certificate for {names}: {reason}; attempt "
            "{attempt} failed, next try in {delay_text}", names=", ".join(self.names),
            reason=explanation.text, kind=explanation.kind.value, attempt=self.failures,
            delay=delay, delay_text=policy.describe_delay(delay))
        self._schedule(delay)

    # -- threads ---------------------------------------------------------------------------

    def _run_in_pool(self, function: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """Run ``function`` on the ACME thread. Cancelling the result abandons the wait (the
        call itself finishes on its thread, and stopService waits for it)."""
        assert self._pool is not None
        job: Deferred[Any] = deferToThreadPool(self._clock, self._pool, function, *args)
        self._jobs.add(job)
        result: Deferred[Any] = Deferred(lambda _: None)

        def finished(outcome: Any) -> None:
            self._jobs.discard(job)
            if result.called:
                return  # cancelled: nobody waits for this outcome any more
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

        job.addBoth(finished)
        return result


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
