#!/usr/bin/env python3
"""Federation throughput: messages/s from a.test to b.test, and each server's CPU per 1000.

Two set-ups on this machine, each started fresh with the test fixtures (test
DNS zone, test CA, certificates, SASL EXTERNAL between the servers):

- imserver (a.test) -> imserver (b.test)
- imserver (a.test) -> Prosody 0.12 (b.test)

Each set-up runs both directions: senders on one domain, receivers on the
other; each sender pipelines chats to its partner (at most --window unread)
through the s2s link. CPU seconds come from /proc for both server processes,
so the cost of the sending side and of the receiving side is reported apart.

    .venv/bin/python bench/s2s.py --pairs 10 --messages 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import procstat  # noqa: E402
from support.federation import A, B, Federation  # noqa: E402
from xmppclient import Target, login  # noqa: E402
from xmppload import Pair, StampCounter, close_all, discard, run_flow  # noqa: E402

PASSWORD = "bench-password"
#: Large limits, as in bench/compare: the benchmark measures work, not policy.
LIMITS = {
    "max_stanza_size": 1048576,
    "input_rate": 1073741824,
    "input_burst": 1073741824,
    "max_output_buffer": 67108864,
    "max_connections_per_address": 100000,
}
#: Likewise for the s2s links' own input rate ([s2s] input_rate/input_burst).
S2S_LIMITS = {"input_rate": 1073741824, "input_burst": 1073741824}


class Meter:
    """Wall time and the CPU seconds of both servers over one phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def start(self) -> None:
        self._cpu = {name: procstat.cpu_seconds(pid) for name, pid in self.pids.items()}
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, float]:
        figures = {"elapsed": time.perf_counter() - self._wall}
        for name, pid in self.pids.items():
            figures[name] = procstat.cpu_seconds(pid) - self._cpu[name]
        return figures


def accounts(server, users: list[str]) -> None:
    for user in users:
        jid = f"{user}@{server.host}"
        if hasattr(server, "register"):
            server.register(jid, PASSWORD)
        else:
            result = server.adduser(jid, PASSWORD)
            if result.returncode != 0:
                raise SystemExit(f"adduser {jid}: {result.stderr}")


async def measure(
    source, destination, names: dict, pairs: int, messages: int, window: int, tag: str
) -> dict:
    """Pairs from C{source}'s domain to C{destination}'s; names: server -> label."""
    senders_names = [f"s{tag}{i}" for i in range(pairs)]
    receivers_names = [f"r{tag}{i}" for i in range(pairs)]
    accounts(source, senders_names)
    accounts(destination, receivers_names)
    source_target = Target(source.interface, source.port, source.host, PASSWORD)
    destination_target = Target(destination.interface, destination.port, destination.host, PASSWORD)
    senders = [await login(source_target, u, "PLAIN") for u in senders_names]
    receivers = [await login(destination_target, u, "PLAIN") for u in receivers_names]
    flows_pairs, counters = [], []
    for sender, user in zip(senders, receivers_names, strict=True):
        sender.set_sink(discard)
        pair = Pair(sender, f"{user}@{destination.host}", window)
        flows_pairs.append(pair)
    for receiver, pair in zip(receivers, flows_pairs, strict=True):
        counter = StampCounter(b"</message>", b"<body>T", pair.delivered)
        receiver.set_sink(counter)
        counters.append(counter)
    pids = {
        f"sender {names[id(source)]}": source.process.pid,
        f"receiver {names[id(destination)]}": destination.process.pid,
    }
    meter = Meter(pids)

    class _Meter:  # run_flow's interface: start() and stop()
        start = meter.start
        stop = meter.stop

    warm = 50
    await run_flow(counters, flows_pairs, warm, warm * pairs, _Meter)  # opens the s2s link
    total = messages * pairs
    flow, figures = await run_flow(counters, flows_pairs, messages, total, _Meter)
    await close_all(senders + receivers)
    elapsed = figures.pop("elapsed")
    record = {
        "scenario": f"s2s {names[id(source)]} -> {names[id(destination)]}",
        "messages": flow.delivered,
        "lost": max(0, total - flow.delivered),
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(flow.delivered / elapsed, 1),
    }
    for name, cpu in figures.items():
        record[f"{name} cpu_per_1000_s"] = round(cpu * 1000 / max(1, flow.delivered), 4)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=2000, help="per pair")
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--peer", choices=["imserver", "prosody", "both"], default="both")
    args = parser.parse_args()
    peers = ["imserver", "prosody"] if args.peer == "both" else [args.peer]
    with tempfile.TemporaryDirectory(prefix="s2s-bench-") as directory:
        world = Federation(Path(directory)).start()
        try:
            for peer in peers:
                c2s = {"allow_plaintext_on_loopback": True}
                a_server = world.imserver(
                    A, secure_auth=True, limits=LIMITS, c2s=c2s, s2s=S2S_LIMITS
                )
                if peer == "imserver":
                    b_server = world.imserver(
                        B, secure_auth=True, limits=LIMITS, c2s=c2s, s2s=S2S_LIMITS
                    )
                else:
                    b_server = world.prosody(
                        B, secure_auth=True, log_level="info", network_backend="epoll"
                    )
                names = {id(a_server): "imserver a.test", id(b_server): f"{peer} b.test"}
                for tag, (source, destination) in enumerate(
                    ((a_server, b_server), (b_server, a_server))
                ):
                    record = asyncio.run(
                        measure(
                            source,
                            destination,
                            names,
                            args.pairs,
                            args.messages,
                            args.window,
                            str(tag),
                        )
                    )
                    print(json.dumps(record), flush=True)
                world.stop_servers()
        finally:
            world.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
