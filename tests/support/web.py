"""Blocking web-transport clients for tests: RFC 7395 WebSocket and XEP-0206 BOSH.

They share no code with the server: the `websockets` library, http.client and
ElementTree. Each message or body child is parsed on its own with
ElementTree, so an element that leaned on a namespace it did not declare
shows up as a wrong tag name in the test, not as a pass.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import random
import socket
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from support.client import (
    FEATURES,
    IQ,
    NS_BIND,
    NS_CLIENT,
    NS_SASL,
    NS_STREAMS,
    STREAM_ERROR,
    clark,
    stream_error_condition,
    to_text,
)
from support.sockets import nodelay_soon

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
OPEN = clark(NS_FRAMING, "open")
CLOSE = clark(NS_FRAMING, "close")
BODY = clark(NS_HTTPBIND, "body")

Matcher = str | Callable[[ET.Element], bool]


def _matches(element: ET.Element, matcher: Matcher) -> bool:
    return element.tag == matcher if isinstance(matcher, str) else matcher(element)


def plain(jid: str, password: str) -> str:
    user = jid.split("@")[0]
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def bind_iq(resource: str) -> str:
    return (
        f"<iq xmlns='jabber:client' type='set' id='bind'><bind xmlns='{NS_BIND}'>"
        f"<resource>{resource}</resource></bind></iq>"
    )


class WSClient:
    """One RFC 7395 connection; expect() takes the first queued element that matches."""

    def __init__(self, port: int, *, domain: str = "localhost", timeout: float = 5.0) -> None:
        self.url = f"ws://127.0.0.1:{port}/xmpp-websocket"
        self.domain = domain
        self.timeout = timeout
        self.ws: ClientConnection | None = None
        self.queue: deque[ET.Element] = deque()
        self.raw: list[str] = []
        self.closed = False
        self.jid: str | None = None

    def connect(self, subprotocols: tuple[str, ...] = ("xmpp",)) -> WSClient:
        self.ws = connect(
            self.url,
            subprotocols=list(subprotocols) or None,
            open_timeout=self.timeout,
            max_size=None,
            legacy=True,
        )
        return self

    def send(self, text: str) -> None:
        self.ws.send(text)

    def receive(self, timeout: float) -> ET.Element | None:
        """The next message as an element (None once the connection is closed)."""
        if self.closed:
            return None
        try:
            message = self.ws.recv(timeout=timeout)
        except ConnectionClosed:
            self.closed = True
            return None
        self.raw.append(message)
        return ET.fromstring(message)

    def expect(self, matcher: Matcher, timeout: float | None = None) -> ET.Element:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for element in self.queue:
                if _matches(element, matcher):
                    self.queue.remove(element)
                    return element
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {matcher!r} within the timeout; got {self.raw[-5:]}")
            try:
                element = self.receive(left)
            except TimeoutError:
                continue
            if element is None:
                raise AssertionError(f"closed while waiting for {matcher!r}; got {self.raw[-5:]}")
            self.queue.append(element)

    def expect_stream_error(self, condition: str, timeout: float | None = None) -> None:
        error = self.expect(STREAM_ERROR, timeout)
        assert stream_error_condition(error) == condition, to_text(error)
        self.expect(CLOSE, timeout)

    def wait_closed(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.closed:
            if time.monotonic() > deadline:
                raise AssertionError("the server did not close the WebSocket")
            with contextlib.suppress(TimeoutError):
                self.receive(max(0.01, deadline - time.monotonic()))

    def open(self) -> ET.Element:
        self.send(f"<open xmlns='{NS_FRAMING}' to='{self.domain}' version='1.0'/>")
        opened = self.expect(OPEN)
        assert opened.get("from") == self.domain and opened.get("version") == "1.0"
        return self.expect(FEATURES)

    def login(self, jid: str, password: str, resource: str = "web") -> str:
        features = self.open()
        mechanisms = [m.text for m in features.iter(clark(NS_SASL, "mechanism"))]
        assert "PLAIN" in mechanisms, to_text(features)
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{plain(jid, password)}</auth>")
        self.expect(clark(NS_SASL, "success"))
        features = self.open()
        assert features.find(clark(NS_BIND, "bind")) is not None, to_text(features)
        self.send(bind_iq(resource))
        result = self.expect(IQ)
        assert result.get("type") == "result", to_text(result)
        self.jid = result.find(f"{clark(NS_BIND, 'bind')}/{clark(NS_BIND, 'jid')}").text
        return self.jid

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


class BoshClient:
    """One BOSH session, one HTTP connection per request in flight (as browsers do).

    request() sends a body and waits for its answer; send() does not wait, so a
    test can keep a request held while it sends another.
    """

    def __init__(self, port: int, *, domain: str = "localhost", timeout: float = 10.0) -> None:
        self.port = port
        self.domain = domain
        self.timeout = timeout
        self.rid = random.randint(1_000_000, 2**40)
        self.sid: str | None = None
        self.attributes: dict[str, str] = {}
        self.queue: deque[ET.Element] = deque()
        self.terminated: ET.Element | None = None
        self.pool = ThreadPoolExecutor(4)
        self._ids = itertools.count()

    def post(self, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout + 70)
        try:
            connection.request(
                "POST",
                "/http-bind",
                body=data,
                headers={"Content-Type": "text/xml; charset=utf-8", **(headers or {})},
            )
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def body(self, payload: str = "", rid: int | None = None, **attributes: str) -> bytes:
        if rid is None:
            self.rid += 1
            rid = self.rid
        attributes.setdefault("rid", str(rid))
        if self.sid is not None:
            attributes.setdefault("sid", self.sid)
        text = " ".join(f"{k.replace('__', ':')}='{v}'" for k, v in attributes.items())
        return (
            f"<body xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}' {text}>{payload}</body>".encode()
        )

    def send(self, payload: str = "", **attributes: Any) -> Future:
        data = self.body(payload, **attributes)
        return self.pool.submit(self._exchange, data)

    def request(self, payload: str = "", **attributes: Any) -> ET.Element:
        return self.send(payload, **attributes).result(self.timeout + 70)

    def _exchange(self, data: bytes) -> ET.Element:
        status, _headers, answer = self.post(data)
        assert status == 200, (status, answer)
        body = ET.fromstring(answer)
        assert body.tag == BODY, answer
        if body.get("type") == "terminate":
            self.terminated = body
        self.queue.extend(body)
        return body

    def start(self, wait: int = 2, hold: int = 1, **attributes: Any) -> ET.Element:
        """Session creation: the answer carries sid and the stream features."""
        self.rid += 1
        body = self._exchange(
            self.body(
                rid=self.rid,
                to=self.domain,
                wait=str(wait),
                hold=str(hold),
                ver="1.11",
                xmpp__version="1.0",
                **attributes,
            )
        )
        assert body.get("type") != "terminate", ET.tostring(body)
        self.sid = body.get("sid")
        self.attributes = dict(body.attrib)
        return body

    def expect(self, matcher: Matcher, timeout: float | None = None) -> ET.Element:
        """The first queued element that matches, polling (empty requests) until it comes."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for element in self.queue:
                if _matches(element, matcher):
                    self.queue.remove(element)
                    return element
            if time.monotonic() > deadline or self.terminated is not None:
                raise AssertionError(
                    f"no {matcher!r}; queued {[ET.tostring(e) for e in self.queue]}"
                    f" terminated={self.terminated is not None and ET.tostring(self.terminated)}"
                )
            self.request()

    def login(self, jid: str, password: str, resource: str = "bosh") -> str:
        self.start()
        self.expect(FEATURES)
        self.request(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{plain(jid, password)}</auth>")
        self.expect(clark(NS_SASL, "success"))
        self.request(to=self.domain, xmpp__restart="true")
        features = self.expect(FEATURES)
        assert features.find(clark(NS_BIND, "bind")) is not None
        self.request(bind_iq(resource))
        result = self.expect(IQ)
        assert result.get("type") == "result", ET.tostring(result)
        return result.find(f"{clark(NS_BIND, 'bind')}/{clark(NS_BIND, 'jid')}").text

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def http_streams_turn_nagle_off(pid: int, port: int) -> None:
    """A WebSocket after its upgrade and a BOSH request's connection have Nagle off."""
    web = WSClient(port).connect()
    try:
        client_port = web.ws.socket.getsockname()[1]
        assert nodelay_soon(pid, port, client_port) == 1, "WebSocket"
    finally:
        web.close()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        body = b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='nowhere.invalid'/>"
        sock.sendall(
            b"POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        sock.recv(4096)  # answered: the request has been handled
        assert nodelay_soon(pid, port, sock.getsockname()[1]) == 1, "BOSH"


__all__ = [
    "BODY",
    "CLOSE",
    "NS_CLIENT",
    "NS_STREAMS",
    "OPEN",
    "BoshClient",
    "WSClient",
    "http_streams_turn_nagle_off",
]
