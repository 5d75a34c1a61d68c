"""Login, logout, first-run account creation, and the pages around them.

``GET /``               the landing page when logged in; otherwise the login form, or on a
                        server without accounts the form that creates the administrator
``POST /login``         form ``username``, ``password`` and, for an account with a second
                        factor, ``token`` (TOTP or backup code): 303 to ``/`` with the
                        session cookie, or 401 with the form again (with a code field)
``GET /logout``         ends the session, 303 to ``/``
``POST /createaccount`` form ``username``, ``email``, ``password1``, ``password2``: allowed
                        when the domain has no account yet (that account becomes site
                        administrator) or when ``newAccounts`` is on
``/forgotpassword``, ``/resetpassword``: password reset by e-mail, only when the server
                        has a mailer (:mod:`meshd.web.passwordreset`)

Failed logins are limited per address and per account (``settings.maxInvalidLogin``) and
recorded as events, never with the password.  A store that is down gives a 503 page.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Optional
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from meshd.accounts import AccountError, Accounts, is_locked, user_id
from meshd.control.hub import INTERNAL
from meshd.control.twofactor import check_second_factor, has_second_factor
from meshd.events import IEventBus, LocalEventBus, publish_and_store
from meshd.ratelimit import FailureLimiter
from meshd.store.interface import IStore, StoreUnavailable
from meshd.web.app import app_page, app_security_headers
from meshd.web.session import COOKIE_NAME, Sessions
from meshd.web.useragent import describe

if TYPE_CHECKING:
    from meshd.passwordreset import PasswordReset

_log = Logger(namespace="meshd.web.login")

MAX_FORM = 16 * 1024


class WebAuth:
    """What the login pages need, built once by the service."""

    def __init__(self, *, store: IStore, accounts: Accounts, sessions: Sessions,
                 limiter: FailureLimiter, now: Callable[[], float], title: str,
                 new_accounts: bool, ready: Callable[[], "Deferred[None]"],
                 bus: Optional[IEventBus] = None,
                 password_reset: Optional["PasswordReset"] = None) -> None:
        self.store = store
        self.accounts = accounts
        self.sessions = sessions
        self.limiter = limiter
        self.now = now
        self.title = title
        self.new_accounts = new_accounts
        self.ready = ready
        self.bus = bus if bus is not None else LocalEventBus()
        self.create_lock = DeferredLock()
        #: "Forgot your password?" (meshd.web.passwordreset); None without a mailer.
        self.password_reset = password_reset

    async def user_event(self, user_id: str, username: str, domain: str, action: str,
                         msg: str, msgid: Optional[int] = None,
                         targets: tuple[str, ...] = ("*",), **extra: Any) -> None:
        """Publish an account event and keep it in the audit trail."""
        event: dict[str, Any] = {"etype": "user", "action": action, "userid": user_id,
                                 "username": username, "domain": domain, "msg": msg}
        if msgid is not None:
            event["msgid"] = msgid
        event.update(extra)
        await publish_and_store(self.bus, self.store, [user_id, *targets], event, self.now)

    async def failed_logins_since(self, user_id: str, domain: str, since: Any) -> int:
        """How many failed logins (``authfail`` events) the account had after ``since``
        (seconds; nothing before the first login counts if it is not a number)."""
        if not isinstance(since, (int, float)) or isinstance(since, bool) or since <= 0:
            return 0
        events = await self.store.get_events([user_id], domain, user_id=user_id,
                                             action="authfail")
        return sum(1 for event in events
                   if isinstance(event.get("time"), datetime)
                   and event["time"].timestamp() > since)

    async def current_user(self, request: Request) -> Optional[dict[str, Any]]:
        token = request.getCookie(COOKIE_NAME)
        session = await self.sessions.lookup(token.decode("latin-1") if token else None)
        if session is None:
            return None
        user = await self.store.get(session["userid"])
        return user


def client_ip(request: Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", "unknown"))


# The login pages' policy: as strict as the app's (meshd.web.app), and no script at all.
# Their look comes from the app's stylesheet (web/app.css), so nothing is inline.
LOGIN_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


def _security_headers(request: Request) -> None:
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"X-Frame-Options", b"DENY")
    # Not "no-referrer": with it browsers send "Origin: null" on the login form's own
    # POST, which _same_origin must refuse.  same-origin still sends nothing elsewhere.
    request.setHeader(b"Referrer-Policy", b"same-origin")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Security-Policy", LOGIN_CONTENT_SECURITY_POLICY.encode("ascii"))


def page(title: str, body: str, heading: str = "") -> bytes:
    """A page of the login flow: the server's title, an optional heading, ``body``."""
    name = html.escape(title)
    subtitle = f'<h2 class="auth-heading">{html.escape(heading)}</h2>' if heading else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta name=\"color-scheme\" content=\"light dark\">"
        f"<title>{name}</title>"
        "<link rel=\"icon\" href=\"/app/icon.svg\" type=\"image/svg+xml\">"
        "<link rel=\"stylesheet\" href=\"/app/app.css\"></head>"
        "<body class=\"auth\"><main class=\"auth-card\">"
        "<h1 class=\"auth-brand\"><img src=\"/app/icon.svg\" alt=\"\" width=\"32\" "
        f"height=\"32\"><span>{name}</span></h1>{subtitle}{body}</main></body></html>\n"
    ).encode("utf-8")


def _error(error: str) -> str:
    return (f'<p class="error" role="alert" id="form-error">{html.escape(error)}</p>'
            if error else "")


def login_form(error: str = "", username: str = "", token: bool = False) -> str:
    # Where the cursor starts: the first field still to fill in.
    focus_user = "" if username else " autofocus"
    focus_password = " autofocus" if username else ""
    described = ' aria-describedby="form-error"' if error else ""
    code = ("<p class=\"hint\">Your account has two-factor authentication: enter your "
            "password again and the code of your authenticator app, or a backup code.</p>"
            "<label>Authentication code <input name=\"token\" inputmode=\"numeric\" "
            "autocomplete=\"one-time-code\" maxlength=\"64\" required></label>"
            ) if token else ""
    return (
        f"{_error(error)}<form class=\"stacked auth-form\" method=\"post\" "
        f"action=\"/login\"{described}>"
        "<label>User name <input name=\"username\" autocomplete=\"username\" "
        f"value=\"{html.escape(username)}\" required{focus_user}></label>"
        "<label>Password <input name=\"password\" type=\"password\" "
        f"autocomplete=\"current-password\" required{focus_password}></label>{code}"
        "<button type=\"submit\" class=\"primary\">Log in</button></form>"
    )


def create_form(first: bool, error: str = "", username: str = "", email: str = "") -> str:
    intro = ("<p class=\"hint\">This server has no account yet. The account you create now "
             "is the site administrator.</p>") if first else ""
    described = ' aria-describedby="form-error"' if error else ""
    return (
        f"{intro}{_error(error)}<form class=\"stacked auth-form\" method=\"post\" "
        f"action=\"/createaccount\"{described}>"
        "<label>User name <input name=\"username\" autocomplete=\"username\" "
        f"value=\"{html.escape(username)}\" required autofocus></label>"
        "<label>E-mail (optional) <input name=\"email\" type=\"email\" "
        f"autocomplete=\"email\" value=\"{html.escape(email)}\"></label>"
        "<label>Password <input name=\"password1\" type=\"password\" "
        "autocomplete=\"new-password\" required></label>"
        "<label>Password again <input name=\"password2\" type=\"password\" "
        "autocomplete=\"new-password\" required></label>"
        "<button type=\"submit\" class=\"primary\">Create account</button></form>"
        + ("" if first else '<p class="auth-foot"><a href="/">Back to log in</a></p>')
    )


def create_heading(first: bool) -> str:
    return "Create the administrator" if first else "Create an account"


def _arg(request: Request, name: bytes) -> str:
    values = request.args.get(name) if request.args else None
    if not values:
        return ""
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return ""


def _same_origin(request: Request) -> bool:
    """A form post from another site is refused (the cookie is SameSite=Lax as well)."""
    origin = request.getHeader(b"origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.getHeader(b"host") or ""
    return urlsplit(origin).netloc.lower() == host.lower()


def _too_large(request: Request) -> bool:
    content = request.content
    if content is None:
        return False
    position = content.tell()
    content.seek(0, 2)
    size = content.tell()
    content.seek(position)
    return size > MAX_FORM


def _to_home(request: Request) -> bytes:
    """303 to the landing page (after a form post, so a reload does not post again)."""
    request.setResponseCode(303)
    request.setHeader(b"Location", b"/")
    return b""


def _set_session_cookie(request: Request, token: str) -> None:
    request.addCookie(COOKIE_NAME, token.encode("ascii"), path=b"/", secure=True,
                      httpOnly=True, sameSite="lax")


def _clear_session_cookie(request: Request) -> None:
    request.addCookie(COOKIE_NAME, b"", path=b"/", secure=True, httpOnly=True,
                      sameSite="lax", max_age=b"0", expires=b"Thu, 01 Jan 1970 00:00:00 GMT")


def render_async(request: Request,
                 handler: Callable[[], Coroutine[Any, Any, bytes]]) -> object:
    """Run an async page handler; a dead store is a 503, a bug a bare 500."""

    async def run() -> None:
        try:
            body = await handler()
        except StoreUnavailable as e:
            _log.error("request {path} failed: {problem}", path=request.path, problem=str(e))
            request.setResponseCode(503)
            request.setHeader(b"Retry-After", b"10")
            body = page("Service unavailable",
                        "<p>The database is unavailable right now. Try again shortly.</p>")
        except Exception:
            _log.failure("request {path} failed", path=request.path)
            request.setResponseCode(500)
            body = page("Error", "<p>Something went wrong on the server.</p>")
        if not request.finished and not getattr(request, "_disconnected", False):
            if not request.responseHeaders.hasHeader(b"content-type"):
                request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            request.write(body)
            request.finish()

    _security_headers(request)
    Deferred.fromCoroutine(run())
    return NOT_DONE_YET


class _AuthPage(Resource):
    """A page of the login flow (a leaf: no children)."""

    isLeaf = True

    def __init__(self, auth: WebAuth) -> None:
        super().__init__()
        self._auth = auth

    def _refuse_form(self, request: Request) -> Optional[bytes]:
        """The answer to a form post that must not be handled (another site's, too big)."""
        if not _same_origin(request):
            request.setResponseCode(403)
            return page(self._auth.title, "<p>Cross-site form posts are refused.</p>")
        if _too_large(request):
            request.setResponseCode(413)
            return page(self._auth.title, "<p>The form is too large.</p>")
        return None


class LandingResource(Resource):
    """``GET /``: landing page, login form, or first-run account creation."""

    def __init__(self, auth: WebAuth) -> None:
        super().__init__()
        self._auth = auth

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request: Request) -> object:
        return render_async(request, lambda: self._render(request))

    async def _render(self, request: Request) -> bytes:
        auth = self._auth
        await auth.ready()
        user = await auth.current_user(request)
        if user is not None:
            # Logged in: the web app (meshd/web/app.py), under its own CSP.
            app_security_headers(request)
            return app_page(user, auth.title)
        if await auth.accounts.count() == 0:
            return page(auth.title, create_form(first=True), create_heading(True))
        notice = ""
        if auth.password_reset is not None and _arg(request, b"passwordreset") == "done":
            notice = ('<p class="hint" role="status">Your password was changed. Log in with '
                      'the new password.</p>')
        extra = ""
        if auth.password_reset is not None:
            extra += ('<p class="auth-foot"><a href="/forgotpassword">Forgot your password?'
                      '</a></p>')
        if auth.new_accounts:
            extra += '<p class="auth-foot"><a href="/createaccount">Create an account</a></p>'
        return page(auth.title, notice + login_form() + extra, "Log in")


class LoginResource(_AuthPage):
    def render_GET(self, request: Request) -> object:
        request.redirect(b"/")
        request.setResponseCode(303)
        return b""

    def render_POST(self, request: Request) -> object:
        return render_async(request, lambda: self._login(request))

    async def _login(self, request: Request) -> bytes:
        auth = self._auth
        await auth.ready()
        refusal = self._refuse_form(request)
        if refusal is not None:
            return refusal
        username = _arg(request, b"username").strip()
        password = _arg(request, b"password")
        ip = client_ip(request)
        now = auth.now()
        uid = user_id(username) if username else ""
        wait = max(auth.limiter.blocked_for("ip:" + ip, now),
                   auth.limiter.blocked_for("user:" + uid, now) if uid else 0.0)
        if wait > 0:
            minutes = max(1, int((wait + 59) // 60))
            request.setResponseCode(429)
            request.setHeader(b"Retry-After", str(int(wait) + 1).encode())
            _log.warn("login refused for {user_id} from {ip}: too many failures",
                      user_id=uid, ip=ip)
            return page(auth.title, login_form(
                f"Too many failed logins. Try again in {minutes} minute"
                f"{'s' if minutes != 1 else ''}.", username), "Log in")
        user = await auth.accounts.authenticate(username, password)
        browser, system = describe(request.getHeader("user-agent"),
                                   request.getHeader("sec-ch-ua-platform"),
                                   request.getHeader("sec-ch-ua-platform-version"))
        login_args = [ip, browser, system]
        # A second factor, when the account has one (meshd.control.twofactor); a wrong
        # code counts as a failed login.  Without one, under settings.force2factor, the
        # session can only enrol: the control channel enforces that.
        code = _arg(request, b"token").strip()[:64]
        if user is not None and has_second_factor(user) and not code:
            request.setResponseCode(401)
            return page(auth.title, login_form("", username, token=True),
                        "Two-factor authentication")
        second: Optional[str] = None
        wrong_code = False
        if user is not None and has_second_factor(user):
            second = await check_second_factor(auth.store, user, code, now)
            if second is None:
                user, wrong_code = None, True
        if user is None:
            auth.limiter.failure("ip:" + ip, now)
            if uid:
                auth.limiter.failure("user:" + uid, now)
            _log.info("failed login for {user_id} from {ip}", user_id=uid, ip=ip)
            if uid:
                await self._failure_event(uid, username[:64], ip, login_args, wrong_code)
            request.setResponseCode(401)
            return page(auth.title, login_form("Invalid user name or password.", username,
                                               token=bool(code)),
                        "Two-factor authentication" if code else "Log in")
        auth.limiter.success("ip:" + ip)
        auth.limiter.success("user:" + uid)
        # Failed attempts since the previous login are shown once, in the web app.
        failed = await auth.failed_logins_since(user["_id"], user.get("domain", ""),
                                                user.get("pastlogin"))
        token = await auth.sessions.create(user, ip, failedlogins=failed)
        _set_session_cookie(request, token)
        _log.info("{user_id} logged in from {ip}", user_id=user["_id"], ip=ip)
        extra: dict[str, Any] = {"ip": ip, "userAgent": request.getHeader("user-agent") or ""}
        if second is not None:
            extra["twoFactorType"] = second
        await auth.user_event(user["_id"], user.get("name", ""), user.get("domain", ""),
                              "login", f"Account login from {ip}, {browser}, {system}",
                              msgid=107, msgArgs=login_args, **extra)
        return _to_home(request)

    async def _failure_event(self, uid: str, username: str, ip: str, login_args: list[str],
                             wrong_code: bool) -> None:
        """MeshCentral's ``authfail`` events: 108 wrong second factor, 109 locked
        account, 110 unknown account or wrong password."""
        auth = self._auth
        if wrong_code:
            msgid, msg = 108, f"User login attempt with incorrect 2nd factor from {ip}"
        else:
            existing = await auth.store.get(uid)
            if existing is not None and is_locked(existing):
                msgid, msg = 109, f"User login attempt on locked account from {ip}"
            else:
                msgid, msg = 110, f"Invalid user login attempt from {ip}"
        await auth.user_event(uid, username, "", "authfail", msg, msgid=msgid,
                              msgArgs=login_args)


class LogoutResource(_AuthPage):
    def render_GET(self, request: Request) -> object:
        return render_async(request, lambda: self._logout(request))

    async def _logout(self, request: Request) -> bytes:
        auth = self._auth
        await auth.ready()
        token = request.getCookie(COOKIE_NAME)
        record = await auth.sessions.destroy(token.decode("latin-1") if token else None)
        _clear_session_cookie(request)
        if record is not None:
            _log.info("{user_id} logged out", user_id=record["userid"])
            # The app's control channels of this web session end with it.
            auth.bus.publish([record["userid"]], {INTERNAL: "close", "userid": record["userid"],
                                                  "websession": record["_id"]})
            await auth.user_event(record["userid"], record["userid"].split("/", 2)[-1],
                                  record.get("domain", ""), "logout", "Account logout", msgid=2)
        return _to_home(request)


class CreateAccountResource(_AuthPage):
    def render_GET(self, request: Request) -> object:
        return render_async(request, lambda: self._form(request))

    async def _form(self, request: Request) -> bytes:
        auth = self._auth
        await auth.ready()
        first = await auth.accounts.count() == 0
        if not first and not auth.new_accounts:
            request.setResponseCode(401)
            return page(auth.title, "<p>New accounts are not allowed on this server.</p>")
        return page(auth.title, create_form(first), create_heading(first))

    def render_POST(self, request: Request) -> object:
        return render_async(request, lambda: self._create(request))

    async def _create(self, request: Request) -> bytes:
        auth = self._auth
        await auth.ready()
        refusal = self._refuse_form(request)
        if refusal is not None:
            return refusal
        username = _arg(request, b"username").strip()
        email = _arg(request, b"email").strip() or None
        password1, password2 = _arg(request, b"password1"), _arg(request, b"password2")
        # One creation at a time, so two first visitors cannot both become administrator.
        await auth.create_lock.acquire()
        try:
            first = await auth.accounts.count() == 0
            if not first and not auth.new_accounts:
                request.setResponseCode(401)
                return page(auth.title, "<p>New accounts are not allowed on this server.</p>")
            try:
                if password1 != password2:
                    raise AccountError("the two passwords differ")
                user = await auth.accounts.create(username, password1, email=email)
            except AccountError as e:
                request.setResponseCode(400)
                return page(auth.title, create_form(first, str(e).capitalize() + ".",
                                                    username, email or ""),
                            create_heading(first))
        finally:
            auth.create_lock.release()
        ip = client_ip(request)
        stored = await auth.store.get(user["_id"])
        assert stored is not None
        token = await auth.sessions.create(stored, ip)
        _set_session_cookie(request, token)
        _log.info("account {user_id} created from {ip}", user_id=user["_id"], ip=ip)
        await auth.user_event(user["_id"], user["name"], user.get("domain", ""), "accountcreate",
                              f"Account created, username is {user['name']}", msgid=64,
                              targets=("*", "server-users"))
        return _to_home(request)
