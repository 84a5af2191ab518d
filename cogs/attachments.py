"""Fetching a Discord attachment safely and turning it into an image or a mask a job can use.

Order matters, because each step protects the next:

1. the declared content type and size are checked before a single byte is downloaded;
2. the download goes only to a trusted CDN origin, with a timeout, without following redirects,
   and stops reading once the size limit is passed (the declared size is the sender's word);
3. the bytes are decoded off the event loop by :func:`pipelines.image_io.open_image`, which
   refuses decompression bombs;
4. the image is normalised: first frame of an animation (with a note saying so), sensible mode
   conversion, and re-encoded as PNG so the stored job holds exactly what the pipeline will see.

Every failure raises :class:`AttachmentRejected`, an :class:`InvalidRequest` whose text is meant
for the user as it is: what was wrong and what to do about it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import mimetypes
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from PIL import Image

from pipelines.image_io import is_animated, mask_from_image, open_image, to_rgb
from pipelines.interface import InvalidRequest

log = logging.getLogger(__name__)

# What Pillow reads reliably and Discord users actually upload.
ACCEPTED_CONTENT_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"}
)
_READ_CHUNK = 64 * 1024
_MIB = 1024 * 1024


class AttachmentRejected(InvalidRequest):
    """An attachment we will not use; ``str(exc)`` tells the user what to do instead."""


class AttachmentLike(Protocol):
    """The parts of :class:`discord.Attachment` we read (tests pass a plain dataclass)."""

    filename: str
    size: int
    url: str
    content_type: str | None


@dataclass(frozen=True)
class AttachmentPolicy:
    """Where attachments may come from, how large they may be and how long a download may take.

    ``allowed_sources`` holds bare host names (reached over https only, e.g. Discord's CDN) or
    full origins such as ``http://127.0.0.1:8123`` (that scheme, host and port exactly; this is
    how the tests trust their local stand-in of the CDN).
    """

    allowed_sources: tuple[str, ...]
    max_bytes: int
    timeout_seconds: float
    _https_hosts: frozenset[str] = field(init=False, repr=False)
    _origins: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        hosts: set[str] = set()
        origins: set[str] = set()
        for source in self.allowed_sources:
            if "://" in source:
                parts = urlsplit(source)
                origins.add(f"{parts.scheme.lower()}://{parts.netloc.lower()}")
            else:
                hosts.add(source.lower())
        object.__setattr__(self, "_https_hosts", frozenset(hosts))
        object.__setattr__(self, "_origins", frozenset(origins))

    def allows(self, url: str) -> bool:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if f"{scheme}://{parts.netloc.lower()}" in self._origins:
            return True
        return (
            scheme == "https"
            and (parts.hostname or "").lower() in self._https_hosts
            and parts.port in (None, 443)
            and parts.username is None
        )


@dataclass(frozen=True)
class FetchedImage:
    """A decoded, normalised RGB image and the PNG bytes the job will store."""

    image: Image.Image
    data: bytes
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchedMask:
    """A mask as an 8-bit black/white image (white = the area to change) and its PNG bytes."""

    image: Image.Image
    data: bytes
    covered_fraction: float


def _size_text(size: int) -> str:
    return f"{size / _MIB:.1f} MiB" if size >= _MIB // 10 else f"{size / 1024:.0f} KiB"


def _content_type(attachment: AttachmentLike) -> str | None:
    declared = (attachment.content_type or "").split(";")[0].strip().lower()
    if declared:
        return declared
    guessed, _ = mimetypes.guess_type(attachment.filename)
    return guessed


def check_declared(attachment: AttachmentLike, policy: AttachmentPolicy, label: str) -> None:
    """Refuse by what Discord tells us about the file, before downloading anything."""
    kind = _content_type(attachment)
    if kind not in ACCEPTED_CONTENT_TYPES:
        shown = kind or "an unknown type"
        raise AttachmentRejected(
            f"`{label}` ({attachment.filename}) is {shown}, not an image. "
            "Attach a PNG, JPEG, WebP, GIF or BMP file."
        )
    if attachment.size > policy.max_bytes:
        raise AttachmentRejected(
            f"`{label}` ({attachment.filename}) is {_size_text(attachment.size)}; the limit is "
            f"{_size_text(policy.max_bytes)}. Scale it down or save it as JPEG, then try again."
        )
    if attachment.size <= 0:
        raise AttachmentRejected(
            f"`{label}` ({attachment.filename}) is empty. Attach the image file again."
        )


async def download(
    session: aiohttp.ClientSession, attachment: AttachmentLike, policy: AttachmentPolicy, label: str
) -> bytes:
    """The attachment's bytes, from a trusted origin only, never more than the limit."""
    if not policy.allows(attachment.url):
        # Not the user's fault, but they can still do something about it.
        log.warning("refusing attachment download from an untrusted origin")
        raise AttachmentRejected(
            f"`{label}` is not hosted on Discord's CDN, so I will not fetch it. "
            "Upload the file directly in the command."
        )
    timeout = aiohttp.ClientTimeout(total=policy.timeout_seconds)
    try:
        async with session.get(attachment.url, timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                raise AttachmentRejected(
                    f"Could not download `{label}` (the CDN answered {resp.status}). "
                    "Upload it again in a new command."
                )
            if resp.content_length is not None and resp.content_length > policy.max_bytes:
                raise _too_big(label, attachment.filename, policy)
            chunks: list[bytes] = []
            received = 0
            async for chunk in resp.content.iter_chunked(_READ_CHUNK):
                received += len(chunk)
                if received > policy.max_bytes:
                    raise _too_big(label, attachment.filename, policy)
                chunks.append(chunk)
    except asyncio.TimeoutError as exc:
        raise AttachmentRejected(
            f"Downloading `{label}` took longer than {policy.timeout_seconds:g} s. "
            "Try again in a moment, or attach a smaller file."
        ) from exc
    except aiohttp.ClientError as exc:
        log.info("attachment download failed: %s", type(exc).__name__)
        raise AttachmentRejected(
            f"Could not download `{label}` from Discord's CDN. Try the command again."
        ) from exc
    data = b"".join(chunks)
    if not data:
        raise AttachmentRejected(f"`{label}` downloaded empty. Attach the image file again.")
    return data


def _too_big(label: str, filename: str, policy: AttachmentPolicy) -> AttachmentRejected:
    return AttachmentRejected(
        f"`{label}` ({filename}) is larger than the {_size_text(policy.max_bytes)} limit. "
        "Scale it down or save it as JPEG, then try again."
    )


def _count_frames(data: bytes) -> int:
    """Frames in the encoded file; the opened copy from open_image no longer knows."""
    try:
        with Image.open(io.BytesIO(data)) as raw:
            return int(getattr(raw, "n_frames", 1)) if is_animated(raw) else 1
    except (OSError, ValueError, SyntaxError):
        return 1  # open_image already decoded it, so a header quirk here is not fatal


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes, label: str) -> FetchedImage:
    """Blocking: decode, flatten animations, convert to RGB, re-encode. Run off the loop."""
    image = _decode(data, label)
    notes: list[str] = []
    frames = _count_frames(data)
    if frames > 1:
        notes.append(f"`{label}` is animated ({frames} frames); I used its first frame.")
    rgb = to_rgb(image)
    return FetchedImage(image=rgb, data=_png_bytes(rgb), notes=tuple(notes))


def decode_mask(data: bytes, label: str) -> FetchedMask:
    """Blocking: decode a mask (opaque or white = change), refuse animated or empty masks."""
    image = _decode(data, label)
    if _count_frames(data) > 1:
        raise AttachmentRejected(
            f"`{label}` is animated; a mask must be a still image. "
            "Save one frame as PNG (white where the image should change) and try again."
        )
    selected = mask_from_image(image)
    covered = float(selected.mean()) if selected.size else 0.0
    if not selected.any():
        raise AttachmentRejected(
            f"`{label}` is empty: nothing is marked to change. Paint the area to change white "
            "(or opaque, if the mask has transparency) on black, then try again."
        )
    mask = Image.fromarray(selected.astype(np.uint8) * 255, "L")
    return FetchedMask(image=mask, data=_png_bytes(mask), covered_fraction=covered)


def _decode(data: bytes, label: str) -> Image.Image:
    try:
        return open_image(data, what=f"`{label}`")
    except InvalidRequest as exc:
        raise AttachmentRejected(
            f"{exc}. Attach a valid PNG or JPEG file (re-export it if it opens elsewhere)."
        ) from exc


def check_mask_matches(
    mask: FetchedMask,
    image: Image.Image,
    mask_label: str,
    image_label: str,
    tolerance: float = 0.01,
) -> None:
    """A mask must have its image's shape; the pipelines scale it, so only the aspect matters."""
    (mw, mh), (iw, ih) = mask.image.size, image.size
    if abs((mw / mh) / (iw / ih) - 1.0) > tolerance:
        raise AttachmentRejected(
            f"`{mask_label}` is {mw}×{mh} but `{image_label}` is {iw}×{ih}: their shapes differ. "
            f"Export the mask at {iw}×{ih} (or the same aspect ratio) and try again."
        )


class AttachmentFetcher:
    """Downloads and decodes attachments under one policy, sharing one HTTP session."""

    def __init__(self, policy: AttachmentPolicy) -> None:
        self.policy = policy
        self._session: aiohttp.ClientSession | None = None

    async def _session_for_use(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch_bytes(self, attachment: AttachmentLike, label: str) -> bytes:
        check_declared(attachment, self.policy, label)
        return await download(await self._session_for_use(), attachment, self.policy, label)

    async def fetch_image(self, attachment: AttachmentLike, label: str) -> FetchedImage:
        data = await self.fetch_bytes(attachment, label)
        return await asyncio.to_thread(decode_image, data, label)

    async def fetch_mask(self, attachment: AttachmentLike, label: str) -> FetchedMask:
        data = await self.fetch_bytes(attachment, label)
        return await asyncio.to_thread(decode_mask, data, label)

    async def fetch_images(
        self, attachments: Iterable[tuple[AttachmentLike, str]]
    ) -> list[FetchedImage]:
        return [await self.fetch_image(item, label) for item, label in attachments]
