"""Converse.js in Chromium against imserver, over WebSocket and over BOSH.

The page is a real web client (converse.js 14 from npm, loaded as an ES
module from another origin, so BOSH needs CORS); the other party is slixmpp
over TCP. The test asserts on what the page shows: the roster, a contact's
presence, the messages both ways, and the page coming back after the server
dropped every connection (killed and started again on the same ports).

Chromium is Debian's (/usr/bin/chromium), driven by Python Playwright; never
`playwright install`. A failing test leaves a screenshot and the page's
console log in its tmp_path and names them in the failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.im import User, online, subscribe
from support.server import ServerProcess
from support.slixpeer import SlixPeer
from support.tools import needs

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CONVERSE = Path(
    os.environ.get(
        "IMSERVER_CONVERSE_DIST",
        Path.home() / ".cache/imserver-npm/node_modules/converse.js/dist",
    )
)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds the page gets for each step (login, a message, a reconnect).
STEP_MS = 30_000
playwright_api.expect.set_options(timeout=STEP_MS)


pytestmark = [
    needs("chromium"),
    # converse.js is not a program, so the same rule as needs(): skipped on a
    # developer's machine without it, a failure under CI (.ci/run installs it).
    pytest.mark.skipif(
        not (CONVERSE / "converse.js").exists() and os.environ.get("CI") != "true",
        reason=f"converse.js 14 is not installed at {CONVERSE} (npm; see .ci/run)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("browser"),
        http={"port": 0, "cors_origins": ["*"]},
        c2s={"allow_plaintext_on_loopback": True},
    )
    try:
        yield process.start()
    finally:
        process.kill()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A static web server on another origin than imserver's: the page and converse's dist."""
    root = tmp_path_factory.mktemp("site")
    (root / "dist").symlink_to(CONVERSE)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def page_html(connection: str, jid: str, password: str) -> str:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>imserver + converse.js</title>
<link rel="stylesheet" href="/dist/converse.min.css"></head>
<body><script type="module">
import converse from "/dist/converse.js";
converse.initialize({{
  {connection},
  discover_connection_methods: false,
  assets_path: "/dist/",
  auto_login: true, jid: "{jid}", password: "{password}",
  auto_reconnect: true,
  view_mode: "fullscreen", loglevel: "info",
  play_sounds: false, show_desktop_notifications: false,
}});
</script></body></html>
"""


def mutual_contacts(server: ServerProcess, make_client, alice, bob) -> None:
    """Alice and Bob in each other's rosters, subscribed both ways (set up over TCP)."""
    a: User = online(make_client, alice, "setup", target=server)
    b: User = online(make_client, bob, "setup", target=server)
    a.set_item(bob[0], name="Bob TCP")
    subscribe(a, b)
    subscribe(b, a)
    a.client.close()
    b.client.close()


@pytest.mark.parametrize("transport", ["websocket", "bosh"])
def test_converse_chats_with_slixmpp_and_comes_back_after_a_drop(
    transport: str, server: ServerProcess, site, browser, make_client, tmp_path: Path
) -> None:
    base_url, root = site
    alice, bob = server.new_account("alice"), server.new_account("bob")
    mutual_contacts(server, make_client, alice, bob)
    if transport == "websocket":
        connection = f'websocket_url: "ws://127.0.0.1:{server.http_port}/xmpp-websocket"'
    else:
        connection = f'bosh_service_url: "http://127.0.0.1:{server.http_port}/http-bind"'
    (root / f"{transport}.html").write_text(page_html(connection, *alice), encoding="utf-8")

    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(STEP_MS)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    peer = SlixPeer(server, *bob).connect()
    try:
        page.goto(f"{base_url}/{transport}.html")
        # Converse lists a contact once per group it shows ("New messages" too).
        contact = page.locator(f"a.open-chat[data-jid='{bob[0]}']").first
        # The roster was fetched: Bob is listed under the name Alice gave him.
        playwright_api.expect(contact).to_contain_text("Bob TCP")

        # Presence both ways: the page's initial presence reaches slixmpp...
        peer.wait_presence(lambda p: p[0].startswith(alice[0] + "/") and p[1] == "available")
        # ...and slixmpp's "dnd" shows on the page.
        peer.send_presence(show="dnd", status="busy with TCP")
        busy = page.locator(f"li.current-xmpp-contact[data-status='dnd'] a[data-jid='{bob[0]}']")
        playwright_api.expect(busy).to_be_visible()

        # Messages both ways.
        peer.send_message(alice[0], "hello from slixmpp")
        unread = page.locator(f"a.open-chat.unread-msgs[data-jid='{bob[0]}']").first
        playwright_api.expect(unread).to_be_visible()
        unread.click()
        playwright_api.expect(page.locator(".chat-msg__text").last).to_have_text(
            "hello from slixmpp"
        )
        textarea = page.locator("textarea.chat-textarea")
        textarea.fill("hello from converse")
        textarea.press("Enter")
        sender = peer.wait_message("hello from converse")
        assert sender.startswith(alice[0] + "/")

        # The server drops every socket (killed), then comes back on the same ports.
        peer.close()
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        server.start()
        peer = SlixPeer(server, *bob).connect()
        peer.wait_presence(
            lambda p: p[0].startswith(alice[0] + "/") and p[1] == "available", timeout=60
        )
        peer.send_message(alice[0], "after the drop")
        playwright_api.expect(page.locator(".chat-msg__text").last).to_have_text("after the drop")
    except BaseException:
        shot = tmp_path / f"converse-{transport}.png"
        page.screenshot(path=str(shot), full_page=True)
        log = tmp_path / f"converse-{transport}-console.txt"
        log.write_text("\n".join(console), encoding="utf-8")
        print(f"screenshot: {shot}\nconsole: {log}\nserver log tail:\n{server.log_text()[-3000:]}")
        raise
    finally:
        peer.close()
        context.close()
