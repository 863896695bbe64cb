"""Summarise a py-spy ``-f raw`` (collapsed stacks) profile: self and inclusive share by
function, the way ``py-spy top`` shows it, for PROFILE.md.

    python benchmarks/_pyspy_top.py OUT.raw [--top 25] [--filter SUBSTRING]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{m.group('func')} ({short})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--filter", default="", help="keep only stacks containing this")
    args = parser.parse_args()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    with open(args.path) as f:
        for line in f:
            stack, _, count_s = line.rstrip("\n").rpartition(" ")
            if not stack or (args.filter and args.filter not in stack):
                continue
            count = int(count_s)
            samples += count
            frames = [frame_name(fr) for fr in stack.split(";")]
            own[frames[-1]] += count
            for name in set(frames):
                total[name] += count
    print(f"{samples} samples")
    print(f"{'%own':>6} {'%total':>7}  function")
    for name, count in own.most_common(args.top):
        print(f"{count / samples:>6.1%} {total[name] / samples:>7.1%}  {name}")
    print(f"\nby inclusive time (top {args.top}):")
    for name, count in total.most_common(args.top):
        print(f"{own[name] / samples:>6.1%} {count / samples:>7.1%}  {name}")


if __name__ == "__main__":
    main()
