"""The `imserver` console script: run the server and manage accounts.

Passwords come from --password-file or a prompt, never from argv (argv is
visible to every user of the machine). Every error is one line on stderr and
a non-zero exit status.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import globalLogBeginner

from imserver import config
from imserver.credentials import make_credentials
from imserver.errors import ConfigError, StoreError, UserExists, UserNotFound
from imserver.jid import InvalidFormat, parse_jid
from imserver.logs import text_observer

DEFAULT_CONFIG = "etc/imserver.toml"


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = config.load(args.config)
        if args.command == "check-config":
            _check_config(settings)
            print(f"{args.config}: OK ({', '.join(settings.hosts)})")
            return 0
        if args.command == "run":
            return _run(settings)
        return _account_command(settings, args)
    except (ConfigError, CommandError) as e:
        # One line, whatever the message (store errors can span several).
        print("imserver:", " ".join(str(e).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imserver: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imserver", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="configuration file")
        return sub

    command("run", "run the server in the foreground")
    command("check-config", "validate the configuration and exit")
    for name, help_text in (("adduser", "create an account"), ("passwd", "set a password")):
        sub = command(name, help_text)
        sub.add_argument("jid", help="user@host")
        sub.add_argument("--password-file", type=Path, help="read the password from this file")
    command("deluser", "delete an account and all its data").add_argument("jid")
    return parser


def _check_config(settings: config.Settings) -> None:
    from imserver.server import load_plugins

    load_plugins(settings.plugins)


def _run(settings: config.Settings) -> int:
    from twisted.internet import reactor

    from imserver.service import makeService, tune_garbage_collector

    try:
        top = makeService(settings)  # config errors surface here, as one plain line
    except OSError as e:  # e.g. the certificate cannot be written
        raise CommandError(f"{e.filename or 'startup'}: {e.strerror or e}") from None
    globalLogBeginner.beginLoggingTo([text_observer(sys.stdout)], redirectStandardIO=False)
    try:
        top.startService()
    except CannotListenError as e:
        # What did start (the store's threads) must stop before we can exit.
        reactor.callWhenRunning(
            lambda: defer.maybeDeferred(top.stopService).addBoth(lambda _: reactor.stop())
        )
        reactor.run(installSignalHandlers=False)
        raise CommandError(
            f"cannot listen on {e.interface or '*'}:{e.port}: {e.socketError}"
        ) from None
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.callWhenRunning(tune_garbage_collector)
    reactor.run()
    if not top.server.ready.called:
        # ServerService stopped the reactor because the store did not open (logged above).
        raise CommandError("the store could not be opened; see the log")
    return 0


def _account_command(settings: config.Settings, args: argparse.Namespace) -> int:
    user, host = _account(settings, args.jid)
    credentials = None
    if args.command in ("adduser", "passwd"):
        try:
            credentials = make_credentials(_password(args))
        except CommandError:
            raise
        except Exception:  # scramp's SASLprep refusal; the password itself is never shown
            raise CommandError("the password has characters SASLprep does not allow") from None

    @defer.inlineCallbacks
    def work(reactor):
        from imserver.storage import open_store

        store = open_store(settings.storage_url)
        yield store.start()
        try:
            if args.command == "adduser":
                yield store.create_user(user, host, credentials)
            elif args.command == "passwd":
                yield store.set_credentials(user, host, credentials)
            else:
                yield store.delete_user(user, host)
        finally:
            yield store.stop()

    outcome: list[BaseException] = []

    def run(reactor):
        d = work(reactor)
        d.addErrback(lambda f: outcome.append(f.value))
        return d

    _react(run)
    if outcome:
        error = outcome[0]
        if isinstance(error, UserExists):
            raise CommandError(f"{args.jid}: the account already exists")
        if isinstance(error, UserNotFound):
            raise CommandError(f"{args.jid}: no such account")
        if isinstance(error, StoreError):
            raise CommandError(f"storage failed: {error}")
        raise CommandError(f"{type(error).__name__}: {error}")
    print(
        {"adduser": "created", "passwd": "password changed", "deluser": "deleted"}[args.command],
        args.jid,
    )
    return 0


def _react(main) -> None:
    """Run C{main(reactor)} to completion on the reactor, without exiting the process."""
    from twisted.internet import reactor

    def go():
        main(reactor).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)


def _account(settings: config.Settings, value: str) -> tuple[str, str]:
    try:
        jid = parse_jid(value)
    except InvalidFormat as e:
        raise CommandError(f"{value}: not a valid JID ({e})") from None
    if jid.user is None or jid.resource is not None:
        raise CommandError(f"{value}: give an account as user@host")
    if jid.host not in settings.hosts:
        raise CommandError(
            f"{value}: unknown host {jid.host!r} (served: {', '.join(settings.hosts)})"
        )
    return jid.user, jid.host


def _password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        try:
            lines = args.password_file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise CommandError(f"{args.password_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise CommandError(f"{args.password_file}: not UTF-8 text") from None
        password = lines[0] if lines else ""
    else:
        # getpass falls back to echoing stdin (with warnings) when there is no terminal.
        if not sys.stdin.isatty():
            raise CommandError("no terminal to ask for the password: use --password-file")
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Again: ")
        except EOFError:
            raise CommandError("no password given") from None
        if again != password:
            raise CommandError("the passwords do not match")
    if not password:
        raise CommandError("the password is empty")
    return password
