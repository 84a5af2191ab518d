"""``python -m pipelines.bench vqgan-clip|blended|upscale``: prints one JSON line of figures."""

from __future__ import annotations

import argparse
import sys

from pipelines.bench import blended, upscale, vqgan_clip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench")
    benches = parser.add_subparsers(dest="bench", required=True)
    vqgan_clip.add_parser(benches)
    blended.add_parser(benches)
    upscale.add_parser(benches)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
