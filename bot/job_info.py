"""What the ℹ️ button shows: a job's settings, seed, models, timings and a command to copy.

Pure functions of the stored job, so the text can be tested without Discord. The command reuses
the slash command's own option names, so pasting it into Discord repeats the job (an attached
image cannot be written as text; the reply says which ones to attach again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.jobs import JobKind
from bot.progress_text import MAX_CONTENT, format_duration
from bot.store import JobRecord, ResultRecord
from pipelines.settings import ModelSettings

# The slash command options each kind's params map to, in the order the command lists them.
COMMAND_OPTIONS: dict[JobKind, tuple[str, ...]] = {
    JobKind.IMAGINE: (
        "prompt",
        "seed",
        "steps",
        "size",
        "cutn",
        "mask_text",
        "image_prompt_weight",
    ),
    JobKind.EDIT: (
        "prompt",
        "seed",
        "steps",
        "candidates",
        "blend_start",
        "guidance",
        "background",
        "shrink",
        "start",
    ),
}
# Attached images that the command cannot carry as text, by the request's image field.
IMAGE_OPTIONS: dict[str, str] = {
    "init_image": "init_image",
    "mask": "mask",
    "image_prompts": "image_prompt",
    "image": "image",
}


def _option_value(name: str, params: dict[str, Any]) -> Any:
    if name == "size":
        if "width" in params and "height" in params:
            return f"{params['width']}x{params['height']}"
        return None
    if name == "image_prompt_weight":
        # The command takes one image prompt; the job stores a weight per image prompt.
        weights = params.get("image_prompt_weights") or []
        return weights[0] if weights else None
    return params.get(name)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def reproduce_command(kind: JobKind, params: dict[str, Any]) -> str:
    """``/imagine prompt:… seed:… steps:…``: the job's own settings as slash command options."""
    parts = [f"/{kind.value}"]
    for name in COMMAND_OPTIONS.get(kind, ()):
        value = _option_value(name, params)
        if value is None or value == "":
            continue
        parts.append(f"{name}:{_text(value)}")
    return " ".join(parts)


def models_used(kind: JobKind, models: ModelSettings) -> list[str]:
    if kind is JobKind.IMAGINE:
        return [
            f"CLIP {models.clip_model} ({models.clip_pretrained})",
            f"VQGAN {_short(models.vqgan_checkpoint)}",
        ]
    if kind is JobKind.EDIT:
        return [
            f"diffusion model {models.diffusion_model}",
            f"ranking CLIP {models.ranker_clip_model} ({models.ranker_clip_pretrained})",
        ]
    if kind is JobKind.UPSCALE:
        return [f"upscaler {_short(models.upscaler_model)}"]
    return []


def _short(location: str) -> str:
    """A checkpoint's name without a long URL's query string."""
    return location if len(location) <= 80 else location[:77] + "…"


def job_info_text(record: JobRecord, results: Sequence[ResultRecord], models: ModelSettings) -> str:
    request = record.request
    params = request.params
    lines = [
        f"**Job #{record.id}** ({request.kind.value}, {record.status.value}) "
        f"for <@{request.user_id}>"
    ]
    settings = ", ".join(
        f"{key}={_text(value)}"
        for key, value in sorted(params.items())
        if key not in ("prompt",) and value is not None
    )
    prompt = str(params.get("prompt") or "")
    lines.append(f"Prompt: `{prompt.replace('`', chr(39))}`")
    lines.append(f"Settings: {settings}")
    lines.append(f"Seed: {params.get('seed')}")
    if results:
        lines.append(
            "Results: "
            + ", ".join(f"{r.rank}: score {r.score:.3f}, seed {r.seed}" for r in results)
        )
    lines.append(
        f"Models ({models.preset} preset, {models.device}, {models.dtype}): "
        + "; ".join(models_used(request.kind, models))
    )
    timings = []
    if record.started_at is not None:
        timings.append(f"waited {format_duration(record.started_at - record.created_at)}")
        if record.finished_at is not None:
            ran = record.finished_at - record.started_at
            timings.append(f"ran {format_duration(ran)}")
            if record.total_steps:
                timings.append(
                    f"{ran / record.total_steps:.2f} s/step over {record.total_steps} steps"
                )
    if timings:
        lines.append("Timings: " + ", ".join(timings))
    if record.parent_result_id is not None:
        lines.append(f"Continued from result #{record.parent_result_id}.")
    attached = [IMAGE_OPTIONS[name] for name in record.stored_images if name in IMAGE_OPTIONS]
    if request.kind in COMMAND_OPTIONS:
        command = reproduce_command(request.kind, params)
        lines.append("Reproduce it with:")
        lines.append(f"```\n{command.replace('```', chr(39) * 3)}\n```")
        if attached:
            lines.append("…attaching the same " + ", ".join(attached) + ".")
    text = "\n".join(lines)
    return text if len(text) <= MAX_CONTENT else text[: MAX_CONTENT - 1] + "…"
