#!/usr/bin/env python3
"""imserver over WebSocket (RFC 7395) against imserver over TCP: messages/s and idle KiB/session.

One imserver with bench/compare's settings plus an [http] listener serves both
transports; the same xmppload scenarios run over each, alternating, on a fresh
server process per run, pinned as in bench/compare (server on one core, the
generator on the other). Prints a table of medians.

    .venv/bin/python bench/websocket.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import compare  # noqa: E402

SCENARIOS = ("messages", "idle")
#: (scenario, field, label, unit)
FIGURES = (
    ("messages", "rate", "messages delivered", "msgs/s"),
    ("messages", "p50_ms", "message latency p50", "ms"),
    ("messages", "p99_ms", "message latency p99", "ms"),
    ("messages", "server_cpu_per_1000", "messages CPU", "s/1000"),
    ("idle", "kib_per_session", "idle memory", "KiB/session"),
    ("idle", "server_cpu_per_1000", "idle sessions login CPU", "s/1000"),
)


def run(server: compare.Server, http_port: int, transport: str, scenario: str, args) -> list:
    pid = server.start()
    try:
        argv = [
            str(compare.PYTHON),
            str(compare.LOADGEN),
            "--port",
            str(server.port),
            "--domain",
            compare.DOMAIN,
            "--label",
            transport,
            "--server-pid",
            str(pid),
            "--mechanism",
            "PLAIN",
            *(["--quick"] if args.quick else []),
            *(
                ["--websocket", f"ws://127.0.0.1:{http_port}/xmpp-websocket"]
                if transport == "websocket"
                else []
            ),
            scenario,
        ]
        process = compare.spawn(
            compare.pinned(compare.GENERATOR_CPU, argv), stdout=subprocess.PIPE, text=True
        )
        records = []
        for line in process.stdout:
            if line.startswith("{"):
                records.append(compare.json.loads(line))
            elif not line.startswith("#"):
                print(line, end="", flush=True)
        process.wait()
        compare._children.remove(process)
        if process.returncode != 0:
            raise SystemExit(f"websocket bench: {scenario} over {transport} failed")
        return records
    finally:
        server.stop()


def table(records: list[dict]) -> str:
    lines = ["| figure | TCP | WebSocket | WebSocket/TCP |", "| --- | ---: | ---: | ---: |"]
    for scenario, field, label, unit in FIGURES:
        values = {}
        for transport in ("tcp", "websocket"):
            found = [
                r[field]
                for r in records
                if r.get("scenario") == scenario
                and r.get("server") == transport
                and r.get(field) is not None
            ]
            values[transport] = statistics.median(found) if found else None
        tcp, ws = values["tcp"], values["websocket"]
        ratio = f"{ws / tcp:.2f}" if tcp and ws is not None else "-"
        lines.append(
            f"| {label} ({unit}) | {compare._number(tcp)} | {compare._number(ws)} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=15322)
    parser.add_argument("--http-port", type=int, default=15380)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="imserver-wsbench-"))
    server = compare.make_imserver(workdir, args.port)
    config = server.workdir / "imserver.toml"
    config.write_text(
        config.read_text()
        + f"\n[http]\ninterface = '127.0.0.1'\nport = {args.http_port}\n"
        + "behind_tls_proxy = true  # plain ws on loopback, like c2s plaintext\n"
    )
    records: list[dict] = []
    started = time.monotonic()
    try:
        pid = server.start()
        try:
            setup = [
                str(compare.PYTHON),
                str(compare.LOADGEN),
                "--port",
                str(server.port),
                "--domain",
                compare.DOMAIN,
                "--server-pid",
                str(pid),
                *(["--quick"] if args.quick else []),
                "setup",
            ]
            subprocess.run(setup, check=True, stdout=subprocess.DEVNULL)
        finally:
            server.stop()
        for round_number in range(args.rounds):
            for index, scenario in enumerate(SCENARIOS):
                order = ["tcp", "websocket"]
                if (round_number + index) % 2:
                    order.reverse()
                for transport in order:
                    compare.log(f"# round {round_number + 1}: {scenario} over {transport}")
                    compare.wait_for_quiet(60)
                    records += run(server, args.http_port, transport, scenario, args)
        compare.log(f"\n## Medians of {args.rounds} rounds{' (--quick)' if args.quick else ''}\n")
        compare.log(table(records))
        compare.log(f"\n# {(time.monotonic() - started) / 60:.1f} min")
    finally:
        compare.stop_all_children()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
