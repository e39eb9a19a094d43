#!/usr/bin/env python3
"""imserver against Prosody: same scenarios, same machine, alternating runs, median table.

Both servers run on loopback with equivalent settings (plaintext SASL allowed
on loopback, registration on, no rate limits, no s2s), pinned to one core
while the generator runs on the other. Each (round, scenario, server) gets a
fresh server process on a data directory provisioned once, and the order of
the two servers alternates so neither always runs second. Only processes this
script started are ever stopped.

Run it through bench/compare, which prepares the project's .venv first.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import procstat  # noqa: E402

PYTHON = ROOT / ".venv" / "bin" / "python"
LOADGEN = BENCH / "xmppload.py"
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
#: Run with each server's message archive (XEP-0313) on.
ARCHIVE_SCENARIOS = ("archive",)
DOMAIN = "localhost"
FD_LIMIT = 65536
SERVER_CPU, GENERATOR_CPU = "0", "1"

#: (record scenario, field, label, unit, True when higher is better)
FIGURES = (
    ("login-scram", "rate", "login SCRAM-SHA-1", "logins/s", True),
    ("login-scram", "p50_ms", "login SCRAM-SHA-1 p50", "ms", False),
    ("login-scram", "p99_ms", "login SCRAM-SHA-1 p99", "ms", False),
    ("login-scram", "server_cpu_per_1000", "login SCRAM-SHA-1 CPU", "s/1000", False),
    ("login-scram256", "rate", "login SCRAM-SHA-256", "logins/s", True),
    ("login-scram256", "p50_ms", "login SCRAM-SHA-256 p50", "ms", False),
    ("login-scram256", "server_cpu_per_1000", "login SCRAM-SHA-256 CPU", "s/1000", False),
    ("login-plain", "rate", "login PLAIN", "logins/s", True),
    ("login-plain", "p50_ms", "login PLAIN p50", "ms", False),
    ("login-plain", "p99_ms", "login PLAIN p99", "ms", False),
    ("login-plain", "server_cpu_per_1000", "login PLAIN CPU", "s/1000", False),
    ("messages", "rate", "messages delivered", "msgs/s", True),
    ("messages", "p50_ms", "message latency p50", "ms", False),
    ("messages", "p99_ms", "message latency p99", "ms", False),
    ("messages", "loss", "messages lost", "msgs", False),
    ("messages", "server_cpu_per_1000", "messages CPU", "s/1000", False),
    ("fanout", "rate", "presence fan-out delivered", "stanzas/s", True),
    ("fanout", "p50_ms", "presence latency p50", "ms", False),
    ("fanout", "p99_ms", "presence latency p99", "ms", False),
    ("fanout", "server_cpu_per_1000", "presence fan-out CPU", "s/1000", False),
    ("idle", "kib_per_session", "idle memory", "KiB/session", False),
    ("idle", "server_cpu_per_1000", "idle sessions login CPU", "s/1000", False),
    ("roster-login", "p50_ms", "big-roster login..ping p50", "ms", False),
    ("roster-login", "server_cpu_per_1000", "login with big roster CPU", "s/1000", False),
    ("roster-get", "p50_ms", "roster get p50", "ms", False),
    ("roster-get", "p99_ms", "roster get p99", "ms", False),
    ("roster-get", "server_cpu_per_1000", "roster get CPU", "s/1000", False),
    ("churn", "cpu_per_1000_before", "messages CPU before churn", "s/1000", False),
    ("churn", "cpu_per_1000_after", "messages CPU after churn", "s/1000", False),
    ("churn", "cpu_ratio_after_before", "churn CPU after/before", "ratio", False),
    ("churn", "retained_kib_per_session", "RSS kept after churn", "KiB/session", False),
    ("pep", "rate", "PEP notifications delivered", "notes/s", True),
    ("pep", "p50_ms", "PEP publish-to-notification p50", "ms", False),
    ("pep", "p99_ms", "PEP publish-to-notification p99", "ms", False),
    ("pep", "server_cpu_per_1000", "PEP notifications CPU", "s/1000", False),
    ("messages-archive", "rate", "messages delivered, archive on", "msgs/s", True),
    ("messages-archive", "p50_ms", "message latency p50, archive on", "ms", False),
    ("messages-archive", "p99_ms", "message latency p99, archive on", "ms", False),
    ("messages-archive", "loss", "messages lost, archive on", "msgs", False),
    ("messages-archive", "server_cpu_per_1000", "messages CPU, archive on", "s/1000", False),
    ("archive-fill", "rate", "one pair, archive on", "msgs/s", True),
    ("archive-query", "p50_ms", "archive page of 50 p50", "ms", False),
    ("archive-query", "p99_ms", "archive page of 50 p99", "ms", False),
    ("archive-query", "server_cpu_per_1000", "archive pages CPU", "s/1000", False),
    ("sm-off-messages", "rate", "messages without SM (same run)", "msgs/s", True),
    ("sm-off-messages", "server_cpu_per_1000", "messages without SM CPU", "s/1000", False),
    ("sm-messages", "rate", "messages with SM, <r/> every 5", "msgs/s", True),
    ("sm-messages", "p99_ms", "message latency with SM p99", "ms", False),
    ("sm-messages", "loss", "messages lost with SM", "msgs", False),
    ("sm-messages", "server_cpu_per_1000", "messages with SM CPU", "s/1000", False),
    ("sm-login", "rate", "fresh login + SM enable", "logins/s", True),
    ("sm-login", "p50_ms", "fresh login + SM enable p50", "ms", False),
    ("sm-resume", "rate", "SM resumption", "resumes/s", True),
    ("sm-resume", "p50_ms", "SM resumption p50", "ms", False),
    ("sm-resume", "server_cpu_per_1000", "SM resumption CPU", "s/1000", False),
    ("sm-login", "server_cpu_per_1000", "fresh login + SM enable CPU", "s/1000", False),
    ("reconnect-scram", "rate", "reconnect SASL1 SCRAM-SHA-1 + bind", "logins/s", True),
    ("reconnect-scram", "p50_ms", "reconnect SASL1 SCRAM p50", "ms", False),
    ("reconnect-scram", "server_cpu_per_1000", "reconnect SASL1 SCRAM CPU", "s/1000", False),
    ("reconnect-fast", "rate", "reconnect SASL2 FAST + Bind2", "logins/s", True),
    ("reconnect-fast", "p50_ms", "reconnect SASL2 FAST p50", "ms", False),
    ("reconnect-fast", "server_cpu_per_1000", "reconnect SASL2 FAST CPU", "s/1000", False),
)

IMSERVER_CONFIG = """\
# Written by bench/compare: imserver as configured for the benchmark.
[server]
hosts = ["{domain}"]
data_dir = "{data}"
plugins = ["sessions", "disco", "ping", "version", "register",
           "roster", "presence", "subscriptions", "offline", "caps", "pep",
           "sm", "sasl2", "bind2"{plugins}]
allow_registration = true

[storage]
url = "sqlite:///imserver.sqlite"

[c2s]
interface = "127.0.0.1"
port = {port}
direct_tls_port = 0
allow_plaintext_on_loopback = true

# Large limits, as Prosody without mod_limits has none: the benchmark measures work, not policy.
[limits]
max_stanza_size = 1048576
unauthenticated_timeout = 300.0
max_auth_failures_per_stream = 100
auth_failure_delay = 0
input_rate = 1073741824
input_burst = 1073741824
max_output_buffer = 67108864
max_connections_per_address = 100000
max_unauthenticated = 100000
roster_size = 100000
offline_messages = 100000
"""

PROSODY_CONFIG = """\
-- Written by bench/compare: Prosody as configured for the benchmark.
daemonize = false
run_as_root = true -- a throwaway instance on loopback; no switch to the prosody user
pidfile = "{dir}/prosody.pid"
data_path = "{data}"
certificates = "{dir}"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{dir}/prosody.log" }} }}
network_backend = "epoll"
-- Without this, replies over 8 KiB (luasocket writes 8 KiB at a time) wait for
-- the client's delayed ACK: +40 ms per big roster. imserver writes each reply at once.
network_settings = {{ nagle = false }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "version", "register",
                    "pep", "smacks"{modules} }}
modules_disabled = {{ "s2s", "s2s_auth_certs" }}
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
default_iteration_count = 4096 -- imserver's SCRAM iteration count
allow_registration = true
registration_allowlist = {{ "127.0.0.1", "::1" }}
c2s_stanza_size_limit = 1048576
c2s_timeout = 300
storage = "internal"
ssl = {{ certificate = "{dir}/bench.crt", key = "{dir}/bench.key" }}
{archive}
VirtualHost "{domain}"
"""


#: Prosody's mod_mam as configured for the archive scenario: an archive that may
#: grow to the scenario's size (the internal store's default quota is 1000), no
#: expiry (so no per-query total count), imserver's page limits.
PROSODY_ARCHIVE = """\
storage_archive_item_limit = 1000000
archive_expires_after = "never"
max_archive_query_results = 50
"""


def log(message: str) -> None:
    print(message, flush=True)


# -- processes we own ----------------------------------------------------------

_children: list[subprocess.Popen] = []


def _child_setup() -> None:
    """In the child: a high fd limit, and die with us (PR_SET_PDEATHSIG) if we are killed."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    except (ValueError, OSError):  # not root: as high as the hard limit allows
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def spawn(argv: list[str], **kwargs) -> subprocess.Popen:
    process = subprocess.Popen(argv, preexec_fn=_child_setup, **kwargs)
    _children.append(process)
    return process


def stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM one of our children, SIGKILL it if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process in _children:
        _children.remove(process)


def stop_all_children() -> None:
    for process in list(_children):
        stop(process, grace=5.0)


def wait_for_quiet(limit: float, threshold: float = 0.3) -> None:
    """On a shared machine, wait (up to C{limit} s) until other work uses < C{threshold} cores.

    Both servers should meet the same, quiet machine; the records still carry
    'other_cpu_util' for what could not be avoided.
    """
    deadline = time.monotonic() + limit
    announced = False
    while True:
        before = procstat.machine_busy_seconds()
        time.sleep(1.0)
        busy = procstat.machine_busy_seconds() - before
        if busy < threshold or time.monotonic() > deadline:
            return
        if not announced:
            log(f"# other processes use {busy:.1f} cores; waiting up to {limit:.0f} s")
            announced = True


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else argv


# -- the two servers -----------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    argv: list[str]
    workdir: Path
    #: The same server, on the same data, with its message archive on.
    archive_argv: list[str]
    process: subprocess.Popen | None = None

    def start(self, archive: bool = False) -> int:
        log_file = (self.workdir / "server.out").open("ab")
        self.process = spawn(
            pinned(SERVER_CPU, self.archive_argv if archive else self.argv),
            cwd=self.workdir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log_file.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"compare: {self.name} exited at start; see {self.workdir}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self.process.pid
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"compare: {self.name} did not listen on {self.port} within 60 s")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


def make_imserver(workdir: Path, port: int) -> Server:
    directory = workdir / "imserver"
    directory.mkdir(parents=True, exist_ok=True)
    argvs = []
    for name, plugins in (("imserver.toml", ""), ("imserver-archive.toml", ', "mam"')):
        config = directory / name
        config.write_text(
            IMSERVER_CONFIG.format(
                domain=DOMAIN, data=directory / "data", port=port, plugins=plugins
            )
        )
        argvs.append([str(PYTHON), "-m", "imserver", "run", "-c", str(config)])
    return Server("imserver", port, argvs[0], directory, argvs[1])


def make_prosody(workdir: Path, port: int) -> Server:
    directory = workdir / "prosody"
    (directory / "data").mkdir(parents=True, exist_ok=True)
    _certificate(directory / "bench.crt", directory / "bench.key")
    argvs = []
    variants = (
        ("prosody.cfg.lua", "", ""),
        ("prosody-archive.cfg.lua", ', "mam"', PROSODY_ARCHIVE),
    )
    for name, modules, archive in variants:
        config = directory / name
        config.write_text(
            PROSODY_CONFIG.format(
                dir=directory,
                data=directory / "data",
                port=port,
                domain=DOMAIN,
                modules=modules,
                archive=archive,
            )
        )
        argvs.append(["prosody", "--config", str(config), "-F"])
    return Server("prosody", port, argvs[0], directory, argvs[1])


def _certificate(certificate: Path, key: Path) -> None:
    """Prosody offers STARTTLS like imserver does, so it gets a self-signed certificate too."""
    subprocess.run(
        [
            str(PYTHON),
            "-c",
            "import sys; from pathlib import Path; from imserver import tls; "
            "from imserver.config import TLSSettings; "
            "tls.ensure_certificate(TLSSettings(Path(sys.argv[1]), Path(sys.argv[2])), "
            "(sys.argv[3],))",
            str(certificate),
            str(key),
            DOMAIN,
        ],
        check=True,
        cwd=ROOT,
    )


def ensure_prosody() -> None:
    """Install Debian's Prosody when it is missing (its epoll backend is built in)."""
    if shutil.which("prosody"):
        return
    if os.geteuid() != 0:
        raise SystemExit("compare: prosody is not installed: sudo apt-get install -y prosody")
    log("# installing prosody from Debian packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "prosody"], check=True, env=env)


def versions() -> str:
    """What was measured: the checkout's commit, Python, Prosody (from dpkg when present)."""

    def output(argv: list[str]) -> str:
        try:
            run = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return run.stdout.strip() or "?"

    commit = output(["git", "rev-parse", "--short", "HEAD"])
    python = output([str(PYTHON), "-c", "import sys; print(sys.version.split()[0])"])
    prosody = output(["dpkg-query", "-W", "-f", "${Version}", "prosody"])
    return f"imserver {commit} on Python {python}; Prosody {prosody}"


# -- running the generator -----------------------------------------------------


def generate(server: Server, pid: int, scenario: str, args: argparse.Namespace) -> list[dict]:
    """Run one xmppload scenario against a started server; echo its rows, return its records."""
    argv = [
        str(PYTHON),
        str(LOADGEN),
        "--port",
        str(server.port),
        "--domain",
        DOMAIN,
        "--label",
        server.name,
        "--server-pid",
        str(pid),
        "--scram-cache",
        str(server.workdir / "scram-cache.json"),
        *(["--quick"] if args.quick else []),
        scenario,
    ]
    process = spawn(pinned(GENERATOR_CPU, argv), stdout=subprocess.PIPE, text=True)
    records = []
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            records.append(json.loads(line))
        elif not line.startswith("#"):
            print(line, end="", flush=True)
    process.wait()
    _children.remove(process)
    if process.returncode != 0:
        raise SystemExit(f"compare: {scenario} against {server.name} failed")
    return records


def profile(server: Server, scenario: str, args: argparse.Namespace, out: Path) -> None:
    """Sample imserver with py-spy while the scenario runs; print its hottest functions."""
    pid = server.start(archive=scenario in ARCHIVE_SCENARIOS)
    try:
        raw = out / f"{scenario}.txt"
        spy = spawn(
            [
                str(ROOT / ".venv" / "bin" / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        generate(server, pid, scenario, args)
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        _children.remove(spy)
    finally:
        server.stop()
    log(f"\n## imserver profile during '{scenario}' ({raw})")
    subprocess.run([str(PYTHON), str(BENCH / "profile_summary.py"), str(raw)], check=False)


def ensure_py_spy() -> None:
    if not (ROOT / ".venv" / "bin" / "py-spy").exists():
        log("# installing py-spy into .venv")
        subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "py-spy"], check=True)


# -- the table -------------------------------------------------------------------


def table(records: list[dict], names: tuple[str, str]) -> str:
    """Medians per figure and server, the ratio first/second, and which side is better."""
    first, second = names
    rows = [
        f"| figure | unit | {first} | {second} | {first}/{second} | {first} is |",
        "|---|---|---:|---:|---:|---|",
    ]
    for scenario, field, label, unit, higher_better in FIGURES:
        medians = [_median(records, scenario, name, field) for name in names]
        if medians[0] is None and medians[1] is None:
            continue
        a, b = medians
        ratio = a / b if a is not None and b else None
        verdict = ""
        if ratio is not None:
            better = ratio > 1 if higher_better else ratio < 1
            verdict = "≈" if 0.95 <= ratio <= 1.05 else ("better" if better else "worse")
        rows.append(
            f"| {label} | {unit} | {_number(a)} | {_number(b)} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | {verdict} |"
        )
    return "\n".join(rows)


#: Issue 9's login targets: (label, (scenario, field) for imserver, the same for Prosody,
#: the bound on imserver/Prosody, True when the ratio must be at least the bound).
#: Prosody 0.12 has no SCRAM-SHA-256 for stored keys, so ours is set against its SCRAM-SHA-1.
TARGETS = (
    (
        "SCRAM-SHA-256 logins/s vs Prosody SCRAM-SHA-1",
        ("login-scram256", "rate"),
        ("login-scram", "rate"),
        1.5,
        True,
    ),
    ("PLAIN logins/s", ("login-plain", "rate"), ("login-plain", "rate"), 1.0, True),
    ("big-roster login p50", ("roster-login", "p50_ms"), ("roster-login", "p50_ms"), 1.0, False),
)


def targets(records: list[dict], names: tuple[str, str]) -> str:
    """Each login target: both medians, their ratio, and whether the bound is met."""
    rows = [
        "| target | imserver | prosody | ratio | bound | met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, (ours, field), (theirs, their_field), bound, at_least in TARGETS:
        a = _median(records, ours, names[0], field)
        b = _median(records, theirs, names[1], their_field)
        if a is None or b is None or not b:
            continue
        ratio = a / b
        met = ratio >= bound if at_least else ratio <= bound
        sign = ">=" if at_least else "<="
        rows.append(
            f"| {label} | {_number(a)} | {_number(b)} | {ratio:.2f} | {sign} {bound} | "
            f"{'yes' if met else 'NO'} |"
        )
    return "\n".join(rows)


def _median(records: list[dict], scenario: str, server: str, field: str) -> float | None:
    values = [
        r[field]
        for r in records
        if r["scenario"] == scenario and r["server"] == server and r.get(field) is not None
    ]
    return statistics.median(values) if values else None


def load_table(records: list[dict], names: tuple[str, str]) -> str:
    """Who was busy during each measured phase: proof the generator is not the limit."""
    rows = [
        "| scenario | server | server CPU busy | generator CPU busy | other processes |",
        "|---|---|---:|---:|---:|",
    ]
    scenarios = dict.fromkeys(r["scenario"] for r in records if "server_cpu_util" in r)
    for scenario in scenarios:
        for name in names:
            chosen = [r for r in records if r["scenario"] == scenario and r["server"] == name]
            if not chosen:
                continue

            def median(field: str, chosen: list[dict] = chosen) -> str:
                values = [r[field] for r in chosen if r.get(field) is not None]
                return f"{statistics.median(values):.0%}" if values else "-"

            rows.append(
                f"| {scenario} | {name} | {median('server_cpu_util')} | "
                f"{median('client_cpu_util')} | {median('other_cpu_util')} |"
            )
    return "\n".join(rows)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


# -- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 3, quick 1)")
    parser.add_argument("--imserver-port", type=int, default=15222)
    parser.add_argument("--prosody-port", type=int, default=25222)
    parser.add_argument("--workdir", type=Path, help="keep data, configs and logs here")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to go idle",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, run each scenario once more against imserver under py-spy",
    )
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.cpu_count() and os.cpu_count() < 2:
        log("# warning: one core: server and generator share it")
    ensure_prosody()
    if args.profile:
        ensure_py_spy()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imserver-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = (args.workdir or Path(tempfile.gettempdir())) / f"imserver-bench-{stamp}.jsonl"
    servers = [
        make_imserver(workdir, args.imserver_port),
        make_prosody(workdir, args.prosody_port),
    ]
    started = time.monotonic()
    log(f"# {versions()}")
    records: list[dict] = []
    try:
        for server in servers:
            # Setup is idempotent but slow (thousands of sign-ups): a reused --workdir skips it.
            done = server.workdir / f"setup-done{'-quick' if args.quick else ''}"
            if done.exists():
                continue
            log(f"# setting up {server.name} in {server.workdir}")
            pid = server.start()
            try:
                generate(server, pid, "setup", args)
            finally:
                server.stop()
            done.touch()
        for round_number in range(args.rounds):
            for index, scenario in enumerate(args.scenarios):
                order = servers if (round_number + index) % 2 == 0 else servers[::-1]
                for server in order:
                    log(f"# round {round_number + 1}/{args.rounds}: {scenario} on {server.name}")
                    wait_for_quiet(args.quiet_wait)
                    pid = server.start(archive=scenario in ARCHIVE_SCENARIOS)
                    try:
                        found = generate(server, pid, scenario, args)
                    finally:
                        server.stop()
                    for record in found:
                        record["round"] = round_number + 1
                    records += found
                    with results.open("a") as f:
                        f.writelines(json.dumps(r) + "\n" for r in found)
        if records:
            names = (servers[0].name, servers[1].name)
            rounds = f"{args.rounds} round{'s' if args.rounds > 1 else ''}"
            log(f"\n## Medians of {rounds}{' (--quick sizes)' if args.quick else ''}\n")
            log(table(records, names))
            log("\n## Login targets (issue 9)\n")
            log(targets(records, names))
            log("\n## CPU use during the measured phases (medians)\n")
            log(load_table(records, names))
            minutes = (time.monotonic() - started) / 60
            log(f"\n# {minutes:.1f} min; raw records in {results}")
        if args.profile:
            out = workdir / "profiles"
            out.mkdir(exist_ok=True)
            for scenario in args.scenarios:
                profile(servers[0], scenario, args, out)
    finally:
        stop_all_children()
        if args.workdir is None and not args.profile:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
