"""``meshd-admin``: account and database administration from the shell.

    meshd-admin [--datapath D | --config F] createaccount NAME [--pass P] [--email E] [--siteadmin]
    meshd-admin [...] resetaccount NAME [--pass P]
    meshd-admin [...] adminaccount NAME [--remove]
    meshd-admin [...] listaccounts [--json]

It opens the same store as the server (the SQLite file in the data folder, or
MongoDB from the configuration) and works whether or not the server is running.
Without ``--pass`` the password is asked for on the terminal, or read as one line
from standard input, so it need not appear in the process list or shell history.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from typing import Any, Optional, Sequence, TextIO

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.python import usage

from meshd.accounts import AccountError, Accounts
from meshd.config import Config, ConfigError, load_config
from meshd.store import IStore, StoreError, open_store

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

    def parseArgs(self, name: str) -> None:
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


class ListAccountsOptions(usage.Options):
    optFlags = [["json", None, "One JSON object a line."]]


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
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is needed; see --help")
        try:
            self.config: Config = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def _store_for(options: Options, reactor: Any) -> IStore:
    settings = options.config.settings
    datapath = os.path.abspath(options["datapath"] or settings.data_path or DEFAULT_DATA_PATH)
    mongodb = options["mongodb"] or settings.mongodb
    if not mongodb and not os.path.isdir(datapath):
        raise usage.UsageError(f"no data folder at {datapath}; start the server once or give "
                               f"--datapath")
    return open_store(datapath, mongodb, reactor, mongodb_name=settings.mongodb_name)


async def _run(reactor: Any, options: Options, out: TextIO, stdin: TextIO) -> int:
    store = _store_for(options, reactor)
    await store.open()
    try:
        accounts = Accounts(store, now=reactor.seconds,
                            run_blocking=lambda f, *a: deferToThread(f, *a))
        command, sub = options.subCommand, options.subOptions
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
            result.append(await _run(reactor, options, out, stdin))
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
