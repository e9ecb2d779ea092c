"""Every stage's benchmark against its peer, one after the other, at a small or a large size.

    .venv/bin/python -m bench.suite [--size small|large]

`make bench` runs the small size (under 15 minutes on 2 cores): every goal of docs/benchmarks.md,
batch scoring at 1M rows, the commands on a 10,000-row table, and the scoring service at 200 and
1,000 requests/s. `make bench-large` runs the 10M sizes. Each benchmark runs in its own process, prints ours, the peer and the ratio, and appends
its dated row to docs/benchmarks.md; the suite ends with each one's command, outcome and time.
A benchmark that fails does not stop the others; the suite's exit code says whether all ran.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

SIZES = {
    "small": [
        ("features", ["--customers", "20000", "--repeats", "2"]),
        ("scoring", ["--rows", "1000000", "--repeats", "3"]),
        ("drift", ["--rows", "1000000", "--columns", "20"]),
        ("validation", ["--rows", "1000000", "--repeats", "2"]),
        ("training", ["--rows", "40000", "--repeats", "3"]),
        ("cli", ["--rows", "10000", "--repeats", "3"]),
        ("serving", ["--seconds", "30", "--rate", "200", "--users", "40"]),
        ("serving", ["--seconds", "30", "--rate", "1000", "--users", "100", "--workers", "2"]),
    ],
    "large": [
        ("features", ["--customers", "160000", "--repeats", "1"]),        # about 10M transactions read
        ("scoring", ["--rows", "1000000", "--repeats", "3"]),
        ("drift", ["--rows", "1000000", "--columns", "20"]),
        ("drift", ["--rows", "10000000", "--columns", "20", "--peer-max-rows", "1000000"]),
        ("validation", ["--rows", "5000000", "--repeats", "2"]),
        ("training", ["--rows", "200000", "--repeats", "3"]),
        # the scale curve: every stage, local[2] and standalone (drift and validation use no Spark)
        ("scale", ["--sizes", "1000000,10000000,50000000"]),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    args = parser.parse_args()
    outcomes, started = [], time.monotonic()
    for name, options in SIZES[args.size]:
        command = [sys.executable, "-m", f"bench.bench_{name}", *options]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        begun = time.monotonic()
        code = subprocess.run(command).returncode
        outcomes.append((name, " ".join(options), code, time.monotonic() - begun))
    print(f"\n=== {args.size} suite: {time.monotonic() - started:.0f} s")
    for name, options, code, seconds in outcomes:
        print(f"{name:11s} {options:60s} {'ok' if code == 0 else f'FAILED ({code})':12s} {seconds:6.0f} s")
    sys.exit(1 if any(code for _, _, code, _ in outcomes) else 0)


if __name__ == "__main__":
    main()
