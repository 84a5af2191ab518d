"""``/imagine``: a VQGAN-CLIP job from a weighted multi-prompt, optionally editing an image.

Thin on purpose: read the options, fetch and check the attachments, let the pipeline's own
``validate()`` judge the request, hand a :class:`~bot.jobs.JobRequest` to the scheduler, answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from PIL import Image

from bot.config import MAX_SEED, ImagineConfig, pipeline_hard_limits
from bot.jobs import JobKind, JobRequest
from cogs.attachments import FetchedImage, check_mask_matches
from cogs.job_command import JobCommandCog
from cogs.options import (
    annotate,
    bound_text,
    check_length,
    check_within,
    default_text,
    float_range,
    hard_range,
    text_range,
)
from cogs.submission import SubmitDesk, ensure_desk
from pipelines.interface import InvalidRequest
from pipelines.prompts import parse_prompts
from pipelines.vqgan_clip import ImagineRequest

if TYPE_CHECKING:
    from bot.app import FaradayBot


@dataclass(frozen=True)
class ImagineOptions:
    prompt: str
    seed: int | None = None
    steps: int | None = None
    size: str | None = None
    cutn: int | None = None
    init_image: discord.Attachment | None = None
    mask: discord.Attachment | None = None
    mask_text: str | None = None
    image_prompt: discord.Attachment | None = None
    image_prompt_weight: float | None = None


def size_label(width: int, height: int) -> str:
    shape = "square" if width == height else ("landscape" if width > height else "portrait")
    return f"{width}×{height} ({shape})"


def closest_size(sizes: tuple[tuple[int, int], ...], image: Image.Image) -> tuple[int, int]:
    """The configured size whose aspect ratio is nearest the image's (larger on a tie)."""
    aspect = image.width / image.height
    return min(sizes, key=lambda s: (abs(s[0] / s[1] - aspect), -s[0] * s[1]))


def parse_size(text: str, sizes: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """One of the configured sizes (Discord offers only those, but a client could send any)."""
    for width, height in sizes:
        if text == f"{width}x{height}":
            return width, height
    offered = ", ".join(f"{w}x{h}" for w, h in sizes)
    raise InvalidRequest(f"size must be one of {offered}, not {text!r}")


class ImagineCog(JobCommandCog[ImagineOptions]):
    def make_command(self) -> app_commands.Command:
        return build_imagine_command(self, self.bot.config.imagine)

    async def build_request(
        self, interaction: discord.Interaction, options: ImagineOptions, desk: SubmitDesk
    ) -> tuple[JobRequest, tuple[str, ...]]:
        # What this channel allows, with the user's preferred defaults (bot.runtime_settings).
        effective = await self.bot.settings.for_user(
            interaction.guild_id, interaction.channel_id, interaction.user.id
        )
        config = effective.imagine
        # Before any download: a typo in the prompt or an option should cost the user nothing.
        check_length("prompt", options.prompt, config.max_prompt_chars)
        check_length("mask_text", options.mask_text, config.max_prompt_chars)
        check_within("steps", options.steps, config.steps)
        check_within("cutn", options.cutn, config.cutn)
        check_within("image_prompt_weight", options.image_prompt_weight,
                     config.image_prompt_weight)
        if options.image_prompt_weight is not None and options.image_prompt is None:
            raise InvalidRequest(
                "`image_prompt_weight` weighs an image: attach it as `image_prompt` too"
            )
        chosen_size = parse_size(options.size, config.sizes) if options.size is not None else None
        # Off the loop, because the first call loads CLIP's tokenizer vocabulary.
        await asyncio.to_thread(parse_prompts, options.prompt)
        given = {name for name in ("steps", "size") if getattr(options, name) is not None}
        notes: list[str] = list(effective.notes_for("imagine", given))
        if options.init_image is None:
            for name in ("mask", "mask_text"):
                if getattr(options, name):
                    raise InvalidRequest(
                        f"a `{name}` edits an image: attach the image to edit as `init_image` too"
                    )

        init: FetchedImage | None = None
        if options.init_image is not None:
            init = await desk.fetcher.fetch_image(options.init_image, "init_image")
            notes.extend(init.notes)
        mask = None
        if options.mask is not None and init is not None:
            mask = await desk.fetcher.fetch_mask(options.mask, "mask")
            check_mask_matches(mask, init.image, "mask", "init_image")
        image_prompt: FetchedImage | None = None
        if options.image_prompt is not None:
            image_prompt = await desk.fetcher.fetch_image(options.image_prompt, "image_prompt")
            notes.extend(image_prompt.notes)

        if chosen_size is not None:
            width, height = chosen_size
        elif init is not None:
            width, height = closest_size(config.sizes, init.image)
        else:
            width, height = config.default_size

        params: dict[str, Any] = {
            "prompt": options.prompt,
            "seed": options.seed,
            "steps": options.steps if options.steps is not None else config.steps.default,
            "width": width,
            "height": height,
            "cutn": options.cutn if options.cutn is not None else config.cutn.default,
            "candidates": config.candidates,
            "augmentations": config.augmentations,
            "preview_every": config.preview_every,
        }
        if options.mask_text:
            params["mask_text"] = options.mask_text
        decoded: dict[str, Any] = {}
        images: dict[str, bytes | list[bytes]] = {}
        if init is not None:
            decoded["init_image"], images["init_image"] = init.image, init.data
        if mask is not None:
            decoded["mask"], images["mask"] = mask.image, mask.data
        if image_prompt is not None:
            decoded["image_prompts"] = [image_prompt.image]
            images["image_prompts"] = [image_prompt.data]
            weight = options.image_prompt_weight
            params["image_prompt_weights"] = [
                weight if weight is not None else config.image_prompt_weight.default
            ]
        await asyncio.to_thread(lambda: ImagineRequest(**params, **decoded).validate())

        request = JobRequest(
            kind=JobKind.IMAGINE,
            user_id=interaction.user.id,
            channel_id=interaction.channel_id or 0,
            guild_id=interaction.guild_id,
            params=params,
            images=images,
        )
        return request, tuple(notes)


def build_imagine_command(cog: ImagineCog, config: ImagineConfig) -> app_commands.Command:
    async def imagine(
        interaction: discord.Interaction,
        prompt: str,
        seed: int | None = None,
        steps: int | None = None,
        size: str | None = None,
        cutn: int | None = None,
        init_image: discord.Attachment | None = None,
        mask: discord.Attachment | None = None,
        mask_text: str | None = None,
        image_prompt: discord.Attachment | None = None,
        image_prompt_weight: float | None = None,
    ) -> None:
        await cog.handle(
            interaction,
            ImagineOptions(
                prompt=prompt, seed=seed, steps=steps, size=size, cutn=cutn,
                init_image=init_image, mask=mask, mask_text=mask_text, image_prompt=image_prompt,
                image_prompt_weight=image_prompt_weight,
            ),
        )

    limits, _ = pipeline_hard_limits()
    annotate(
        imagine,
        prompt=text_range(config.max_prompt_chars),
        seed=app_commands.Range[int, 0, MAX_SEED],
        # The pipeline's limits, not config's: /settings can move the bounds at run time.
        steps=hard_range(int, limits["steps"]),
        cutn=hard_range(int, limits["cutn"]),
        image_prompt_weight=float_range(config.image_prompt_weight),
        mask_text=text_range(config.max_prompt_chars),
    )
    default_w, default_h = config.default_size
    app_commands.describe(
        prompt="What to make; weighted prompts: `castle | oil painting:0.5 | blurry:-1`",
        # Exactly the same only on a CPU (docs/models.md, "What a seed promises").
        seed="Random seed: same seed and settings, same result (on a GPU, a close one); "
        "random if unset",
        steps="Optimisation steps: more is slower and more detailed"
        + default_text(config.steps),
        size=f"Image size (default {default_w}×{default_h}; with an init_image, its shape)",
        cutn="Cutouts CLIP looks at per step: more is steadier and slower"
        + default_text(config.cutn),
        init_image="Start from this image instead of noise (edit it toward the prompt)",
        mask="Only change where this mask is white (or opaque); needs init_image",
        mask_text="Only change what this phrase describes in init_image (self-masking)",
        image_prompt="Also steer toward the look of this image (all of it, not just the centre)",
        image_prompt_weight="How strongly, like a prompt's :weight; negative steers away"
        + bound_text(config.image_prompt_weight),
    )(imagine)
    app_commands.choices(
        size=[
            app_commands.Choice(name=size_label(w, h), value=f"{w}x{h}") for w, h in config.sizes
        ][:25]
    )(imagine)
    return app_commands.Command(
        name="imagine",
        description="Make an image from text with VQGAN-CLIP",
        callback=imagine,
    )


async def setup(bot: FaradayBot) -> None:
    await ensure_desk(bot)
    await bot.add_cog(ImagineCog(bot))
