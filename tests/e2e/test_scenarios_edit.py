"""Scenarios 3 and 4: /edit end to end with attachments, and bad attachments refused.

Each test runs the real FaradayBot (tiny presets) against the Discord stand-in, in-process.
"""

from __future__ import annotations

import io

from PIL import Image

from bot.jobs import JobKind
from tests.e2e.bot_harness import (
    WAIT,
    box_mask,
    picture,
    png,
    queued_job_id,
    react_and_wait_for_new_job,
    results_with_reactions,
    running_bot,
    write_test_config,
)


async def test_edit_ranks_candidates_and_1_continues_from_the_best(standin, tmp_path) -> None:
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        source, mask = picture(), box_mask()
        handle = await standin.send_slash_command(
            "edit",
            {"prompt": "a red door", "candidates": 2, "steps": 3, "background": "paste"},
            attachments={
                "image": standin.add_cdn_file("photo.png", source),
                "mask": standin.add_cdn_file("mask.png", mask),
            },
        )
        parent_id = await queued_job_id(handle)
        # Acknowledged before the attachments were fetched: downloads must not eat Discord's 3 s.
        downloads = standin.requests_matching("GET", r"/cdn/")
        assert handle.deferred and handle.ephemeral and len(downloads) == 2
        assert handle.callback is not None
        assert handle.callback.at < min(request.at for request in downloads)
        grid_message, results = await results_with_reactions(bot, standin, parent_id)
        assert [r.rank for r in results] == [1, 2]
        assert results[0].score >= results[1].score
        assert grid_message.reactors("2️⃣") == [standin.bot_user.id]
        (grid_bytes,) = grid_message.files.values()
        assert Image.open(io.BytesIO(grid_bytes)).width >= 2 * 64

        parent = await bot.store.get_job(parent_id)
        assert parent is not None and parent.request.kind is JobKind.EDIT
        # The stored inputs are what the user attached, normalised to PNG.
        assert Image.open(io.BytesIO(parent.request.images["image"])).tobytes() == (
            Image.open(io.BytesIO(source)).convert("RGB").tobytes()
        )

        child = await react_and_wait_for_new_job(
            bot, standin, grid_message.id, "1️⃣", "alice", parent_id
        )
        best = results[0]
        assert child.request.kind is JobKind.EDIT
        assert child.request.images["image"] == best.path.read_bytes()
        assert child.request.images["mask"] == parent.request.images["mask"]
        assert child.request.params["prompt"] == "a red door"
        assert child.parent_result_id == best.id
        await results_with_reactions(bot, standin, child.id)


async def test_edit_results_keep_the_input_aspect_ratio(standin, tmp_path) -> None:
    # The test config's max_side is 64: results come back with a long side of 64 pixels.
    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        for width, height in ((300, 200), (1920, 1080), (1000, 1000)):
            box = (width // 4, height // 4, width // 2, height // 2)
            handle = await standin.send_slash_command(
                "edit",
                {"prompt": "a red door", "candidates": 1, "steps": 2, "start": "noise"},
                attachments={
                    "image": standin.add_cdn_file(f"p{width}.png", picture((width, height))),
                    "mask": standin.add_cdn_file(f"m{width}.png", box_mask((width, height), box)),
                },
            )
            job_id = await queued_job_id(handle)
            _, results = await results_with_reactions(bot, standin, job_id)
            out_w, out_h = Image.open(results[0].path).size
            assert max(out_w, out_h) == 64, (width, height, out_w, out_h)
            assert abs((out_w / out_h) / (width / height) - 1) < 0.01, (width, height, out_w, out_h)
            job = await bot.store.get_job(job_id)
            assert job is not None and job.request.params["start"] == "noise"


def animated_gif() -> bytes:
    frames = [Image.new("L", (64, 64), value) for value in (255, 0)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def truncated_png() -> bytes:
    data = picture()
    return data[: len(data) // 2]


BAD_ATTACHMENTS = {
    "not an image": (("notes.txt", b"just some text", "text/plain"), None, "not an image"),
    "too big": (
        ("huge.png", picture(), "image/png", 9 * 1024 * 1024), None, "the limit is 8.0 MiB"
    ),
    "corrupt png": (("broken.png", truncated_png(), "image/png"), None, "damaged or truncated"),
    "empty mask": (None, ("mask.png", png(Image.new("L", (64, 64), 0)), "image/png"), "is empty"),
    "mismatched mask": (
        None, ("mask.png", box_mask((64, 32), (0, 0, 32, 32)), "image/png"), "shapes differ"
    ),
    "animated mask": (None, ("mask.gif", animated_gif(), "image/gif"), "must be a still image"),
}


async def test_bad_attachments_get_an_ephemeral_error_and_no_job(standin, tmp_path) -> None:
    # One bot for every case: a refused command leaves nothing behind for the next one.
    def upload(spec, default_name: str, default_data: bytes):
        if spec is None:
            return standin.add_cdn_file(default_name, default_data)
        name, data, content_type, *declared = spec
        return standin.add_cdn_file(
            name, data, content_type, declared_size=declared[0] if declared else None
        )

    async with running_bot(standin, write_test_config(tmp_path, standin)) as bot:
        for case, (bad_image, bad_mask, expected) in BAD_ATTACHMENTS.items():
            handle = await standin.send_slash_command(
                "edit",
                {"prompt": "a red door"},
                attachments={
                    "image": upload(bad_image, "photo.png", picture()),
                    "mask": upload(bad_mask, "mask.png", box_mask()),
                },
            )
            reply = await handle.wait_for_reply(
                lambda m: "Nothing was queued" in m.content, timeout=WAIT
            )
            assert reply.ephemeral, case
            assert expected in reply.content, (case, reply.content)
            # Each message also says what to do next.
            assert any(word in reply.content for word in ("Attach", "Export", "Paint", "Save",
                                                          "Scale")), (case, reply.content)
        assert await bot.store.get_job(1) is None
        assert bot.scheduler.snapshot().length == 0
        assert standin.bot_messages() == []  # nothing public was posted
        assert not standin.requests_matching("GET", r"/cdn/.*huge\.png")  # never downloaded
        assert not standin.requests_matching("GET", r"/cdn/.*notes\.txt")
