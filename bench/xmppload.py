#!/usr/bin/env python3
"""Load scenarios for any XMPP server on loopback: logins, messages, presence, memory, roster.

Each scenario prints one JSON line and one human-readable row. Every record
has the server's CPU seconds per 1000 operations (from /proc, so any server is
measured alike) beside the generator's own CPU use: a generator that is
nearly idle while the server is busy shows that the server is the bottleneck.

Run `xmppload.py setup` once per server (accounts, subscriptions, the big
roster), then any scenarios, e.g.:

    bench/xmppload.py --port 5222 --domain localhost setup login messages
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import ipaddress
import json
import os
import re
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procstat  # noqa: E402
from xmppclient import (  # noqa: E402
    Conn,
    Target,
    XMPPError,
    attribute,
    connect,
    load_scram_cache,
    login,
    offered_mechanisms,
    register,
    save_scram_cache,
    text_of,
)

SCENARIOS = (
    "login",
    "messages",
    "fanout",
    "idle",
    "roster",
    "churn",
    "pep",
    "archive",
    "sm",
    "fast",
)
#: (mechanism, record name) measured by the login scenario, when the server offers it.
#: Prosody 0.12 has no SCRAM-SHA-256 for stored credentials, so it has no login-scram256.
LOGIN_MECHANISMS = (
    ("SCRAM-SHA-1", "login-scram"),
    ("SCRAM-SHA-256", "login-scram256"),
    ("PLAIN", "login-plain"),
)


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; --quick and options such as --pairs 10 override these."""

    login_clients: int = 200
    login_concurrency: int = 20
    pairs: int = 50
    messages: int = 2000
    message_window: int = 20
    contacts: int = 100
    changes: int = 1000
    presence_window: int = 10
    sessions: int = 2000
    roster_items: int = 500
    roster_gets: int = 200
    roster_logins: int = 20
    pep_publishes: int = 300
    pep_window: int = 5
    #: Messages in the one archive that the archive scenario queries, and queries made.
    archive_size: int = 100_000
    archive_queries: int = 200


QUICK = Sizes(
    login_clients=40,
    login_concurrency=10,
    pairs=10,
    messages=200,
    contacts=20,
    changes=100,
    sessions=200,
    roster_items=100,
    roster_gets=50,
    roster_logins=5,
    pep_publishes=50,
    archive_size=2000,
    archive_queries=40,
)


@dataclass
class Context:
    target: Target
    label: str
    sizes: Sizes
    mechanism: str
    server_pid: int | None

    def users(self, count: int, prefix: str = "u") -> list[str]:
        return [f"{prefix}{i}" for i in range(count)]

    def pool_size(self) -> int:
        s = self.sizes
        return max(s.login_clients, 2 * s.pairs, s.sessions)


# -- measuring -------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    elapsed: float
    client_cpu: float
    server_cpu: float | None
    #: CPU seconds that neither the server nor the generator used: noise from other work.
    other_cpu: float


class Meter:
    """Wall time, generator CPU, server CPU and everyone else's CPU over one measured phase."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def start(self) -> None:
        self._server = procstat.cpu_seconds(self.pid) if self.pid else None
        self._machine = procstat.machine_busy_seconds()
        self._client = time.process_time()
        self._wall = time.perf_counter()

    def stop(self) -> Measurement:
        wall = time.perf_counter() - self._wall
        client = time.process_time() - self._client
        machine = procstat.machine_busy_seconds() - self._machine
        server = None
        if self.pid and self._server is not None:
            server = procstat.cpu_seconds(self.pid) - self._server
        other = max(0.0, machine - client - (server or 0.0))
        return Measurement(wall, client, server, other)


def percentile(values: list[int], fraction: float) -> float:
    """Nearest-rank percentile of nanosecond values, in milliseconds."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index] / 1e6


def report(
    ctx: Context,
    scenario: str,
    ops: int,
    unit: str,
    m: Measurement,
    latencies: list[int] | None = None,
    **extra: object,
) -> dict:
    """Print one JSON line and one human row; return the record."""
    record: dict[str, object] = {
        "scenario": scenario,
        "server": ctx.label,
        "ops": ops,
        "unit": unit,
        "elapsed_s": round(m.elapsed, 3),
        "rate": round(ops / m.elapsed, 1) if m.elapsed else None,
        "client_cpu_s": round(m.client_cpu, 3),
        "client_cpu_util": round(m.client_cpu / m.elapsed, 3) if m.elapsed else None,
        "server_cpu_s": None if m.server_cpu is None else round(m.server_cpu, 3),
        "server_cpu_util": (
            None if m.server_cpu is None or not m.elapsed else round(m.server_cpu / m.elapsed, 3)
        ),
        "server_cpu_per_1000": (
            None if m.server_cpu is None or not ops else round(m.server_cpu * 1000 / ops, 4)
        ),
        "other_cpu_util": round(m.other_cpu / m.elapsed, 3) if m.elapsed else None,
    }
    if latencies:
        record["p50_ms"] = round(percentile(latencies, 0.50), 3)
        record["p99_ms"] = round(percentile(latencies, 0.99), 3)
    record.update(extra)
    emit(record)
    return record


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
    print(human(record), flush=True)


def human(r: dict) -> str:
    parts = [f"  {r['server']:<9} {r['scenario']:<13}"]
    if r.get("rate") is not None:
        parts.append(f"{r['rate']:>9.1f} {r['unit']:<12}")
    if "p50_ms" in r:
        parts.append(f"p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms")
    if r.get("server_cpu_per_1000") is not None:
        parts.append(
            f"server {r['server_cpu_per_1000']:.3f} CPU-s/1000 ({r['server_cpu_util']:.0%} busy)"
        )
    if r.get("client_cpu_util") is not None:
        parts.append(f"generator {r['client_cpu_util']:.0%} busy")
    if r.get("other_cpu_util"):
        parts.append(f"other processes {r['other_cpu_util']:.0%}")
    for key in ("loss", "duplicates", "kib_per_session", "items", "cpu_ratio_after_before"):
        if r.get(key) is not None:
            parts.append(f"{key}={r[key]}")
    return "  ".join(parts)


# -- connection helpers -------------------------------------------------------------


async def login_many(
    ctx: Context,
    users: Iterable[str],
    concurrency: int,
    mechanism: str | None = None,
    latencies: list[int] | None = None,
    roster: bool = False,
) -> list[Conn]:
    """Log users in, C{concurrency} at a time; each login's duration goes to C{latencies}."""
    conns: list[Conn] = []
    pending = iter(users)
    mech = mechanism or ctx.mechanism

    async def worker() -> None:
        for user in pending:
            started = time.perf_counter_ns()
            conns.append(await login(ctx.target, user, mech, roster=roster))
            if latencies is not None:
                latencies.append(time.perf_counter_ns() - started)

    try:
        await together(worker() for _ in range(concurrency))
    except BaseException:
        for conn in conns:
            conn.close()
        raise
    return conns


async def together(coroutines: Iterable[Awaitable[object]]) -> None:
    """Run coroutines concurrently; the first failure cancels the rest and is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            for coroutine in coroutines:
                group.create_task(coroutine)
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None


async def close_all(conns: list[Conn], timeout: float = 15.0) -> None:
    """Close every stream and wait until the server has dropped the sockets."""
    for conn in conns:
        conn.close()
    if conns:
        await asyncio.wait([conn.lost for conn in conns], timeout=timeout)


def discard(_: bytes) -> None:
    """A sink for connections whose input does not matter during a phase."""


async def await_ids(conn: Conn, ids: set[str], timeout: float = 60.0) -> None:
    """Wait for the answers to several pipelined iqs, in any order."""
    while ids:
        element = await conn.expect(lambda el: el.startswith(b"<iq"), timeout)
        iq_id = attribute(element, "id")
        if iq_id in ids:
            if attribute(element, "type") != "result":
                raise XMPPError(f"iq {iq_id} failed: {element[:300]!r}")
            ids.discard(iq_id)


_ITEM = re.compile(rb"<item\s[^>]*>")


def roster_items(result: bytes) -> dict[str, str]:
    """jid -> subscription of each <item/> in a roster result."""
    items = {}
    for match in _ITEM.finditer(result):
        jid = attribute(match.group(0), "jid")
        if jid:
            items[jid] = attribute(match.group(0), "subscription") or "none"
    return items


# -- stamped stanzas -----------------------------------------------------------------


class Flow:
    """One measured phase of stamped stanzas: their latencies and when all arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.delivered = 0
        self.latencies: list[int] = []
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def add(self, count: int) -> None:
        self.delivered += count
        if self.delivered >= self.expected and not self.done.done():
            self.done.set_result(None)

    async def wait(self, stall: float = 10.0) -> None:
        """Until everything arrived, or nothing more arrived for C{stall} seconds."""
        last = -1
        while not self.done.done() and self.delivered != last:
            last = self.delivered
            await asyncio.wait([self.done], timeout=stall)


class StampCounter:
    """A raw sink that finds 'marker + send time' in each read: counting, not parsing.

    Only the part up to the last complete end tag is scanned; the rest waits
    for the next read, so a stanza split across reads is counted once.
    """

    def __init__(self, end_tag: bytes, marker: bytes, after: Callable[[int], None]) -> None:
        self.end_tag = end_tag
        self.marker = marker
        self.after = after
        self.flow: Flow | None = None
        self.tail = b""

    def __call__(self, data: bytes) -> None:
        if self.tail:
            data = self.tail + data
        end = data.rfind(self.end_tag)
        if end < 0:
            self.tail = data
            return
        end += len(self.end_tag)
        self.tail = data[end:]
        now = time.perf_counter_ns()
        flow = self.flow
        if flow is None:
            return
        latencies = flow.latencies
        marker, skip = self.marker, len(self.marker)
        count = 0
        pos = data.find(marker, 0, end)
        while pos >= 0:
            stop = data.find(b"<", pos + skip)
            latencies.append(now - int(data[pos + skip : stop]))
            count += 1
            pos = data.find(marker, stop, end)
        if count:
            flow.add(count)
            self.after(count)


class Windowed:
    """A pipelining sender: C{pump} sends while fewer than C{window} are undelivered."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.total = self.sent = self.received = 0

    def start(self, total: int) -> None:
        self.total, self.sent, self.received = total, 0, 0
        self.pump()

    def delivered(self, count: int) -> None:
        self.received += count
        self.pump()

    def pump(self) -> None:
        raise NotImplementedError


class Pair(Windowed):
    """A sender pipelining stamped chats to its partner's bare JID, at most C{window} unread."""

    def __init__(self, sender: Conn, to: str, window: int) -> None:
        super().__init__(window)
        self.sender = sender
        self.prefix = f"<message type='chat' to='{to}'><body>T".encode()
        self.suffix = b"</body></message>"

    def pump(self) -> None:
        count = min(self.total - self.sent, self.window - (self.sent - self.received))
        if count > 0:
            stanza = self.prefix + str(time.perf_counter_ns()).encode() + self.suffix
            self.sender.send_many(stanza, count)
            self.sent += count


SM_REQUEST = b"<r xmlns='urn:xmpp:sm:3'/>"
_SM_REQUEST = re.compile(rb"<r\s+xmlns=['\"]urn:xmpp:sm:3['\"]\s*/>")
_EMPTY_STANZA = re.compile(rb"<(?:message|presence|iq)\b[^>]*/>")


class AckingPair(Pair):
    """A L{Pair} whose sender asks for an ack (XEP-0198 <r/>) after every C{every} chats."""

    def __init__(self, sender: Conn, to: str, window: int, every: int) -> None:
        super().__init__(sender, to, window)
        self.every = every
        self.since_request = 0

    def pump(self) -> None:
        count = min(self.total - self.sent, self.window - (self.sent - self.received))
        if count <= 0:
            return
        stanza = self.prefix + str(time.perf_counter_ns()).encode() + self.suffix
        chunks = []
        for _ in range(count):
            chunks.append(stanza)
            self.since_request += 1
            if self.since_request == self.every:
                chunks.append(SM_REQUEST)
                self.since_request = 0
        self.sender.send(b"".join(chunks))
        self.sent += count


class AckingSink:
    """A raw sink that counts the stanzas received and answers the server's <r/> (XEP-0198).

    Reads are cut after their last '>', so no tag is ever split between two scans.
    """

    def __init__(self, conn: Conn, inner: Callable[[bytes], None]) -> None:
        self.conn = conn
        self.inner = inner
        self.handled = 0
        self.carry = b""

    def __call__(self, data: bytes) -> None:
        self.inner(data)
        data = self.carry + data
        cut = data.rfind(b">") + 1
        scan, self.carry = data[:cut], data[cut:]
        self.handled += (
            scan.count(b"</message>")
            + scan.count(b"</presence>")
            + scan.count(b"</iq>")
            + len(_EMPTY_STANZA.findall(scan))
        )
        if _SM_REQUEST.search(scan):
            self.acknowledge()

    def acknowledge(self) -> None:
        h = self.handled % 2**32
        self.conn.send(f"<a xmlns='urn:xmpp:sm:3' h='{h}'/>".encode())


class Broadcaster(Windowed):
    """The fan-out user: stamped presence changes, at most C{window} not yet fully delivered."""

    def __init__(self, conn: Conn, fan: int, window: int) -> None:
        super().__init__(window)
        self.conn = conn
        self.fan = fan

    def pump(self) -> None:
        in_flight = -(-(self.sent * self.fan - self.received) // self.fan)
        count = min(self.total - self.sent, self.window - in_flight)
        if count > 0:
            stamp = str(time.perf_counter_ns()).encode()
            self.conn.send_many(b"<presence><status>T" + stamp + b"</status></presence>", count)
            self.sent += count


async def run_flow(
    counters: list[StampCounter],
    senders: list[Pair] | list[Broadcaster],
    per_sender: int,
    expected: int,
    meter: Meter,
) -> tuple[Flow, Measurement]:
    flow = Flow(expected)
    for counter in counters:
        counter.flow = flow
    meter.start()
    for sender in senders:
        sender.start(per_sender)
    await flow.wait()
    return flow, meter.stop()


# -- scenarios -------------------------------------------------------------------------


async def scenario_login(ctx: Context) -> list[dict]:
    """Full logins (connect to reflected initial presence), N at a time, per mechanism."""
    s = ctx.sizes
    users = ctx.users(s.login_clients)
    meter = Meter(ctx.server_pid)
    records = []
    offered = await offered_mechanisms(ctx.target)
    for mechanism, name in LOGIN_MECHANISMS:
        if mechanism not in offered:
            print(f"# {ctx.label} does not offer {mechanism}: no {name}", flush=True)
            continue
        await close_all(await login_many(ctx, users[:10], 5, mechanism))  # warm-up
        latencies: list[int] = []
        meter.start()
        conns = await login_many(ctx, users, s.login_concurrency, mechanism, latencies)
        m = meter.stop()
        await close_all(conns)
        records.append(report(ctx, name, len(users), "logins/s", m, latencies))
    return records


async def scenario_messages(
    ctx: Context, name: str = "messages", ack_every: int | None = None
) -> dict:
    """Pairs online; each sender pipelines chats to its partner's bare JID.

    With C{ack_every}, both sides enable XEP-0198 stream management: senders
    ask for an ack after every C{ack_every} chats, receivers answer the
    server's requests.
    """
    s = ctx.sizes
    users = ctx.users(2 * s.pairs)
    senders = await login_many(ctx, users[: s.pairs], s.login_concurrency)
    receivers = await login_many(ctx, users[s.pairs :], s.login_concurrency)
    if ack_every is not None:
        await together(conn.enable_sm() for conn in senders + receivers)
    pairs, counters = [], []
    sinks: list[AckingSink] = []
    for sender, receiver in zip(senders, receivers, strict=True):
        to = receiver.jid.split("/")[0]
        if ack_every is None:
            sender.set_sink(discard)
            pair = Pair(sender, to, s.message_window)
        else:
            sender.set_sink(AckingSink(sender, discard))
            pair = AckingPair(sender, to, s.message_window, ack_every)
        counter = StampCounter(b"</message>", b"<body>T", pair.delivered)
        if ack_every is None:
            receiver.set_sink(counter)
        else:
            sinks.append(AckingSink(receiver, counter))
            receiver.set_sink(sinks[-1])
        pairs.append(pair)
        counters.append(counter)
    meter = Meter(ctx.server_pid)
    warm = min(50, s.messages)
    await run_flow(counters, pairs, warm, warm * len(pairs), meter)
    total = s.messages * len(pairs)
    flow, m = await run_flow(counters, pairs, s.messages, total, meter)
    sent = sum(p.sent for p in pairs)
    if sinks:
        # Acknowledge everything before leaving, as a client would: otherwise the
        # server re-routes what is unacknowledged to offline storage.
        for sink in sinks:
            sink.acknowledge()
        await asyncio.sleep(0.5)
    await close_all(senders + receivers)
    return report(
        ctx,
        name,
        flow.delivered,
        "msgs/s",
        m,
        flow.latencies,
        loss=max(0, sent - flow.delivered),
        duplicates=max(0, flow.delivered - sent),
    )


NS_MAM = "urn:xmpp:mam:2"
FIRST_ID = re.compile(rb"<first[^>]*>([^<]+)</first>")


async def scenario_archive(ctx: Context) -> list[dict]:
    """With the server's message archive on (XEP-0313): the message rate, then query latency.

    1. The messages scenario, as is: what archiving costs the hot path.
    2. One fresh account receives C{archive_size} messages from another
       (pipelined as in the messages scenario), so its archive holds that many.
    3. That account pages back through its archive, 50 messages a page
       (RSM <before/>, as a client scrolling up does), C{archive_queries} times;
       each page's latency runs from sending the query to its iq result, after
       all 50 results arrived.
    """
    s = ctx.sizes
    records = [await scenario_messages(ctx, name="messages-archive")]
    stamp = f"{time.time_ns():x}"[-8:]
    owner, peer = f"arch{stamp}o", f"arch{stamp}p"
    for user in (owner, peer):
        await register(ctx.target, user)
    sender = await login(ctx.target, peer, ctx.mechanism)
    receiver = await login(ctx.target, owner, ctx.mechanism)
    sender.set_sink(discard)
    pair = Pair(sender, receiver.jid.split("/")[0], 10 * s.message_window)
    counter = StampCounter(b"</message>", b"<body>T", pair.delivered)
    receiver.set_sink(counter)
    meter = Meter(ctx.server_pid)
    flow, m = await run_flow([counter], [pair], s.archive_size, s.archive_size, meter)
    records.append(report(ctx, "archive-fill", flow.delivered, "msgs/s", m))
    await close_all([sender, receiver])

    reader = await login(ctx.target, owner, ctx.mechanism, presence=False)
    latencies: list[int] = []
    before = b"<before/>"
    short_pages = 0
    meter.start()
    for n in range(s.archive_queries):
        iq_id = f"mam{n}"
        started = time.perf_counter_ns()
        reader.send(
            f"<iq type='set' id='{iq_id}'><query xmlns='{NS_MAM}' queryid='{iq_id}'>"
            "<set xmlns='http://jabber.org/protocol/rsm'><max>50</max>".encode()
            + before
            + b"</set></query></iq>"
        )
        results = 0
        while True:
            element = await reader.next()
            if element.startswith(b"<message") and b"<result" in element:
                results += 1
            elif element.startswith(b"<iq") and f"id='{iq_id}'".encode() in element[:200]:
                break
        latencies.append(time.perf_counter_ns() - started)
        short_pages += results != 50
        first = FIRST_ID.search(element)
        if first is None or attribute(element, "type") != "result":
            raise XMPPError(f"archive query {iq_id} failed: {element[:300]!r}")
        before = b"<before>" + first.group(1) + b"</before>"
    m = meter.stop()
    await close_all([reader])
    records.append(
        report(
            ctx,
            "archive-query",
            s.archive_queries,
            "pages/s",
            m,
            latencies,
            archive=flow.delivered,
            short_pages=short_pages,
        )
    )


async def scenario_sm(ctx: Context) -> list[dict]:
    """Stream management: its cost on messages, and resuming against logging in again.

    The messages scenario twice on the same server, without and with SM (an
    <r/> every 5 chats); then C{login_clients} fresh logins that enable SM
    (login, bind, initial presence, <enable/>), their connections aborted, and
    as many resumptions (connect, SASL, <resume/>), C{login_concurrency} at a time.
    """
    records = [
        await scenario_messages(ctx, "sm-off-messages"),
        await scenario_messages(ctx, "sm-messages", ack_every=5),
    ]
    s = ctx.sizes
    users = ctx.users(s.login_clients)
    target, mechanism = ctx.target, ctx.mechanism
    meter = Meter(ctx.server_pid)
    sessions: list[tuple[str, str]] = []
    conns: list[Conn] = []

    async def timed(work: Callable[[str], Awaitable[object]], items: list, out: list[int]):
        pending = iter(items)

        async def worker() -> None:
            for item in pending:
                started = time.perf_counter_ns()
                await work(item)
                out.append(time.perf_counter_ns() - started)

        await together(worker() for _ in range(s.login_concurrency))

    async def fresh(user: str) -> None:
        conn = await login(target, user, mechanism)
        sessions.append((user, await conn.enable_sm()))
        conns.append(conn)

    async def resume(session: tuple[str, str]) -> None:
        user, previd = session
        conn = await connect(target)
        await conn.open_stream(target.domain)
        await conn.authenticate(user, target.password, mechanism)
        await conn.open_stream(target.domain)
        await conn.resume(previd)
        conns.append(conn)

    login_latencies: list[int] = []
    meter.start()
    await timed(fresh, users, login_latencies)
    m = meter.stop()
    records.append(report(ctx, "sm-login", len(users), "logins/s", m, login_latencies))
    for conn in conns:
        conn.transport.abort()  # the network is gone: the sessions wait for resumption
    conns.clear()
    await asyncio.sleep(1.0)
    resume_latencies: list[int] = []
    meter.start()
    await timed(resume, sessions, resume_latencies)
    m = meter.stop()
    records.append(report(ctx, "sm-resume", len(sessions), "resumes/s", m, resume_latencies))
    await close_all(conns)
    return records


_FAST_TOKEN = re.compile(rb"<token\b[^>]*\stoken=(['\"])(.*?)\1")
BIND2 = b"<bind xmlns='urn:xmpp:bind:0'><tag>bench</tag></bind>"


async def scenario_fast(ctx: Context) -> list[dict]:
    """Reconnects: SASL1 SCRAM-SHA-1 then bind, against SASL2 with a FAST token and Bind2.

    Both end with initial presence reflected. Each user first gets a token (a
    SASL2 SCRAM login with <request-token/>). A server without SASL2 FAST
    (Prosody 0.12) gets only the SCRAM record.
    """
    s = ctx.sizes
    users = ctx.users(s.login_clients)
    target = ctx.target
    meter = Meter(ctx.server_pid)
    probe = await connect(target)
    features = await probe.open_stream(target.domain)
    probe.close()
    await close_all(await login_many(ctx, users[:10], 5, "SCRAM-SHA-1"))  # warm-up
    latencies: list[int] = []
    meter.start()
    conns = await login_many(ctx, users, s.login_concurrency, "SCRAM-SHA-1", latencies)
    m = meter.stop()
    await close_all(conns)
    records = [report(ctx, "reconnect-scram", len(users), "logins/s", m, latencies)]
    if b"urn:xmpp:fast:0" not in features:
        print(f"# {ctx.label} offers no SASL2 FAST: no FAST record", flush=True)
        return records

    tokens: dict[str, str] = {}
    request = b"<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"

    async def get_token(user: str) -> None:
        conn = await connect(target)
        await conn.open_stream(target.domain)
        agent = f"<user-agent id='bench-{user}'/>".encode()
        success = await conn.authenticate(user, target.password, "SCRAM-SHA-1", agent + request)
        match = _FAST_TOKEN.search(success)
        if match is None:
            raise XMPPError(f"no FAST token: {success[:300]!r}")
        tokens[user] = match.group(2).decode()
        conn.close()

    async def fast_login(user: str) -> None:
        conn = await connect(target)
        await conn.open_stream(target.domain)
        success = await conn.fast(user, tokens[user], f"bench-{user}", BIND2)
        conn.jid = text_of(success, b"authorization-identifier") or ""
        await conn.initial_presence()
        conns.append(conn)

    pending = iter(users)

    async def fetch() -> None:
        for user in pending:
            await get_token(user)

    await together(fetch() for _ in range(s.login_concurrency))
    conns = []
    latencies = []
    work = iter(users)

    async def worker() -> None:
        for user in work:
            started = time.perf_counter_ns()
            await fast_login(user)
            latencies.append(time.perf_counter_ns() - started)

    meter.start()
    await together(worker() for _ in range(s.login_concurrency))
    m = meter.stop()
    await close_all(conns)
    records.append(report(ctx, "reconnect-fast", len(users), "logins/s", m, latencies))
    return records


async def ensure_subscriptions(ctx: Context, hub_user: str, contacts: list[str]) -> int:
    """Make hub and contacts mutually subscribed through the protocol; return how many were new."""
    hub = await login(ctx.target, hub_user, ctx.mechanism, presence=False)
    have = roster_items(await hub.roster())
    missing = [c for c in contacts if have.get(ctx.target.jid(c)) != "both"]
    if not missing:
        await close_all([hub])
        return 0
    hub_bare = ctx.target.jid(hub_user)
    await hub.initial_presence()
    conns = await login_many(ctx, missing, 20, roster=True)

    def presence_of(kind: str, sender: str | None) -> Callable[[bytes], bool]:
        def match(element: bytes) -> bool:
            if not element.startswith(b"<presence") or attribute(element, "type") != kind:
                return False
            return sender is None or (attribute(element, "from") or "").split("/")[0] == sender

        return match

    for user in missing:
        hub.send(f"<presence type='subscribe' to='{ctx.target.jid(user)}'/>".encode())

    async def contact_side(conn: Conn) -> None:
        await conn.expect(presence_of("subscribe", hub_bare))
        conn.send(
            f"<presence type='subscribed' to='{hub_bare}'/>"
            f"<presence type='subscribe' to='{hub_bare}'/>".encode()
        )
        await conn.expect(presence_of("subscribed", hub_bare))

    async def hub_side() -> None:
        asked = set()
        while len(asked) < len(missing):
            element = await hub.expect(presence_of("subscribe", None))
            asked.add((attribute(element, "from") or "").split("/")[0])
        hub.send(
            "".join(f"<presence type='subscribed' to='{jid}'/>" for jid in sorted(asked)).encode()
        )

    await together([hub_side(), *(contact_side(c) for c in conns)])
    for attempt in range(50):
        have = roster_items(await hub.roster(f"check{attempt}"))
        if all(have.get(ctx.target.jid(c)) == "both" for c in contacts):
            break
        await asyncio.sleep(0.2)
    else:
        raise XMPPError(f"{hub_user}: subscriptions did not reach 'both'")
    await close_all(conns + [hub])
    return len(missing)


async def scenario_fanout(ctx: Context) -> dict:
    """One user with N mutually subscribed contacts online changes presence many times."""
    s = ctx.sizes
    hub_user, contact_users = "p0", [f"p{i}" for i in range(1, s.contacts + 1)]
    await ensure_subscriptions(ctx, hub_user, contact_users)
    contacts = await login_many(ctx, contact_users, s.login_concurrency)
    hub = await login(ctx.target, hub_user, ctx.mechanism)
    hub_bare = ctx.target.jid(hub_user).encode()

    def hub_available(element: bytes) -> bool:
        head = element[: element.find(b">")]
        return element.startswith(b"<presence") and hub_bare in head and b"type=" not in head

    await together(c.expect(hub_available) for c in contacts)
    hub.set_sink(discard)
    broadcaster = Broadcaster(hub, len(contacts), s.presence_window)
    counters = []
    for contact in contacts:
        counter = StampCounter(b"</presence>", b"<status>T", broadcaster.delivered)
        contact.set_sink(counter)
        counters.append(counter)
    meter = Meter(ctx.server_pid)
    warm = min(20, s.changes)
    await run_flow(counters, [broadcaster], warm, warm * len(contacts), meter)
    flow, m = await run_flow(counters, [broadcaster], s.changes, s.changes * len(contacts), meter)
    await close_all(contacts + [hub])
    return report(
        ctx,
        "fanout",
        flow.delivered,
        "presences/s",
        m,
        flow.latencies,
        loss=max(0, broadcaster.sent * len(contacts) - flow.delivered),
        changes=broadcaster.sent,
    )


PEP_NODE = "urn:bench:pep"
PEP_FEATURES = sorted(
    (
        "http://jabber.org/protocol/caps",
        "http://jabber.org/protocol/disco#info",
        PEP_NODE + "+notify",
    )
)
PEP_IDENTITY = "client/bot//bench"
#: XEP-0115 §5.1 for this one identity and these features.
PEP_VER = base64.b64encode(
    hashlib.sha1((PEP_IDENTITY + "<" + "".join(f + "<" for f in PEP_FEATURES)).encode()).digest()
).decode()
PEP_CAPS_NODE = "https://imserver.invalid/bench"


class Publisher(Windowed):
    """The PEP owner: stamped publishes, at most C{window} not yet fully delivered."""

    def __init__(self, conn: Conn, fan: int, window: int) -> None:
        super().__init__(window)
        self.conn = conn
        self.fan = fan

    def pump(self) -> None:
        in_flight = -(-(self.sent * self.fan - self.received) // self.fan)
        count = min(self.total - self.sent, self.window - in_flight)
        if count > 0:
            stamp = str(time.perf_counter_ns())
            self.conn.send(
                "".join(
                    f"<iq type='set' id='pub{self.sent + n}'>"
                    "<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
                    f"<publish node='{PEP_NODE}'><item id='current'>"
                    f"<status xmlns='{PEP_NODE}'><t>T{stamp}</t></status>"
                    "</item></publish></pubsub></iq>"
                    for n in range(count)
                ).encode()
            )
            self.sent += count


def caps_interest(conn: Conn) -> Callable[[bytes], bool]:
    """A predicate that answers the server's disco#info query for our caps (a side effect)
    and is true for the first PEP notification: the contact's interest is known."""

    def match(element: bytes) -> bool:
        if element.startswith(b"<iq") and attribute(element, "type") == "get":
            if b"disco#info" in element:
                node = attribute(element[element.find(b"<query") :], "node") or ""
                features = "".join(f"<feature var='{f}'/>" for f in PEP_FEATURES)
                conn.send(
                    f"<iq type='result' id='{attribute(element, 'id')}' "
                    f"to='{attribute(element, 'from')}'>"
                    f"<query xmlns='http://jabber.org/protocol/disco#info' node='{node}'>"
                    "<identity category='client' type='bot' name='bench'/>"
                    f"{features}</query></iq>".encode()
                )
            return False
        return element.startswith(b"<message") and PEP_NODE.encode() in element

    return match


async def scenario_pep(ctx: Context) -> dict:
    """XEP-0163: one user publishes to a node that N mutually subscribed contacts want (+notify).

    The contacts announce their interest the XEP-0115 way (caps in presence,
    answering the server's disco#info); the owner pipelines stamped publishes.
    """
    s = ctx.sizes
    hub_user, contact_users = "p0", [f"p{i}" for i in range(1, s.contacts + 1)]
    await ensure_subscriptions(ctx, hub_user, contact_users)
    hub = await login(ctx.target, hub_user, ctx.mechanism)
    contacts: list[Conn] = []
    for user in contact_users:
        conn = await login(ctx.target, user, ctx.mechanism, roster=True, presence=False)
        contacts.append(conn)
        conn.send(
            f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
            f"node='{PEP_CAPS_NODE}' ver='{PEP_VER}'/></presence>".encode()
        )
    hub.set_sink(discard)
    interested = asyncio.ensure_future(together(c.expect(caps_interest(c)) for c in contacts))
    published = 0
    while not interested.done():  # until every contact got a notification
        Publisher(hub, len(contacts), 1).start(1)
        published += 1
        await asyncio.wait([interested], timeout=0.5)
        if published > 60:
            interested.cancel()
            raise XMPPError("pep: contacts got no notifications within 30 s")
    await interested
    publisher = Publisher(hub, len(contacts), s.pep_window)
    counters = []
    for contact in contacts:
        counter = StampCounter(b"</message>", b"<t>T", publisher.delivered)
        contact.set_sink(counter)
        counters.append(counter)
    meter = Meter(ctx.server_pid)
    warm = min(20, s.pep_publishes)
    await run_flow(counters, [publisher], warm, warm * len(contacts), meter)
    total = s.pep_publishes * len(contacts)
    flow, m = await run_flow(counters, [publisher], s.pep_publishes, total, meter)
    await close_all(contacts + [hub])
    return report(
        ctx,
        "pep",
        flow.delivered,
        "notes/s",
        m,
        flow.latencies,
        loss=max(0, publisher.sent * len(contacts) - flow.delivered),
        publishes=publisher.sent,
    )


async def scenario_idle(ctx: Context, name: str = "idle") -> tuple[dict, list[Conn]]:
    """Many authenticated sessions with initial presence: resident memory per session."""
    s = ctx.sizes
    await close_all(await login_many(ctx, ctx.users(20), 10))  # warm-up
    await asyncio.sleep(1.0)
    before = procstat.rss_kib(ctx.server_pid) if ctx.server_pid else None
    meter = Meter(ctx.server_pid)
    latencies: list[int] = []
    meter.start()
    conns = await login_many(ctx, ctx.users(s.sessions), 50, latencies=latencies)
    m = meter.stop()
    await asyncio.sleep(3.0)  # let the server settle (deferred work, GC) before reading RSS
    after = procstat.rss_kib(ctx.server_pid) if ctx.server_pid else None
    per_session = None
    if before is not None and after is not None:
        per_session = round((after - before) / s.sessions, 2)
    record = report(
        ctx,
        name,
        s.sessions,
        "logins/s",
        m,
        latencies,
        rss_before_kib=before,
        rss_after_kib=after,
        kib_per_session=per_session,
    )
    return record, conns


async def ensure_roster(ctx: Context, user: str, size: int) -> int:
    """Give C{user} a roster of C{size} items by roster sets; return how many were added."""
    conn = await login(ctx.target, user, ctx.mechanism, presence=False)
    have = roster_items(await conn.roster())
    wanted = [f"contact{i}@{ctx.target.domain}" for i in range(size)]
    missing = [jid for jid in wanted if jid not in have]
    for start in range(0, len(missing), 50):
        batch = missing[start : start + 50]
        ids = {f"set{start + i}" for i in range(len(batch))}
        conn.send(
            "".join(
                f"<iq type='set' id='set{start + i}'><query xmlns='jabber:iq:roster'>"
                f"<item jid='{jid}' name='Contact {start + i}'><group>Bench</group></item>"
                "</query></iq>"
                for i, jid in enumerate(batch)
            ).encode()
        )
        await await_ids(conn, ids)
    await close_all([conn])
    return len(missing)


class EndTagCounter:
    """A raw sink counting an end tag; wakes whoever waits for the n-th one."""

    def __init__(self, end_tag: bytes) -> None:
        self.end_tag = end_tag
        self.count = 0
        self.tail = b""
        self.target = 0
        self.reached: asyncio.Future | None = None

    def __call__(self, data: bytes) -> None:
        data = self.tail + data
        self.count += data.count(self.end_tag)
        self.tail = data[-(len(self.end_tag) - 1) :]
        if self.reached is not None and self.count >= self.target and not self.reached.done():
            self.reached.set_result(None)

    async def wait_for(self, count: int, timeout: float = 30.0) -> None:
        self.target = count
        if self.count >= count:
            return
        self.reached = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self.reached, timeout)


async def scenario_roster(ctx: Context) -> list[dict]:
    """Logins of a user with a big roster, and repeated full roster gets.

    Each measured login is the whole sequence a client runs: connect, SASL,
    bind, roster get, initial presence (until reflected), then a ping, until
    its answer. A stall after the large roster reply (Nagle meeting the
    client's delayed ACK) shows here.
    """
    s = ctx.sizes
    user = "r0"
    await ensure_roster(ctx, user, s.roster_items)
    await close_all([await login(ctx.target, user, ctx.mechanism, roster=True)])  # warm-up
    meter = Meter(ctx.server_pid)
    latencies: list[int] = []
    meter.start()
    for _ in range(s.roster_logins):
        started = time.perf_counter_ns()
        conn = await login(ctx.target, user, ctx.mechanism, roster=True)
        await conn.ping(ctx.target.domain)  # issue 15: the sequence ends with the ping's answer
        latencies.append(time.perf_counter_ns() - started)
        await close_all([conn])
    m = meter.stop()
    records = [report(ctx, "roster-login", s.roster_logins, "logins/s", m, latencies)]

    conn = await login(ctx.target, user, ctx.mechanism, presence=False)
    items = len(roster_items(await conn.roster()))
    counter = EndTagCounter(b"</iq>")
    conn.set_sink(counter)
    request = b"<iq type='get' id='get'><query xmlns='jabber:iq:roster'/></iq>"
    latencies = []
    meter.start()
    for i in range(s.roster_gets):
        started = time.perf_counter_ns()
        conn.send(request)
        await counter.wait_for(i + 1)
        latencies.append(time.perf_counter_ns() - started)
    m = meter.stop()
    await close_all([conn])
    records.append(report(ctx, "roster-get", s.roster_gets, "gets/s", m, latencies, items=items))
    return records


async def scenario_churn(ctx: Context) -> list[dict]:
    """Messages, then many sessions come and go, then messages again: does cost creep up?"""
    before = await scenario_messages(ctx, "churn-before")
    rss_before = procstat.rss_kib(ctx.server_pid) if ctx.server_pid else None
    idle, conns = await scenario_idle(ctx, "churn-idle")
    await close_all(conns)
    await asyncio.sleep(2.0)
    rss_closed = procstat.rss_kib(ctx.server_pid) if ctx.server_pid else None
    after = await scenario_messages(ctx, "churn-after")
    summary: dict[str, object] = {
        "scenario": "churn",
        "server": ctx.label,
        "cpu_per_1000_before": before["server_cpu_per_1000"],
        "cpu_per_1000_after": after["server_cpu_per_1000"],
        "rate_before": before["rate"],
        "rate_after": after["rate"],
        "rss_before_kib": rss_before,
        "rss_after_churn_kib": rss_closed,
    }
    if before["server_cpu_per_1000"] and after["server_cpu_per_1000"]:
        summary["cpu_ratio_after_before"] = round(
            after["server_cpu_per_1000"] / before["server_cpu_per_1000"], 3
        )
    if rss_before is not None and rss_closed is not None:
        summary["retained_kib_per_session"] = round(
            (rss_closed - rss_before) / ctx.sizes.sessions, 2
        )
    emit(summary)
    return [before, idle, after, summary]


# -- setup -------------------------------------------------------------------------------


async def provision(ctx: Context, users: list[str], command: str | None, jobs: int) -> dict:
    """Create accounts by in-band registration, or by running a command template per user."""
    created = existing = 0
    pending = iter(users)
    password_file = None
    if command:
        with tempfile.NamedTemporaryFile("w", prefix="xmppload-", delete=False) as handle:
            handle.write(ctx.target.password + "\n")
        password_file = handle.name

    async def by_command(user: str) -> bool:
        argv = [
            part.format(
                jid=ctx.target.jid(user),
                user=user,
                domain=ctx.target.domain,
                password=ctx.target.password,
                password_file=password_file,
            )
            for part in shlex.split(command or "")
        ]
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await process.communicate()
        if process.returncode == 0:
            return True
        if b"exist" in output.lower():
            return False
        raise XMPPError(f"{argv[0]} failed for {user}: {output.decode(errors='replace')}")

    async def worker() -> None:
        nonlocal created, existing
        for user in pending:
            made = await (by_command(user) if command else register(ctx.target, user))
            created += made
            existing += not made

    try:
        await together(worker() for _ in range(jobs))
    finally:
        if password_file:
            os.unlink(password_file)
    return {"created": created, "existing": existing}


async def scenario_setup(ctx: Context, command: str | None, jobs: int, warm_scram: bool) -> dict:
    """Accounts for every scenario, the fan-out subscriptions and the big roster (idempotent).

    With C{warm_scram}, every account logs in once so the generator's SCRAM
    cache holds its keys and measured logins cost the generator no PBKDF2.
    """
    s = ctx.sizes
    started = time.perf_counter()
    users = ctx.users(ctx.pool_size()) + ctx.users(s.contacts + 1, "p") + ["r0"]
    counts = await provision(ctx, users, command, jobs)
    if warm_scram:
        offered = await offered_mechanisms(ctx.target)
        for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
            if mechanism in offered:
                await close_all(await login_many(ctx, users, 20, mechanism))
    new_subscriptions = await ensure_subscriptions(
        ctx, "p0", [f"p{i}" for i in range(1, s.contacts + 1)]
    )
    new_items = await ensure_roster(ctx, "r0", s.roster_items)
    record = {
        "scenario": "setup",
        "server": ctx.label,
        **counts,
        "new_subscriptions": new_subscriptions,
        "new_roster_items": new_items,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(record), flush=True)
    print(f"  {ctx.label:<9} setup         {record}", flush=True)
    return record


# -- command line -----------------------------------------------------------------------


def raise_fd_limit(wanted: int = 65536) -> None:
    """Thousands of sessions need thousands of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="+", choices=("setup", "all", *SCENARIOS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5222)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument("--password", default="bench-secret")
    parser.add_argument("--label", default="server", help="server name in the output")
    parser.add_argument(
        "--websocket",
        metavar="URL",
        help="connect over RFC 7395 WebSocket (ws://127.0.0.1:5280/xmpp-websocket), not TCP",
    )
    parser.add_argument(
        "--server-pid",
        type=int,
        help="pid for server CPU and RSS (default: the process listening on --port)",
    )
    parser.add_argument(
        "--mechanism",
        default="SCRAM-SHA-1",
        choices=("SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"),
        help="SASL mechanism outside the login scenario",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    parser.add_argument(
        "--provision-command",
        help="create accounts with this command template instead of XEP-0077, e.g. "
        "'imserver adduser {jid} --password-file {password_file}' or "
        "'prosodyctl register {user} {domain} {password}'",
    )
    parser.add_argument("--jobs", type=int, default=20, help="parallel account creations")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per scenario")
    parser.add_argument(
        "--scram-cache",
        type=Path,
        help="keep SCRAM salted-password keys in this file between runs (setup fills it)",
    )
    for f in fields(Sizes):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=int, metavar="N")
    args = parser.parse_args(argv)
    if not _is_loopback(args.host):
        parser.error(f"--host {args.host}: only loopback servers are loaded (127.0.0.0/8, ::1)")
    return args


def _is_loopback(host: str) -> bool:
    """A load test stays on this machine: refuse any other target."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else Sizes()
    overrides = {f.name: getattr(args, f.name) for f in fields(Sizes)}
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    pid = args.server_pid or procstat.listening_pid(args.port)
    if pid is None:
        print("xmppload: server pid unknown: server CPU and RSS are not reported", file=sys.stderr)
    ctx = Context(
        Target(args.host, args.port, args.domain, args.password, args.websocket),
        args.label,
        sizes,
        args.mechanism,
        pid,
    )
    wanted = set(args.scenarios) - {"all"}
    if "all" in args.scenarios:
        # The archive scenario needs a server configured with its archive on.
        wanted.update(s for s in SCENARIOS if s != "archive")
    runners: dict[str, Callable[[], Awaitable[object]]] = {
        "setup": lambda: scenario_setup(
            ctx, args.provision_command, args.jobs, args.scram_cache is not None
        ),
        "login": lambda: scenario_login(ctx),
        "messages": lambda: scenario_messages(ctx),
        "fanout": lambda: scenario_fanout(ctx),
        "idle": lambda: _idle_then_close(ctx),
        "roster": lambda: scenario_roster(ctx),
        "churn": lambda: scenario_churn(ctx),
        "pep": lambda: scenario_pep(ctx),
        "archive": lambda: scenario_archive(ctx),
        "sm": lambda: scenario_sm(ctx),
        "fast": lambda: scenario_fast(ctx),
    }
    if args.scram_cache:
        load_scram_cache(args.scram_cache)
    print(f"# {ctx.label}: {json.dumps(asdict(sizes))}", flush=True)
    try:
        for name in sorted(wanted, key=("setup", *SCENARIOS).index):
            try:
                await asyncio.wait_for(runners[name](), args.timeout)
            except (XMPPError, OSError, TimeoutError) as e:
                print(f"xmppload: {ctx.label} {name}: {e or type(e).__name__}", file=sys.stderr)
                return 1
    finally:
        if args.scram_cache:
            save_scram_cache(args.scram_cache)
    return 0


async def _idle_then_close(ctx: Context) -> dict:
    record, conns = await scenario_idle(ctx)
    await close_all(conns)
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
