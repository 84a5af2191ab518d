"""Blended LD's throughput options give the plain path's results: candidate batching of the VAE
decode and the CLIP ranking, channels-last, torch.compile, and the float32 VAE under
``force_upcast``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from pipelines import diffusion_models, speedups
from pipelines.blended import (
    BlendedLatentDiffusionPipeline,
    EditRequest,
    StepRecord,
    reconstruct_background,
)
from pipelines.candidate_batching import MEMORY_HEADROOM, CudaMemory, auto_candidate_batch
from pipelines.candidate_chunks import CandidateChunks
from pipelines.clip_models import TINY_CLIP, ClipSpec, load_clip
from pipelines.diffusion_models import (
    assemble,
    channels_last_for,
    load_diffusion,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)
from pipelines.precision import decide_precision
from pipelines.ranking import clip_similarities
from pipelines.settings import ModelSettings
from tests.pipelines.blended_helpers import mask_image, source_image, tiny_pipeline


def request(**options: Any) -> EditRequest:
    defaults: dict[str, Any] = {"steps": 4, "candidates": 4, "seed": 5, "preview_every": 100}
    defaults.update(options)
    return EditRequest("a bowl of oranges", source_image(), mask_image(), **defaults)


def run_with_latents(
    pipeline: BlendedLatentDiffusionPipeline, edit: EditRequest
) -> tuple[Any, torch.Tensor]:
    records: list[StepRecord] = []
    pipeline.step_observer = records.append
    try:
        result = pipeline(edit)
    finally:
        pipeline.step_observer = None
    return result, records[-1].latents


# -- candidate batching --------------------------------------------------------------------------


def test_auto_chunk_fits_the_free_memory_with_headroom() -> None:
    assert MEMORY_HEADROOM == 0.8
    assert auto_candidate_batch(1000, 100, 8) == 8
    assert auto_candidate_batch(500, 100, 8) == 4
    assert auto_candidate_batch(50, 100, 8) == 1  # never below one
    assert auto_candidate_batch(10_000, 100, 3) == 3  # never above the count


class FakeMemory:
    """A GPU's memory probe: each candidate in a chunk costs ``per_candidate`` bytes."""

    def __init__(self, per_candidate: int, free: int) -> None:
        self.per_candidate, self.free = per_candidate, free
        self.high = 0
        self.started = 0
        self.released = 0

    def start(self) -> None:
        self.started += 1
        self.high = 0

    def peak_bytes(self) -> int:
        return self.high

    def free_bytes(self) -> int:
        return self.free

    def release(self) -> None:
        self.released += 1

    def use(self, count: int) -> None:
        self.high = max(self.high, count * self.per_candidate)


def test_auto_measures_one_candidate_then_sizes_chunks_and_halves_on_out_of_memory() -> None:
    memory = FakeMemory(per_candidate=100, free=500)  # 500 · 0.8 / 100 = 4 at once
    chunks = CandidateChunks("auto", torch.device("cpu"), memory=memory)
    calls: list[tuple[int, int]] = []
    items = torch.arange(8.0)

    def work(start: int, stop: int) -> torch.Tensor:
        calls.append((start, stop))
        memory.use(stop - start)
        if stop - start > 2 and len(calls) == 2:  # the first chunk of four runs out of memory
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return items[start:stop] * 2

    out = chunks.run(8, work)
    assert torch.equal(out, items * 2)  # nothing lost, nothing repeated
    assert calls == [(0, 1), (1, 5), (1, 3), (3, 5), (5, 7), (7, 8)]
    assert chunks.chosen == 2
    assert memory.released == 1
    # The next call keeps the measured cost and the halved limit: no new measurement, no OOM.
    calls.clear()
    assert torch.equal(chunks.run(4, work), items[:4] * 2)
    assert calls == [(0, 2), (2, 4)] and memory.started == 1


def test_auto_keeps_the_measured_cost_so_the_next_call_is_one_batch() -> None:
    memory = FakeMemory(per_candidate=100, free=500)
    chunks = CandidateChunks("auto", torch.device("cpu"), memory=memory)
    sizes: list[int] = []

    def work(start: int, stop: int) -> torch.Tensor:
        sizes.append(stop - start)
        memory.use(stop - start)
        return torch.zeros(stop - start)

    chunks.run(4, work)
    assert sizes == [1, 3] and chunks.chosen == 3  # the largest chunk that actually ran
    sizes.clear()
    chunks.run(4, work)
    assert sizes == [4] and chunks.chosen == 4 and memory.started == 1
    # Another kind of work (another image size) is measured for itself.
    sizes.clear()
    chunks.run(4, work, key=(4, 64, 64))
    assert sizes == [1, 3] and memory.started == 2


def test_both_pipelines_share_one_cuda_memory_probe_that_counts_cached_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chunks = CandidateChunks("auto", torch.device("cuda"))
    assert isinstance(chunks.memory, CudaMemory)
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 16 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 5 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    # Free on the device plus what the allocator holds unused.
    assert chunks.memory.free_bytes() == 5 * gib


def test_a_fixed_batch_never_halves_and_cpu_auto_is_one_at_a_time() -> None:
    def failing(start: int, stop: int) -> torch.Tensor:
        raise torch.OutOfMemoryError("injected")

    with pytest.raises(torch.OutOfMemoryError):
        CandidateChunks(4, torch.device("cpu")).run(8, failing)
    sizes: list[int] = []

    def record(start: int, stop: int) -> torch.Tensor:
        sizes.append(stop - start)
        return torch.zeros(stop - start)

    CandidateChunks("auto", torch.device("cpu")).run(5, record)
    assert sizes == [1] * 5
    sizes.clear()
    CandidateChunks(3, torch.device("cpu")).run(5, record)
    assert sizes == [3, 2]
    for bad in (0, -1, True, "many", 2.5):
        with pytest.raises(ValueError):
            CandidateChunks(bad, torch.device("cpu"))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def test_decode_and_ranking_in_any_chunk_size_give_the_same_results(models_dir: Path) -> None:
    plain = tiny_pipeline(models_dir, candidate_batch=1)
    result, latents = run_with_latents(plain, request())
    decoded = {1: plain.decode(latents)}
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 10:50, 5:40] = 1
    scores = {1: clip_similarities(plain.ranker, images, mask, "a cat", plain.rank_chunks)}
    for size in (2, 4):
        batched = tiny_pipeline(models_dir, candidate_batch=size)
        decoded[size] = batched.decode(latents)
        assert batched.decode_chunks.chosen == size
        scores[size] = clip_similarities(batched.ranker, images, mask, "a cat", batched.rank_chunks)
        torch.testing.assert_close(decoded[size], decoded[1], rtol=0, atol=1e-5)
        torch.testing.assert_close(scores[size], scores[1], rtol=0, atol=1e-5)
        assert scores[size].argsort().tolist() == scores[1].argsort().tolist()
        again = batched(request())
        assert [r.seed for r in again.images] == [r.seed for r in result.images]
        for ours, theirs in zip(again.images, result.images, strict=True):
            assert abs(ours.score - theirs.score) <= 1e-5
    # The whole batch at once, as the ranking did before batching was configurable.
    torch.testing.assert_close(
        clip_similarities(plain.ranker, images, mask, "a cat"), scores[1], rtol=0, atol=1e-5
    )


# -- channels-last and compile -------------------------------------------------------------------


def test_channels_last_auto_is_on_for_cuda_and_for_the_unet_only_on_cpu() -> None:
    assert channels_last_for("unet", "cuda", "auto") and channels_last_for("vae", "cuda", "auto")
    assert channels_last_for("unet", "cpu", "auto")
    assert not channels_last_for("vae", "cpu", "auto")
    assert not channels_last_for("unet", "cuda", False)
    assert channels_last_for("vae", "cpu", True)


def variant(models_dir: Path, **settings: Any) -> BlendedLatentDiffusionPipeline:
    components = load_diffusion(
        ModelSettings(preset="tiny", device="cpu", cache_dir=models_dir, **settings)
    )
    ranker = load_clip(ClipSpec(TINY_CLIP), torch.device("cpu"))
    return BlendedLatentDiffusionPipeline(components, ranker)


def is_channels_last(module: torch.nn.Module) -> bool:
    weights = [p for p in module.parameters() if p.dim() == 4]
    return all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


def assert_same_edit(a: BlendedLatentDiffusionPipeline, b: BlendedLatentDiffusionPipeline) -> None:
    edit = request(candidates=2, steps=3)
    first, first_latents = run_with_latents(a, edit)
    second, second_latents = run_with_latents(b, edit)
    torch.testing.assert_close(second_latents, first_latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        b.decode(first_latents), a.decode(first_latents), rtol=1e-4, atol=1e-5
    )
    for x, y in zip(first.images, second.images, strict=True):
        assert x.seed == y.seed and abs(x.score - y.score) <= 1e-4


def test_channels_last_on_and_off_give_the_plain_results(models_dir: Path) -> None:
    plain = variant(models_dir, channels_last=False)
    layout = variant(models_dir, channels_last=True)
    assert plain.components.channels_last == () and layout.components.channels_last == (
        "unet",
        "vae",
    )
    assert not is_channels_last(plain.components.unet) and not is_channels_last(
        plain.components.vae
    )
    assert is_channels_last(layout.components.unet) and is_channels_last(layout.components.vae)
    assert_same_edit(plain, layout)


@pytest.fixture
def compile_counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[CompileCounter]:
    """Dynamo's graph capture run by eager kernels, counting the frames it compiled: the same
    tracing (and graph breaks) as Inductor without minutes of C++ compilation per model on a CPU,
    and proof that compilation happened (torch.compile is lazy). Inductor itself was checked by
    hand on the tiny UNet (largest difference 7e-7)."""
    counter = CompileCounter()
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", counter)
    torch._dynamo.reset()
    yield counter
    torch._dynamo.reset()


def test_compile_gives_the_plain_results(models_dir: Path, compile_counter: CompileCounter) -> None:
    plain = variant(models_dir, compile=False)
    compiled = variant(models_dir, compile=True)
    assert compiled.components.compiled == ("unet", "vae.decoder")
    assert compiled.components.unet._compiled_call_impl is not None
    assert plain.components.unet._compiled_call_impl is None
    assert compile_counter.frame_count == 0  # lazy until the first call
    assert_same_edit(plain, compiled)
    # At least the UNet's and the VAE decoder's frames went through the compiler.
    assert compile_counter.frame_count >= 2
    # The fine-tuning trains a private copy of the decoder, never the compiled shared one.
    vae = compiled.components.vae
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    z = torch.randn(1, 4, 8, 8)
    target = torch.rand(1, 3, 16, 16) * 2 - 1
    mask = torch.ones(1, 1, 16, 16)
    tuned = reconstruct_background(vae, z, target, target, mask, steps=2, lr=1e-2)
    after = vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert not torch.allclose(tuned, vae.decode(z).sample, atol=1e-4)


# -- the VAE in float32 under force_upcast ---------------------------------------------------------


@pytest.mark.parametrize("force_upcast", [True, False])
def test_the_vae_runs_in_float32_when_the_model_asks_for_force_upcast(
    models_dir: Path, force_upcast: bool
) -> None:
    precision = decide_precision("edit", "cuda", "auto", vae_force_upcast=force_upcast)
    assert precision.weights == torch.float16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet, vae, text_encoder = tiny_unet(), tiny_vae(), tiny_text_encoder()
    vae.register_to_config(force_upcast=force_upcast)
    tokenizer = diffusion_models.clip_tokenizer_from_open_clip(models_dir)
    # float16 storage on the CPU stands in for CUDA here; only dtypes are checked.
    components = assemble(
        "tiny",
        unet,
        vae,
        text_encoder,
        tokenizer,
        dict(diffusion_models.SD_SCHEDULER_CONFIG),
        torch.device("cpu"),
        torch.float16,
        vae_dtype=precision.decoder,
    )
    expected = torch.float32 if force_upcast else torch.float16
    assert components.unet.dtype == torch.float16
    assert components.vae.dtype == expected
    seen: list[torch.dtype] = []
    hook = components.vae.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    try:
        pipeline = BlendedLatentDiffusionPipeline(
            components, load_clip(ClipSpec(TINY_CLIP), torch.device("cpu"))
        )
        with torch.no_grad():
            latent = pipeline.encode_image(torch.rand(1, 3, 32, 32))
            assert latent.dtype == torch.float16  # what the UNet takes
            images = pipeline.decode(latent.expand(2, -1, -1, -1))
    finally:
        hook.remove()
    assert seen == [expected, expected]
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
