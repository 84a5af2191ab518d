"""``python -m pipelines upscale IMAGE --out OUT.png``: one image through the upscaler.

Writes OUT.png and OUT.json (every setting used, the model's identity, the time taken). Bad input
(the image, the scale, the output path) exits with code 2 and one line on stderr before any model
is loaded; a model file that is missing or not an upscaler exits 2 as well.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from pipelines.cli_common import (
    EXIT_BAD_INPUT,
    add_model_arguments,
    errors_in_one_line,
    load_pipeline_or_exit_code,
    model_settings,
    open_still_image,
)
from pipelines.interface import InvalidRequest
from pipelines.upscale import UpscaleRequest

COMMAND = "upscale"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    defaults = UpscaleRequest.__dataclass_fields__
    parser = subparsers.add_parser(
        COMMAND,
        help="upscale an image (Real-ESRGAN x4plus by default, through spandrel)",
        description=(
            "Upscale IMAGE with an ESRGAN-family model, tile by tile so memory stays bounded. "
            "The model is [models] upscaler_model of --config (Real-ESRGAN x4plus by default)."
        ),
    )
    parser.add_argument("image", type=Path, help="the image to upscale")
    parser.add_argument("--out", required=True, type=Path, help="OUT.png; OUT.json goes beside it")
    add_model_arguments(parser)
    parser.add_argument(
        "--scale",
        type=float,
        help="output size over input size (default: the model's own, 4 for x4plus); other "
        "values resize the model's output",
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=defaults["tile"].default,
        help="input pixels per tile (0: the whole image at once)",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=defaults["overlap"].default,
        help="pixels of context around each tile",
    )
    parser.add_argument(
        "--max-input-side",
        type=int,
        default=0,
        help="refuse images with a longer side (default 0: no cap on the command line)",
    )
    errors_in_one_line(parser, COMMAND)
    parser.set_defaults(run=run)
    return parser


def check_output(out: Path) -> None:
    if out.suffix.lower() != ".png":
        raise InvalidRequest(f"--out {str(out)!r} must be a .png file")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidRequest(f"--out: the folder {str(folder)!r} does not exist")


def run(args: argparse.Namespace) -> int:
    try:
        settings = model_settings(args)
        check_output(args.out)
        request = UpscaleRequest(
            image=open_still_image(args.image, "image"),
            scale=args.scale,
            tile=args.tile,
            overlap=args.overlap,
            max_input_side=args.max_input_side,
        )
    except InvalidRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    pipeline = load_pipeline_or_exit_code(COMMAND, settings)
    if isinstance(pipeline, int):
        return pipeline

    started = time.monotonic()
    with tqdm(desc=COMMAND, unit="tile", dynamic_ncols=True) as bar:

        def on_progress(done: int, total: int, preview: object) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = pipeline(request, on_progress)
    seconds = time.monotonic() - started
    image = result.images[0].image
    image.save(args.out, format="PNG")
    report = {
        "command": COMMAND,
        "input": str(args.image),
        "output": args.out.name,
        "settings": result.settings,
        "seconds": round(seconds, 3),
    }
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({image.width}×{image.height}) and {json_path}")
    return 0
