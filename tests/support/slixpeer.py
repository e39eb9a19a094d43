"""A slixmpp client on its own thread and event loop, driven by blocking calls.

Browser tests drive the page synchronously (Playwright's sync API owns the
main thread), so the independent XMPP peer runs beside it: every call here
hands work to the peer's loop and waits for it with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from slixmpp import ClientXMPP

STEP = 15.0


class SlixPeer:
    def __init__(self, server: Any, jid: str, password: str, resource: str = "slixmpp") -> None:
        self.server = server
        self.jid = f"{jid}/{resource}"
        self.password = password
        self.messages: queue.Queue[tuple[str, str]] = queue.Queue()
        self.presences: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client: ClientXMPP | None = None

    def _run(self, coroutine: Any, timeout: float = STEP) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def connect(self) -> SlixPeer:
        """Log in over TCP (STARTTLS, SCRAM), fetch the roster, send initial presence."""

        async def start() -> None:
            client = ClientXMPP(self.jid, self.password)
            client.enable_direct_tls = False
            client.ssl_context.check_hostname = False
            client.ssl_context.verify_mode = ssl.CERT_NONE  # the self-signed test certificate
            started = asyncio.get_running_loop().create_future()
            client.add_event_handler(
                "session_start", lambda _: started.done() or started.set_result(True)
            )
            client.add_event_handler(
                "message",
                lambda m: self.messages.put((str(m["from"]), str(m["body"]))),
            )
            client.add_event_handler(
                "presence",
                lambda p: self.presences.put((str(p["from"]), str(p["type"]), str(p["status"]))),
            )
            client.connect(self.server.interface, self.server.port)
            await asyncio.wait_for(started, STEP)
            await client.get_roster()
            client.send_presence()
            self.client = client

        self._run(start(), STEP + 5)
        return self

    def send_message(self, to: str, body: str) -> None:
        self.loop.call_soon_threadsafe(
            lambda: self.client.send_message(mto=to, mbody=body, mtype="chat")
        )

    def send_presence(self, show: str | None = None, status: str | None = None) -> None:
        self.loop.call_soon_threadsafe(
            lambda: self.client.send_presence(pshow=show, pstatus=status)
        )

    def wait_message(self, body: str, timeout: float = STEP) -> str:
        """The sender of the first message with C{body} (others are skipped)."""
        return _wait(self.messages, lambda item: item[1] == body, timeout)[0]

    def wait_presence(self, match: Callable[[tuple[str, str, str]], bool], timeout: float = STEP):
        """The first presence (from, type, status) that C{match}es."""
        return _wait(self.presences, match, timeout)

    def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None

            async def stop() -> None:
                client.disconnect(wait=1)
                try:
                    await asyncio.wait_for(client.disconnected, 5)
                except TimeoutError:
                    client.abort()

            with contextlib.suppress(Exception):  # the server may already be gone
                self._run(stop(), 10)

        async def cancel_the_rest() -> None:
            # slixmpp leaves tasks behind; finished here, they cannot fail later on a closed loop.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._run(cancel_the_rest(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _wait(items: queue.Queue, match: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"nothing matching within {timeout} s; saw {seen}")
        try:
            item = items.get(timeout=left)
        except queue.Empty:
            continue
        if match(item):
            return item
        seen.append(item)
