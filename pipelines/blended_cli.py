"""``python -m pipelines edit``: Blended Latent Diffusion from the command line.

Writes ``DIR/1.png … DIR/N.png`` (best first) and ``DIR/results.json`` (scores, seeds and every
setting used). Bad input exits with code 2 and one line on stderr, before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from pipelines.blended import BACKGROUND_MODES, START_MODES, EditRequest
from pipelines.cli_common import (
    EXIT_BAD_INPUT,
    add_model_arguments,
    errors_in_one_line,
    load_pipeline_or_exit_code,
    model_settings,
    open_still_image,
)
from pipelines.interface import InvalidRequest

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "edit",
        help="edit the masked region of an image (Blended Latent Diffusion)",
        description=(
            "Edit only the masked region of IMAGE to match PROMPT. The mask is MASK's alpha "
            "channel if some of it is transparent, otherwise its brightness (white = edit)."
        ),
    )
    parser.add_argument("prompt", help="what the masked region should become")
    parser.add_argument("--image", required=True, type=Path, help="the image to edit")
    parser.add_argument("--mask", required=True, type=Path, help="where to edit it")
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for the results")
    add_model_arguments(parser)
    defaults = EditRequest.__dataclass_fields__
    parser.add_argument("--candidates", type=int, default=defaults["candidates"].default)
    parser.add_argument("--steps", type=int, default=defaults["steps"].default)
    parser.add_argument(
        "--blend-start",
        type=float,
        default=defaults["blend_start"].default,
        help="fraction of the steps skipped before blending starts",
    )
    parser.add_argument("--guidance", type=float, default=defaults["guidance"].default)
    parser.add_argument("--seed", type=int, help="default: picked at random and reported")
    parser.add_argument(
        "--background", choices=BACKGROUND_MODES, default=defaults["background"].default
    )
    parser.add_argument(
        "--no-shrink", action="store_true", help="turn off progressive mask shrinking"
    )
    parser.add_argument(
        "--start",
        choices=START_MODES,
        default=defaults["start"].default,
        help="what the masked region starts from: the noised source (the paper) or pure noise "
        "(the official diffusers script)",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=defaults["max_side"].default,
        help="results keep the input's aspect ratio, long side at most this",
    )
    parser.add_argument("--negative-prompt", default=defaults["negative_prompt"].default)

    errors_in_one_line(parser, "edit")
    parser.set_defaults(run=run)
    return parser


def build_request(args: argparse.Namespace) -> EditRequest:
    request = EditRequest(
        prompt=args.prompt,
        image=open_still_image(args.image, "image"),
        mask=open_still_image(args.mask, "mask"),
        candidates=args.candidates,
        steps=args.steps,
        blend_start=args.blend_start,
        guidance=args.guidance,
        seed=args.seed,
        background=args.background,
        shrink=not args.no_shrink,
        start=args.start,
        max_side=args.max_side,
        negative_prompt=args.negative_prompt,
    )
    request.validate()
    return request


def run(args: argparse.Namespace) -> int:
    try:
        settings = model_settings(args)
        request = build_request(args)
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except InvalidRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"error: cannot create {str(args.out_dir)!r}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    pipeline = load_pipeline_or_exit_code("edit", settings)
    if isinstance(pipeline, int):
        return pipeline

    with tqdm(desc="edit", unit="step", dynamic_ncols=True) as bar:

        def on_progress(step: int, total: int, preview: object) -> None:
            bar.total = total
            bar.update(step - bar.n)

        try:
            result = pipeline(request, on_progress)
        except InvalidRequest as exc:
            bar.close()
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT

    files = []
    for ranked in result.images:
        path = args.out_dir / f"{ranked.rank}.png"
        ranked.image.save(path)
        files.append(
            {"file": path.name, "rank": ranked.rank, "score": ranked.score, "seed": ranked.seed}
        )
    report = {
        "prompt": request.prompt,
        "images": files,
        "settings": {**result.settings, "preset": settings.preset},
        "notes": result.notes,
    }
    (args.out_dir / "results.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    for note in result.notes:
        print(note)
    print(f"wrote {len(files)} image(s), best first, and results.json to {args.out_dir}")
    return 0
