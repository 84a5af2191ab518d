"""Attachment checks: every refusal happens at the right step and tells the user what to do."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from cogs.attachments import (
    AttachmentFetcher,
    AttachmentPolicy,
    AttachmentRejected,
    check_mask_matches,
    decode_image,
    decode_mask,
)


@dataclass
class FakeAttachment:
    filename: str
    size: int
    url: str
    content_type: str | None = "image/png"


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gif_animation(frames: int = 3) -> bytes:
    images = [Image.new("RGB", (16, 16), (i * 80, 0, 0)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=50)
    return buffer.getvalue()


class FakeCdn:
    """A tiny HTTP server standing in for Discord's CDN."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.origin = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.append(name)
        if name == "slow.png":
            await asyncio.sleep(1.5)
        if name == "moved.png":
            raise web.HTTPFound(location=f"{self.origin}/files/red.png")
        if name == "liar.png":  # no Content-Length: streamed, so only the read cap can stop it
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(40):
                await response.write(b"\0" * 1024)
            await response.write_eof()
            return response
        if name not in self.files:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[name], content_type="image/png")

    def attachment(self, name: str, *, size: int | None = None, ctype: str | None = "image/png"):
        data = self.files.get(name, b"x")
        return FakeAttachment(
            filename=name,
            size=len(data) if size is None else size,
            url=f"{self.origin}/files/{name}",
            content_type=ctype,
        )


@pytest.fixture
async def cdn() -> AsyncIterator[FakeCdn]:
    fake = FakeCdn()
    app = web.Application()
    app.router.add_get("/files/{name}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.origin = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def fetcher(cdn: FakeCdn) -> AsyncIterator[AttachmentFetcher]:
    policy = AttachmentPolicy(
        allowed_sources=("cdn.discordapp.com", cdn.origin), max_bytes=20_000, timeout_seconds=1.0
    )
    f = AttachmentFetcher(policy)
    yield f
    await f.close()


def test_policy_trusts_https_cdn_hosts_and_exact_origins_only() -> None:
    policy = AttachmentPolicy(
        allowed_sources=("cdn.discordapp.com", "http://127.0.0.1:8123"),
        max_bytes=1,
        timeout_seconds=1,
    )
    assert policy.allows("https://cdn.discordapp.com/attachments/1/2/a.png")
    assert policy.allows("http://127.0.0.1:8123/attachments/a.png")
    assert not policy.allows("http://cdn.discordapp.com/attachments/a.png")  # not https
    assert not policy.allows("https://evil.example/a.png")
    assert not policy.allows("https://cdn.discordapp.com.evil.example/a.png")
    assert not policy.allows("https://cdn.discordapp.com:8443/a.png")
    assert not policy.allows("https://user@cdn.discordapp.com/a.png")
    assert not policy.allows("http://127.0.0.1:9999/a.png")  # other port


async def test_a_good_png_is_fetched_and_normalised(cdn: FakeCdn, fetcher: AttachmentFetcher):
    cdn.files["red.png"] = png(Image.new("RGBA", (8, 6), (255, 0, 0, 255)))
    fetched = await fetcher.fetch_image(cdn.attachment("red.png"), "image")
    assert fetched.image.mode == "RGB" and fetched.image.size == (8, 6)
    assert fetched.image.getpixel((0, 0)) == (255, 0, 0)
    assert Image.open(io.BytesIO(fetched.data)).format == "PNG"
    assert fetched.notes == ()


async def test_wrong_content_type_is_refused_before_download(cdn: FakeCdn, fetcher):
    cdn.files["notes.txt"] = b"hello"
    with pytest.raises(AttachmentRejected, match=r"not an image\. Attach a PNG"):
        await fetcher.fetch_image(cdn.attachment("notes.txt", ctype="text/plain"), "image")
    assert cdn.requests == []


async def test_missing_content_type_falls_back_to_the_file_name(cdn: FakeCdn, fetcher):
    cdn.files["red.png"] = png(Image.new("RGB", (4, 4), "red"))
    fetched = await fetcher.fetch_image(cdn.attachment("red.png", ctype=None), "image")
    assert fetched.image.size == (4, 4)
    with pytest.raises(AttachmentRejected, match="unknown type"):
        await fetcher.fetch_image(cdn.attachment("blob", ctype=None), "image")


async def test_declared_size_over_the_limit_is_refused_before_download(cdn: FakeCdn, fetcher):
    cdn.files["big.png"] = b"x"
    with pytest.raises(AttachmentRejected, match=r"the limit is 20 KiB\. Scale it down"):
        await fetcher.fetch_image(cdn.attachment("big.png", size=50_000), "image")
    assert cdn.requests == []


async def test_a_file_larger_than_declared_is_cut_off(cdn: FakeCdn, fetcher):
    with pytest.raises(AttachmentRejected, match="larger than the 20 KiB limit"):
        await fetcher.fetch_image(cdn.attachment("liar.png", size=100), "image")
    assert cdn.requests == ["liar.png"]


async def test_untrusted_host_is_never_contacted(fetcher: AttachmentFetcher):
    attachment = FakeAttachment("a.png", 100, "http://127.0.0.2:1/a.png")
    with pytest.raises(AttachmentRejected, match="not hosted on Discord's CDN"):
        await fetcher.fetch_image(attachment, "image")


async def test_redirects_are_not_followed(cdn: FakeCdn, fetcher: AttachmentFetcher):
    cdn.files["red.png"] = png(Image.new("RGB", (4, 4), "red"))
    with pytest.raises(AttachmentRejected, match="answered 302"):
        await fetcher.fetch_image(cdn.attachment("moved.png", size=100), "image")
    assert cdn.requests == ["moved.png"]


async def test_cdn_error_and_timeout_say_try_again(cdn: FakeCdn, fetcher: AttachmentFetcher):
    with pytest.raises(AttachmentRejected, match=r"answered 404\)\. Upload it again"):
        await fetcher.fetch_image(cdn.attachment("gone.png", size=100), "image")
    with pytest.raises(AttachmentRejected, match=r"took longer than 1 s\. Try again"):
        await fetcher.fetch_image(cdn.attachment("slow.png", size=100), "image")


async def test_corrupt_png_is_refused(cdn: FakeCdn, fetcher: AttachmentFetcher):
    good = png(Image.new("RGB", (32, 32), "blue"))
    cdn.files["broken.png"] = good[: len(good) // 2]
    with pytest.raises(AttachmentRejected, match=r"damaged or truncated.*re-export"):
        await fetcher.fetch_image(cdn.attachment("broken.png"), "image")
    cdn.files["junk.png"] = b"this is not a png at all" * 10
    with pytest.raises(AttachmentRejected, match="not an image Pillow can read"):
        await fetcher.fetch_image(cdn.attachment("junk.png"), "image")


def test_decompression_bomb_is_refused() -> None:
    # A 1-bit 10000×10000 PNG: 100 Mpx, above the guard, yet only a few KiB on disk.
    bomb = png(Image.new("1", (10_000, 10_000)))
    assert len(bomb) < 50_000
    with pytest.raises(AttachmentRejected, match="too large to open safely"):
        decode_image(bomb, "image")


def test_animated_image_is_flattened_and_says_so() -> None:
    fetched = decode_image(gif_animation(3), "init_image")
    assert fetched.image.mode == "RGB"
    assert fetched.notes and "first frame" in fetched.notes[0] and "3 frames" in fetched.notes[0]
    assert fetched.image.getpixel((0, 0)) == (0, 0, 0)  # frame 0's colour


def test_animated_mask_is_refused() -> None:
    with pytest.raises(AttachmentRejected, match="animated; a mask must be a still image"):
        decode_mask(gif_animation(2), "mask")


def test_transparent_image_is_composited_over_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    fetched = decode_image(png(image), "image")
    assert fetched.image.getpixel((1, 1)) == (255, 255, 255)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    array = np.full((4, 4), 32768, dtype=np.uint16)
    fetched = decode_image(png(Image.fromarray(array)), "image")
    red, _, _ = fetched.image.getpixel((0, 0))
    assert 120 <= red <= 135  # half grey, not the clipped 255


def test_empty_mask_is_refused() -> None:
    with pytest.raises(AttachmentRejected, match="empty: nothing is marked to change"):
        decode_mask(png(Image.new("L", (8, 8), 0)), "mask")
    with pytest.raises(AttachmentRejected, match="empty"):
        decode_mask(png(Image.new("RGBA", (8, 8), (255, 255, 255, 0))), "mask")


def test_mask_uses_alpha_or_luminance() -> None:
    grey = Image.new("L", (8, 8), 0)
    grey.paste(255, (0, 0, 4, 8))
    mask = decode_mask(png(grey), "mask")
    assert mask.covered_fraction == pytest.approx(0.5)
    assert mask.image.getpixel((0, 0)) == 255 and mask.image.getpixel((7, 0)) == 0
    assert Image.open(io.BytesIO(mask.data)).mode == "L"

    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (0, 0, 2, 8))  # black but opaque: alpha decides
    assert decode_mask(png(rgba), "mask").covered_fraction == pytest.approx(0.25)


def test_an_opaque_everywhere_rgba_mask_is_read_by_its_brightness() -> None:
    # What paint tools save: white strokes on black, every pixel opaque.
    painted = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    painted.paste((255, 255, 255, 255), (0, 0, 2, 8))
    mask = decode_mask(png(painted), "mask")
    assert mask.covered_fraction == pytest.approx(0.25)
    assert mask.image.getpixel((0, 0)) == 255 and mask.image.getpixel((7, 0)) == 0


def test_mismatched_mask_is_refused() -> None:
    mask = decode_mask(png(Image.new("L", (8, 8), 255)), "mask")
    check_mask_matches(mask, Image.new("RGB", (8, 8)), "mask", "image")
    check_mask_matches(mask, Image.new("RGB", (32, 32)), "mask", "image")  # scaled, same shape
    with pytest.raises(AttachmentRejected, match=r"`mask` is 8×8 but `image` is 16×8: their"):
        check_mask_matches(mask, Image.new("RGB", (16, 8)), "mask", "image")
