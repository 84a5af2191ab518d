"""``python -m bot.bench loop-lag|scheduler|cluster [...]``: prints one JSON line of figures."""

from __future__ import annotations

import argparse
import sys

from bot.bench import cluster, loop_lag, scheduler_overhead


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.bench")
    benches = parser.add_subparsers(dest="bench", required=True)
    loop_lag.add_parser(benches)
    scheduler_overhead.add_parser(benches)
    cluster.add_parser(benches)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
