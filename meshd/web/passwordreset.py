"""The "Forgot your password?" pages (mounted only when the server has a mailer).

``GET /forgotpassword``   the form asking for the account's e-mail address
``POST /forgotpassword``  form ``email``: always the same page ("if an account has this
                          address, a message was sent"), answered before any lookup; the
                          lookup and the mail happen afterwards (:mod:`meshd.passwordreset`),
                          so neither the answer nor its timing tells whether the address
                          is known.  Every post counts against the asker's IP address and
                          against the address asked for (``settings.maxInvalidLogin``, as
                          logins); past the limit the answer is 429.
``GET /resetpassword?t=`` the new-password form if the token is live, else a page saying
                          the link is not valid (showing the form does not use the token)
``POST /resetpassword``   form ``t``, ``password1``, ``password2``: sets the password, uses
                          the token up, ends the account's web sessions and control
                          channels, records ``accountchange`` "Password reset for user …",
                          and 303s to ``/?passwordreset=done``.  A second factor stays.

Posts are same-origin only and small (``_refuse_form``); the pages carry the login pages'
strict CSP (no script, no inline style).  The token travels in the query string of the
link and in a hidden field; the access log drops query strings, and no log line or event
ever holds it.
"""

from __future__ import annotations

import html
from typing import Optional

from twisted.logger import Logger
from twisted.web.server import Request

from meshd.accounts import AccountError, check_password, is_locked
from meshd.control.hub import INTERNAL
from meshd.control.views import safe_user
from meshd.passwordreset import PasswordReset, valid_token
from meshd.store.interface import Document
from meshd.web.login import _AuthPage, _arg, _error, client_ip, page, render_async

_log = Logger(namespace="meshd.web.passwordreset")

MAX_EMAIL = 254

_BACK = '<p class="auth-foot"><a href="/">Back to log in</a></p>'


def forgot_form(error: str = "", email: str = "") -> str:
    described = ' aria-describedby="form-error"' if error else ""
    return (
        f"{_error(error)}<p class=\"hint\">Enter the e-mail address of your account. If it "
        "belongs to an account, a message with a link to choose a new password is sent "
        "to it.</p>"
        f"<form class=\"stacked auth-form\" method=\"post\" action=\"/forgotpassword\"{described}>"
        "<label>E-mail <input name=\"email\" type=\"email\" autocomplete=\"email\" "
        f"maxlength=\"{MAX_EMAIL}\" value=\"{html.escape(email)}\" required autofocus></label>"
        "<button type=\"submit\" class=\"primary\">Send the link</button></form>" + _BACK
    )


def sent_page_body(minutes: int) -> str:
    return ("<p role=\"status\">If an account has this address, a message was sent to it "
            f"with a link to choose a new password. The link works once, for {minutes} "
            "minutes.</p>" + _BACK)


def reset_form(token: str, name: str, error: str = "") -> str:
    described = ' aria-describedby="form-error"' if error else ""
    return (
        f"{_error(error)}<p class=\"hint\">Choose a new password for the account "
        f"<strong>{html.escape(name)}</strong>.</p>"
        f"<form class=\"stacked auth-form\" method=\"post\" action=\"/resetpassword\"{described}>"
        f"<input type=\"hidden\" name=\"t\" value=\"{html.escape(token)}\">"
        # Lets password managers file the new password under the right account.
        "<input type=\"text\" name=\"username\" autocomplete=\"username\" "
        f"value=\"{html.escape(name)}\" readonly hidden>"
        "<label>New password <input name=\"password1\" type=\"password\" "
        "autocomplete=\"new-password\" required autofocus></label>"
        "<label>New password again <input name=\"password2\" type=\"password\" "
        "autocomplete=\"new-password\" required></label>"
        "<button type=\"submit\" class=\"primary\">Set the password</button></form>"
    )


INVALID_LINK = ("<p class=\"error\" role=\"alert\">This password reset link is not valid: it "
                "has expired, it was used already, or a newer link replaced it.</p>"
                "<p class=\"auth-foot\"><a href=\"/forgotpassword\">Ask for a new link</a></p>"
                + _BACK)

HEADING = "Reset your password"


class ForgotPasswordResource(_AuthPage):
    """``/forgotpassword``: ask for a reset link."""

    @property
    def _reset(self) -> PasswordReset:
        reset = self._auth.password_reset
        assert reset is not None  # mounted only with one
        return reset

    def render_GET(self, request: Request) -> object:
        return render_async(request, self._form)

    async def _form(self) -> bytes:
        return page(self._auth.title, forgot_form(), "Forgot your password?")

    def render_POST(self, request: Request) -> object:
        return render_async(request, lambda: self._ask(request))

    async def _ask(self, request: Request) -> bytes:
        auth, reset = self._auth, self._reset
        await auth.ready()
        refusal = self._refuse_form(request)
        if refusal is not None:
            return refusal
        email = _arg(request, b"email").strip()[:MAX_EMAIL]
        ip = client_ip(request)
        now = auth.now()
        keys = ["reset-ip:" + ip]
        if email:
            keys.append("reset-email:" + email.lower())
        wait = max(auth.limiter.blocked_for(key, now) for key in keys)
        if wait > 0:
            minutes = max(1, int((wait + 59) // 60))
            request.setResponseCode(429)
            request.setHeader(b"Retry-After", str(int(wait) + 1).encode())
            _log.warn("password reset request from {ip} refused: too many requests", ip=ip)
            return page(auth.title, forgot_form(
                f"Too many requests. Try again in {minutes} minute"
                f"{'s' if minutes != 1 else ''}.", email), "Forgot your password?")
        # Every request counts: whether it found an account must not change anything seen.
        for key in keys:
            auth.limiter.failure(key, now)
        _log.info("password reset requested from {ip}", ip=ip)
        if email:
            reset.request_in_background(email)
        return page(auth.title, sent_page_body(max(1, int(reset.lifetime // 60))),
                    "Check your e-mail")


class ResetPasswordResource(_AuthPage):
    """``/resetpassword``: choose the new password with a mailed token."""

    @property
    def _reset(self) -> PasswordReset:
        reset = self._auth.password_reset
        assert reset is not None  # mounted only with one
        return reset

    async def _account(self, token: str) -> Optional[Document]:
        """The unlocked account a live token is for, or None."""
        record = await self._reset.lookup(token)
        if record is None:
            return None
        user = await self._auth.store.get(record["userid"])
        if user is None or is_locked(user):
            return None
        return user

    def _invalid(self, request: Request) -> bytes:
        request.setResponseCode(400)
        return page(self._auth.title, INVALID_LINK, HEADING)

    def render_GET(self, request: Request) -> object:
        return render_async(request, lambda: self._form(request))

    async def _form(self, request: Request) -> bytes:
        await self._auth.ready()
        token = _arg(request, b"t")
        user = await self._account(token)
        if user is None:
            return self._invalid(request)
        return page(self._auth.title, reset_form(token, str(user.get("name", ""))), HEADING)

    def render_POST(self, request: Request) -> object:
        return render_async(request, lambda: self._set(request))

    async def _set(self, request: Request) -> bytes:
        auth, reset = self._auth, self._reset
        await auth.ready()
        refusal = self._refuse_form(request)
        if refusal is not None:
            return refusal
        token = _arg(request, b"t")
        if not valid_token(token):
            return self._invalid(request)
        user = await self._account(token)
        if user is None:
            return self._invalid(request)
        name = str(user.get("name", ""))
        password1, password2 = _arg(request, b"password1"), _arg(request, b"password2")
        try:
            if password1 != password2:
                raise AccountError("the two passwords differ")
            check_password(password1)
        except AccountError as e:
            request.setResponseCode(400)
            return page(auth.title, reset_form(token, name, str(e).capitalize() + "."),
                        HEADING)
        if await reset.consume(token) is None:
            return self._invalid(request)
        uid, domain = user["_id"], user.get("domain", "")
        try:
            # The name from the id, not the display name: imported names may differ in case.
            changed = await auth.accounts.reset_password(uid.split("/", 2)[-1], password1,
                                                         domain)
        except AccountError:  # the account was removed meanwhile
            return self._invalid(request)
        # Whoever had the old password is out: web sessions and control channels end.
        ended = await auth.sessions.destroy_user(uid)
        if reset.close_user is not None:
            reset.close_user(uid)
        else:
            auth.bus.publish([uid], {INTERNAL: "close", "userid": uid})
        # The owner proved control of the mailbox: failed logins no longer block it.
        auth.limiter.success("user:" + uid)
        ip = client_ip(request)
        _log.info("password of {user_id} reset by e-mail link from {ip}; {sessions} web "
                  "sessions ended", user_id=uid, ip=ip, sessions=ended)
        stored = await auth.store.get(uid)
        await auth.user_event(uid, name, domain, "accountchange",
                              f"Password reset for user {name}",
                              targets=("*", "server-users"),
                              account=safe_user(stored if stored is not None else changed))
        request.setResponseCode(303)
        request.setHeader(b"Location", b"/?passwordreset=done")
        return b""
