"""The `imserver` console script, run as a subprocess the way an operator runs it.

Account commands are checked against a running server (the account must then
log in, or not), errors by their exit status and their single line on stderr.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest
from support.cli import imserver, imserver_in_terminal, password_file, write_config
from support.client import AuthFailed, RawClient
from support.server import ServerProcess

REPO = Path(__file__).resolve().parent.parent


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, exactly one line on stderr, starting 'imserver: ' and naming C{fragments}."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("imserver: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stdout
    return lines[0]


#: Every way the server looks credentials up: a change must reach each at the next login.
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "PLAIN")


def can_log_in(server: ServerProcess, jid: str, password: str) -> bool:
    """Whether the password works, with the same answer for every mechanism."""
    results = set()
    for mechanism in MECHANISMS:
        with RawClient.for_server(server) as client:
            client.connect()
            try:
                client.login(jid, password, resource="cli", mechanism=mechanism)
                results.add(True)
            except AuthFailed as failed:
                assert failed.condition == "not-authorized"
                results.add(False)
    assert len(results) == 1, f"mechanisms disagree for {jid}"
    return results.pop()


def fresh_jid(server: ServerProcess) -> str:
    return f"cli-{secrets.token_hex(4)}@{server.host}"


# -- account commands ---------------------------------------------------------------


def test_adduser_passwd_deluser(server: ServerProcess, tmp_path: Path) -> None:
    jid = fresh_jid(server)
    config = str(server.config_path)
    first = password_file(tmp_path, "first password", "one")
    second = password_file(tmp_path, "second-password", "two")

    result = imserver("adduser", jid, "--password-file", str(first), "-c", config, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.strip() == f"created {jid}"
    assert can_log_in(server, jid, "first password")

    # The server has just looked these credentials up: the change must still count at once.
    result = imserver("passwd", jid, "--password-file", str(second), "-c", config, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert not can_log_in(server, jid, "first password")
    assert can_log_in(server, jid, "second-password")

    result = imserver("deluser", jid, "-c", config, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.strip() == f"deleted {jid}"
    assert not can_log_in(server, jid, "second-password")


def test_password_prompt(server: ServerProcess, tmp_path: Path) -> None:
    jid = fresh_jid(server)
    run = imserver_in_terminal(
        "adduser",
        jid,
        "-c",
        str(server.config_path),
        cwd=tmp_path,
        answers=["typed secret", "typed secret"],
    )
    assert (run.returncode, run.stderr) == (0, ""), (run.stderr, run.terminal)
    assert "Password: " in run.terminal and "Again: " in run.terminal
    assert "typed secret" not in run.terminal  # not echoed
    assert can_log_in(server, jid, "typed secret")


def test_password_prompt_mismatch(server: ServerProcess, tmp_path: Path) -> None:
    jid = fresh_jid(server)
    run = imserver_in_terminal(
        "adduser", jid, "-c", str(server.config_path), cwd=tmp_path, answers=["one", "two"]
    )
    assert run.returncode != 0
    assert run.stderr.splitlines() == ["imserver: the passwords do not match"]
    assert not can_log_in(server, jid, "one")


def test_no_terminal_and_no_password_file(server: ServerProcess, tmp_path: Path) -> None:
    """Without a terminal the CLI must not fall back to reading an echoed password."""
    result = imserver("adduser", fresh_jid(server), "-c", str(server.config_path), cwd=tmp_path)
    assert_one_line_error(result, "--password-file")


@pytest.mark.parametrize(
    ("command", "jid", "fragments"),
    [
        ("adduser", "someone@unknown.example", ("unknown host", "unknown.example")),
        ("passwd", "someone@unknown.example", ("unknown host",)),
        ("deluser", "someone@unknown.example", ("unknown host",)),
        ("adduser", "two@@at.signs", ("not a valid JID",)),
        ("adduser", "no space@localhost", ("not a valid JID",)),
        ("adduser", "localhost", ("user@host",)),
        ("adduser", "user@localhost/resource", ("user@host",)),
        ("passwd", "nobody-{token}@localhost", ("no such account",)),
        ("deluser", "nobody-{token}@localhost", ("no such account",)),
    ],
    ids=[
        "unknown-host",
        "passwd-unknown-host",
        "deluser-unknown-host",
        "bad-jid",
        "bad-localpart",
        "no-localpart",
        "full-jid",
        "passwd-no-such-user",
        "deluser-no-such-user",
    ],
)
def test_account_errors(
    server: ServerProcess, tmp_path: Path, command: str, jid: str, fragments: tuple[str, ...]
) -> None:
    jid = jid.replace("{token}", secrets.token_hex(4))
    args = [command, jid, "-c", str(server.config_path)]
    if command != "deluser":
        args += ["--password-file", str(password_file(tmp_path, "pw"))]
    assert_one_line_error(imserver(*args, cwd=tmp_path), *fragments)


def test_adduser_existing_account(server: ServerProcess, tmp_path: Path) -> None:
    jid, password = server.new_account("exists")
    other = password_file(tmp_path, "another")
    result = imserver(
        "adduser", jid, "--password-file", str(other), "-c", str(server.config_path), cwd=tmp_path
    )
    assert_one_line_error(result, jid, "already exists")
    assert can_log_in(server, jid, password)


@pytest.mark.parametrize(
    ("content", "fragments"),
    [("", ("empty",)), ("\n", ("empty",)), ("bell\u0007\n", ("SASLprep",))],
    ids=["empty-file", "empty-line", "prohibited"],
)
def test_bad_password_file(
    server: ServerProcess, tmp_path: Path, content: str, fragments: tuple[str, ...]
) -> None:
    path = tmp_path / "password"
    path.write_text(content, encoding="utf-8")
    jid = fresh_jid(server)
    args = ["adduser", jid, "--password-file", str(path), "-c", str(server.config_path)]
    line = assert_one_line_error(imserver(*args, cwd=tmp_path), *fragments)
    assert "bell" not in line  # the password is never printed


def test_missing_password_file(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    args = ["adduser", "a@localhost", "--password-file", str(tmp_path / "nope"), "-c", str(config)]
    assert_one_line_error(imserver(*args, cwd=tmp_path), "nope", "No such file")


# -- configuration errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("tables", "fragments"),
    [
        ({"limits": {"max_depth": 0}}, ("limits.max_depth", "greater than 0")),
        ({"server": {"colour": "blue"}}, ("server.colour", "unknown setting")),
        ({"c2s": {"port": "5222"}}, ("c2s.port",)),
        ({"server": {"hosts": ["user@localhost"]}}, ("server.hosts",)),
    ],
    ids=["max-depth-0", "unknown-key", "port-as-string", "host-with-user"],
)
def test_bad_config(tmp_path: Path, tables: dict, fragments: tuple[str, ...]) -> None:
    config = write_config(tmp_path, **tables)
    result = imserver("check-config", "-c", str(config), cwd=tmp_path)
    assert_one_line_error(result, *fragments)


@pytest.mark.parametrize("command", ["adduser", "passwd", "deluser", "run"])
def test_every_command_checks_the_config(tmp_path: Path, command: str) -> None:
    config = write_config(tmp_path, limits={"max_depth": 0})
    args = [command] + (["a@localhost"] if command != "run" else [])
    result = imserver(*args, "-c", str(config), cwd=tmp_path, timeout=20)
    assert_one_line_error(result, "limits.max_depth: must be greater than 0")
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_missing_config_file(tmp_path: Path) -> None:
    result = imserver("check-config", "-c", str(tmp_path / "absent.toml"), cwd=tmp_path)
    assert_one_line_error(result, "absent.toml", "cannot read")
    # The default, etc/imserver.toml, is relative to where the command runs.
    result = imserver("deluser", "a@localhost", cwd=tmp_path)
    assert_one_line_error(result, "etc/imserver.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[server\nhosts = 1\n", encoding="utf-8")
    result = imserver("check-config", "-c", str(config), cwd=tmp_path)
    assert_one_line_error(result, "broken.toml", "not valid TOML")


# -- check-config ---------------------------------------------------------------------


def test_check_config_ok(tmp_path: Path) -> None:
    config = write_config(tmp_path, server={"hosts": ["localhost", "example.org"]})
    result = imserver("check-config", "-c", str(config), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.strip() == f"{config}: OK (localhost, example.org)"
    assert not (tmp_path / "data").exists()  # checking creates nothing


def test_check_config_sample(tmp_path: Path) -> None:
    """The annotated sample that the README's run command uses is valid as shipped."""
    result = imserver("check-config", cwd=REPO)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.startswith("etc/imserver.toml: OK")


def test_check_config_unknown_plugin(tmp_path: Path) -> None:
    config = write_config(tmp_path, server={"plugins": ["disco", "no-such-feature"]})
    result = imserver("check-config", "-c", str(config), cwd=tmp_path)
    assert_one_line_error(result, "server.plugins", "no-such-feature")
