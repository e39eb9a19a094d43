"""Stanzas per second through RestrictedElementStream versus Twisted's ExpatElementStream.

Run from the project root: ``.venv/bin/python bench/parser_bench.py [count]``.
Not a test; it shows what the restrictions cost on the hot path.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.words.xish import domish  # noqa: E402

from imserver.stream.parser import RestrictedElementStream  # noqa: E402

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>"
)
STANZA = (
    b"<message from='juliet@example.com/balcony' to='romeo@example.net' type='chat' "
    b"id='m%06d' xml:lang='en'><body>Wherefore art thou, Romeo? &amp; more</body>"
    b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
)
CHUNK_STANZAS = 40  # roughly one 16 KiB socket read per chunk


def chunks(count: int) -> list[bytes]:
    """The stream body split the way reads from a busy socket would split it."""
    stanzas = [STANZA % i for i in range(count)]
    return [b"".join(stanzas[i : i + CHUNK_STANZAS]) for i in range(0, count, CHUNK_STANZAS)]


def run(factory: Callable[[], Any], data: list[bytes], count: int) -> float:
    """Parse the whole stream once and return stanzas per second."""
    stream = factory()
    received = []
    stream.DocumentStartEvent = lambda element: None
    # Count stanzas rather than keep them: a server drops each one after routing.
    stream.ElementEvent = lambda element: received.append(None)
    stream.DocumentEndEvent = lambda: None
    stream.parse(HEADER)
    started = time.perf_counter()
    for chunk in data:
        stream.parse(chunk)
    elapsed = time.perf_counter() - started
    assert len(received) == count, len(received)
    return count / elapsed


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    data = chunks(count)
    for name, factory in (
        ("RestrictedElementStream", RestrictedElementStream),
        ("domish.ExpatElementStream", domish.ExpatElementStream),
    ):
        best = max(run(factory, data, count) for _ in range(3))
        print(f"{name:28s} {best:10,.0f} stanzas/s  (best of 3, {count:,} stanzas)")


if __name__ == "__main__":
    main()
