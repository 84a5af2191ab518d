"""Upscale jobs through the scheduler and the publisher: the file, the JPEG fallback, the cap."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from bot.config import UpscaleConfig
from bot.events import JobFinished
from bot.jobs import JobKind, JobStatus
from bot.stand_in import StandInPipeline
from bot.store import Store
from bot.uploads import UPLOAD_HEADROOM, fit_image, jpeg_qualities
from bot.upscaling import EXPIRED, UpscaleUnavailable, upscale_request
from tests.bot.conftest import EventLog, FakeSink, make_publisher, request


async def finished_result(make_scheduler: Any, store: Store, sink: FakeSink, size: int) -> tuple:
    """A done stand-in job with one ``size``² result, and the running scheduler + publisher."""
    publisher = make_publisher(store)
    publisher.set_sink(sink)
    log = EventLog()
    scheduler = await make_scheduler(
        StandInPipeline(0.0, size, "sleep"), listeners=(publisher, log)
    )
    job = await scheduler.submit(request(user=5, steps=2))
    await scheduler.wait_idle()
    await publisher.wait_settled()
    return scheduler, publisher, log, job.job_id


async def upscale(store: Store, job_id: int, rank: int = 1, **config: Any) -> Any:
    return await upscale_request(
        store,
        UpscaleConfig(**config),
        job_id=job_id,
        rank=rank,
        user_id=6,
        channel_id=1006,
        guild_id=1,
    )


async def test_an_upscale_job_runs_through_the_scheduler_and_its_file_is_posted(
    store: Store, make_scheduler: Any
) -> None:
    sink = FakeSink()
    scheduler, publisher, log, source_job = await finished_result(make_scheduler, store, sink, 16)
    grid_reactions = len(sink.of("react"))
    job_request = await upscale(store, source_job, tile_size=16, tile_overlap=4)
    assert job_request.kind is JobKind.UPSCALE
    [source_result] = await store.results_for_job(source_job)
    assert job_request.parent_result_id == source_result.id
    submitted = await scheduler.submit(job_request)
    await scheduler.wait_idle()
    await publisher.wait_settled()

    [finished] = [e for e in log.of(JobFinished) if e.job.job_id == submitted.job_id]
    assert finished.status is JobStatus.DONE, finished.error
    [stored] = await store.results_for_job(submitted.job_id)
    with Image.open(stored.path) as image:
        assert image.size == (64, 64)  # the tiny RRDBNet is ×4
    link = await store.message_for_job(submitted.job_id, "results")
    [posted] = [c for c in sink.of("send") if c.message_id == link.message_id]
    assert posted.channel_id == 1006
    [file] = posted.files
    assert file.filename == f"job-{submitted.job_id}-upscaled.png"
    assert Image.open(io.BytesIO(file.data)).size == (64, 64)
    assert file.data == stored.path.read_bytes()
    assert f"of result 1 of #{source_job}" in posted.content and "64×64" in posted.content
    assert "JPEG" not in posted.content
    # An end product: no number reactions under it.
    assert len(sink.of("react")) == grid_reactions


async def test_the_real_pipeline_source_runs_the_stored_upscale_request(
    store: Store, make_scheduler: Any
) -> None:
    # The stand-in source above routes upscales to the tiny upscaler itself; production goes
    # through RegistrySource, which builds UpscaleRequest from the stored params.
    from bot.pipeline_source import RegistrySource
    from pipelines.settings import ModelSettings

    sink = FakeSink()
    _, _, _, source_job = await finished_result(make_scheduler, store, sink, 16)
    job_request = await upscale(store, source_job, tile_size=16)
    source = RegistrySource(ModelSettings(preset="tiny", device="cpu"))
    prepared = source.prepare(job_request)
    result = prepared.pipeline(prepared.request)
    assert result.images[0].image.size == (64, 64)
    assert result.settings["source_job_id"] == source_job and result.settings["source_rank"] == 1


async def test_progress_and_etas_count_tiles(store: Store, make_scheduler: Any) -> None:
    sink = FakeSink()
    scheduler, _, log, source_job = await finished_result(make_scheduler, store, sink, 20)
    job_request = await upscale(store, source_job, tile_size=16, tile_overlap=2)
    assert job_request.params["steps"] == 4  # 20×20 in 16-pixel tiles: 2 × 2
    assert scheduler.eta.job_seconds(JobKind.UPSCALE, job_request.params) is None
    submitted = await scheduler.submit(job_request)
    await scheduler.wait_idle()
    [finished] = [e for e in log.of(JobFinished) if e.job.job_id == submitted.job_id]
    assert finished.status is JobStatus.DONE and finished.total == 4
    # Once one upscale has run, the next one waiting has an ETA, and so do jobs behind it.
    assert scheduler.eta.job_seconds(JobKind.UPSCALE, job_request.params) is not None


async def test_an_upscaled_png_over_the_upload_limit_goes_out_as_a_smaller_jpeg_and_says_so(
    store: Store, make_scheduler: Any
) -> None:
    sink = FakeSink()
    scheduler, publisher, _, source_job = await finished_result(make_scheduler, store, sink, 48)
    # Room for 3 KiB of files: the 192×192 PNG of noise-like output does not fit.
    sink.limit = UPLOAD_HEADROOM + 3 * 1024
    submitted = await scheduler.submit(await upscale(store, source_job, tile_size=0))
    await scheduler.wait_idle()
    await publisher.wait_settled()
    [stored] = await store.results_for_job(submitted.job_id)
    assert len(stored.path.read_bytes()) > 3 * 1024
    link = await store.message_for_job(submitted.job_id, "results")
    [posted] = [c for c in sink.of("send") if c.message_id == link.message_id]
    [file] = posted.files
    assert file.filename.endswith(".jpg")
    assert len(file.data) <= 3 * 1024
    assert Image.open(io.BytesIO(file.data)).format == "JPEG"
    assert "Sent as a JPEG at quality" in posted.content and "upload limit" in posted.content


async def test_an_image_over_the_cap_is_refused_with_the_cap_named(
    store: Store, make_scheduler: Any
) -> None:
    sink = FakeSink()
    scheduler, _, _, source_job = await finished_result(make_scheduler, store, sink, 16)
    with pytest.raises(UpscaleUnavailable) as caught:
        await upscale(store, source_job, max_input_side=8)
    message = str(caught.value)
    assert "16×16" in message and "cap of 8 pixels a side" in message
    assert "max_input_side" in message
    assert scheduler.snapshot().length == 0  # nothing was queued


async def test_a_result_that_is_gone_has_expired(store: Store, make_scheduler: Any) -> None:
    sink = FakeSink()
    _, _, _, source_job = await finished_result(make_scheduler, store, sink, 16)
    with pytest.raises(UpscaleUnavailable, match="expired"):
        await upscale(store, source_job + 100)
    with pytest.raises(UpscaleUnavailable, match="expired"):
        await upscale(store, source_job, rank=2)
    [result] = await store.results_for_job(source_job)
    result.path.unlink()
    with pytest.raises(UpscaleUnavailable) as caught:
        await upscale(store, source_job)
    assert str(caught.value) == EXPIRED


# -- fitting a file under the limit ---------------------------------------------------------------


def noise_png(side: int) -> bytes:
    image = Image.effect_noise((side, side), 80).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_quality_steps_down_from_the_highest_to_the_lowest() -> None:
    assert jpeg_qualities(95, 50, 5) == [95, 90, 85, 80, 75, 70, 65, 60, 55, 50]
    assert jpeg_qualities(95, 50, 20) == [95, 75, 55, 50]
    assert jpeg_qualities(60, 60, 5) == [60]


def test_a_png_that_fits_is_sent_as_it_is() -> None:
    png = noise_png(32)
    fitted = fit_image(png, UPLOAD_HEADROOM + len(png), [95, 50])
    assert fitted.data == png and fitted.extension == "png" and fitted.note == ""


def test_the_first_quality_that_fits_is_used() -> None:
    png = noise_png(128)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    sizes = {}
    for quality in (95, 85, 75):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
        sizes[quality] = buffer.tell()
    assert sizes[95] > sizes[85] > sizes[75]
    # Room for quality 85 but not 95: the step down stops at 85, not lower.
    fitted = fit_image(png, UPLOAD_HEADROOM + sizes[85], [95, 85, 75])
    assert fitted.quality == 85 and fitted.extension == "jpg"
    assert fitted.size == (128, 128) and len(fitted.data) == sizes[85]
    assert "quality 85" in fitted.note


def test_when_even_the_lowest_quality_is_too_big_the_image_is_scaled_down() -> None:
    png = noise_png(256)
    fitted = fit_image(png, UPLOAD_HEADROOM + 4 * 1024, [90, 50])
    assert fitted.quality == 50 and fitted.size[0] < 256
    assert len(fitted.data) <= 4 * 1024
    assert "scaled down" in fitted.note
