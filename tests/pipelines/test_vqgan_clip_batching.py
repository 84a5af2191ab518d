"""Batched candidates, channels-last and compiled decoding give the plain path's results."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from torch._dynamo.testing import CompileCounter

from pipelines import presets, speedups
from pipelines.candidate_batching import auto_candidate_batch, fixed_candidate_batch
from pipelines.clip_models import TINY_CLIP, ClipSpec, load_clip
from pipelines.settings import ModelSettings
from pipelines.speedups import FastModule, channels_last_enabled
from pipelines.vqgan import VQGAN, VqganConfig
from pipelines.vqgan_clip import ImagineRequest, Throughput, VqganClipPipeline, VqganClipRun

CPU = torch.device("cpu")
ATOL = 1e-5


@pytest.fixture(scope="module")
def vqgan() -> VQGAN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VQGAN(VqganConfig.tiny()).eval().requires_grad_(False)


def make_pipeline(vqgan: VQGAN, **options: object) -> VqganClipPipeline:
    clip = load_clip(ClipSpec(TINY_CLIP), CPU)
    return VqganClipPipeline(vqgan, clip, {"preset": "test"}, **options)  # type: ignore[arg-type]


def request(**overrides: object) -> ImagineRequest:
    values: dict[str, object] = {
        "prompt": "a red apple on a table | blurry:-0.5",
        "seed": 11,
        "steps": 3,
        "width": 64,
        "height": 64,
        "cutn": 4,
        "lr": 0.005,
        "candidates": 4,
        "preview_every": 1,
    }
    values.update(overrides)
    return ImagineRequest(**values)  # type: ignore[arg-type]


def run_steps(run: VqganClipRun, steps: int) -> torch.Tensor:
    for _ in range(steps):
        run.step()
    return run.decode()


def init_image() -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize(
    "overrides",
    [{}, {"init_image": "noise", "mask_text": "an apple", "init_weight": 0.1}],
    ids=["generate", "self-masked edit"],
)
def test_chunks_of_1_2_and_4_candidates_give_the_same_images(
    vqgan: VQGAN, overrides: dict[str, object]
) -> None:
    if overrides.get("init_image") == "noise":
        overrides = {**overrides, "init_image": init_image()}
    images = {}
    for chunk in (1, 2, 4):
        pipeline = make_pipeline(vqgan, candidate_batch=chunk)
        run = pipeline.start(request(**overrides), 11)
        assert run.candidate_batch == chunk
        images[chunk] = run_steps(run, 3)
    # The candidates really differ, so equal results are not equal by accident.
    assert (images[1][0] - images[1][1]).abs().max() > 1e-3
    for chunk in (2, 4):
        torch.testing.assert_close(images[chunk], images[1], atol=ATOL, rtol=0)


def test_chunked_runs_rank_the_candidates_the_same(vqgan: VQGAN) -> None:
    orders = []
    for chunk in (1, 2, 4):
        result = make_pipeline(vqgan, candidate_batch=chunk)(request())
        orders.append([ranked.seed for ranked in result.images])
        assert result.settings["candidate_batch"] == chunk
    assert orders[0] == orders[1] == orders[2]
    assert sorted(orders[0]) == [11, 12, 13, 14]


class ChunkLimit:
    """A decoder that runs out of memory above a batch size, as a small GPU would."""

    def __init__(self, vqgan: VQGAN, limit: int) -> None:
        self.vqgan, self.limit = vqgan, limit
        self.batches: list[int] = []

    def __call__(self, z_q: torch.Tensor) -> torch.Tensor:
        self.batches.append(z_q.shape[0])
        if z_q.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.vqgan.decode(z_q)


def test_out_of_memory_under_auto_halves_the_chunk_and_redoes_the_step(vqgan: VQGAN) -> None:
    pipeline = make_pipeline(vqgan, candidate_batch=1)
    plain = run_steps(pipeline.start(request(), 11), 3)

    limited = ChunkLimit(vqgan, limit=1)
    memory = FakeMemory(free=10_000, per_candidate=100)  # room for all four after measuring
    run = VqganClipRun(
        vqgan, pipeline.clip, request(), 11, throughput=Throughput("auto", limited, memory)
    )
    images = run_steps(run, 3)
    # Step 1 measures one at a time; step 2 tries 4, fails, 2, fails, then four passes of 1.
    assert limited.batches[:10] == [1, 1, 1, 1, 4, 2, 1, 1, 1, 1]
    assert run.candidate_batch == 1
    # Redone from the same random streams and the same Adam state: the sequential result exactly.
    assert torch.equal(images, plain)


class FailsOnceOnASecondChunk:
    """A decoder that runs out of memory once, on the second chunk of two candidates: by then
    the first chunk has drawn its cutouts from its candidates' random streams and run backward,
    so the redo must rewind those streams and drop those gradients."""

    def __init__(self, vqgan: VQGAN) -> None:
        self.vqgan = vqgan
        self.pairs = 0
        self.failed = False

    def __call__(self, z_q: torch.Tensor) -> torch.Tensor:
        if z_q.shape[0] == 2 and z_q.requires_grad:
            self.pairs += 1
            if self.pairs == 2 and not self.failed:
                self.failed = True
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return self.vqgan.decode(z_q)


def test_out_of_memory_mid_step_redoes_the_step_from_the_same_random_streams(
    vqgan: VQGAN,
) -> None:
    pipeline = make_pipeline(vqgan, candidate_batch=1)
    plain = run_steps(pipeline.start(request(), 11), 3)

    decoder = FailsOnceOnASecondChunk(vqgan)
    memory = FakeMemory(free=1000, per_candidate=400)  # 0.8 x 1000 holds two of 400
    run = VqganClipRun(
        vqgan, pipeline.clip, request(), 11, throughput=Throughput("auto", decoder, memory)
    )
    run.step()
    assert run.candidate_batch == 2
    images = run_steps(run, 2)
    assert decoder.failed and run.candidate_batch == 1
    assert torch.equal(images, plain)


def test_out_of_memory_with_a_fixed_chunk_fails_the_job(vqgan: VQGAN) -> None:
    pipeline = make_pipeline(vqgan)
    limited = ChunkLimit(vqgan, limit=1)
    run = VqganClipRun(vqgan, pipeline.clip, request(), 11, throughput=Throughput(4, limited, None))
    with pytest.raises(torch.OutOfMemoryError):
        run.step()
    assert limited.batches == [4]  # a fixed number is never halved


def test_out_of_memory_with_one_candidate_at_a_time_fails_the_job(vqgan: VQGAN) -> None:
    pipeline = make_pipeline(vqgan)
    run = VqganClipRun(
        vqgan, pipeline.clip, request(), 11, throughput=Throughput(1, ChunkLimit(vqgan, 0), None)
    )
    with pytest.raises(torch.OutOfMemoryError):
        run.step()


class FakeMemory:
    """A device with ``free`` bytes where one candidate peaks at ``per_candidate`` bytes."""

    def __init__(self, free: int, per_candidate: int) -> None:
        self.free, self.per_candidate = free, per_candidate
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def peak_bytes(self) -> int:
        return self.per_candidate

    def free_bytes(self) -> int:
        return self.free

    def release(self) -> None:
        pass


def test_auto_measures_the_first_step_then_fills_free_memory(vqgan: VQGAN) -> None:
    pipeline = make_pipeline(vqgan)
    memory = FakeMemory(free=1000, per_candidate=300)
    run = VqganClipRun(
        vqgan, pipeline.clip, request(), 11, throughput=Throughput("auto", None, memory)
    )
    assert run.candidate_batch is None
    run.step()
    # 0.8 x 1000 bytes hold two candidates of 300.
    assert memory.started == 1 and run.candidate_batch == 2
    run.step()
    assert memory.started == 1  # measured once


def test_auto_without_a_memory_probe_is_one_at_a_time(vqgan: VQGAN) -> None:
    run = make_pipeline(vqgan, candidate_batch="auto").start(request(), 11)
    assert run.memory is None and run.candidate_batch == 1


def test_the_chunk_rules() -> None:
    gib = 2**30
    assert auto_candidate_batch(10 * gib, 2 * gib, candidates=4) == 4
    assert auto_candidate_batch(10 * gib, 3 * gib, candidates=4) == 2
    assert auto_candidate_batch(1 * gib, 3 * gib, candidates=4) == 1
    assert auto_candidate_batch(10 * gib, 0, candidates=3) == 3
    assert fixed_candidate_batch("auto", 4) is None
    assert fixed_candidate_batch(2, 4) == 2
    assert fixed_candidate_batch(8, 4) == 4
    assert fixed_candidate_batch(1, 4) == 1


def test_channels_last_auto_is_on_for_cuda_and_on_cpu_only_with_a_measured_gain() -> None:
    assert channels_last_enabled("auto", "cuda", cpu_gain=False)
    assert not channels_last_enabled("auto", "cpu", cpu_gain=False)
    assert channels_last_enabled("auto", "cpu", cpu_gain=True)
    assert channels_last_enabled(True, "cpu", cpu_gain=False)
    assert not channels_last_enabled(False, "cuda", cpu_gain=True)


def decode_with_gradient(
    vqgan: VQGAN, decode: object, z_q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    z = z_q.clone().requires_grad_(True)
    out = decode(z)  # type: ignore[operator]
    out.square().mean().backward()
    assert z.grad is not None
    return out.detach().contiguous(), z.grad.contiguous()


@pytest.fixture
def compile_counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[CompileCounter]:
    """torch.compile through a backend that counts the frames Dynamo compiled and runs them
    eagerly: the same graph capture as Inductor, without its minutes of C++ compilation, and a
    count that shows compilation really happened (torch.compile is lazy, so an unused flag would
    otherwise pass unnoticed)."""
    counter = CompileCounter()
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", counter)
    torch._dynamo.reset()
    yield counter
    torch._dynamo.reset()


def test_channels_last_decoder_matches_the_plain_decoder(vqgan: VQGAN) -> None:
    model = copy.deepcopy(vqgan)
    z_q = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.02
    plain = decode_with_gradient(model, model.decode, z_q)
    fast = FastModule(model.decode, [model.post_quant_conv, model.decoder], channels_last=True)
    assert model.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    faster = decode_with_gradient(model, fast, z_q)
    for a, b in zip(plain, faster, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_compiled_decoder_compiles_and_matches_the_plain_decoder(
    vqgan: VQGAN, compile_counter: CompileCounter
) -> None:
    model = copy.deepcopy(vqgan)
    z_q = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.02
    plain = decode_with_gradient(model, model.decode, z_q)
    fast = FastModule(model.decode, [model.post_quant_conv, model.decoder], compile=True)
    assert compile_counter.frame_count == 0  # lazy until the first call
    faster = decode_with_gradient(model, fast, z_q)
    assert compile_counter.frame_count >= 1 and compile_counter.op_count > 0
    for a, b in zip(plain, faster, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_the_pipeline_takes_the_options_from_settings() -> None:
    settings = ModelSettings(preset="tiny", device="cpu", candidate_batch=3, channels_last=True)
    try:
        pipeline = VqganClipPipeline.from_settings(settings)
        run = pipeline.start(request(candidates=4), 1)
        assert run.candidate_batch == 3
        assert pipeline.decoder.channels_last and not pipeline.decoder.compiled
        assert run.decoder is pipeline.decoder
    finally:
        # The cached tiny VQGAN was converted to channels-last; later tests get a fresh one.
        presets.clear_caches()


def test_the_pipeline_compiles_its_decoder_when_settings_say_so(
    compile_counter: CompileCounter,
) -> None:
    images = {}
    try:
        for compile in (False, True):
            settings = ModelSettings(
                preset="tiny", device="cpu", compile=compile, candidate_batch=1
            )
            pipeline = VqganClipPipeline.from_settings(settings)
            assert pipeline.decoder.compiled is compile and not pipeline.decoder.channels_last
            run = pipeline.start(request(steps=2), 3)
            assert (run.decoder is pipeline.decoder) is compile
            images[compile] = run_steps(run, 2)
            assert (compile_counter.frame_count >= 1) is compile
    finally:
        presets.clear_caches()
    torch.testing.assert_close(images[True], images[False], atol=ATOL, rtol=0)


def test_deterministic_mode_repeats_a_seed_bit_for_bit_on_the_cpu(vqgan: VQGAN) -> None:
    from pipelines.precision import apply_determinism

    pipeline = make_pipeline(vqgan, candidate_batch=2)
    try:
        apply_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        first = run_steps(pipeline.start(request(steps=2), 5), 2)
        second = run_steps(pipeline.start(request(steps=2), 5), 2)
    finally:
        apply_determinism(False)
    assert torch.equal(first, second)


@pytest.mark.parametrize("key", ["compile", "deterministic", "trust_checkpoints"])
def test_a_switch_given_as_a_string_is_refused_not_read_as_on(key: str) -> None:
    # compile = "false" from a --config file would otherwise be truthy and switch compile on.
    with pytest.raises(ValueError, match=f"models.{key} = 'false': must be true or false"):
        ModelSettings.from_mapping({"preset": "tiny", key: "false"})
    assert getattr(ModelSettings.from_mapping({"preset": "tiny", key: True}), key) is True


def test_the_bench_warms_up_past_autos_measuring_step(vqgan: VQGAN) -> None:
    from pipelines.bench.vqgan_clip import warmups

    pipeline = make_pipeline(vqgan)
    memory = FakeMemory(free=1000, per_candidate=400)
    auto = VqganClipRun(
        vqgan, pipeline.clip, request(), 11, throughput=Throughput("auto", None, memory)
    )
    # The first step runs one candidate at a time to measure; a second untimed step then runs
    # the chosen chunk once before timing starts.
    assert warmups(auto) == 2
    assert warmups(pipeline.start(request(), 11)) == 1
