"""Running imserver's commands as a user would: the console script, twistd, a terminal.

The console script is run as C{python -m imserver}, twistd as
C{python -c "twisted.scripts.twistd.run()"} (C{python -m twisted} is the
newer C{twist} runner, which has no C{-n}), both with this interpreter so
they see the checkout under test.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.server import READY_MARKER, free_port, toml_document

IMSERVER = [sys.executable, "-m", "imserver"]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write_config(directory: Path, **tables: dict[str, Any]) -> Path:
    """A config in C{directory} with free ports, data under C{directory}/data; tables override."""
    config: dict[str, dict[str, Any]] = {
        "server": {"hosts": ["localhost"], "data_dir": "data"},
        "c2s": {"interface": "127.0.0.1", "port": free_port(), "direct_tls_port": 0},
        "limits": {"auth_failure_delay": 0.05, "auth_failure_max_delay": 0.4},
    }
    for name, values in tables.items():
        config.setdefault(name, {}).update(values)
    path = directory / "imserver.toml"
    path.write_text(toml_document(config), encoding="utf-8")
    return path


def imserver(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the console script with stdin closed; output captured as text."""
    return subprocess.run(
        [*IMSERVER, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )


def password_file(directory: Path, password: str, name: str = "password") -> Path:
    """A 0600 file holding C{password} (what an operator would pass to --password-file)."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    return path


@dataclass
class TerminalRun:
    returncode: int
    stdout: str
    stderr: str
    #: Everything the program wrote to its terminal (the prompts).
    terminal: str


def imserver_in_terminal(
    *args: str, cwd: Path, answers: list[str], timeout: float = 30
) -> TerminalRun:
    """Run the console script with a pseudo-terminal as its controlling terminal.

    Each answer is typed after the next prompt (a line ending in ': ') shows
    up, so the program reads it through getpass exactly as from a person.
    stdout and stderr stay pipes, apart from the terminal.
    """
    master, slave = os.openpty()

    def own_terminal() -> None:  # runs in the child, before exec
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [*IMSERVER, *args],
        cwd=cwd,
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        preexec_fn=own_terminal,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        for answer in answers:
            prompts = seen.count(b": ")
            while seen.count(b": ") == prompts:
                chunk = _read(master, deadline)
                if not chunk:
                    raise AssertionError(f"no prompt for {answer!r}; terminal: {seen!r}")
                seen += chunk
            os.write(master, answer.encode() + b"\n")
        stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1))
        while chunk := _read(master, time.monotonic() + 0.1):
            seen += chunk
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return TerminalRun(
        process.returncode, stdout.decode(), stderr.decode(), seen.decode(errors="replace")
    )


def _read(fd: int, deadline: float) -> bytes:
    """Up to 1 KiB from C{fd} before C{deadline}; b'' at the deadline or at end of file."""
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([fd], [], [], left)[0]:
        return b""
    try:
        return os.read(fd, 1024)
    except OSError:  # EIO: the child closed its side of the terminal
        return b""


class Daemon:
    """A long-running server command (imserver run, twistd) with its output in a log file."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = env or child_env()
        self.log_path = cwd / "daemon.log"
        self.process: subprocess.Popen | None = None

    def start(self, ports: list[int], timeout: float = 20) -> Daemon:
        """Start and wait until the store is open and every port in C{ports} accepts."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.argv} exited early:\n{self.log()}")
            if READY_MARKER in self.log() and all(_accepts(p) for p in ports):
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"{self.argv} not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 15) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.argv} still running after {timeout} s") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
