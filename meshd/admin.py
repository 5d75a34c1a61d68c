"""``meshd-admin``: account and database administration from the shell.

    meshd-admin [--datapath D | --config F] createaccount NAME [--pass P] [--email E] [--siteadmin]
    meshd-admin [...] resetaccount NAME [--pass P]
    meshd-admin [...] adminaccount NAME [--remove]
    meshd-admin [...] listaccounts [--json]
    meshd-admin [...] enrolcode NAME
    meshd-admin [...] dbexport FILE
    meshd-admin [...] dbimport FILE [--merge] [--dry-run] [--strict] [--progress-every N]

It opens the same store as the server (the SQLite file in the data folder, or
MongoDB from the configuration) and works whether or not the server is running.
Without ``--pass`` the password is asked for on the terminal, or read as one line
from standard input, so it need not appear in the process list or shell history.

``dbexport`` writes the whole database as JSON lines (``-`` for standard output);
``dbimport`` reads such a file, a MeshCentral NeDB ``meshcentral.db`` or MeshCentral's
``--dbexport`` file (formats and rules: :mod:`meshd.store.transfer`). Progress and bad
lines go to standard error; the exit status is 1 when lines were skipped.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import sys
from datetime import datetime, timezone
from typing import Any, BinaryIO, Optional, Sequence, TextIO

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.python import usage

from meshd.accounts import AccountError, Accounts
from meshd.config import Config, ConfigError, load_config
from meshd.store import IStore, StoreError, open_store
from meshd.store import transfer

DEFAULT_DATA_PATH = "meshd-data"


def _read_password(stream: TextIO, confirm: bool) -> str:
    if stream.isatty():
        first = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Password again: ") != first:
            raise AccountError("the two passwords differ")
        return first
    line = stream.readline()
    return line.rstrip("\r\n")


class _NamedOptions(usage.Options):
    """``COMMAND NAME --option ...``: the name may come before the options."""

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        args = list(sys.argv[1:] if options is None else options)
        if args and not args[0].startswith("-"):
            args = args[1:] + ["--", args[0]]
        super().parseOptions(args)

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name


class _PasswordOptions(_NamedOptions):
    optParameters = [["pass", "p", None, "The password (asked for when not given)."]]


class CreateAccountOptions(_PasswordOptions):
    synopsis = "NAME [--pass P] [--email E] [--siteadmin]"
    optParameters = _PasswordOptions.optParameters + [
        ["email", "e", None, "E-mail address."],
        ["domain", None, "", "Domain (default: the default domain)."]]
    optFlags = [["siteadmin", None, "Give the account every site right."]]


class ResetAccountOptions(_PasswordOptions):
    synopsis = "NAME [--pass P]"
    optParameters = _PasswordOptions.optParameters + [["domain", None, "", "Domain."]]


class AdminAccountOptions(_NamedOptions):
    synopsis = "NAME [--remove]"
    optParameters = [["domain", None, "", "Domain."]]
    optFlags = [["remove", None, "Take the site rights away instead."]]


class EnrolCodeOptions(_NamedOptions):
    synopsis = "NAME"
    optParameters = [["domain", None, "", "Domain."]]


class ListAccountsOptions(usage.Options):
    optFlags = [["json", None, "One JSON object a line."]]


class _FileOptions(usage.Options):
    """``COMMAND FILE --option ...``: the file may come before the options; ``-`` is
    standard input or output."""

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        args = list(sys.argv[1:] if options is None else options)
        if args and (args[0] == "-" or not args[0].startswith("-")):
            args = args[1:] + ["--", args[0]]
        super().parseOptions(args)

    def parseArgs(self, file: str) -> None:  # type: ignore[override]
        self["file"] = file


class DbExportOptions(_FileOptions):
    synopsis = "FILE"


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


class DbImportOptions(_FileOptions):
    synopsis = "FILE [--merge] [--dry-run] [--strict] [--progress-every N]"
    optFlags = [
        ["merge", None, "Import into a store that already has accounts or devices (records "
                        "with the same _id are replaced; this server's keys are kept)."],
        ["dry-run", "n", "Read and check the file and report; write nothing."],
        ["strict", None, "Write nothing if any line of the file is bad."],
    ]
    optParameters = [["progress-every", None, transfer.PROGRESS_EVERY,
                      "Report progress every N records (0: never).", _count]]


class CertInfoOptions(usage.Options):
    pass


class CiraCredentialsOptions(usage.Options):
    synopsis = "GROUPID"

    def parseArgs(self, group: str) -> None:  # type: ignore[override]
        self["group"] = group


class Options(usage.Options):
    synopsis = "[--datapath D | --config F] COMMAND [options]"
    optParameters = [
        ["datapath", "d", None, "Data folder (default ./meshd-data, or settings.dataPath)."],
        ["config", "c", None, "The server's JSON configuration file."],
        ["mongodb", None, None, "MongoDB URL (default: settings.mongoDb, else SQLite)."],
    ]
    subCommands = [
        ["createaccount", None, CreateAccountOptions, "Create an account."],
        ["resetaccount", None, ResetAccountOptions, "Set a new password."],
        ["adminaccount", None, AdminAccountOptions, "Make an account site administrator."],
        ["listaccounts", None, ListAccountsOptions, "List the accounts."],
        ["enrolcode", None, EnrolCodeOptions,
         "Issue a one-time two-factor enrolment code for an account (shown once)."],
        ["dbexport", None, DbExportOptions, "Export the whole database as JSON lines."],
        ["dbimport", None, DbImportOptions,
         "Import a dbexport file or a MeshCentral meshcentral.db."],
        ["certinfo", None, CertInfoOptions, "Show the certificates in use, hashes and expiry."],
        ["ciracredentials", None, CiraCredentialsOptions,
         "Make new Intel AMT CIRA credentials for a device group (shown once)."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is needed; see --help")
        try:
            self.config: Config = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def _datapath(options: Options) -> str:
    settings = options.config.settings
    datapath = os.path.abspath(options["datapath"] or settings.data_path or DEFAULT_DATA_PATH)
    if not os.path.isdir(datapath) and not (options["mongodb"] or settings.mongodb):
        raise usage.UsageError(f"no data folder at {datapath}; start the server once or give "
                               f"--datapath")
    return datapath


def _store_for(options: Options, reactor: Any) -> IStore:
    settings = options.config.settings
    datapath = _datapath(options)
    mongodb = options["mongodb"] or settings.mongodb
    if not mongodb and not os.path.isdir(datapath):
        raise usage.UsageError(f"no data folder at {datapath}; start the server once or give "
                               f"--datapath")
    return open_store(datapath, mongodb, reactor, mongodb_name=settings.mongodb_name)


_MAX_BAD_LINES_SHOWN = 50


def _binary(stream: TextIO) -> BinaryIO:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        return buffer  # type: ignore[no-any-return]
    return io.BytesIO(stream.read().encode("utf-8"))


def _read_import_file(path: str, stdin: TextIO, progress: transfer.Progress,
                      every: int) -> transfer.ImportData:
    """Blocking: the checked contents of the file to import."""
    try:
        if path == "-":
            return transfer.read_import(_binary(stdin), "", progress=progress,
                                        progress_every=every)
        with open(path, "rb") as stream:
            return transfer.read_import(stream, path, progress=progress, progress_every=every)
    except OSError as e:
        raise transfer.TransferError(f"cannot read {path}: {e.strerror or e}") from None
    except transfer.TransferError as e:
        name = "standard input" if path == "-" else path
        raise transfer.TransferError(f"{name}: {e}") from None


async def _dbimport(reactor: Any, options: Options, out: TextIO, err: TextIO,
                    stdin: TextIO) -> int:
    sub = options.subOptions
    path, every = sub["file"], sub["progress-every"]

    def progress(message: str) -> None:
        err.write(f"meshd-admin: {message}\n")
        err.flush()

    def progress_from_thread(message: str) -> None:
        reactor.callFromThread(progress, message)

    store = _store_for(options, reactor)
    # Read and check the whole file before touching the store.
    data = await deferToThread(_read_import_file, path, stdin, progress_from_thread, every)
    name = "standard input" if path == "-" else path
    out.write(f"{name}: {data.describe()}\n")
    for problem in data.bad[:_MAX_BAD_LINES_SHOWN]:
        err.write(f"meshd-admin: {name} {problem}\n")
    if data.bad_count > _MAX_BAD_LINES_SHOWN:
        err.write(f"meshd-admin: ... and {data.bad_count - _MAX_BAD_LINES_SHOWN} more bad "
                  f"lines\n")
    for warning in data.warnings:
        err.write(f"meshd-admin: warning: {warning}\n")
    if data.bad_count and sub["strict"]:
        err.write(f"meshd-admin: {data.bad_count} bad "
                  f"{'line' if data.bad_count == 1 else 'lines'}; nothing imported (--strict)\n")
        return 1
    await store.open()
    try:
        report = await transfer.apply_import(store, data, merge=sub["merge"],
                                             dry_run=sub["dry-run"], progress=progress,
                                             progress_every=every)
    finally:
        await store.close()
    out.write(report.summary() + "\n")
    if data.bad_count:
        err.write(f"meshd-admin: skipped {data.bad_count} bad "
                  f"{'line' if data.bad_count == 1 else 'lines'}\n")
        return 1
    return 0


async def _dbexport(reactor: Any, store: IStore, path: str, out: TextIO, err: TextIO) -> int:
    data = await store.export_all()
    exported = datetime.fromtimestamp(reactor.seconds(), timezone.utc)
    counts = transfer.export_counts(data)
    if path == "-":
        buffer = getattr(out, "buffer", None)
        if buffer is not None:  # bytes, whatever the terminal's encoding
            out.flush()
            transfer.write_export(data, buffer, store.backend, exported)
            buffer.flush()
        else:
            for line in transfer.export_lines(data, store.backend, exported):
                out.write(line)
        report, name = err, "standard output"
    else:
        await deferToThread(transfer.write_export_file, data, path, store.backend, exported)
        report, name = out, path
    report.write(f"exported {transfer.describe_export(counts)} to {name}\n")
    return 0


async def _run(reactor: Any, options: Options, out: TextIO, stdin: TextIO,
               err: TextIO = sys.stderr) -> int:
    if options.subCommand == "dbimport":
        return await _dbimport(reactor, options, out, err, stdin)
    if options.subCommand == "certinfo":
        from meshd.acme.info import certinfo_lines

        for line in certinfo_lines(_datapath(options)):
            out.write(line + "\n")
        return 0
    store = _store_for(options, reactor)
    await store.open()
    try:
        accounts = Accounts(store, now=reactor.seconds,
                            run_blocking=lambda f, *a: deferToThread(f, *a))
        command, sub = options.subCommand, options.subOptions
        if command == "dbexport":
            return await _dbexport(reactor, store, sub["file"], out, err)
        if command == "createaccount":
            password = sub["pass"]
            if password is None:
                password = _read_password(stdin, confirm=True)
            user = await accounts.create(sub["name"], password, email=sub["email"],
                                         site_admin=sub["siteadmin"], domain=sub["domain"])
            admin = " (site administrator)" if "siteadmin" in user else ""
            out.write(f"created account {user['name']}{admin}\n")
        elif command == "resetaccount":
            password = sub["pass"]
            if password is None:
                password = _read_password(stdin, confirm=True)
            user = await accounts.reset_password(sub["name"], password, sub["domain"])
            out.write(f"new password set for {user['name']}\n")
        elif command == "adminaccount":
            user = await accounts.set_site_admin(sub["name"], not sub["remove"], sub["domain"])
            state = "no longer" if sub["remove"] else "now"
            out.write(f"{user['name']} is {state} site administrator\n")
        elif command == "ciracredentials":
            from meshd.mps.cira import create_cira_credentials

            group = sub["group"]
            mesh_key = group if group.startswith("mesh/") else f"mesh//{group}"
            try:
                user, password = await create_cira_credentials(store, mesh_key)
            except ValueError as e:
                raise AccountError(str(e)) from None
            out.write(f"CIRA user {user}\nCIRA password {password}\n"
                      "Provision these into Intel AMT now: the password is not shown again, "
                      "and devices using older credentials of this group are now refused.\n")
        elif command == "enrolcode":
            from meshd.control.twofactor import issue_enrol_code

            account = await accounts.get(sub["name"], sub["domain"])
            if account is None:
                raise AccountError(f"no account named {sub['name']!r}")
            code, expire = await issue_enrol_code(store, account["_id"], "meshd-admin",
                                                  reactor.seconds(), os.urandom)
            until = datetime.fromtimestamp(expire / 1000, timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC")
            out.write(f"{code}\n")
            err.write(f"one-time two-factor enrolment code for {account['name']}, valid until "
                      f"{until}; it replaces any earlier code. Hand it over out of band: with "
                      f"settings.force2factor, enrolment needs it and the password.\n")
        elif command == "listaccounts":
            for user in await accounts.list():
                if sub["json"]:
                    out.write(json.dumps(user, default=str, sort_keys=True) + "\n")
                else:
                    admin = "siteadmin" if user.get("siteadmin") == 0xFFFFFFFF else ""
                    out.write(f"{user['_id']}\t{user.get('email', '')}\t{admin}".rstrip() + "\n")
        return 0
    finally:
        await store.close()


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr, stdin: TextIO = sys.stdin) -> int:
    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        err.write(f"meshd-admin: {e}\n")
        return 2
    result: list[int] = []

    async def run(reactor: Any) -> None:
        try:
            result.append(await _run(reactor, options, out, stdin, err))
        except (AccountError, StoreError, usage.UsageError) as e:
            err.write(f"meshd-admin: {e}\n")
            result.append(1)

    def start(reactor: Any) -> "defer.Deferred[None]":
        return defer.Deferred.fromCoroutine(run(reactor))

    try:
        task.react(start)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
