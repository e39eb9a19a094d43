"""The three ways to run the server: `imserver run`, `twistd imserver` and the embedding example.

Each starts on an empty data directory (the certificate and the database
are made on first start), serves a real client, and on SIGTERM closes every
stream with <system-shutdown/> and exits 0.
"""

from __future__ import annotations

import signal
import stat
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import TWISTD, Daemon, child_env, imserver, password_file, write_config
from support.client import NS_SASL, NS_TLS, RawClient, clark, to_text
from support.server import ServerProcess, free_port
from support.web import WSClient, http_streams_turn_nagle_off

REPO = Path(__file__).resolve().parent.parent
PING = "<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
#: Attempts when a port picked as free was taken before the server bound it.
ATTEMPTS = 3


def assert_fresh_files(data_dir: Path) -> None:
    """What the first start makes: a self-signed certificate, its private key, the database."""
    assert (data_dir / "imserver.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    key = data_dir / "imserver.key"
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (data_dir / "imserver.sqlite").stat().st_size > 0


def add_account(config: Path, tmp_path: Path) -> tuple[str, str]:
    jid, password = "alice@localhost", "alice's password"
    result = imserver(
        "adduser",
        jid,
        "--password-file",
        str(password_file(tmp_path, password)),
        "-c",
        str(config),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return jid, password


def logged_in(port: int, jid: str, password: str) -> RawClient:
    """STARTTLS (required: the server must offer it) and SCRAM-SHA-256, then a ping."""
    client = RawClient(port, domain="localhost").connect()
    features = client.open_stream()
    starttls = features.find(clark(NS_TLS, "starttls"))
    assert starttls is not None and starttls.find(clark(NS_TLS, "required")) is not None
    client.close()
    client = RawClient(port, domain="localhost").connect()
    client.login(jid, password, resource="service-test", mechanism="SCRAM-SHA-256")
    assert client.secure
    answer = client.iq(PING)
    assert answer.get("type") == "result", to_text(answer)
    return client


def shut_down(
    terminate: Callable[[], None], wait: Callable[[], int], clients: list, status: int = 0
) -> None:
    """SIGTERM: every client, logged in or not, gets system-shutdown and </stream:stream>."""
    terminate()
    for client in clients:
        client.expect_stream_error("system-shutdown", timeout=10)
        client.close()  # as a client does once the server has ended the stream
    assert wait() == status


def shut_down_twistd(daemon: Daemon, clients: list) -> None:
    """As shut_down; twistd, once stopped cleanly, re-raises the signal that stopped it.

    That is Twisted's own choice (twisted.application.app._exitWithSignal), so a
    supervisor sees "killed by SIGTERM"; the log proves the shutdown was clean.
    """
    shut_down(daemon.terminate, daemon.wait, clients, status=-signal.SIGTERM)
    log = daemon.log()
    assert "Server Shut Down." in log, log
    assert "Traceback" not in log and "Unhandled" not in log, log


@dataclass
class Launch:
    """One started process and what the test needs to reach it."""

    daemon: Daemon
    config: Path
    port: int
    web_port: int = 0


def launch(tmp_path: Path, argv: Callable[[Path], list[str]], web: bool = False) -> Launch:
    """Write a config with free ports and start C{argv(config)}; new ports if one was taken."""
    for attempt in range(ATTEMPTS):
        port, web_port = free_port(), free_port() if web else 0
        config = write_config(tmp_path, c2s={"port": port})
        env = child_env(IMSERVER_CONFIG=str(config), WEB_PORT=str(web_port))
        daemon = Daemon(argv(config), cwd=tmp_path, env=env)
        try:
            daemon.start([p for p in (port, web_port) if p])
        except AssertionError:
            log = daemon.log()
            daemon.kill()
            if "already in use" not in log or attempt == ATTEMPTS - 1:
                raise
            daemon.log_path.unlink()
            continue
        return Launch(daemon, config, port, web_port)
    raise AssertionError("unreachable")


# -- imserver run -----------------------------------------------------------------------------


def test_imserver_run(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "run")
    assert not server.data_dir.exists()
    server.start()
    try:
        assert_fresh_files(server.data_dir)
        jid, password = server.new_account("alice")
        client = logged_in(server.port, jid, password)
        waiting = RawClient.for_server(server).connect()  # not logged in yet
        waiting.open_stream()
        shut_down(
            lambda: server.process.send_signal(signal.SIGTERM),
            lambda: server.process.wait(15),
            [client, waiting],
        )
        log = server.log_text()
        assert "Traceback" not in log and "Unhandled" not in log, log
    finally:
        server.kill()


# -- twistd -----------------------------------------------------------------------------------


def test_twistd(tmp_path: Path) -> None:
    assert not (tmp_path / "data").exists()
    started = launch(
        tmp_path, lambda config: [*TWISTD, "-n", "--pidfile", "", "imserver", "-c", str(config)]
    )
    daemon = started.daemon
    try:
        assert_fresh_files(tmp_path / "data")
        assert "twistd" in daemon.log()
        jid, password = add_account(started.config, tmp_path)
        client = logged_in(started.port, jid, password)
        shut_down_twistd(daemon, [client])
    finally:
        daemon.kill()


@pytest.mark.parametrize("how", ["plugin", "tac"])
def test_twistd_bad_config_is_one_line(tmp_path: Path, how: str) -> None:
    config = write_config(tmp_path, limits={"max_depth": 0})
    if how == "plugin":
        argv = [*TWISTD, "-n", "--pidfile", "", "imserver", "-c", str(config)]
    else:
        argv = [*TWISTD, "-n", "--pidfile", "", "-y", str(REPO / "etc" / "embedded.tac")]
    daemon = Daemon(argv, tmp_path, child_env(IMSERVER_CONFIG=str(config), WEB_PORT="0"))
    with pytest.raises(AssertionError, match="exited early"):
        daemon.start([])
    assert daemon.wait() != 0
    assert daemon.log().strip() == "imserver: limits.max_depth: must be greater than 0"
    assert not (tmp_path / "data").exists()


# -- the embedding example ----------------------------------------------------------------------


def page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def page_becomes(port: int, expected: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while (text := page(port)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return text


def test_embedded_tac(tmp_path: Path) -> None:
    """etc/embedded.tac: the XMPP server and a web site in one process, on one reactor."""
    tac = REPO / "etc" / "embedded.tac"
    started = launch(tmp_path, lambda _: [*TWISTD, "-n", "--pidfile", "", "-y", str(tac)], web=True)
    daemon = started.daemon
    try:
        assert_fresh_files(tmp_path / "data")  # the config from IMSERVER_CONFIG was used
        assert page(started.web_port) == "sessions: 0\n"
        jid, password = add_account(started.config, tmp_path)
        client = logged_in(started.port, jid, password)
        # The page reads the XMPP server's live session registry: same process, same reactor.
        assert page(started.web_port) == "sessions: 1\n"
        client.close()
        assert page_becomes(started.web_port, "sessions: 0\n") == "sessions: 0\n"
        # The host's site carries the XMPP web endpoints too. Plain HTTP with no
        # TLS proxy configured is not secure: no SASL is offered over it.
        web = WSClient(started.web_port).connect()
        features = web.open()
        assert features.find(clark(NS_SASL, "mechanisms")) is None, to_text(features)
        web.close()
        # ...with Nagle off on the host's own HTTP channels once they carry XMPP.
        http_streams_turn_nagle_off(daemon.process.pid, started.web_port)
        other = logged_in(started.port, jid, password)
        shut_down_twistd(daemon, [other])
    finally:
        daemon.kill()
