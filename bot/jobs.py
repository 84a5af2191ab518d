"""What a job is, as the cogs hand it to the scheduler and the store keeps it.

A :class:`JobRequest` is plain data: the pipeline kind, the pipeline request's keyword arguments
(JSON-serialisable), the input images as encoded file bytes, and who asked where. The cogs build
and validate it; the scheduler persists it before answering "queued"; the worker turns it into the
pipeline's own request dataclass just before running it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class JobKind(str, Enum):
    IMAGINE = "imagine"  # VQGAN-CLIP (pipelines.vqgan_clip.ImagineRequest)
    EDIT = "edit"  # Blended Latent Diffusion (pipelines.blended.EditRequest)
    UPSCALE = "upscale"  # one result upscaled (pipelines.upscale.UpscaleRequest)


# Loaded when the bot starts. The upscaler is not: it is fetched (on first use, into the models
# folder) and loaded when the first upscale job runs, so a bot whose users never upscale never
# downloads it, and a missing file fails those jobs only.
PRELOADED_KINDS = (JobKind.IMAGINE, JobKind.EDIT)


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class JobRequest:
    kind: JobKind
    user_id: int
    channel_id: int
    guild_id: int | None
    # Keyword arguments of the pipeline's request dataclass, minus its image fields.
    params: dict[str, Any]
    # Image fields of the request: field name -> encoded image file bytes (one or a list).
    images: dict[str, bytes | list[bytes]] = field(default_factory=dict)
    # The result this job continues from (a reaction on a result grid), if any.
    parent_result_id: int | None = None
