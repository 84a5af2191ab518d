"""The latent diffusion model Blended Latent Diffusion runs on: UNet, VAE, text encoder, tokenizer.

Three presets, as for every pipeline (``ModelSettings.preset``):

- ``tiny``: the Stable Diffusion architecture shrunk to a few thousand parameters, with
  deterministic random weights, built in-process. Tests run on it. Its VAE downsamples by 2 (not
  8) and its UNet has two levels, so its images need sides that are multiples of 4, not 64.
- ``random-full``: the real SD-1.5 shapes (UNet, VAE, CLIP ViT-L/14 text encoder) with random
  weights, built from configs offline, so benchmarks do exactly the work a real model does.
- ``default``: ``settings.diffusion_model``, a diffusers model id or a local folder in diffusers
  layout, loaded component by component (the safety checker is never fetched).

Both random presets use a real CLIP tokenizer. Its BPE vocabulary ships inside the open_clip
wheel; we write it out once as the ``vocab.json`` + ``merges.txt`` pair that transformers'
``CLIPTokenizer.from_pretrained`` reads, because constructing the tokenizer from file arguments
silently builds an empty vocabulary in transformers 5.

Components are loaded once per process and shared (they are only read during inference).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pipelines import speedups
from pipelines.devices import pick_device
from pipelines.downloads import ModelFileError
from pipelines.precision import apply_determinism, apply_tf32, decide_precision
from pipelines.settings import ModelSettings

log = logging.getLogger(__name__)

CLIP_CONTEXT_LENGTH = 77
CLIP_VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# open_clip's BPE file has a header line, then more merges than CLIP uses: CLIP keeps the first
# 49152 - 256 - 2 of them (the vocabulary is 256 bytes, 256 end-of-word bytes, the merges, and
# the two special tokens: 49408 in all).
_MERGES_USED = 49152 - 256 - 2

# The noise schedule every SD 1.x checkpoint was trained with.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


@dataclass
class DiffusionComponents:
    """Everything a latent diffusion edit needs. All modules are frozen and in eval mode."""

    name: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    # A scheduler *config*, not a scheduler: schedulers keep per-run state and are not
    # thread-safe, so each request builds its own from this.
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    # The VAE's own dtype: float32 when the model's config asks for force_upcast and the rest
    # is float16 (pipelines.precision); None means ``dtype``.
    vae_dtype: torch.dtype | None = None
    # Which models use channels-last memory format and which are compiled (for the record).
    channels_last: tuple[str, ...] = ()
    compiled: tuple[str, ...] = ()

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def unet_factor(self) -> int:
        """How much the UNet downsamples a latent side (8 for SD). diffusers' UNet accepts sides
        that are not multiples of it (it upsamples to each skip connection's size)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def latent_scaling(self) -> float:
        return float(self.vae.config.scaling_factor)


# ---------------------------------------------------------------------------------------------
# Tokenizer from open_clip's vocabulary


def _bytes_to_unicode() -> dict[int, str]:
    # Delegates to open_clip so the byte alphabet is exactly the one its BPE file was made with.
    return open_clip.tokenizer.bytes_to_unicode()


def write_clip_tokenizer_files(folder: Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for CLIP's BPE into ``folder`` (idempotent).

    The ids follow CLIP's: the 256 byte symbols, the same with ``</w>`` (end of word), one id per
    merge in order, then the start and end tokens (49406, 49407).
    """
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        return folder
    with gzip.open(open_clip.tokenizer.default_bpe(), "rt", encoding="utf-8") as handle:
        merges = handle.read().split("\n")[1 : _MERGES_USED + 1]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(merge.split(" ")) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"open_clip's BPE file gave {len(tokens)} tokens, not {CLIP_VOCAB_SIZE}")
    folder.mkdir(parents=True, exist_ok=True)
    # Write to temporaries and rename, so a concurrent process never reads half a file.
    for path, text in (
        (vocab_path, json.dumps({token: i for i, token in enumerate(tokens)}, ensure_ascii=False)),
        (merges_path, "#version: 0.2\n" + "\n".join(merges) + "\n"),
    ):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    return folder


def clip_tokenizer_from_open_clip(cache_dir: Path) -> CLIPTokenizer:
    """CLIP's real tokenizer, available offline (the vocabulary ships inside open_clip)."""
    folder = write_clip_tokenizer_files(Path(cache_dir) / "clip-bpe-tokenizer")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=CLIP_CONTEXT_LENGTH)


# ---------------------------------------------------------------------------------------------
# Architectures


def tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=2,
    )


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(4, 8),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=64,
    )


def tiny_text_encoder() -> CLIPTextModel:
    # The full CLIP vocabulary, so the real tokenizer's ids are all valid.
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CLIP_CONTEXT_LENGTH,
            bos_token_id=CLIP_VOCAB_SIZE - 2,
            eos_token_id=CLIP_VOCAB_SIZE - 1,
            pad_token_id=CLIP_VOCAB_SIZE - 1,
        )
    )


def sd15_unet() -> UNet2DConditionModel:
    """SD 1.5's UNet (860M parameters), as its published config describes it."""
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
        act_fn="silu",
    )


def sd15_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )


def sd15_text_encoder() -> CLIPTextModel:
    """OpenAI CLIP ViT-L/14's text tower, SD 1.x's text encoder."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=CLIP_CONTEXT_LENGTH,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=CLIP_VOCAB_SIZE - 2,
            eos_token_id=CLIP_VOCAB_SIZE - 1,
            pad_token_id=1,
        )
    )


def _build_random(
    name: str, unet_fn: Any, vae_fn: Any, text_fn: Any, seed: int, cache_dir: Path
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer]:
    # Seeded inside a forked RNG state so the weights are the same in every process and
    # building them leaves the caller's random stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae, text_encoder = unet_fn(), vae_fn(), text_fn()
    log.info("built %s diffusion components with random weights", name)
    return unet, vae, text_encoder, clip_tokenizer_from_open_clip(cache_dir)


# ---------------------------------------------------------------------------------------------
# Pretrained weights


def _hub_offline() -> bool:
    # Read at call time and parsed as huggingface_hub parses it: "0" or "false" means online.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _local_only(model: str) -> bool:
    return Path(model).is_dir() or _hub_offline()


def load_pretrained(
    model: str, cache_dir: Path, dtype: torch.dtype
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, dict[str, Any]]:
    """Each component from a diffusers-layout model id or folder; only the files we need."""
    common: dict[str, Any] = {
        "cache_dir": str(cache_dir),
        "local_files_only": _local_only(model),
    }
    log.info("loading diffusion model %s (local files only: %s)", model, common["local_files_only"])
    try:
        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", dtype=dtype, **common)
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae", dtype=dtype, **common)
        text_encoder = CLIPTextModel.from_pretrained(
            model, subfolder="text_encoder", dtype=dtype, **common
        )
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **common)
        scheduler_config = dict(DDIMScheduler.load_config(model, subfolder="scheduler", **common))
    except OSError as exc:
        # diffusers and transformers report a missing folder, file or hub entry as OSError, in
        # several lines; the user needs one line naming the setting and what to do.
        raise ModelFileError(_pretrained_load_message(model, common["local_files_only"])) from exc
    return unet, vae, text_encoder, tokenizer, scheduler_config


def _pretrained_load_message(model: str, local_only: bool) -> str:
    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
        return f"models.diffusion_model: the local folder {model} does not exist"
    if Path(model).is_dir():
        return (
            f"models.diffusion_model: {model} is not a complete diffusers model folder (it needs "
            "unet/, vae/, text_encoder/, tokenizer/ and scheduler/)"
        )
    if local_only:
        return (
            f"models.diffusion_model: {model!r} is neither a local diffusers folder nor in the "
            "download cache, and downloads are off (HF_HUB_OFFLINE is set); give a local folder "
            "or allow downloads once"
        )
    return (
        f"models.diffusion_model: {model!r} could not be downloaded from the Hugging Face hub "
        "(check the model id and the internet connection, or give a local diffusers folder)"
    )


# ---------------------------------------------------------------------------------------------
# The per-process cache

_cache: dict[tuple[str, str, str, str, str], DiffusionComponents] = {}
_lock = threading.Lock()


def diffusion_dtype(preference: str, device: torch.device) -> torch.dtype:
    """The dtype the diffusion models are stored in (see :mod:`pipelines.precision`).

    float16 is used on CUDA only: a 3×3 convolution of SD's width measured about 250× slower in
    float16 than in float32 on this CPU, so a config asking for float16 on a CPU gets float32 and
    a warning rather than jobs that never finish.
    """
    precision = decide_precision("edit", device.type, preference)
    if precision.note:
        log.warning("%s", precision.note)
    return precision.weights


def load_diffusion(settings: ModelSettings) -> DiffusionComponents:
    """The diffusion components ``settings`` name, loaded once per process."""
    apply_determinism(settings.deterministic)
    device = pick_device(settings.device)
    dtype = diffusion_dtype(settings.dtype, device)
    apply_tf32(decide_precision("edit", device.type, settings.dtype))
    model = settings.diffusion_model if settings.preset == "default" else settings.preset
    key = (
        settings.preset,
        model,
        str(device),
        str(dtype),
        str(settings.cache_dir),
        str(settings.channels_last),
        settings.compile,
    )
    with _lock:
        if key in _cache:
            return _cache[key]
        scheduler_config = dict(SD_SCHEDULER_CONFIG)
        if settings.preset == "tiny":
            unet, vae, text_encoder, tokenizer = _build_random(
                "tiny", tiny_unet, tiny_vae, tiny_text_encoder, 0, settings.cache_dir
            )
        elif settings.preset == "random-full":
            unet, vae, text_encoder, tokenizer = _build_random(
                "SD-1.5-shaped", sd15_unet, sd15_vae, sd15_text_encoder, 0, settings.cache_dir
            )
        else:
            unet, vae, text_encoder, tokenizer, scheduler_config = load_pretrained(
                model, settings.cache_dir, dtype
            )
        # diffusers' force_upcast: the VAE of SD-class models overflows in float16 (NaN or black
        # images), so it runs in float32 while the UNet stays in float16.
        vae_dtype = decide_precision(
            "edit",
            device.type,
            settings.dtype,
            vae_force_upcast=bool(getattr(vae.config, "force_upcast", False)),
        ).decoder
        components = assemble(
            model,
            unet,
            vae,
            text_encoder,
            tokenizer,
            scheduler_config,
            device,
            dtype,
            vae_dtype=vae_dtype,
            channels_last=settings.channels_last,
            compile_models=settings.compile,
        )
        _cache[key] = components
        return components


# Channels-last measured 15-40% less time per step for the SD-1.5 UNet on this CPU (same fp32
# arithmetic, summation order aside); the VAE measured no clear gain there. On CUDA both gain
# (tensor cores read NHWC), so "auto" turns both on there and only the UNet on a CPU.
_CHANNELS_LAST_ON_CPU = {"unet": True, "vae": False}


def channels_last_for(model: str, device_type: str, setting: bool | str) -> bool:
    """Whether ``model`` ("unet" or "vae") uses channels-last memory format under
    ``[models] channels_last`` (``"auto"``, true or false)."""
    if setting == "auto":
        return device_type == "cuda" or _CHANNELS_LAST_ON_CPU[model]
    return bool(setting)


def assemble(
    name: str,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    scheduler_config: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    *,
    vae_dtype: torch.dtype | None = None,
    channels_last: bool | str = "auto",
    compile_models: bool = False,
) -> DiffusionComponents:
    """Move, cast and freeze the modules, set their memory format, and bundle them."""
    vae_dtype = vae_dtype or dtype
    for module, module_dtype in ((unet, dtype), (vae, vae_dtype), (text_encoder, dtype)):
        # Cast only when needed: diffusers warns about casting loaded models with .to().
        if module.dtype != module_dtype or module.device != device:
            module.to(device=device, dtype=module_dtype)
        module.eval().requires_grad_(False)
    layout = []
    for label, module in (("unet", unet), ("vae", vae)):
        if channels_last_for(label, device.type, channels_last):
            module.to(memory_format=torch.channels_last)
            layout.append(label)
    compiled = []
    if compile_models:
        # In place (nn.Module.compile), so the modules keep their type, config and attributes.
        unet.compile(backend=speedups.COMPILE_BACKEND)
        vae.decoder.compile(backend=speedups.COMPILE_BACKEND)
        compiled = ["unet", "vae.decoder"]
        log.info("torch.compile (%s) set for %s", speedups.COMPILE_BACKEND, ", ".join(compiled))
    return DiffusionComponents(
        name=name,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=dict(scheduler_config),
        device=device,
        dtype=dtype,
        vae_dtype=vae_dtype,
        channels_last=tuple(layout),
        compiled=tuple(compiled),
    )
