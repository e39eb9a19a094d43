#!/usr/bin/env python3
"""Top functions by self and cumulative time from a py-spy raw (collapsed stacks) profile.

A flame graph is for browsing; this is the short list to paste into an issue:
where the samples end (self), which project functions they pass through
(cumulative, imserver/ and plugins/ only, since the reactor's own frames sit
under everything), and how the time splits between the reactor thread and the
storage threads. Samples of pool threads waiting for work are left out.

    .venv/bin/py-spy record --format raw -o prof.txt --pid PID
    .venv/bin/python bench/profile_summary.py prof.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
#: Leaf frames that mean "waiting", which py-spy may still sample as active.
WAITING = ("Condition.wait (threading.py)", "Queue.get (queue.py)")
PROJECT = ("(imserver/", "(plugins/")


def function(frame: str) -> str:
    """'name (file:line)' -> 'name (file)': lines of one function are merged."""
    return _LINE.sub(")", frame.strip())


@dataclass
class Profile:
    total: int = 0
    waiting: int = 0
    own: Counter = field(default_factory=Counter)
    cumulative: Counter = field(default_factory=Counter)
    threads: Counter = field(default_factory=Counter)


def summarise(path: Path) -> Profile:
    profile = Profile()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [function(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if frames[-1] in WAITING:
            profile.waiting += count
            continue
        profile.total += count
        profile.own[frames[-1]] += count
        for name in set(frames):
            profile.cumulative[name] += count
        reactor = any(f.startswith("ReactorBase.run (") for f in frames)
        profile.threads["reactor thread" if reactor else "other threads"] += count
    return profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    p = summarise(args.profile)
    if not p.total:
        print(f"{args.profile}: no samples", file=sys.stderr)
        return 1
    split = ", ".join(f"{name} {100 * n / p.total:.0f}%" for name, n in p.threads.most_common())
    print(f"{p.total} busy samples ({split}; {p.waiting} idle pool samples dropped)\n")
    project = Counter({k: v for k, v in p.cumulative.items() if any(s in k for s in PROJECT)})
    for title, counter in (("self", p.own), ("cumulative, project code", project)):
        print(f"top {args.top} by {title} time:")
        for name, count in counter.most_common(args.top):
            print(f"  {100 * count / p.total:5.1f}%  {name}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
