"""``python -m pipelines.fetch_models [--config config.toml]`` (``make models``).

Downloads every model file the ``[models]`` table names, each with a progress bar, checks each by
loading it with the same code the bot uses, and prints what it fetched, the sizes and where the
files went. It also leaves a note in the cache folder (:data:`MANIFEST_NAME`) saying which hub
models are complete there; ``python -m bot`` reads it and then never contacts the hub, so after
``make models``, ``make run`` downloads nothing.

Exit codes: 0 done, 1 failed, 2 a model file is missing, unreachable or wrong (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.cli_common import EXIT_BAD_INPUT, EXIT_FAILED, model_settings, one_line
from pipelines.downloads import ModelFileError, cached_path_for_url, fetch_first, is_url
from pipelines.interface import InvalidRequest
from pipelines.settings import ModelSettings, sources_of

log = logging.getLogger(__name__)

MANIFEST_NAME = "fetched-models.json"
# The files diffusers reads for each component (safetensors only: the hub repos also hold .bin
# copies and fp16 variants, which would triple the download for nothing).
DIFFUSION_FILES = [
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/*",
    "scheduler/scheduler_config.json",
]


@dataclass
class Fetched:
    """One model the config names: where it came from, whether it was downloaded now, its files."""

    what: str
    source: str
    downloaded: bool
    paths: list[Path] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        total = 0
        for path in self.paths:
            if path.is_dir():
                total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            elif path.is_file():
                total += path.stat().st_size
        return total


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _hub_endpoint() -> str | None:
    # Read at call time so a test (or a mirror) can point the hub elsewhere.
    return os.environ.get("HF_ENDPOINT") or None


def fetch_vqgan(settings: ModelSettings, *, progress: bool = True) -> list[Fetched]:
    """The VQGAN's yaml and checkpoint, checked by building the VQGAN from them (strictly)."""
    from pipelines.checkpoints import current_weights_cache, extracted_cache_path, load_weights
    from pipelines.vqgan_loading import (
        CHECKPOINT_KEY,
        CONFIG_KEY,
        build_vqgan,
        parse_taming_config,
    )

    cache = settings.cache_dir
    config_sources = sources_of(settings.vqgan_config)
    had = {s for s in config_sources if is_url(s) and cached_path_for_url(s, cache).is_file()}
    config_path, used = fetch_first(
        config_sources,
        cache,
        what=CONFIG_KEY,
        sha256=settings.vqgan_config_sha256,
        progress=progress,
        check=lambda path, name: parse_taming_config(path, name=name),
    )
    out = [Fetched(CONFIG_KEY, used, is_url(used) and used not in had, [config_path])]
    config = parse_taming_config(config_path)

    checkpoint_sources = sources_of(settings.vqgan_checkpoint)
    pin = settings.vqgan_checkpoint_sha256
    extracted = current_weights_cache(checkpoint_sources, cache, pin)
    if extracted is not None:
        weights = load_weights(
            checkpoint_sources,
            cache_dir=cache,
            what=CHECKPOINT_KEY,
            sha256_key=f"{CHECKPOINT_KEY}_sha256",
            pinned_sha256=pin,
            trust=settings.trust_checkpoints,
            progress=progress,
        )
        out.append(Fetched(CHECKPOINT_KEY, "the weights extracted earlier", False, [extracted]))
    else:
        had = {
            s for s in checkpoint_sources if is_url(s) and cached_path_for_url(s, cache).is_file()
        }
        path, used = fetch_first(
            checkpoint_sources, cache, what=CHECKPOINT_KEY, sha256=pin, progress=progress
        )
        weights = load_weights(
            used,
            cache_dir=cache,
            what=CHECKPOINT_KEY,
            sha256_key=f"{CHECKPOINT_KEY}_sha256",
            pinned_sha256=pin,
            trust=settings.trust_checkpoints,
            progress=progress,
        )
        files = [path]
        copy = extracted_cache_path(used, cache)
        if copy.is_file():
            files.append(copy)
        out.append(Fetched(CHECKPOINT_KEY, used, is_url(used) and used not in had, files))
    build_vqgan(config, weights, what=CHECKPOINT_KEY)
    return out


def fetch_clip(what: str, model: str, pretrained: str, cache_dir: Path) -> Fetched | None:
    """An open_clip model's weights (a tag is downloaded; a file is used as is), then loaded."""
    import torch

    from pipelines.clip_models import ClipSpec, load_clip

    if not pretrained:
        return None
    if Path(pretrained).expanduser().is_file():
        fetched = Fetched(what, pretrained, False, [Path(pretrained).expanduser()])
    else:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(model, pretrained)
        if not cfg:
            raise ModelFileError(
                f"{what}: open_clip knows no pretrained weights {pretrained!r} for {model} "
                "(and it is not a local file)"
            )
        before = _files_under(cache_dir)
        try:
            path = open_clip.download_pretrained(cfg, cache_dir=str(cache_dir))
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelFileError(
                f"{what}: the {model} weights {pretrained!r} could not be downloaded "
                f"({one_line(exc)[:200]})"
            ) from exc
        if not path:
            raise ModelFileError(f"{what}: open_clip has no download for {model} {pretrained!r}")
        resolved = Path(path).resolve()
        fetched = Fetched(what, f"{model} {pretrained}", resolved not in before, [resolved])
    load_clip(ClipSpec(model, pretrained), torch.device("cpu"), cache_dir=cache_dir)
    return fetched


def fetch_diffusion(settings: ModelSettings) -> Fetched:
    """The diffusers model's components (a hub id is downloaded; a folder is used as is), loaded."""
    import torch

    from pipelines.diffusion_models import load_pretrained

    model = settings.diffusion_model
    what = "models.diffusion_model"
    if Path(model).expanduser().is_dir():
        fetched = Fetched(what, model, False, [Path(model).expanduser()])
    else:
        from huggingface_hub import snapshot_download

        before = _files_under(settings.cache_dir)
        try:
            folder = snapshot_download(
                model,
                cache_dir=str(settings.cache_dir),
                allow_patterns=DIFFUSION_FILES,
                endpoint=_hub_endpoint(),
            )
        except Exception as exc:  # huggingface_hub raises many kinds; all mean "not fetched"
            raise ModelFileError(
                f"{what}: {model!r} could not be downloaded from the Hugging Face hub "
                f"({one_line(exc)[:200]}); check the id and the connection, or give a local "
                "diffusers folder"
            ) from exc
        after = _files_under(settings.cache_dir)
        fetched = Fetched(what, model, bool(after - before), [Path(folder)])
    load_pretrained(str(fetched.paths[0]), settings.cache_dir, torch.float32)
    return fetched


def fetch_safety_checker(settings: ModelSettings) -> Fetched:
    """The image safety checker (a hub id is downloaded; a folder is used as is), then loaded."""
    import torch

    from pipelines.safety import WHAT, load_pretrained_checker

    model = settings.safety_checker
    if Path(model).expanduser().is_dir():
        fetched = Fetched(WHAT, model, False, [Path(model).expanduser()])
    else:
        from huggingface_hub import snapshot_download

        before = _files_under(settings.cache_dir)
        folder = ""
        try:
            # safetensors when the repository has them, else the original pickled weights
            # (which transformers loads with torch's weights-only loader).
            for weights in ("model.safetensors", "pytorch_model.bin"):
                folder = snapshot_download(
                    model,
                    cache_dir=str(settings.cache_dir),
                    allow_patterns=["config.json", "preprocessor_config.json", weights],
                    endpoint=_hub_endpoint(),
                )
                if (Path(folder) / weights).is_file():
                    break
        except Exception as exc:  # huggingface_hub raises many kinds; all mean "not fetched"
            raise ModelFileError(
                f"{WHAT}: {model!r} could not be downloaded from the Hugging Face hub "
                f"({one_line(exc)[:200]}); check the id and the connection, or give a local "
                "folder"
            ) from exc
        after = _files_under(settings.cache_dir)
        fetched = Fetched(WHAT, model, bool(after - before), [Path(folder)])
    load_pretrained_checker(str(fetched.paths[0]), settings.cache_dir, torch.float32)
    return fetched


def fetch_upscaler(settings: ModelSettings) -> Fetched:
    """The upscaler file (a URL is downloaded once into the cache; a path is used as is), checked
    by spandrel as the bot's loader checks it."""
    from pipelines.downloads import fetch
    from pipelines.upscale import check_upscaler_file, load_descriptor_from_file

    what = "models.upscaler_model"
    source = settings.upscaler_model
    had = is_url(source) and cached_path_for_url(source, settings.cache_dir).is_file()
    path = fetch(source, settings.cache_dir, what=what, sha256=settings.upscaler_model_sha256,
                 check=check_upscaler_file)
    load_descriptor_from_file(path)
    return Fetched(what, source, is_url(source) and not had, [path])


def _files_under(folder: Path) -> set[Path]:
    if not folder.is_dir():
        return set()
    return {p.resolve() for p in folder.rglob("*") if p.is_file()}


def fetch_all(
    settings: ModelSettings,
    *,
    progress: bool = True,
    on_fetched: Callable[[Fetched], None] = lambda fetched: None,
) -> list[Fetched]:
    """Every model file the settings name, downloaded, checked and recorded in the manifest."""
    if settings.preset != "default":
        return []
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    out: list[Fetched] = []

    def add(fetched: Fetched | None) -> None:
        if fetched is not None:
            out.append(fetched)
            on_fetched(fetched)

    for fetched in fetch_vqgan(settings, progress=progress):
        add(fetched)
    add(
        fetch_clip(
            "models.clip_pretrained",
            settings.clip_model,
            settings.clip_pretrained,
            settings.cache_dir,
        )
    )
    if (settings.ranker_clip_model, settings.ranker_clip_pretrained) != (
        settings.clip_model,
        settings.clip_pretrained,
    ):
        add(
            fetch_clip(
                "models.ranker_clip_pretrained",
                settings.ranker_clip_model,
                settings.ranker_clip_pretrained,
                settings.cache_dir,
            )
        )
    add(fetch_diffusion(settings))
    add(fetch_safety_checker(settings))
    add(fetch_upscaler(settings))
    write_manifest(settings)
    return out


def hub_sources(settings: ModelSettings) -> dict[str, str]:
    """What the bot would ask the Hugging Face hub for: the keys the manifest vouches for."""
    return {
        "clip": f"{settings.clip_model}:{settings.clip_pretrained}",
        "ranker_clip": f"{settings.ranker_clip_model}:{settings.ranker_clip_pretrained}",
        "diffusion_model": settings.diffusion_model,
        "safety_checker": settings.safety_checker,
    }


def write_manifest(settings: ModelSettings) -> Path:
    path = settings.cache_dir / MANIFEST_NAME
    path.write_text(json.dumps({"hub": hub_sources(settings)}, indent=1, sort_keys=True) + "\n")
    return path


def models_are_local(settings: ModelSettings) -> bool:
    """True when ``make models`` has fetched exactly the hub models these settings name."""
    if settings.preset != "default":
        return False
    try:
        recorded = json.loads((settings.cache_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("hub") == hub_sources(settings)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.fetch_models", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("config.toml"),
        help="read the [models] table of this file (default: %(default)s)",
    )
    parser.add_argument("--preset", choices=("default",), help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = model_settings(args)
    except InvalidRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if settings.preset != "default":
        print(f"preset {settings.preset!r} builds its models in-process: nothing to download")
        return 0

    def report(fetched: Fetched) -> None:
        verb = "fetched" if fetched.downloaded else "present"
        where = ", ".join(str(p) for p in fetched.paths)
        print(
            f"{verb:8} {fetched.what}: {fetched.source} ({human_size(fetched.size_bytes)}) "
            f"-> {where}",
            flush=True,
        )

    try:
        fetched = fetch_all(settings, on_fetched=report)
    except ModelFileError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, RuntimeError, ValueError) as exc:
        log.debug("fetching failed", exc_info=True)
        print(f"error: fetching the models failed: {one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    total = sum(f.size_bytes for f in fetched)
    new = sum(1 for f in fetched if f.downloaded)
    print(
        f"done: {len(fetched)} model file(s) checked, {new} downloaded now, "
        f"{human_size(total)} in all, under {settings.cache_dir}; "
        "`make run` will not download anything"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
