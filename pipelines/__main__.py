"""``python -m pipelines imagine|edit|upscale ...``: the pipelines from a command line.

Exit codes: 0 done, 2 bad input (one clear line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipelines import blended_cli, upscale_cli, vqgan_clip_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines", description="Generate and edit images from text."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    vqgan_clip_cli.add_parser(commands)
    blended_cli.add_parser(commands)
    upscale_cli.add_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
