"""``/edit``: change the masked part of an image with Blended Latent Diffusion.

Thin on purpose: fetch and check the two attachments, let ``EditRequest.validate()`` judge the
request, hand a :class:`~bot.jobs.JobRequest` to the scheduler, answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.config import MAX_SEED, EditConfig, pipeline_hard_limits
from bot.jobs import JobKind, JobRequest
from cogs.attachments import check_mask_matches
from cogs.job_command import JobCommandCog
from cogs.options import (
    annotate,
    check_choice,
    check_length,
    check_within,
    default_text,
    hard_range,
    text_range,
)
from cogs.submission import SubmitDesk, ensure_desk
from pipelines.blended import START_MODES, EditRequest

if TYPE_CHECKING:
    from bot.app import FaradayBot


BACKGROUND_HELP = {
    "none": "none: keep the model's own reconstruction of the background",
    "paste": "paste: paste the original pixels back outside the mask",
    "finetune": "finetune: tune the decoder so the background matches (slower)",
}

START_HELP = {
    "noised-source": "noised-source: grow the edit from the original (keeps its layout)",
    "noise": "noise: start the masked region from pure noise (ignores what was there)",
}


@dataclass(frozen=True)
class EditOptions:
    image: discord.Attachment
    mask: discord.Attachment
    prompt: str
    candidates: int | None = None
    steps: int | None = None
    blend_start: float | None = None
    guidance: float | None = None
    seed: int | None = None
    background: str | None = None
    shrink: bool | None = None
    start: str | None = None


class EditCog(JobCommandCog[EditOptions]):
    def make_command(self) -> app_commands.Command:
        return build_edit_command(self, self.bot.config.edit)

    async def build_request(
        self, interaction: discord.Interaction, options: EditOptions, desk: SubmitDesk
    ) -> tuple[JobRequest, tuple[str, ...]]:
        # What this channel allows, with the user's preferred defaults (bot.runtime_settings).
        effective = await self.bot.settings.for_user(
            interaction.guild_id, interaction.channel_id, interaction.user.id
        )
        config = effective.edit
        # Before any download: a bad option should cost the user nothing.
        check_length("prompt", options.prompt, config.max_prompt_chars)
        check_within("candidates", options.candidates, config.candidates)
        check_within("steps", options.steps, config.steps)
        check_within("blend_start", options.blend_start, config.blend_start)
        check_within("guidance", options.guidance, config.guidance)
        check_choice("background", options.background, config.backgrounds)
        check_choice("start", options.start, START_MODES)
        image = await desk.fetcher.fetch_image(options.image, "image")
        mask = await desk.fetcher.fetch_mask(options.mask, "mask")
        check_mask_matches(mask, image.image, "mask", "image")

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        params: dict[str, Any] = {
            "prompt": options.prompt,
            "candidates": pick(options.candidates, config.candidates.default),
            "steps": pick(options.steps, config.steps.default),
            "blend_start": pick(options.blend_start, config.blend_start.default),
            "guidance": pick(options.guidance, config.guidance.default),
            "seed": options.seed,
            "background": pick(options.background, config.default_background),
            "shrink": pick(options.shrink, config.shrink),
            "start": pick(options.start, config.start),
            "max_side": config.max_side,
            "preview_every": config.preview_every,
        }
        await asyncio.to_thread(
            lambda: EditRequest(**params, image=image.image, mask=mask.image).validate()
        )
        request = JobRequest(
            kind=JobKind.EDIT,
            user_id=interaction.user.id,
            channel_id=interaction.channel_id or 0,
            guild_id=interaction.guild_id,
            params=params,
            images={"image": image.data, "mask": mask.data},
        )
        given = {n for n in ("steps", "candidates") if getattr(options, n) is not None}
        return request, (*effective.notes_for("edit", given), *image.notes)


def build_edit_command(cog: EditCog, config: EditConfig) -> app_commands.Command:
    async def edit(
        interaction: discord.Interaction,
        image: discord.Attachment,
        mask: discord.Attachment,
        prompt: str,
        candidates: int | None = None,
        steps: int | None = None,
        blend_start: float | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        background: str | None = None,
        shrink: bool | None = None,
        start: str | None = None,
    ) -> None:
        await cog.handle(
            interaction,
            EditOptions(
                image=image, mask=mask, prompt=prompt, candidates=candidates, steps=steps,
                blend_start=blend_start, guidance=guidance, seed=seed, background=background,
                shrink=shrink, start=start,
            ),
        )

    _, limits = pipeline_hard_limits()
    annotate(
        edit,
        prompt=text_range(config.max_prompt_chars),
        # The pipeline's limits, not config's: /settings can move the bounds at run time.
        candidates=hard_range(int, limits["candidates"]),
        steps=hard_range(int, limits["steps"]),
        blend_start=hard_range(float, limits["blend_start"]),
        guidance=hard_range(float, limits["guidance"]),
        seed=app_commands.Range[int, 0, MAX_SEED],
    )
    app_commands.describe(
        image="The image to edit",
        mask="White (or opaque) where the image should change, black elsewhere; same shape",
        prompt="What the masked region should become",
        candidates="How many versions to make and rank" + default_text(config.candidates),
        steps="Denoising steps: more is slower and cleaner" + default_text(config.steps),
        blend_start="Fraction of steps skipped: higher keeps more of the original"
        + default_text(config.blend_start),
        guidance="How strongly to follow the prompt" + default_text(config.guidance),
        # Exactly the same only on a CPU (docs/models.md, "What a seed promises").
        seed="Random seed: same seed and settings, same result (on a GPU, a close one); "
        "random if unset",
        background=f"Outside the mask (default {config.default_background})",
        shrink="Shrink the mask over the steps, for thin masks" + f" (default {config.shrink})",
        start=f"What the masked region starts from (default {config.start})",
    )(edit)
    app_commands.choices(
        background=[
            app_commands.Choice(name=BACKGROUND_HELP.get(mode, mode), value=mode)
            for mode in config.backgrounds
        ],
        start=[
            app_commands.Choice(name=START_HELP[mode], value=mode) for mode in START_MODES
        ],
    )(edit)
    return app_commands.Command(
        name="edit",
        description="Change the masked part of an image with Blended Latent Diffusion",
        callback=edit,
    )


async def setup(bot: FaradayBot) -> None:
    await ensure_desk(bot)
    await bot.add_cog(EditCog(bot))
