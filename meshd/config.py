"""The configuration file, parsed once into frozen typed objects.

The file is JSON with MeshCentral's top-level sections (``settings``, ``domains``,
``letsencrypt``, ``smtp``), so an administrator who knows MeshCentral's
``config.json`` knows ours.  As in MeshCentral:

* keys are case-insensitive (``mpsPort``, ``mpsport`` and ``MPSPORT`` are one key);
* a key that starts with ``_`` is a comment and is ignored, with everything under it.

Unlike MeshCentral, nothing is silently ignored: an unknown key is an error that
names its path and the nearest known key; a MeshCentral option that meshd does
not implement is accepted with a warning, so a MeshCentral configuration can be
taken over as it is.  Every error found is reported at once, each on its own line.

The schema is the dataclasses below: each field's metadata carries the key as
MeshCentral spells it and its documentation, so the parser, the type checks and
the reference table in ``docs/configuration.md`` come from one place
(``python -m meshd.config`` prints that table; a test keeps the file in step).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import socket
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

__all__ = [
    "Config",
    "ConfigError",
    "DbExpire",
    "Domain",
    "LetsEncrypt",
    "MaxInvalidLogin",
    "Settings",
    "Smtp",
    "load_config",
    "parse_config",
    "reference_markdown",
]


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem, one a line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _key(name: str, doc: str, default: Any = dataclasses.MISSING, *,
         check: Optional[Callable[[Any], Optional[str]]] = None,
         default_factory: Any = dataclasses.MISSING) -> Any:
    """A schema field: ``name`` is the key as MeshCentral spells it."""
    metadata = {"key": name, "doc": doc, "check": check}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _port(value: int) -> Optional[str]:
    if not 0 <= value <= 65535:
        return "a port number from 0 to 65535"
    return None


def _positive(value: int) -> Optional[str]:
    if value < 0:
        return "a number of 0 or more"
    return None


def _bind_address(value: str) -> Optional[str]:
    if value == "":
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "an IP address such as 127.0.0.1 or ::1, or \"\" for all addresses"
    return None


def _host_name(value: str) -> Optional[str]:
    if _is_ip(value):
        return None
    if not value or any(c.isspace() or c in "/\\:@" for c in value):
        return "a host name or IP address"
    return None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _default_host_name() -> str:
    return socket.gethostname() or "localhost"


@dataclass(frozen=True)
class DbExpire:
    """How long events stay in the database (MeshCentral's ``settings.dbExpire``)."""

    events: int = _key("events", "Seconds to keep events (default 20 days).", 20 * 86400,
                       check=_positive)
    power_events: int = _key("powerEvents", "Seconds to keep power events (default 10 days).",
                             10 * 86400, check=_positive)
    stats_events: int = _key("statsEvents", "Seconds to keep server statistics (default 30 days).",
                             30 * 86400, check=_positive)


@dataclass(frozen=True)
class MaxInvalidLogin:
    """Login rate limit (MeshCentral's ``settings.maxInvalidLogin``)."""

    time: int = _key("time", "Window in minutes in which failed logins are counted.", 10,
                     check=_positive)
    count: int = _key("count", "Failed logins allowed in the window before a cool-off.", 10,
                      check=_positive)
    cool_off_time: int = _key("coolOffTime", "Minutes a blocked address or user waits.", 10,
                              check=_positive)


@dataclass(frozen=True)
class Settings:
    """Server-wide settings (``settings``)."""

    port: int = _key("port", "HTTPS port for the web site, agents and the relay.", 443,
                     check=_port)
    redir_port: int = _key("redirPort",
                           "HTTP port that redirects to HTTPS and answers ACME challenges; 0 disables.",
                           80, check=_port)
    mps_port: int = _key("mpsPort", "Intel AMT CIRA (MPS) TLS port; 0 disables.", 4433,
                         check=_port)
    bind: str = _key("portBind", "Address to listen on (\"\" for all addresses).", "",
                     check=_bind_address)
    cert: str = _key("cert", "Host name in the web certificate (default: this machine's name).",
                     default_factory=_default_host_name, check=_host_name)
    mps_pass: Optional[str] = _key("mpsPass",
                                   "One CIRA password accepted for every Intel AMT group "
                                   "(MeshCentral compatibility; default: per-group passwords).",
                                   None)
    mps_alias_host: Optional[str] = _key("mpsAliasHost",
                                         "Host name in the MPS certificate (default: cert).", None)
    fast_cert: bool = _key("fastCert",
                           "Create RSA-2048 certificates instead of RSA-3072 (faster first start).",
                           False)
    tls_offload: bool = _key("tlsOffload",
                             "A reverse proxy terminates TLS: the HTTPS port speaks plain HTTP.",
                             False)
    tls_offload_cert: Optional[str] = _key("tlsOffloadCert",
                                           "With tlsOffload: PEM file of the certificate the proxy "
                                           "presents, whose hash agents check (default: "
                                           "webserver-cert-public.crt in the data folder).", None)
    data_path: Optional[str] = _key("dataPath", "Data folder (default ./meshd-data).", None)
    mongodb: Optional[str] = _key("mongoDb",
                                  "MongoDB URL; without it the embedded SQLite store is used.",
                                  None)
    mongodb_name: str = _key("mongoDbName", "MongoDB database name.", "meshcentral")
    redis: Optional[str] = _key("redis",
                                "Redis URL (redis://host:port/db) for several meshd servers "
                                "(not supported yet: setting it gives a warning).", None)
    new_accounts: bool = _key("newAccounts",
                              "Allow visitors to create their own accounts.", False)
    allow_login_token: bool = _key("allowLoginToken",
                                   "Let users fetch long-lived login cookies "
                                   "(action logincookie).", False)
    agent_core_dir: Optional[str] = _key("agentCoreDir",
                                         "The agents/ folder of an installed MeshCentral: real "
                                         "MeshAgents then get MeshCentral's own core from it.",
                                         None)
    max_devices: Optional[int] = _key("maxDevices",
                                      "Most devices the server accepts (default: no limit).",
                                      None, check=_positive)
    session_time: int = _key("sessionTime", "Minutes a web session stays valid when idle.", 60,
                             check=_positive)
    password_cache_seconds: int = _key(
        "passwordCacheSeconds",
        "Seconds a successful password check is remembered (as a keyed hash held only in "
        "memory), so tools that log in for every command, such as meshctrl, skip the "
        "deliberately slow PBKDF2; failed checks are never remembered; 0 disables.", 300,
        check=_positive)
    db_expire: DbExpire = _key("dbExpire", "Event retention.", default_factory=DbExpire)
    max_invalid_login: MaxInvalidLogin = _key("maxInvalidLogin", "Login rate limit.",
                                              default_factory=MaxInvalidLogin)
    force2factor: bool = _key("force2factor",
                              "Every user must have a second factor (TOTP): until one is "
                              "enrolled, a password login can only enrol, which needs the "
                              "current password and a one-time enrolment code issued by an "
                              "administrator; meshctrl and relays are refused until then.",
                              False)


@dataclass(frozen=True)
class SessionRecording:
    """Relay session recording (``domains.<name>.sessionRecording``: ``true`` or an object)."""

    protocols: tuple[int, ...] = _key("protocols",
                                      "Relay protocols to record (1 terminal, 2 desktop, "
                                      "5 files..., 100 Intel AMT WSMAN, 101 Intel AMT "
                                      "redirection); empty: all.", ())
    file_path: Optional[str] = _key("filePath",
                                    "Folder of the recordings (default: recordings/ in the "
                                    "data folder).", None)
    max_recordings: int = _key("maxRecordings",
                               "Most recordings kept; the oldest are deleted (0: no limit).",
                               0, check=_positive)
    max_recording_size_megabytes: int = _key("maxRecordingSizeMegabytes",
                                             "Most megabytes of recordings kept (0: no "
                                             "limit).", 0, check=_positive)
    max_recording_days: int = _key("maxRecordingDays",
                                   "Days a recording is kept (0: no limit).", 0,
                                   check=_positive)


def _consent_bits(value: int) -> Optional[str]:
    if not 0 <= value <= 127:
        return "a sum of consent bits from 0 to 127"
    return None


@dataclass(frozen=True)
class ConsentMessages:
    """What the device's user is asked before a remote session
    (``domains.<name>.consentMessages``, sent to agents in the tunnel's ``soptions``)."""

    title: Optional[str] = _key("title", "Title of the consent prompt.", None)
    desktop: Optional[str] = _key("desktop", "Consent prompt for remote desktop.", None)
    terminal: Optional[str] = _key("terminal", "Consent prompt for the terminal.", None)
    files: Optional[str] = _key("files", "Consent prompt for files.", None)
    consent_timeout: int = _key("consentTimeout",
                                "Seconds the prompt waits (0: the agent's default).", 0,
                                check=_positive)
    auto_accept_on_timeout: bool = _key("autoAcceptOnTimeout",
                                        "Accept when the prompt times out.", False)
    auto_accept_if_no_user: bool = _key("autoAcceptIfNoUser",
                                        "Accept when nobody is logged in.", False)
    auto_accept_if_desktop_no_user: bool = _key(
        "autoAcceptIfDesktopNoUser", "Accept desktop sessions when nobody is logged in.",
        False)
    auto_accept_if_terminal_no_user: bool = _key(
        "autoAcceptIfTerminalNoUser", "Accept terminal sessions when nobody is logged in.",
        False)
    auto_accept_if_file_no_user: bool = _key(
        "autoAcceptIfFileNoUser", "Accept file sessions when nobody is logged in.", False)
    auto_accept_if_locked: bool = _key("autoAcceptIfLocked",
                                       "Accept when the device's session is locked.", False)
    auto_accept_if_desktop_locked: bool = _key(
        "autoAcceptIfDesktopLocked", "Accept desktop sessions when locked.", False)
    auto_accept_if_terminal_locked: bool = _key(
        "autoAcceptIfTerminalLocked", "Accept terminal sessions when locked.", False)
    auto_accept_if_file_locked: bool = _key(
        "autoAcceptIfFileLocked", "Accept file sessions when locked.", False)
    old_style: bool = _key("oldStyle", "Use the agent's old-style prompt.", False)


@dataclass(frozen=True)
class NotificationMessages:
    """What the device's user is told when a remote session starts
    (``domains.<name>.notificationMessages``)."""

    title: Optional[str] = _key("title", "Title of the notification.", None)
    desktop: Optional[str] = _key("desktop", "Notification for remote desktop.", None)
    terminal: Optional[str] = _key("terminal", "Notification for the terminal.", None)
    files: Optional[str] = _key("files", "Notification for files.", None)


@dataclass(frozen=True)
class Domain:
    """One domain (``domains.<name>``); ``""`` is the default domain."""

    title: str = _key("title", "Title of the web pages.", "meshd")
    title2: str = _key("title2", "Second line of the title.", "")
    new_accounts: Optional[bool] = _key("newAccounts",
                                        "Allow self-registration in this domain "
                                        "(default: settings.newAccounts).", None)
    session_recording: Optional[SessionRecording] = _key(
        "sessionRecording", "Record relay sessions in MeshCentral's .mcrec format: true, or an "
        "object with the keys below.", None)
    user_consent_flags: int = _key(
        "userConsentFlags", "Consent every remote session of this domain needs, added to "
        "the group's, device's and user's: 1/2/4 notify the device's user of desktop/"
        "terminal/files sessions, 8/16/32 ask them first, 64 show a session toolbar.", 0,
        check=_consent_bits)
    consent_messages: Optional[ConsentMessages] = _key(
        "consentMessages", "Texts and automatic answers of the consent prompt.", None)
    notification_messages: Optional[NotificationMessages] = _key(
        "notificationMessages", "Texts of the session notifications.", None)


def _acme_names(value: str) -> Optional[str]:
    """Host names an http-01 challenge can prove: no wildcards, no IPs, no spaces."""
    for name in value.split(","):
        name = name.strip().rstrip(".")
        if not name:
            return "comma-separated host names such as mesh.example.com, www.example.com"
        if name.startswith("*"):
            return "host names without wildcards (a wildcard needs a dns-01 challenge)"
        if _is_ip(name) or any(c.isspace() or c in "/\\:@_" for c in name) or len(name) > 253:
            return "comma-separated host names such as mesh.example.com, www.example.com"
    return None


def _acme_directory(value: str) -> Optional[str]:
    if not value.startswith("https://"):
        return "an https:// URL of an ACME directory"
    return None


@dataclass(frozen=True)
class LetsEncrypt:
    """Automatic web certificate from an ACME server (``letsencrypt``)."""

    email: str = _key("email", "Contact address for the ACME account.", "")
    names: str = _key("names", "Comma-separated host names for the certificate.", "",
                      check=_acme_names)
    production: bool = _key("production",
                            "Use the production directory instead of staging.", False)
    rsa_key_size: int = _key("rsaKeySize", "RSA key size of the certificate (2048 or 3072).",
                             3072,
                             check=lambda v: None if v in (2048, 3072) else "2048 or 3072")
    directory: Optional[str] = _key("directory",
                                    "ACME directory URL (default: Let's Encrypt's).", None,
                                    check=_acme_directory)
    renew_days: int = _key("renewDays",
                           "Renew the certificate this many days before it expires (a third of "
                           "its lifetime instead when that is under twice this).", 30,
                           check=lambda v: None if 1 <= v <= 365 else "1 to 365 days")


@dataclass(frozen=True)
class Smtp:
    """Outgoing e-mail (``smtp``)."""

    host: str = _key("host", "SMTP server host name.", "")
    port: int = _key("port", "SMTP server port.", 25, check=_port)
    from_: str = _key("from", "Sender address.", "")
    user: Optional[str] = _key("user", "Login name.", None)
    password: Optional[str] = _key("pass", "Password.", None)
    tls: bool = _key("tls", "Connect with TLS from the start (port 465).", False)
    tls_cert_check: bool = _key("tlsCertCheck", "Check the server's certificate.", True)


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    settings: Settings = _key("settings", "Server-wide settings.", default_factory=Settings)
    domains: Mapping[str, Domain] = _key("domains", "Domains by name.",
                                         default_factory=lambda: types.MappingProxyType(
                                             {"": Domain()}))
    letsencrypt: Optional[LetsEncrypt] = _key("letsencrypt", "ACME (Let's Encrypt).", None)
    smtp: Optional[Smtp] = _key("smtp", "Outgoing e-mail.", None)
    warnings: tuple[str, ...] = field(default=(), compare=False, metadata={"key": None})

    @property
    def default_domain(self) -> Domain:
        return self.domains.get("", Domain())


# MeshCentral options that meshd accepts without implementing them (yet), so that
# MeshCentral's own config.json can be used as it is.  Lower-case key names.
_MESHCENTRAL_ONLY: dict[str, frozenset[str]] = {
    "": frozenset({"$schema", "domaindefaults", "messaging", "peers", "sendgrid", "sendmail",
                   "sms"}),
    "settings": frozenset((
        "acebase agentaliasdns agentaliasport agentallowedip agentblockedip agentcoredump "
        "agentcoredumpusers agentidletimeout agentlogdump agentping agentpong agentport "
        "agentportbind agentporttls agentsignlock agentsinram agenttimestampproxy "
        "agenttimestampserver agentupdatesystem agentwscompression aliasport allowframing "
        "allowhighqualitydesktop allowlogintoken amtprovisioningserver amtscanner authlog "
        "autobackup browserping browserpong certificateprivatekeypassword "
        "cleannpmcacheonupdate compression cookieencoding cookieipcheck crowdsec dbencryptkey "
        "dbrecordsdecryptkey dbrecordsencryptkey debug desktopmultiplex exactports "
        "ignoreagenthashcheck interusermessaging ipblockeduserredirect lanonly localdiscovery "
        "lockagentdownload log maintenancemode managealldevicegroups managecrossdomain "
        "maxinvalid2fa mesherrorlogpath meshscanner mongodbbulkoperations mongodbchangestream "
        "mpsaliasport mpshighsecurity mpsportbind mpstlsoffload nice404 no2factorauth "
        "noagentupdate npmpath npmproxy orphanagentuser plugins publicpushnotifications "
        "rediraliasport redirects redirportbind relayaliasport relaydns relayport "
        "runonservererror runonserverstarted runonserverupdated selfupdate sessionsamesite "
        "sessionkey filespath sqlite3 stricttransportsecurity syslog syslogauth syslogjson syslogtcp "
        "temporaryagentupdate trustedproxy userallowedip userblockedip wanonly watchdog "
        "webpagelengthrandomization webpush webrtc webrtcconfig wscompression "
        "mysql mariadb postgres nedbtodb usenodedefaulttlsciphers tlsciphers"
    ).split()),
    "settings.maxinvalidlogin": frozenset({"exclude"}),
    "domains.*": frozenset((
        "agentallowedip agentblockedip agentconfig agentcustomization agentfileinfo "
        "agentinvitecodes agentkey agentnoproxy agentselfguestsharing "
        "allowsavingdevicecredentials altmessenging amtacmactivation amtmanager amtscanoptions "
        "androidcustomization assistantconfig assistantcustomization assistanttypeagentinvite "
        "auth authstrategies autoremoveinactivedevices certurl customfiles "
        "desktopprivacybartext devicemeshrouterlinks devicesearchbarserverandclientname dns "
        "duo2factor footer geolocation guestdevicesharing hide hidepowertimeline httpheaders "
        "ipkvm iplocation ldapoptions ldapsiteadmingroups ldapsyncwithusergroups ldapuseremail "
        "ldapusergroups ldapuserkey ldapusername ldapuserrequiredgroupmembership limits "
        "lockagentdownload loginfooter loginkey loginpicture logoutonidlesessiontimeout "
        "managealldevicegroups maxdeviceview meshmessengerpicture meshmessengertitle meshquota "
        "minify mobilesite mstsc myserver newaccountemaildomains newaccountsrights "
        "newaccountsusergroups nightmode novnc passwordrequirements "
        "preconfiguredremoteinput preconfiguredscripts pwalogo redirects rootredirect "
        "scrolltotop sessionrecording share showmodernuitoggle shownotespanel sitestyle ssh "
        "terminal titlepicture twofactorcookiedurationdays unknownuserrootredirect "
        "urlswitching userallowedip userblockedip usernameisemail userquota "
        "usersessionidletimeout usersessionssort webemailspath welcomepicture "
        "welcomepicturefullscreen welcometext yubikey"
    ).split()),
    "domains.*.sessionrecording": frozenset({"onlyselectedusers", "onlyselectedusergroups",
                                             "onlyselecteddevicegroups", "index"}),
    "letsencrypt": frozenset({"custom", "skipchallengeverification", "zerossl", "nochecks",
                              "lib"}),
    "smtp": frozenset({"emaildelayseconds", "name", "auth", "tlsstrict", "verifyemail"}),
}


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp):
        return "an object"
    return str(tp)


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _Parser:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def parse_object(self, cls: Any, data: Any, path: str, section: str) -> Any:
        if not isinstance(data, dict):
            self.errors.append(f"{path or 'the file'}: expected an object, got {_json_name(data)}")
            return cls()
        hints = typing.get_type_hints(cls)
        fields = {f.metadata["key"].lower(): f for f in dataclasses.fields(cls)
                  if f.metadata.get("key")}
        known = _MESHCENTRAL_ONLY.get(section, frozenset())
        values: dict[str, Any] = {}
        for raw_key, value in data.items():
            if not isinstance(raw_key, str) or raw_key.startswith("_"):
                continue
            key_path = f"{path}.{raw_key}" if path else raw_key
            f = fields.get(raw_key.lower())
            if f is None:
                if raw_key.lower() in known:
                    self.warnings.append(
                        f"{key_path}: MeshCentral option not supported by meshd; ignored")
                    continue
                names = [g.metadata["key"] for g in fields.values()]
                close = difflib.get_close_matches(raw_key.lower(),
                                                  [n.lower() for n in names], n=1, cutoff=0.6)
                hint = ""
                if close:
                    hint = ", did you mean " + next(n for n in names if n.lower() == close[0]) + "?"
                self.errors.append(f"{key_path}: unknown key{hint}")
                continue
            if f.name in values:
                self.errors.append(f"{key_path}: given twice (keys are case-insensitive)")
                continue
            sub_section = f"{section}.{f.metadata['key'].lower()}" if section else \
                f.metadata["key"].lower()
            parsed = self.parse_value(hints[f.name], value, key_path, sub_section)
            if parsed is _INVALID:
                continue
            check = f.metadata.get("check")
            if check is not None and parsed is not None:
                problem = check(parsed)
                if problem:
                    self.errors.append(f"{key_path}: expected {problem}, got {json.dumps(value)}")
                    continue
            values[f.name] = parsed
        return cls(**values)

    def parse_value(self, tp: Any, value: Any, path: str, section: str) -> Any:
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if value is None:
                return None
            if isinstance(value, bool) and dataclasses.is_dataclass(args[0]):
                # MeshCentral's "true, or an object of options": true means the defaults.
                return args[0]() if value else None
            return self.parse_value(args[0], value, path, section)
        if origin is tuple:
            item_type = typing.get_args(tp)[0]
            if not isinstance(value, list):
                self.errors.append(f"{path}: expected a list, got {_json_name(value)}")
                return _INVALID
            items = [self.parse_value(item_type, item, f"{path}[{i}]", section)
                     for i, item in enumerate(value)]
            return _INVALID if any(i is _INVALID for i in items) else tuple(items)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                self.errors.append(f"{path}: expected an object, got {_json_name(value)}")
                return _INVALID
            return self.parse_object(tp, value, path, section)
        if origin is not None and origin.__name__ == "Mapping":
            if not isinstance(value, dict):
                self.errors.append(f"{path}: expected an object, got {_json_name(value)}")
                return _INVALID
            item_type = typing.get_args(tp)[1]
            items = {}
            for name, item in value.items():
                if name.startswith("_"):
                    continue
                items[name] = self.parse_value(item_type, item, f"{path}.{name}", f"{section}.*")
            return types.MappingProxyType({k: v for k, v in items.items() if v is not _INVALID})
        if tp is bool:
            if isinstance(value, bool):
                return value
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif tp is str:
            if isinstance(value, str):
                return value
        self.errors.append(f"{path}: expected {_type_name(tp)}, got {_json_name(value)}")
        return _INVALID


_INVALID = object()


def parse_config(data: Any, overrides: Optional[Mapping[str, tuple[str, Any]]] = None) -> Config:
    """Build a :class:`Config` from decoded JSON; raise :class:`ConfigError` listing problems.

    ``overrides`` maps ``settings`` keys to ``(option, value)`` pairs from the command
    line: they replace the file's values, and their errors name the option.
    """
    if overrides and isinstance(data, dict):
        data = dict(data)
        section_key = next((k for k in data if isinstance(k, str) and k.lower() == "settings"),
                           "settings")
        settings = data.get(section_key)
        settings = dict(settings) if isinstance(settings, dict) else {}
        for key, (_option, value) in overrides.items():
            for existing in [k for k in settings if k.lower() == key.lower()]:
                del settings[existing]
            settings[key] = value
        data[section_key] = settings
    parser = _Parser()
    config = parser.parse_object(Config, data, "", "")
    if parser.errors:
        problems = parser.errors
        for key, (option, _value) in (overrides or {}).items():
            prefix = f"settings.{key}:"
            problems = [option + p[len(prefix) - 1:] if p.lower().startswith(prefix.lower())
                        else p for p in problems]
        raise ConfigError(problems)
    if "" not in config.domains:
        config = dataclasses.replace(
            config, domains=types.MappingProxyType({"": Domain(), **config.domains}))
    if config.settings.redis:
        parser.warnings.append("settings.redis: several meshd servers sharing Redis are not "
                               "supported yet; this server runs alone")
    return dataclasses.replace(config, warnings=tuple(parser.warnings))


def load_config(path: Optional[str],
                overrides: Optional[Mapping[str, tuple[str, Any]]] = None) -> Config:
    """Read and parse a JSON configuration file (``None``: defaults), then apply overrides."""
    if path is None:
        return parse_config({}, overrides)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the configuration file: {e.strerror}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text (byte {e.start})"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            [f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"]) from None
    try:
        return parse_config(data, overrides)
    except ConfigError as e:
        raise ConfigError([p if p.startswith("--") else f"{path}: {p}"
                           for p in e.problems]) from None


def _reference_rows(cls: Any, prefix: str) -> list[tuple[str, str, str, str]]:
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f.metadata.get("key")
        if not key:
            continue
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = args[0] if typing.get_origin(tp) in (Union, types.UnionType) else tp
        path = f"{prefix}.{key}" if prefix else key
        if dataclasses.is_dataclass(inner):
            if prefix:
                kind = "boolean or object" if inner is not tp else "object"
                rows.append((path, kind, "", f.metadata["doc"]))
            rows.extend(_reference_rows(inner, path))
            continue
        if typing.get_origin(inner) is not None and typing.get_origin(inner).__name__ == "Mapping":
            rows.extend(_reference_rows(typing.get_args(inner)[1], path + ".<name>"))
            continue
        if f.default is not dataclasses.MISSING:
            default = json.dumps(f.default)
        elif key == "cert":
            default = "host name"
        else:
            default = ""
        kind = {bool: "boolean", int: "integer", str: "string"}.get(inner, str(inner))
        if typing.get_origin(inner) is tuple:
            item = typing.get_args(inner)[0]
            kind = "list of " + {int: "integers", str: "strings"}.get(item, str(item))
        rows.append((path, kind, default, f.metadata["doc"]))
    return rows


def reference_markdown() -> str:
    """The configuration reference as a Markdown table."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for path, kind, default, doc in _reference_rows(Config, ""):
        lines.append(f"| `{path}` | {kind} | {('`' + default + '`') if default else ''} | {doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - documentation helper
    sys.stdout.write(reference_markdown())
