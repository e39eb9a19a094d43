"""The server's log observer writes exactly the lines Twisted's text observer would."""

from __future__ import annotations

import io
import time

import pytest
from twisted.logger import LogLevel, formatEventAsClassicLogText, formatTime
from twisted.python.failure import Failure

from imserver.logs import text_observer


class Peer:
    host = "192.0.2.7"

    def describe(self) -> str:
        return "a peer"


def failure() -> Failure:
    try:
        raise ValueError("boom")
    except ValueError:
        return Failure()


NOW = time.time()
EVENTS = {
    "plain": {
        "log_format": "{peer} authenticated as {user}@{host}",
        "peer": "127.0.0.1",
        "user": "u1",
        "host": "localhost",
    },
    "repr and attribute": {"log_format": "{x!r} from {peer.host}", "x": "é'\"", "peer": Peer()},
    "two lines": {"log_format": "first\nsecond {n}", "n": 2},
    "method call": {"log_format": "{peer.describe()} said hello", "peer": Peer()},
    "missing field": {"log_format": "{absent} is not there"},
    "failure": {"log_format": "dispatch failed", "log_failure": failure()},
    "legacy system": {
        "log_format": "{log_text}",
        "log_text": "(TCP Port 5222 Closed)",
        "log_system": "-",
    },
    "no format": {"log_level": LogLevel.info},
}


@pytest.mark.parametrize("name", list(EVENTS))
def test_lines_match_twisted(name: str) -> None:
    event = {"log_time": NOW, "log_namespace": "imserver.test", "log_level": LogLevel.info}
    event.update(EVENTS[name])
    out = io.StringIO()
    text_observer(out)(dict(event))
    expected = formatEventAsClassicLogText(dict(event), formatTime=formatTime) or ""
    assert out.getvalue() == expected


def test_debug_events_are_left_out() -> None:
    """The log is for operators: debug lines (Twisted's per-socket chatter among them) are not."""
    out = io.StringIO()
    observe = text_observer(out)
    observe({"log_time": NOW, "log_format": "x", "log_level": LogLevel.debug})
    observe(dict(EVENTS["legacy system"], log_time=NOW, log_level=LogLevel.debug))
    assert out.getvalue() == ""
    observe({"log_time": NOW, "log_format": "kept", "log_level": LogLevel.info})
    assert out.getvalue().endswith("kept\n")
