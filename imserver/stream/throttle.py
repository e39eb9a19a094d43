"""Slowing down password guessing per source address, without banning anyone."""

from __future__ import annotations

import time


class AuthThrottle:
    """Failed logins per address, turned into a delay before the next answer.

    Each failure doubles the delay (from C{base} up to C{ceiling}); a correct
    password still succeeds, it just waits its turn. Entries fade after a quiet
    period, so an address is never locked out for long.
    """

    def __init__(self, base: float, ceiling: float, forget_after: float = 300.0) -> None:
        self.base = base
        self.ceiling = ceiling
        self.forget_after = forget_after
        self._failures: dict[str, tuple[int, float]] = {}

    def delay(self, address: str) -> float:
        """Seconds to wait before answering an attempt from C{address}."""
        entry = self._failures.get(address)
        if entry is None or self.base <= 0:
            return 0.0
        count, last = entry
        if time.monotonic() - last > self.forget_after:
            del self._failures[address]
            return 0.0
        return min(self.base * 2 ** (count - 1), self.ceiling)

    def failed(self, address: str) -> None:
        count = self._failures.get(address, (0, 0.0))[0]
        self._failures[address] = (count + 1, time.monotonic())
        if len(self._failures) > 100_000:  # bounded memory under a distributed attack
            oldest = min(self._failures, key=lambda a: self._failures[a][1])
            del self._failures[oldest]

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
