"""Which models a set of pipelines needs, as separate load steps a caller can run one at a time.

The bot loads them on its worker thread and shows "loading models (2 of 3)…" between steps, so
each step is one model as the per-process caches count them: a CLIP that guides VQGAN-CLIP and
ranks Blended Latent Diffusion's candidates is one step, not two. Running every step warms the
caches that :func:`pipelines.registry.load_pipeline` then reads, so building the pipelines
afterwards loads nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pipelines.downloads import ModelFileError, is_url
from pipelines.settings import ModelSettings, sources_of


@dataclass(frozen=True)
class ModelStep:
    key: str  # stable across runs, so a load's duration can be remembered and predicted
    label: str  # for people: "VQGAN", "CLIP ViT-B-32 (openai)"
    load: Callable[[], object]


def _clip_label(model: str, pretrained: str) -> str:
    return f"CLIP {model} ({pretrained or 'random weights'})"


def model_steps(settings: ModelSettings, kinds: Iterable[str]) -> list[ModelStep]:
    """One step per distinct model the pipelines of ``kinds`` ("imagine", "edit") need."""
    from pipelines import presets
    from pipelines.clip_models import load_clip
    from pipelines.devices import pick_device

    wanted = set(kinds)
    device = pick_device(settings.device)
    steps: list[ModelStep] = []
    seen: set[str] = set()

    def add(key: str, label: str, load: Callable[[], object]) -> None:
        if key not in seen:
            seen.add(key)
            steps.append(ModelStep(f"{settings.preset}:{key}", label, load))

    if "imagine" in wanted:
        add("vqgan", "VQGAN", lambda: presets.load_vqgan(settings, device))
        guide = presets.guide_clip_spec(settings)
        add(
            f"clip:{guide.model}:{guide.pretrained}",
            _clip_label(guide.model, guide.pretrained),
            lambda: load_clip(guide, device, cache_dir=settings.cache_dir),
        )
    if "edit" in wanted:
        from pipelines.diffusion_models import load_diffusion

        model = settings.diffusion_model if settings.preset == "default" else settings.preset
        add(f"diffusion:{model}", f"diffusion model {model}", lambda: load_diffusion(settings))
        ranker = presets.ranker_clip_spec(settings)
        add(
            f"clip:{ranker.model}:{ranker.pretrained}",
            _clip_label(ranker.model, ranker.pretrained),
            lambda: load_clip(ranker, device, cache_dir=settings.cache_dir),
        )
    return steps


def check_local_files(settings: ModelSettings) -> None:
    """Fail at once, before anything slow starts, when a model file named by path cannot exist.

    Only the VQGAN's files are checked, and only when none of a key's sources can work: every
    source is a local path and none of them is a file. URLs and hub ids are left to loading.
    """
    if settings.preset != "default":
        return
    for what, value in (
        ("models.vqgan_config", settings.vqgan_config),
        ("models.vqgan_checkpoint", settings.vqgan_checkpoint),
    ):
        sources = sources_of(value)
        if any(is_url(s) for s in sources):
            continue
        paths = [Path(s).expanduser() for s in sources]
        if not any(p.is_file() for p in paths):
            shown = ", ".join(str(p) for p in paths)
            plural = "s" if len(paths) > 1 else ""
            raise ModelFileError(f"{what}: local file{plural} {shown} does not exist")
