"""``python -m pipelines imagine``: VQGAN-CLIP from the command line.

Writes ``OUT.png`` (the best candidate), ``OUT-2.png`` … for the other candidates in rank order,
and ``OUT.json`` with every setting used, the seed, the scores and the model identities. With
``--mask-text`` it also writes ``OUT.mask.png``, the soft self-mask CLIP found (white changes
fully, black not at all). Before any work it prints how the prompts were read. Bad input exits
with code 2 and one line on stderr, before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pipelines.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    add_model_arguments,
    errors_in_one_line,
    load_pipeline_or_exit_code,
    model_settings,
    open_still_image,
)
from pipelines.cutouts import AUGMENTATION_SETS, DEFAULT_AUGMENTATIONS
from pipelines.image_prompts import parse_image_prompt_argument
from pipelines.interface import InvalidRequest
from pipelines.timelapse import (
    MAX_FRAMES,
    FrameRecorder,
    TimelapseError,
    encode_timelapse,
    frame_files,
)
from pipelines.vqgan_clip import (
    DEFAULT_INIT_WEIGHT_EDITING,
    DEFAULT_Z_REG_WEIGHT,
    ImagineRequest,
    default_size_for,
)

log = logging.getLogger(__name__)

COMMAND = "imagine"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    defaults = ImagineRequest.__dataclass_fields__
    parser = subparsers.add_parser(
        COMMAND,
        help="generate or edit an image from text (VQGAN-CLIP)",
        description=(
            "Optimise a VQGAN latent so that CLIP finds the image close to PROMPT. Prompts are "
            "'text[:weight[:stop]]' separated by '|', e.g. 'a castle | oil painting:0.5 | "
            "blurry:-1'; write \\: for a colon that belongs to the text. With --init the run "
            "edits that image instead of starting from noise."
        ),
    )
    parser.add_argument("prompt", help="weighted prompts; may be '' when --image-prompt is given")
    parser.add_argument("--out", required=True, type=Path, help="OUT.png; OUT.json goes beside it")
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=defaults["steps"].default)
    parser.add_argument("--seed", type=int, help="default: picked at random and reported")
    parser.add_argument(
        "--size",
        help="WIDTHxHEIGHT or one number for a square, multiples of 16 (default: 256x256, or "
        "about as many pixels with the init image's shape)",
    )
    parser.add_argument("--cutn", type=int, default=defaults["cutn"].default, help="cutouts/step")
    parser.add_argument("--cut-pow", type=float, default=defaults["cut_pow"].default)
    parser.add_argument("--lr", type=float, default=defaults["lr"].default, help="Adam's step")
    parser.add_argument(
        "--candidates",
        type=int,
        default=defaults["candidates"].default,
        help="independent images (seeds SEED..SEED+N-1), ranked best first",
    )
    parser.add_argument("--init", type=Path, help="start from this image (editing)")
    parser.add_argument(
        "--mask",
        type=Path,
        help="with --init: edit only where this is white/opaque; same shape as the init image "
        "(it is resized with it)",
    )
    parser.add_argument(
        "--mask-text", help="with --init: name the part to edit; CLIP finds it (self-masking)"
    )
    parser.add_argument(
        "--image-prompt",
        action="append",
        default=[],
        metavar="IMAGE[:WEIGHT[:STOP]]",
        help="an image to aim for, weight 1 unless given (repeat for several); a path that "
        "exists is taken whole, so 'a:b.png' works, and only otherwise are trailing numbers "
        "read as weight and stop",
    )
    parser.add_argument(
        "--init-weight",
        type=float,
        default=defaults["init_weight"].default,
        help="pull toward the starting latent: w * mean((z - z0)^2) (default: "
        f"{DEFAULT_INIT_WEIGHT_EDITING:g} with --init, else 0)",
    )
    parser.add_argument(
        "--z-reg-weight",
        type=float,
        default=defaults["z_reg_weight"].default,
        help="alpha of alpha * mean(z^2), decaying linearly to 0 over the run (default: "
        f"{DEFAULT_Z_REG_WEIGHT:g} without --init, 0 with it: it would pull the image's codes "
        "to zero)",
    )
    parser.add_argument(
        "--structure-weight",
        type=float,
        default=defaults["structure_weight"].default,
        help="with --mask-text: how strongly cutouts stay like the original's",
    )

    parser.add_argument(
        "--augmentations",
        choices=tuple(AUGMENTATION_SETS),
        default=DEFAULT_AUGMENTATIONS,
        help="strengths of the cutouts' augmentations: crowson (the paper's notebook, mild) or "
        "nerdyrodent (strong perspective and colour jitter)",
    )
    parser.add_argument(
        "--candidate-batch",
        help="candidates forwarded together: auto or a number (default: the config's, else "
        "auto); the images are the same either way",
    )
    parser.add_argument(
        "--video",
        type=Path,
        metavar="OUT.mp4",
        help="also write a timelapse of the run: an H.264 MP4 (an animated WebP if PyAV cannot "
        f"encode H.264, or if the name ends in .webp), one frame per step, at most {MAX_FRAMES}",
    )
    parser.add_argument("--video-fps", type=int, default=10, help="frames per second of --video")

    errors_in_one_line(parser, COMMAND)
    parser.set_defaults(run=run)
    return parser


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        numbers = [int(part.strip()) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        return numbers[0], numbers[0]
    if len(numbers) == 2:
        return numbers[0], numbers[1]
    raise InvalidRequest(f"--size {text!r} is not WIDTHxHEIGHT (e.g. 256x256) or one number")


def build_request(args: argparse.Namespace) -> ImagineRequest:
    init = open_still_image(args.init, "init image") if args.init is not None else None
    mask = open_still_image(args.mask, "mask") if args.mask is not None else None
    image_args = [parse_image_prompt_argument(text) for text in args.image_prompt]
    image_prompts = [open_still_image(arg.path, "image prompt") for arg in image_args]
    if args.size is not None:
        width, height = parse_size(args.size)
    elif init is not None:
        width, height = default_size_for(init)
    else:
        width, height = 256, 256
    request = ImagineRequest(
        prompt=args.prompt,
        seed=args.seed,
        steps=args.steps,
        width=width,
        height=height,
        cutn=args.cutn,
        cut_pow=args.cut_pow,
        lr=args.lr,
        candidates=args.candidates,
        init_image=init,
        mask=mask,
        mask_text=args.mask_text,
        image_prompts=image_prompts,
        image_prompt_weights=[arg.weight for arg in image_args],
        image_prompt_stops=[arg.stop for arg in image_args],
        init_weight=args.init_weight,
        z_reg_weight=args.z_reg_weight,
        augmentations=args.augmentations,
        structure_weight=args.structure_weight,
        # The bar moves every step; turning a decoded step into a PIL image costs milliseconds.
        preview_every=1,
    )
    request.validate()
    return request


def output_paths(out: Path, count: int) -> list[Path]:
    """OUT.png for the best, then OUT-2.png, OUT-3.png … in rank order."""
    suffix = out.suffix or ".png"
    stem = out.with_suffix("") if out.suffix else out
    return [stem.with_suffix(suffix)] + [
        stem.with_name(f"{stem.name}-{rank}{suffix}") for rank in range(2, count + 1)
    ]


def check_output(out: Path) -> None:
    if out.suffix.lower() not in ("", ".png"):
        raise InvalidRequest(f"--out {str(out)!r} must be a .png file")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidRequest(f"--out: the folder {str(folder)!r} does not exist")


def check_video_output(video: Path | None, fps: int) -> None:
    if video is None:
        return
    if video.suffix.lower() not in (".mp4", ".webp"):
        raise InvalidRequest(f"--video {str(video)!r} must be a .mp4 or .webp file")
    folder = video.parent if str(video.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidRequest(f"--video: the folder {str(folder)!r} does not exist")
    if not 1 <= fps <= 60:
        raise InvalidRequest(f"--video-fps must be from 1 to 60, got {fps}")


def write_video(frames_dir: Path, video: Path, fps: int) -> Path:
    """Encode the kept frames; returns the file written (``.webp`` if the MP4 fell back)."""
    made = encode_timelapse(frame_files(frames_dir), fps=fps, webp=video.suffix.lower() == ".webp")
    path = video.with_suffix(f".{made.extension}")
    path.write_bytes(made.data)
    if made.note:
        print(made.note)
    return path


def mask_path(out: Path) -> Path:
    """OUT.mask.png beside OUT.png."""
    stem = out.with_suffix("") if out.suffix else out
    return stem.with_name(f"{stem.name}.mask.png")


def run(args: argparse.Namespace) -> int:
    try:
        settings = model_settings(args)
        check_output(args.out)
        check_video_output(args.video, args.video_fps)
        request = build_request(args)
    except InvalidRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Shown first, so a misread prompt can be stopped before the models load.
    print(f"prompts: {request.reading()}")

    pipeline = load_pipeline_or_exit_code("imagine", settings)
    if isinstance(pipeline, int):
        return pipeline

    with tempfile.TemporaryDirectory(prefix="faraday-frames-") as frames_dir:
        recorder = None if args.video is None else FrameRecorder(Path(frames_dir))
        started = time.monotonic()
        with tqdm(total=request.steps, desc=COMMAND, unit="step", dynamic_ncols=True) as bar:

            def on_progress(step: int, total: int, preview: Image.Image | None) -> None:
                # The preview at step s shows the image after s steps, and arrives once step
                # s + 1 has run (except the last, after the final decode).
                bar.update(min(step + 1, total) - bar.n)
                if recorder is not None and preview is not None:
                    recorder.add(step, preview, final=step >= total)

            try:
                result = pipeline(request, on_progress)
            except InvalidRequest as exc:
                bar.close()
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_BAD_INPUT
        seconds = time.monotonic() - started
        video: Path | None = None
        video_error = ""
        if args.video is not None:
            try:
                video = write_video(Path(frames_dir), args.video, args.video_fps)
            except (TimelapseError, OSError) as exc:
                # The images are still written below; only the video is lost.
                video_error = f"error: the video {str(args.video)!r} was not written: {exc}"

    paths = output_paths(args.out, len(result.images))
    outputs = []
    for path, ranked in zip(paths, result.images, strict=True):
        ranked.image.save(path, format="PNG")
        outputs.append(
            {"file": path.name, "rank": ranked.rank, "score": ranked.score, "seed": ranked.seed}
        )
    written_mask = None
    if "mask" in result.artifacts:
        written_mask = mask_path(paths[0])
        result.artifacts["mask"].save(written_mask, format="PNG")
    inputs = {
        "init_image": None if args.init is None else str(args.init),
        "mask": None if args.mask is None else str(args.mask),
        "image_prompts": [
            str(arg.path) for arg in map(parse_image_prompt_argument, args.image_prompt)
        ],
    }
    report = {
        "command": COMMAND,
        "outputs": outputs,
        "settings": result.settings,
        "inputs": inputs,
        "notes": result.notes,
        "mask_file": None if written_mask is None else written_mask.name,
        "seconds": round(seconds, 3),
    }
    json_path = paths[0].with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for note in result.notes:
        print(note)
    extra = [p for p in (written_mask, video) if p]
    written = ", ".join(str(p) for p in [*paths, *extra])
    print(f"wrote {written} and {json_path} (seed {result.settings['seed']})")
    if video_error:
        print(video_error, file=sys.stderr)
        return EXIT_FAILED
    return 0
