"""The server's log lines: Twisted's classic text format, made cheaply for the usual event.

twisted.logger's text observer spends about 12 µs on a line (a timezone-aware
datetime for every event, and a formatter that also renders tracebacks, legacy
events and calls inside fields): more than routing a message, and a login logs
two lines. L{text_observer} writes the same line for a plain event, with the
timestamp made once per second and the text by C{str.format_map}; any other
event (a failure, a legacy or system event, a format C{str.format} cannot
render) goes to Twisted's own formatter. Debug events are left out: the log
is for operators (e.g. the s2s resolver's per-query socket chatter is debug).
"""

from __future__ import annotations

import time
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogLevel, formatEventAsClassicLogText

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # Twisted's default


class _Seconds:
    """The formatted local time of the current second, computed once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self.second:
            self.second = second
            self.text = time.strftime(TIME_FORMAT, time.localtime(second))
        return self.text


def _formatter():
    stamp = _Seconds()

    def format_event(event: dict[str, Any]) -> str | None:
        if event.get("log_level") is LogLevel.debug:
            return None
        text = event.get("log_format")
        if text is not None and "log_failure" not in event and "log_system" not in event:
            try:
                text = text.format_map(event)
            except Exception:  # e.g. Twisted's "{method()}" fields
                pass
            else:
                level = event.get("log_level")
                system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
                text = text.replace("\n", "\n\t")
                return f"{stamp(event.get('log_time'))} [{system}] {text}\n"
        return formatEventAsClassicLogText(event, formatTime=stamp)

    return format_event


def text_observer(out: IO[str]) -> ILogObserver:
    """An observer writing Twisted's classic log lines to C{out}."""
    return FileLogObserver(out, _formatter())
