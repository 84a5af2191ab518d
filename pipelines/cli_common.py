"""What ``python -m pipelines imagine`` and ``... edit`` share: the model options, one-line errors
and the exit codes.

Exit codes: 0 done, 1 the run failed, 2 bad input (the arguments, an input file, a config, or a
model file that is missing or not what it claims to be), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

from PIL import Image

from pipelines import image_io
from pipelines.downloads import ModelFileError
from pipelines.interface import InvalidRequest, Pipeline
from pipelines.settings import PRESETS, ModelSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        help="which models: tiny/random-full are random weights for tests and benchmarks "
        "(default: the config's, else 'default')",
    )
    parser.add_argument("--config", type=Path, help="read the [models] table of this config.toml")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's)")


def errors_in_one_line(parser: argparse.ArgumentParser, command: str) -> None:
    """Make argparse's errors one line and exit code 2, like every other refusal."""

    def one_line_error(message: str) -> NoReturn:
        # argparse would print the whole usage block first.
        print(f"error: {message} (see python -m pipelines {command} --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)

    parser.error = one_line_error  # type: ignore[method-assign]


def candidate_batch_argument(text: str) -> int | str:
    """``--candidate-batch``: "auto" or a whole number of at least 1."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidRequest(
            f"--candidate-batch must be auto or a whole number of at least 1, got {text!r}"
        )
    return value


def model_settings(args: argparse.Namespace) -> ModelSettings:
    """``[models]`` from ``--config`` if given, then ``--preset``/``--device`` on top."""
    table: dict[str, Any] = {}
    if args.config is not None:
        try:
            document = tomllib.loads(args.config.read_text(encoding="utf-8"))
        except OSError as exc:
            reason = exc.strerror or exc
            raise InvalidRequest(f"cannot read the config {str(args.config)!r}: {reason}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequest(
                f"the config {str(args.config)!r} is not valid TOML: {exc}"
            ) from exc
        models = document.get("models", {})
        if not isinstance(models, dict):
            raise InvalidRequest(f"the config {str(args.config)!r}: [models] must be a table")
        table = dict(models)
    if args.preset is not None:
        table["preset"] = args.preset
    if args.device is not None:
        table["device"] = args.device
    batch = getattr(args, "candidate_batch", None)
    if batch is not None:
        table["candidate_batch"] = candidate_batch_argument(batch)
    try:
        return ModelSettings.from_mapping(table)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"model settings: {exc}") from exc


def open_still_image(path: Path, what: str) -> Image.Image:
    """The image at ``path``, or ``InvalidRequest`` saying why not (animated ones included)."""
    image = image_io.open_image(path, what=what)
    # The opened copy has lost its frames (EXIF transposing copies it), so ask the file.
    with Image.open(path) as raw:
        animated = image_io.is_animated(raw)
    if animated:
        raise InvalidRequest(f"the {what} {str(path)!r} is animated; give a still image")
    return image


def load_pipeline_or_exit_code(kind: str, settings: ModelSettings) -> Pipeline | int:
    """The loaded pipeline, or the exit code after one line on stderr saying why it could not be.

    A model file that is missing, unreachable or wrong is the user's to fix (exit 2); anything
    else is a failure of the run (exit 1), with the traceback in the log at debug level.
    """
    from pipelines.registry import load_pipeline

    try:
        return load_pipeline(kind, settings)
    except ModelFileError as exc:
        log.debug("a model file was refused", exc_info=True)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, ValueError, RuntimeError) as exc:
        log.debug("loading failed", exc_info=True)
        print(
            f"error: cannot load the models for preset {settings.preset!r}: {one_line(exc)}",
            file=sys.stderr,
        )
        return EXIT_FAILED


def one_line(exc: BaseException) -> str:
    # Library errors (diffusers, huggingface_hub) often span several lines.
    return " ".join(str(exc).split())
