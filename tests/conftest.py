"""Fixtures for wire tests: real server processes, accounts and raw clients.

Each xdist worker starts its own servers on kernel-chosen ports, so workers
never share a port or a database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.client import RawClient
from support.im import AccountPool
from support.server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with the default test config, shared by the tests of a module."""
    process = ServerProcess(tmp_path_factory.mktemp("server"))
    try:
        process.start()
        yield process
    finally:
        process.kill()


@pytest.fixture(scope="module")
def pool(server: ServerProcess) -> AccountPool:
    """Fresh accounts on the module's server, made in batches (one CLI process each)."""
    return AccountPool(server)


@pytest.fixture
def make_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """A factory for servers with config overrides (see ServerProcess); all stopped at teardown.

    make_server(limits={"max_stanza_size": 16384}, c2s={...}, server={...}, plugin={...})
    returns a started server; pass start=False to get it unstarted.
    """
    started: list[ServerProcess] = []

    def make(*, start: bool = True, **overrides: Any) -> ServerProcess:
        process = ServerProcess(tmp_path_factory.mktemp("server"), **overrides)
        started.append(process)
        if start:
            process.start()
        return process

    try:
        yield make
    finally:
        for process in started:
            process.kill()


@pytest.fixture
def account(server: ServerProcess) -> tuple[str, str]:
    """A fresh, unique account on the module's C{server}: (bare JID, password)."""
    return server.new_account()


@pytest.fixture
def make_client(request: pytest.FixtureRequest) -> Iterator[Callable[..., RawClient]]:
    """A factory of connected RawClients (to the module's C{server} unless given one).

    Every client it made is closed at teardown, whatever the test did.
    """
    clients: list[RawClient] = []

    def make(target: ServerProcess | None = None, direct_tls: bool = False) -> RawClient:
        client = RawClient.for_server(target or request.getfixturevalue("server"))
        clients.append(client)
        return client.connect(direct_tls=direct_tls)

    try:
        yield make
    finally:
        for client in clients:
            client.close()
